"""Fencing: an attempt runs only while the lease of the executor that claimed it holds.

A lease is an executor incarnation's heartbeat in the store: a counter it raises every
``LEASE_TTL_S / 4``. Its two sides never compare the wall clocks of two machines:

- ``LeaseObserver``, in whoever judges a lease (an executor's sweep for lost tasks, the
  StatusKeeper before it times a task out), notes on its *own* monotonic clock when it saw
  each owner's counter change, and calls a lease lapsed only once it has seen no change
  for ``LEASE_TTL_S``.
- ``WorkerFence``, in the Ray worker that runs an attempt, ends that worker's process
  ``FENCE_MARGIN_S`` before its executor's lease could lapse anywhere: the executor's lease
  runs until ``LEASE_TTL_S`` after the *start* of its last successful heartbeat, and no
  observer can have seen that heartbeat earlier. An executor that is frozen, cut off from
  the store, or gone therefore takes its running attempts with it before any sweep may
  start the next attempt.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("raylane.fencing")

# A RUNNING task whose executor has not renewed its heartbeat for this long is lost: the
# executors' sweep retries it, and the StatusKeeper does not time it out meanwhile.
LEASE_TTL_S = 10.0
HEARTBEAT_EVERY_S = LEASE_TTL_S / 4
FENCE_MARGIN_S = 2.0  # a worker ends this long before its executor's lease ends
FENCE_REFRESH_S = 1.0  # how often a running worker asks its executor how long its lease holds
# A worker whose deadline is this close asks at once rather than at its next turn: the answer
# needs time to come back (an executor busy with thousands of tasks may take a second or more),
# and a deadline that passes while the question waits ends a worker whose executor is alive.
FENCE_ASK_AHEAD_S = 3.0
FENCE_CHECK_S = 0.2
# A check this late after the one before means the fence thread could not run: the task held the
# GIL (one long C call: a sort, a regex, a decode). It could not ask meanwhile, so before it ends
# the worker for a deadline passed in that time it asks once whether the lease held throughout,
# waiting this long at most for the answer.
FENCE_STARVED_S = 1.0
FENCE_RECHECK_S = 1.0
FENCED_EXIT_CODE = 75


class LeaseObserver:
    """Judges other executors' leases by what this process saw, on this process's clock."""

    def __init__(self, ttl_s: float = LEASE_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        # owner -> (counter, when it was first seen or seen to change, whether it was seen to change);
        # the counter is None for an owner vouched for before its counter was read.
        self._seen: dict[str, tuple[int | None, float, bool]] = {}
        self._since: float | None = None  # first successful observation

    def observe(self, beats: dict[str, int]) -> None:
        """Take in the heartbeat counters read from the store just now."""
        now = self._clock()
        if self._since is None:
            self._since = now
        for owner, beat in beats.items():
            seen = self._seen.get(owner)
            if seen is None:
                self._seen[owner] = (beat, now, False)
            elif seen[0] is None:  # vouched for: this first counter is no move of its own
                self._seen[owner] = (beat, seen[1], seen[2])
            elif seen[0] != beat:
                self._seen[owner] = (beat, now, True)

    def vouch(self, owner: str | None) -> None:
        """``owner`` just sent a claim, so it was running a moment ago, and its heartbeat loop with
        it: taken as its counter seen to move now. It is judged from then on as after such a move
        (renewing for ``ttl_s``, lapsed after ``ttl_s`` without a move or another claim). Without
        it, a keeper that just started waits for two looks at the heartbeats, seconds apart,
        before its first timeout."""
        if owner is None:
            return
        seen = self._seen.get(owner)
        self._seen[owner] = (seen[0] if seen is not None else None, self._clock(), True)

    def renewed(self, owner: str | None) -> bool:
        """Whether ``owner`` was seen renewing its lease (its counter changing) within ``ttl_s``:
        positive evidence that it is alive, where ``not lapsed`` may only mean "not judged yet"."""
        seen = self._seen.get(owner) if owner is not None else None
        return seen is not None and seen[2] and self._clock() - seen[1] < self.ttl_s

    def lapsed(self, owner: str | None) -> bool:
        """Whether ``owner``'s lease has lapsed: its counter has not changed for ``ttl_s`` as seen
        here. An owner never seen is judged from this observer's first observation on."""
        if self._since is None:
            return False  # nothing observed yet: nothing can be judged
        seen = self._seen.get(owner) if owner is not None else None
        since = seen[1] if seen is not None else self._since
        return self._clock() - since >= self.ttl_s

    def live(self) -> set[str]:
        """Owners seen so far whose lease has not lapsed."""
        return {owner for owner in self._seen if not self.lapsed(owner)}

    def stale(self, older_than_s: float) -> list[str]:
        """Owners whose counter has not changed for ``older_than_s``: long dead, their heartbeats can go."""
        now = self._clock()
        return [o for o, (_, when, _changed) in self._seen.items() if now - when >= older_than_s]

    def forget(self, owners: list[str]) -> None:
        """Stop tracking ``owners`` (their heartbeats were removed)."""
        for owner in owners:
            self._seen.pop(owner, None)


