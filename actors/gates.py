"""Admission of limited tasks: at most ``max_concurrency`` running and ``rate_limit`` starts per key.

A limited task is recorded SCHEDULED and belongs to the StatusKeeper that counts its key
(its id is routed there), so one keeper sees every write of every task of the key and
counts without asking anyone. When such a task is due it waits here; ``admit`` lets tasks
through while the key has room, highest priority first, then oldest, and the keeper sends
their messages. A task holds its place from admission until its attempt ends (any terminal
write of it accepted); its next attempt, if any, waits for its turn again.

A rate gives each start a slot (``"100/s"``: one every 10 ms). A task is admitted up to
``LEAD_S`` before its slot, and its message says to start no earlier than the slot (its
``not_before``): the executor waits for it. No task starts before its slot; a delay on the
way (more than ``LEAD_S``) can make a task start after it, never earlier.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from raylane.models import TaskRecord, rate_per_s

LEAD_S = 0.5  # how long before its rate slot a task is admitted (its message's way to an executor)


@dataclass
class _Key:
    waiting: list[tuple[int, int, str]] = field(default_factory=list)  # (-priority, arrival, id)
    active: set[str] = field(default_factory=set)
    max_running: int | None = None
    interval_s: float | None = None  # 1 / rate
    next_at: float = 0.0  # monotonic time of the next start slot the rate allows


class Gates:
    """Per-key admission of limited tasks (see the module's docstring). Not thread-safe: the
    keeper's event loop is its only user."""

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}
        self._waiting: dict[str, TaskRecord] = {}  # task id -> record, while it waits
        self._place: dict[str, tuple[str, int]] = {}  # task id -> (key, attempt), while it waits or holds a place
        self._arrival = itertools.count()

    def _key(self, rec: TaskRecord) -> _Key:
        k = self._keys.setdefault(rec.limit_key, _Key())
        # The newest task's limits are the key's: a changed limit applies from then on.
        k.max_running = rec.max_concurrency
        k.interval_s = 1.0 / rate_per_s(rec.rate_limit) if rec.rate_limit else None
        return k

    def wait(self, rec: TaskRecord) -> None:
        """``rec`` (SCHEDULED, due) waits for its turn. The same attempt already waiting or
        admitted is left as it is; an older attempt of the task gives up its place."""
        placed = self._place.get(rec.id)
        if placed is not None:
            if placed[1] >= rec.attempt:
                return
            self.ended(rec.id, placed[1])
        k = self._key(rec)
        self._waiting[rec.id] = rec
        self._place[rec.id] = (rec.limit_key, rec.attempt)
        heapq.heappush(k.waiting, (-rec.priority, next(self._arrival), rec.id))

    def holding(self, rec: TaskRecord) -> None:
        """``rec`` runs already (found RUNNING after a restart): it holds a place of its key."""
        if rec.id in self._place:
            return
        self._key(rec).active.add(rec.id)
        self._place[rec.id] = (rec.limit_key, rec.attempt)

    def is_waiting(self, task_id: str) -> bool:
        """Whether ``task_id`` waits for its turn (a claim of it now would break its limits)."""
        return task_id in self._waiting

    def ended(self, task_id: str, attempt: int) -> None:
        """Attempt ``attempt`` of the task is over (or was cancelled while waiting): the place it
        held, or waited for, is free. Nothing if a newer attempt holds it."""
        placed = self._place.get(task_id)
        if placed is None or placed[1] > attempt:
            return
        key = placed[0]
        del self._place[task_id]
        self._waiting.pop(task_id, None)  # its heap entry is skipped when it comes up
        k = self._keys.get(key)
        if k is not None:
            k.active.discard(task_id)
            if not k.active and not k.waiting:
                del self._keys[key]

    def admit(self, now: float) -> list[tuple[TaskRecord, float | None]]:
        """The waiting tasks whose turn has come at ``now`` (monotonic), each with the seconds from
        now to its start slot (None without a rate); each holds a place from now."""
        out: list[tuple[TaskRecord, float | None]] = []
        for key, k in list(self._keys.items()):
            if k.interval_s is not None:
                k.next_at = max(k.next_at, now)
            while k.waiting:
                if k.max_running is not None and len(k.active) >= k.max_running:
                    break
                if k.interval_s is not None and k.next_at > now + LEAD_S:
                    break
                _, _, task_id = heapq.heappop(k.waiting)
                rec = self._waiting.pop(task_id, None)
                if rec is None:
                    continue  # cancelled while it waited
                k.active.add(task_id)
                wait_s = None
                if k.interval_s is not None:
                    wait_s = k.next_at - now
                    k.next_at += k.interval_s
                out.append((rec, wait_s))
            if not k.active and not k.waiting:
                del self._keys[key]
        return out

    @property
    def waiting(self) -> int:
        """Tasks waiting for their turn, over all keys."""
        return len(self._waiting)

    def counts(self) -> dict[str, int]:
        """Tasks waiting and holding places, over all keys."""
        return {"waiting": len(self._waiting), "holding": sum(len(k.active) for k in self._keys.values())}
