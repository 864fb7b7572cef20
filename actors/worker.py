"""The code that runs in the Ray workers: one task (``invoke``) or a group of tasks of one name
run in turn (``invoke_group``), each behind its executor's lease (see ``fencing``).

Nothing here runs in the Executor's process; what comes back is a ``Reply`` per task.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import inspect
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import ray

from raylane import progress_reports, registry
from raylane.actors.channel import ChannelAddress, ChannelClosed, call_kept
from raylane.actors.fencing import LeaseLapsed, worker_fence
from raylane.actors.grouping import LEND_BELOW, MOVE_AFTER_S, StartCount, next_grant
from raylane.actors.interrupts import raised_by_code, wakeable
from raylane.errors import SoftTimeLimitExceeded
from raylane.limits import Limits, clip_text, encode_result, writable
from raylane.models import NOT_STARTED
from raylane.protocol import Reply

# A group's worker reports ended members at most this long after its previous report. Groups
# form only under load, where a task waits far longer than this for its run slot; each report is
# a message to the executor.
FLUSH_S = 0.01
HELD_REPORT_S = 0.05  # replies waiting behind a member running longer than this are sent on their own

# What a worker needs of its executor's lease: the executor's handle, the lease's end on the
# executor's monotonic clock, the executor's node id, and what runs (for messages).
Lease = tuple[Any, float, str, str]

INTERRUPTED = Reply.failure("TaskCancelledError", "interrupted: the task was cancelled")
# The reply of a Ray task started ahead of its claim when that claim was not accepted: the
# function did not run, and the executor decides what follows (see ``Runs.launch_gated``).
NOT_CLAIMED = Reply.failure("NotClaimed", "the claim was not accepted; the task did not start")
# The reply of an attempt whose claim was accepted but which its keeper had ended (cancelled,
# timed out, or superseded) by the time its worker came to start it: the function did not run.
ENDED_UNSTARTED = Reply.failure("TaskCancelledError", "the attempt ended before its worker could start it")
CLAIM_ANSWER = "claim_answer"  # the executor's channel method a gated worker asks
GROUP_ADVANCE = "group_advance"  # ... and the one a group's worker asks for leave (``group_advance``)
GROUP_SIGNAL = "group_signal"  # ... and the one it waits on for its group's cancels (``group_signal``)
ATTEMPT_OPEN = "attempt_open"  # ... and the keeper's
TASK_END = "task_end"  # the executor's channel method a gated worker tells its run's end
# A claim's answer as a worker waits for it: a keeper's answer to a claim call (its reference,
# alone in a list), the place of the worker's task in it, that keeper, and the keeper's socket
# if the executor reached it by one (see ``Keepers.claim_gated``). A claim sent over the keeper's
# socket has no reference (an empty list): its worker asks its executor, which passes it on.
Gate = tuple[list, int, Any, "ChannelAddress | None"]
# A worker that waited this long for its claim's answer heard it late (its executor was slow to
# pass it on, or frozen), and asks the task's keeper whether the attempt is still open.
GATE_LATE_S = 1.0


class MemberEnd(NamedTuple):
    """How a member of a group ended: it ran (with its reply), or it was never started."""

    task_id: str
    ran: bool
    reply: Reply | None = None


def _not_started(e: LeaseLapsed) -> Reply:
    """The reply of an attempt whose executor's lease could not be confirmed: it did not run, so
    it is tried again whatever its retry policy (see ``TaskRecord.retries_after``)."""
    return Reply.failure(NOT_STARTED, str(e))


def error_types_of(cls: type) -> tuple[str, ...]:
    """``cls`` and its bases as ``module:qualname``, most specific first, without ``object``: what a
    record keeps so that ``retry_on`` and ``TaskFailed.matches`` also match subclasses."""
    return tuple(f"{c.__module__}:{c.__qualname__}" for c in cls.__mro__ if c is not object)[:MAX_ERROR_TYPES]


MAX_ERROR_TYPES = 20  # a deeper hierarchy keeps its 20 most specific classes


_getter: ThreadPoolExecutor | None = None


def off_main_get(refs: Any) -> Any:
    """``ray.get`` from a thread other than the main one. A Ray task whose main thread blocks in
    ``ray.get`` lends its CPU back to Ray until it returns, and Ray starts another task on it,
    often in a new worker process: under load, a worker waiting for its claim's answer or a
    group's grant would crowd its node with workers. Waiting here holds the CPU (the wait is
    short), and a cancel's interrupt still reaches the main thread."""
    return _getter_pool().submit(ray.get, refs).result()