class LeaseLapsed(Exception):
    """The executor's lease could not be confirmed: the attempt must not start."""


class WorkerFence:
    """The watchdog of a Ray worker: while armed, it ends the process before the lease of the
    executor that launched the running attempt can lapse, unless that executor keeps saying
    (through Ray) that its lease holds. One per worker process; a worker runs one attempt
    (or one group of attempts) at a time."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        exit_process: Callable[[int], None] = os._exit,
        watch: bool = True,
    ):
        """``watch=False``: no thread of its own calls ``check``; its caller does (on a clock of its own)."""
        self._clock = clock
        self._watching = watch
        self._exit = exit_process
        self._lock = threading.Lock()
        self._executor = None
        self._what = ""
        self._deadline = 0.0
        self._asked: tuple[object, float] | None = None  # (reply reference, when asked)
        self._last_ask = 0.0
        self._last_check = 0.0
        self._armings = 0  # tells an arming from the next, for an answer that comes back unlocked
        self._thread: threading.Thread | None = None
        # For the message of a worker that ends itself: what it heard, since it was armed.
        self._armed_at = 0.0
        self._asks = self._answers = 0
        self._last_answer: tuple[float, float] | None = None  # (remaining it said, seconds it took)

    def arm(self, executor, lease_until: float | None, executor_node: str | None, what: str) -> None:
        """Before the user's function runs. On the executor's node, ``lease_until`` (its monotonic
        clock, which this process shares) is the lease's end; elsewhere the executor is asked.
        Raises ``LeaseLapsed`` if the lease cannot be confirmed to hold past the margin."""
        import ray

        here = ray.get_runtime_context().get_node_id()
        deadline = float("-inf")
        if lease_until is not None and executor_node == here:
            deadline = lease_until - FENCE_MARGIN_S
        if deadline <= self._clock() + FENCE_REFRESH_S:
            # Another node, or the lease known at launch has (nearly) run out while the task waited
            # for a CPU: ask the executor how long its lease holds now.
            asked = self._clock()
            try:
                remaining = ray.get(executor.lease_remaining.remote(), timeout=10)
            except Exception as e:
                raise LeaseLapsed(f"the executor that claimed {what} could not confirm its lease: {e!r}") from e
            deadline = asked + remaining - FENCE_MARGIN_S
        if deadline <= self._clock():
            raise LeaseLapsed(f"the lease of the executor that claimed {what} has lapsed; it did not start here")
        with self._lock:
            self._executor, self._what, self._deadline = executor, what, deadline
            self._asked, self._last_ask = None, self._clock()
            self._last_check = self._last_ask
            self._armings += 1
            self._armed_at, self._asks, self._answers, self._last_answer = self._last_ask, 0, 0, None
            if deadline - self._last_ask <= FENCE_ASK_AHEAD_S:
                # The lease known at launch is near its end (the task waited for a worker): ask now.
                self._ask(executor, self._last_ask)
            if self._thread is None and self._watching:
                self._thread = threading.Thread(target=self._watch, daemon=True, name="raylane-fence")
                self._thread.start()

    def _ask(self, executor, now: float) -> None:
        self._asked = (executor.lease_remaining.remote(), now)
        self._asks += 1

    def disarm(self) -> None:
        """After the user's function returned: nothing of the attempt runs any more."""
        with self._lock:
            self._executor = None
            self._asked = None

    def _watch(self) -> None:
        while True:
            time.sleep(FENCE_CHECK_S)
            try:
                self.check()
            except Exception:  # the watchdog must outlive anything odd in one round
                log.exception("fence check failed")

    def check(self) -> None:
        """One round: renew the deadline from the executor's answer, ask again when due, and end
        the process if the deadline passed (unless, after the thread could not run, the executor
        says its lease held all the while)."""
        import ray

        with self._lock:
            executor = self._executor
            if executor is None:
                return
            now = self._clock()
            starved = now - self._last_check > FENCE_STARVED_S
            self._last_check = now
            if self._asked is not None:
                ref, asked_at = self._asked
                ready, _ = ray.wait([ref], timeout=0)
                if ready:
                    self._asked = None
                    try:
                        remaining = ray.get(ref)
                    except Exception:  # the executor died: its lease is not renewed
                        remaining = None
                    if remaining is not None:
                        self._renewed(asked_at, remaining, now)
            if now < self._deadline:
                # Near the deadline, twice as often: at most one question is out at a time anyway,
                # and a loaded executor is not asked more than twice a second by any worker.
                every = FENCE_REFRESH_S / 2 if self._deadline - now <= FENCE_ASK_AHEAD_S else FENCE_REFRESH_S
                if self._asked is None and now - self._last_ask >= every:
                    self._last_ask = now
                    self._ask(executor, now)
                return
            if not starved:
                self._end(now)
                return
            arming, known_until = self._armings, self._deadline + FENCE_MARGIN_S
            self._asks += 1
        # Unlocked: the task may end (and disarm) while the executor is asked.
        confirmed = self._held_through(executor, known_until)
        with self._lock:
            if self._executor is None or self._armings != arming:
                return
            now = self._clock()
            if confirmed is None:
                self._end(now)
                return
            self._renewed(*confirmed, now)
            self._last_check = now  # the wait for the answer was not starvation

    def _renewed(self, asked_at: float, remaining: float, now: float) -> None:
        # Measured from when we asked: the executor answered later, so this is safe.
        self._deadline = max(self._deadline, asked_at + remaining - FENCE_MARGIN_S)
        self._answers += 1
        self._last_answer = (remaining, now - asked_at)

    def _held_through(self, executor, known_until: float) -> tuple[float, float] | None:
        """(when asked, seconds remaining) if the executor's lease held without a break from
        ``known_until`` (when it was last known to hold, on this clock) to now; else None. Only
        durations cross: the executor says how long its lease has held, and it said so no later
        than the answer came back."""
        import ray

        asked = self._clock()
        try:
            remaining, held_for = ray.get(executor.lease_held.remote(), timeout=FENCE_RECHECK_S)
        except Exception:  # no answer in time, or the executor is gone
            return None
        if held_for < self._clock() - known_until or asked + remaining - FENCE_MARGIN_S <= self._clock():
            return None
        return asked, remaining

    def _end(self, now: float) -> None:
        heard = (
            f"the last said {self._last_answer[0]:.1f}s remained, {self._last_answer[1]:.1f}s after asked"
            if self._last_answer
            else "none said how long it holds"
        )
        sys.stderr.write(
            f"raylane: the lease of the executor running {self._what} is not renewed; "
            f"ending this worker so that the attempt cannot run beside a newer one "
            f"(armed {now - self._armed_at:.1f}s ago; {self._answers} of {self._asks} questions answered; "
            f"{heard})\n"
        )
        sys.stderr.flush()
        self._exit(FENCED_EXIT_CODE)


_fence: WorkerFence | None = None


def worker_fence() -> WorkerFence:
    """This worker process's fence."""
    global _fence
    if _fence is None:
        _fence = WorkerFence()
    return _fence