def _getter_pool() -> ThreadPoolExecutor:
    """The threads a worker waits in, off its main thread (see ``off_main_get``)."""
    global _getter
    if _getter is None:
        _getter = ThreadPoolExecutor(max_workers=2, thread_name_prefix="raylane-get")
    return _getter


def invoke(
    name: str,
    args: list,
    kwargs: dict,
    limits: Limits | None = None,
    lease: Lease | None = None,
    soft_timeout_s: float | None = None,
    task: tuple[Any, str, int] | None = None,
    gate: Gate | None = None,
    channel: ChannelAddress | None = None,
) -> Reply:
    """Run a registered task in this Ray worker; the reply holds the result or the error.
    A result that cannot be stored (not JSON, too deep, over ``limits.max_result_bytes``) fails
    the task here, where it is made, so it never travels to the executor or the store. With
    ``lease``, the function runs only while the claiming executor's lease holds (see ``fencing``);
    with ``soft_timeout_s``, ``SoftTimeLimitExceeded`` is raised in it after that long. With
    ``task`` (its executor, id and attempt), ``raylane.progress`` reports to that executor.
    With ``gate`` (see ``Keepers.claim_gated``), the Ray task was started while its claim was in
    flight: the function runs only once that claim is accepted, else ``NOT_CLAIMED`` comes back.
    ``channel``: the executor's socket, where a worker on its node asks for that answer, and
    tells the run's end the moment it is known (``TASK_END``)."""
    limits = limits or Limits()
    if gate is not None:
        refused = _pass_gate(gate, task, channel)
        if refused is not None:
            return refused
        reply = invoke(name, args, kwargs, limits, lease, soft_timeout_s, task)
        _tell_end(channel, task, reply)
        return reply
    if lease is not None:
        try:
            worker_fence().arm(*lease)
        except LeaseLapsed as e:
            return _not_started(e)
        try:
            return invoke(name, args, kwargs, limits, None, soft_timeout_s, task)
        finally:
            worker_fence().disarm()
    if task is not None:
        progress_reports.running(*task)
        try:
            return invoke(name, args, kwargs, limits, None, soft_timeout_s)
        finally:
            progress_reports.ended()
    began = time.time()
    mark = None
    try:
        defn = registry.load(name)
        args, kwargs = registry.typed_arguments(defn.fn, args, kwargs)
        with soft_time_limit(soft_timeout_s), wakeable() as mark:
            result = call(defn.fn, args, kwargs)
        returned = time.time()
        result = registry.jsonable(result)
        encode_result(result, limits)
        return Reply(True, result, began=began, returned=returned)
    except BaseException as e:
        # The task's own error is data for its record, ``SystemExit`` and a ``KeyboardInterrupt``
        # it raised itself included: either would otherwise end the worker's process or be taken
        # by Ray for a cancel. An interrupt that a cancel or timeout sent goes on up.
        if isinstance(e, KeyboardInterrupt) and not raised_by_code(mark):
            raise
        returned = time.time()
        try:
            message = str(e)
        except Exception as str_failed:  # an exception whose __str__ raises is still reported
            message = f"<{type(e).__qualname__} could not be shown: {str_failed!r}>"
        failure = Reply.failure(writable(type(e).__qualname__), clip_text(message), clip_text(traceback.format_exc()))
        error_types = tuple(writable(t) for t in error_types_of(type(e)))
        return failure._replace(began=began, returned=returned, error_types=error_types)


def invoke_call(call: tuple) -> Reply:
    """``invoke`` with the arguments in ``call``. Ray serializes each argument of a task on its own:
    a task of one argument is started in about half the time of one of nine (0.30 against 0.64 ms
    of the launching process), and the launch is on a lone task's path."""
    return invoke(*call)


remote_invoke = ray.remote(max_retries=0, retry_exceptions=False)(invoke_call)


def warm(executor: Any) -> int:
    """Hold this worker process until every warm-up task of ``executor`` has begun, each in a
    process of its own, and return its pid: a Ray task of it starts a worker, which imports this
    module, ahead of the first real task (``Executor`` warms its node's pool so)."""
    ray.get(executor.warm_begun.remote())
    return os.getpid()


remote_warm = ray.remote(num_cpus=0, max_retries=0)(warm)


def _pass_gate(gate: Gate, task: tuple[Any, str, int] | None, channel: ChannelAddress | None = None) -> Reply | None:
    """Wait for the answer to the claim of this worker's task: None if the function may start,
    else the reply that says why not.

    The answer comes through the executor, and so does a kill: a worker that starts after a
    cancel was written (it waited for a CPU while its executor was frozen or slow) could hear
    the answer before its executor gets to the kill. So the task's keeper, which wrote the
    cancel, is asked too, beside the answer (no wait added); and again after it if the answer
    came late (``GATE_LATE_S``), since a cancel may have been written in between. Both are
    asked by socket when their actor is on this worker's node (``channel`` is the executor's,
    the gate's last field the keeper's)."""
    answers, place, keeper, keeper_channel = gate
    asked = time.monotonic()
    opened = _attempt_open(keeper, keeper_channel, task)
    try:
        if answers:
            accepted = off_main_get(answers[0])[place].accepted
        else:  # the claim went by the keeper's channel: the executor passes its answer on
            accepted = (
                task is not None and _getter_pool().submit(_ask, task[0], channel, CLAIM_ANSWER, *task[1:]).result()
            )
    except Exception:  # the claim's call failed: whether it was written is not known here
        accepted = False
    if not accepted:
        return NOT_CLAIMED
    if opened is not None and time.monotonic() - asked >= GATE_LATE_S:
        opened = _attempt_open(keeper, keeper_channel, task)
    if opened is None or _is_open(opened):
        return None
    return ENDED_UNSTARTED


def _tell_end(channel: ChannelAddress | None, task: tuple[Any, str, int] | None, reply: Reply) -> None:
    """Tell the executor on this worker's node how its attempt ended, over its socket: it settles
    the task from this message, not from the Ray task's return, which reaches it a millisecond or
    more later. Should the socket fail, the return still carries the same reply."""
    if channel is None or task is None or not _local(channel):
        return
    with contextlib.suppress(Exception):
        call_kept(channel, TASK_END, [task[1], task[2], list(reply)])


_REPLY_TYPES = (
    (bool,),  # ok
    (object,),  # result: JSON already (encode_result)
    (str, type(None)),  # error_type
    (str, type(None)),  # error
    (str, type(None)),  # traceback
    (list,),  # error_types
    (float, int, type(None)),  # began
    (float, int, type(None)),  # returned
    (bool,),  # abnormal
)


def told_end(body: Any) -> tuple[str, int, Reply]:
    """What a worker's ``TASK_END`` over a channel names: its task id, attempt and reply, each
    field of the reply of its type (``TypeError`` or ``ValueError`` for anything else)."""
    task_id, attempt, fields = body
    task_id, attempt = asked_attempt([task_id, attempt])
    return task_id, attempt, _reply_of(fields)


def _reply_of(fields: Any) -> Reply:
    """A reply from the list of its fields as JSON carries them, each of its type."""
    if not isinstance(fields, list) or len(fields) != len(_REPLY_TYPES):
        raise TypeError("a reply has its nine fields")
    for value, types in zip(fields, _REPLY_TYPES, strict=True):
        if not isinstance(value, types):
            raise TypeError(f"a reply field of type {type(value).__name__} is not one of {types}")
    if not all(isinstance(t, str) for t in fields[5]):
        raise TypeError("error types are strings")
    reply = Reply(*fields)
    return reply._replace(error_types=tuple(reply.error_types))


def advance_body(key: str, ends: list[MemberEnd], upto: int) -> list:
    """A group's ``GROUP_ADVANCE`` request as JSON carries it (``asked_advance`` reads it back)."""
    return [key, [[e.task_id, e.ran, None if e.reply is None else list(e.reply)] for e in ends], upto]


def asked_advance(body: Any) -> tuple[str, list[MemberEnd], int]:
    """What a group's worker's ``GROUP_ADVANCE`` over a channel names: the group's key, the ends
    of its members not yet reported, and the index before which it asks leave to start members
    (``TypeError`` or ``ValueError`` for anything else)."""
    key, ends, upto = body
    if not isinstance(key, str) or not isinstance(ends, list) or type(upto) is not int:
        raise TypeError("an advance names a group, its members' ends and an index")
    out = []
    for task_id, ran, fields in ends:
        if not isinstance(task_id, str) or not isinstance(ran, bool):
            raise TypeError("a member's end names the member and whether it ran")
        out.append(MemberEnd(task_id, ran, None if fields is None else _reply_of(fields)))
    return key, out, upto


def asked_signal(body: Any) -> str:
    """What a group's worker's ``GROUP_SIGNAL`` over a channel names: its group's key
    (``TypeError`` for anything else)."""
    if not isinstance(body, str):
        raise TypeError("a group is named by its key")
    return body


def asked_attempt(body: Any) -> tuple[str, int]:
    """What a gated worker's question over a channel names: a task id and its attempt (``TypeError``
    for anything else)."""
    task_id, attempt = body
    if not isinstance(task_id, str) or not isinstance(attempt, int):
        raise TypeError("an attempt is named by its task id and number")
    return task_id, attempt


def _local(channel: ChannelAddress) -> bool:
    """Whether ``channel`` is an actor's socket on this worker's node."""
    global _node
    if _node is None:
        _node = ray.get_runtime_context().get_node_id()
    return channel.node == _node


_node: str | None = None


def _by_socket_or_ray(channel: ChannelAddress | None, method: str, body: Any, by_ray: Callable[[], Any]) -> Any:
    """The answer of ``method`` at the actor's ``channel`` when that is on this worker's node and
    answers (an actor restarted meanwhile has a new one), else ``by_ray()``, the same call made
    by Ray. Only for calls that may be made twice: one whose connection broke after it was sent
    may have been carried out."""
    if channel is not None and _local(channel):
        with contextlib.suppress(ChannelClosed):
            return call_kept(channel, method, body)
    return by_ray()


def _ask(actor: Any, channel: ChannelAddress | None, method: str, task_id: str, attempt: int) -> bool:
    """Ask ``actor``'s ``method`` (``CLAIM_ANSWER`` or ``ATTEMPT_OPEN``, named alike on its channel
    and as a Ray method) about this worker's attempt: by its socket when on this worker's node
    and the socket answers (an actor restarted meanwhile has a new one), else by a Ray call."""
    return bool(
        _by_socket_or_ray(
            channel, method, [task_id, attempt], lambda: ray.get(getattr(actor, method).remote(task_id, attempt))
        )
    )


def _attempt_open(
    keeper: Any, keeper_channel: ChannelAddress | None, task: tuple[Any, str, int] | None
) -> Future | None:
    """Ask the task's keeper, in the background, whether its attempt may still start."""
    if keeper is None or task is None:
        return None
    return _getter_pool().submit(_ask, keeper, keeper_channel, ATTEMPT_OPEN, task[1], task[2])


def _is_open(opened: Future) -> bool:
    try:
        return bool(opened.result())
    except Exception:  # the keeper cannot say: the claim's answer stands, and the fence still holds
        return True


def call(fn: Any, args: list, kwargs: dict) -> Any:
    """Run a task's function: an ``async def`` one to its end on an event loop of its own (a Ray
    task's worker runs no loop of its own), any other directly."""
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(*args, **kwargs))
    return fn(*args, **kwargs)


@contextlib.contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``SoftTimeLimitExceeded`` in this (the main) thread once ``seconds`` pass, as the task
    runs: it may catch it and clean up before the hard timeout kills it. A real-time timer
    (SIGALRM) interrupts the task wherever it is in Python code; off the main thread, where
    signals cannot be handled, there is no soft limit."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise SoftTimeLimitExceeded(f"the task ran past its soft time limit of {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _has_children() -> bool:
    """Whether this process has child processes (work of its task's that its CPU time does not
    count); True where that cannot be told (no ``/proc``), so that nothing is lent on a guess."""
    try:
        tasks = os.listdir("/proc/self/task")
        return any(Path(f"/proc/self/task/{t}/children").read_text().strip() for t in tasks)
    except OSError:
        return True


def _runnable(tid: int | None) -> bool:
    """Whether thread ``tid`` of this process is on a CPU or waiting for one (``R`` in ``/proc``):
    a member at work on a machine too busy to give it its share of a CPU, not one blocked in a
    call. False where that cannot be told."""
    if tid is None:
        return False
    try:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["R"]


class _MemberControl:
    """The executor's side of a group's worker, run by two threads beside the members.

    One waits for the executor's signal (the ids cancelled, or none when the group is over):
    from then on no further member starts, and the member running, if it is one of those
    cancelled, is interrupted as ``ray.cancel`` would (``KeyboardInterrupt`` in the main
    thread); the executor hears which member was running, so that it can kill the worker if
    that member ignores the interrupt. The other sends ended members' replies that wait
    unreported behind a long member (the main thread reports only between members), so a
    quick task's end is not held up by a slow sibling; and it tells the executor when a member
    with a timeout that has run ``HELD_REPORT_S`` began, so that its clock starts then. The
    main thread asks for the executor's grant before a member past the last one starts.

    Once a member has run ``move_after_s`` (the executor's ``grouping.move_after`` for its task
    name; ``MOVE_AFTER_S`` by default), the sender gives back the leave to start the members
    after it and tells the executor (``group_long``), which moves them to other Ray tasks. The
    leave is given back, and the message sent, under the lock that the main thread holds to start
    a member: so the main thread either started that member before (and the executor hears it
    did), or asks for new leave only once the executor has taken that message.

    With that message goes whether the member is blocked: whether this process used less than
    ``LEND_BELOW`` of a CPU while the sender watched it, has no child process, and the member's
    thread is not waiting for a CPU. The executor may then run the members moved on beside it
    on the CPU it does not use (see ``grouping``). Should the member use the CPU again (or wait
    for one), the sender says so once (``group_busy``), and the executor takes that CPU back."""

    def __init__(
        self,
        executor,
        group_key: str,
        limits: Limits,
        first_grant: int = 1,
        channel: ChannelAddress | None = None,
        move_after_s: float | None = None,
    ):
        self._move_after_s = MOVE_AFTER_S if move_after_s is None else move_after_s
        self._limits = limits
        self._channel = channel
        self._first_grant = first_grant
        self._lock = threading.Lock()
        self._current: str | None = None
        self._started = 0.0
        self._began = 0.0  # when the current member began, epoch seconds
        self._untold = False  # the current member has a timeout, and the executor has not heard it began
        self._pending: list[MemberEnd] = []  # ended, not yet reported
        self.cancelled: frozenset | None = None  # None until the signal resolves
        self._over = threading.Event()
        self._sent: list[ray.ObjectRef] = []
        self._granted = self._grant = 0  # members before _granted may start; the last grant's size
        self._spent = 0.0  # seconds the members so far took
        self._started_count = 0  # members started so far
        self._count = StartCount(group_key)  # ... as the executor may read it, should this worker die
        self._gave_back_for: str | None = None  # the long member whose followers were given back
        self._giving_back: ray.ObjectRef | None = None  # that message, until the executor has taken it
        # This process's CPU seconds and the monotonic time when the sender first saw the current
        # member run (with its id), and at its last turn: what tells a member blocked in a call
        # from one at work.
        self._first_look: tuple[str | None, float, float] = (None, 0.0, 0.0)
        self._last_look: tuple[float, float] = (0.0, 0.0)
        self._lending: str | None = None  # the member said to be blocked, until it ends or is said busy
        self._member_thread: int | None = None  # the thread running the members (its native id)
        self._executor, self._key = executor, group_key
        threading.Thread(target=self._watch, daemon=True, name="raylane-group-signal").start()
        self._sender = threading.Thread(target=self._send_held, daemon=True, name="raylane-group-report")
        self._sender.start()

    def _signal(self) -> list[str]:
        """The executor's ``group_signal`` for this group, once it comes: by its socket when on
        this worker's node, else, or should the socket fail, by Ray. A reference the executor
        made for each group, passed with its arguments, cost the executor a call to itself and
        the worker a tenth of its time in a burst of no-op tasks (taking in a borrowed reference)."""
        return list(
            _by_socket_or_ray(
                self._channel, GROUP_SIGNAL, self._key, lambda: ray.get(self._executor.group_signal.remote(self._key))
            )
        )

    def _watch(self) -> None:
        try:
            cancelled = frozenset(self._signal())
        except Exception:  # the executor is gone: start nothing more
            cancelled = frozenset()
        with self._lock:
            self.cancelled = cancelled
            running, started = self._current, self._started_count
            interrupted = running is not None and running in cancelled
            if interrupted:
                _thread.interrupt_main()
        if cancelled:
            self._executor.group_running.remote(self._key, running, interrupted, started)

    def _send_held(self) -> None:
        while not self._over.wait(HELD_REPORT_S):
            with self._lock:
                since_first, since_last = self._look()
                busy = self._busy_again(since_last)
                long_running = time.monotonic() - self._started >= HELD_REPORT_S
                held = self._pending if self._pending and long_running else []
                if held:
                    self._pending = []
                began = self._current if self._untold and long_running else None
                if began is not None:
                    self._untold = False
                self._give_back_if_long(since_first)
            if held:
                self._sent.append(self._executor.group_report.remote(self._key, held))
            if began is not None:
                self._sent.append(self._executor.group_began.remote(self._key, began, self._began))
            if busy is not None:
                self._sent.append(self._executor.group_busy.remote(self._key, busy))

    def _look(self) -> tuple[float | None, float | None]:
        """With the lock held, once a turn of the sender: the share of a CPU this process used
        since the sender first saw the current member run, and since its last turn; None for
        both when no member runs or this one was not seen before (it is watched from now)."""
        member, cpu, now = self._current, time.process_time(), time.monotonic()  # CPU of all its threads
        (first, first_cpu, first_at), (last_cpu, last_at) = self._first_look, self._last_look
        self._last_look = (cpu, now)
        if member is None or member != first:
            self._first_look = (member, cpu, now)
            return None, None
        return (cpu - first_cpu) / max(now - first_at, 1e-6), (cpu - last_cpu) / max(now - last_at, 1e-6)

    def _give_back_if_long(self, share: float | None) -> None:
        """With the lock held: if the member running has run ``move_after_s``, give back the leave
        to start any member after it, and tell the executor, once per member, whether the member
        is blocked (``share``: of a CPU used since the sender first saw it run)."""
        member = self._current
        if member is None or member == self._gave_back_for or time.monotonic() - self._started < self._move_after_s:
            return
        if share is None:  # first seen at this turn: the next one tells whether it is blocked
            return
        self._gave_back_for = member
        self._granted = min(self._granted, self._started_count)
        # A member whose thread waits for a CPU is at work however little of one the machine
        # gives it: lending its CPU would load a machine already short of them.
        blocked = (
            share is not None and share < LEND_BELOW and not _has_children() and not _runnable(self._member_thread)
        )
        self._lending = member if blocked else None
        self._giving_back = self._executor.group_long.remote(self._key, member, self._started_count, blocked)
        self._sent.append(self._giving_back)

    def _busy_again(self, share: float | None) -> str | None:
        """With the lock held: the member said blocked, if it still runs and used ``LEND_BELOW`` of
        a CPU or more since the sender's last turn (``share``), for the executor to take back the
        CPU it lent; once. A member said blocked that ended needs no word: the executor hears its end."""
        if self._lending != self._current:
            self._lending = None
        if self._lending is None or share is None:
            return None
        if share < LEND_BELOW and not _runnable(self._member_thread):
            return None
        member, self._lending = self._lending, None
        return member

    def take(self) -> list[MemberEnd]:
        """The ends not yet reported, which the caller now reports."""
        with self._lock:
            out, self._pending = self._pending, []
            return out

    def _ask_leave(self, position: int) -> bool:
        """Ask the executor for leave to start the next few members from ``position``, reporting
        the ends not yet reported with it. False if the executor grants none (the group is
        stopped, or the members were moved on) or cannot be asked."""
        self._grant = next_grant(self._grant, self._spent / position) if position else self._first_grant
        asked = position + self._grant
        try:
            with self._lock:
                giving_back, self._giving_back = self._giving_back, None
            if giving_back is not None:
                # The executor must have moved the members given back before it hears this request,
                # whatever order Ray would deliver the two calls in.
                off_main_get(giving_back)
            granted = min(asked, self._advance(self.take(), asked))  # fewer, once members were moved on
        except Exception:  # the executor is gone: its successor recovers the tasks from their records
            return False
        with self._lock:
            self._granted = granted
        return position < granted

    def _advance(self, ends: list[MemberEnd], upto: int) -> int:
        """The executor's ``group_advance``: by its socket when on this worker's node (a Ray
        actor call cost the worker about a fifth of its CPU in a burst of no-op tasks), else, or
        should the socket fail, by Ray. Asked twice, it takes the ends once and grants the same."""
        return int(
            _by_socket_or_ray(
                self._channel,
                GROUP_ADVANCE,
                advance_body(self._key, ends, upto),
                lambda: off_main_get(self._executor.group_advance.remote(self._key, ends, upto)),
            )
        )

    def add(self, end: MemberEnd) -> None:
        with self._lock:
            self._pending.append(end)

    def close(self) -> None:
        """Stop sending, and wait until the executor has taken what was sent: it must know every
        member that ran before it learns that the group is over."""
        self._over.set()
        self._sender.join()
        # The executor may be gone; its successor recovers the tasks from their records.
        with contextlib.suppress(Exception):
            off_main_get(self._sent)
        self._count.close()

    def run(
        self, position: int, task_id: str, attempt: int, name: str, args: list, kwargs: dict, timeout_s: float | None
    ) -> Reply | None:
        """The reply of the member at ``position``; None if the group was stopped before it started."""
        while True:
            # Under the leave held, checked and taken in one step (see ``_give_back_if_long``).
            with self._lock:
                if self.cancelled is not None:
                    return None
                if position < self._granted:
                    self._current, self._started, self._began = task_id, time.monotonic(), time.time()
                    self._member_thread = threading.get_native_id()
                    self._started_count += 1
                    self._count.starting(self._started_count)
                    self._untold = timeout_s is not None
                    break
            if not self._ask_leave(position):
                return None
        try:
            try:
                return invoke(name, args, kwargs, self._limits, task=(self._executor, task_id, attempt))
            finally:
                with self._lock:
                    self._spent += time.monotonic() - self._started
                    self._current, self._untold = None, False
        except KeyboardInterrupt:
            return INTERRUPTED


def invoke_group(
    items: list[tuple[str, int, str, list, dict, float | None]],
    executor,
    group_key: str,
    limits: Limits | None = None,
    lease: Lease | None = None,
    first_grant: int = 1,
    channel: ChannelAddress | None = None,
    move_after_s: float | None = None,
) -> Iterator[list[MemberEnd]]:
    """Run several tasks (id, attempt, name, args, kwargs, timeout) one after another in this Ray worker,
    yielding lists of ``MemberEnd`` as they end: a report at most every ``FLUSH_S`` (each report
    is a message to the executor, so many small tasks share one); replies held behind a member
    that runs longer than ``HELD_REPORT_S`` go to the executor's ``group_report`` instead. A
    member starts only under a grant of the executor's (``_MemberControl._ask_leave``, which
    carries the ends not yet reported; the first covers ``first_grant`` members), so that the
    executor knows which members may have run. Once the executor's signal (its ``group_signal``)
    says members were cancelled, no further member starts and the rest are reported not
    started, for the executor to start again without the cancelled ones. ``channel``: the
    executor's socket, where a worker on its node asks for leave and waits for the signal.
    ``move_after_s``: how long a member runs before the members after it move on (see
    ``_MemberControl``)."""
    if lease is not None:
        try:
            worker_fence().arm(*lease)
        except LeaseLapsed as e:
            yield [MemberEnd(task_id, True, _not_started(e)) for task_id, *_ in items]
            return
    control = _MemberControl(executor, group_key, limits or Limits(), first_grant, channel, move_after_s)
    reported = time.monotonic()
    try:
        for i, (task_id, attempt, name, args, kwargs, timeout_s) in enumerate(items):
            if time.monotonic() - reported >= FLUSH_S:
                ended = control.take()
                if ended:
                    yield ended
                reported = time.monotonic()
            try:
                reply = control.run(i, task_id, attempt, name, args, kwargs, timeout_s)
            except KeyboardInterrupt:  # an interrupt meant for this member that landed as it returned
                reply = INTERRUPTED
            if reply is None:
                for later in items[i:]:
                    control.add(MemberEnd(later[0], False))
                break
            control.add(MemberEnd(task_id, True, reply))
        ended = control.take()
        if ended:
            yield ended
    finally:
        control.close()
        if lease is not None:
            worker_fence().disarm()


def invoke_group_call(call: tuple) -> Iterator[list[MemberEnd]]:
    """``invoke_group`` with the arguments in ``call`` (one argument, as for ``invoke_call``)."""
    yield from invoke_group(*call)


remote_group = ray.remote(max_retries=0, retry_exceptions=False, num_returns="streaming")(invoke_group_call)
