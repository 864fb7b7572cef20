"""Grouping: under load, tasks of one name share a Ray task.

Each Ray task costs Ray a few milliseconds whatever it runs; a group of small tasks pays it
once. Every member keeps its own record, its own claim, and its own cancel.

Tasks with a timeout are grouped only with others that have one, and each member's clock
starts when that member starts, not when the group does: the worker tells the member's
StatusKeeper when a member has begun (once it has run ``HELD_REPORT_S``; a member that ends
sooner is far from its timeout), and the keeper times it out from then. Until then the
keeper holds a later deadline, the claim plus the longest the member may wait behind its
siblings (``wait_allowance``), so a frozen worker still has its members timed out. A member
past its timeout is stopped as a cancelled one is: interrupted, then killed with its worker;
members done keep their results, members not yet started run again in another Ray task.

A member starts only once its executor knows it may have: the worker asks for leave to start
the next few members (a grant), and the executor notes it before it answers. So when a group's
worker dies, the executor knows which members may have run: those granted whose end it has not
heard (fewer, by the worker's count, below). Each of them ends as a lone task whose worker died
would (a retry is a new attempt); the rest never started and run again under the same attempt.
Grants are sized to about ``GRANT_SPAN_S`` of the members' work, so a group of quick tasks asks
a few times, not once a member, and a worker that dies takes at most one grant of unknown
members with it. The first member waits for a grant too: a group's worker may start long after
its launch (an executor frozen meanwhile), and a grant is refused once a cancel of a member has
reached the executor.
The first grant's size comes from the executor (``first_grant``): from how long members of that
task name took in its earlier groups, or one member for a name it has not seen run. Every ask
is a message each way, and most groups run tasks of a name that ran before.

A grant of several members would make a dying member take its siblings granted behind it along:
each would fail (or be retried) though it never ran. So a worker also keeps a count of the
members it started in a small file of its node's (``StartCount``): written before each member
starts, and locked for the worker's life. Once the worker is dead its lock is gone, and an
executor on the same node reads how many started (``started_when_dead``); a lock still held
(the process lives on, or left a child holding the file) or no file (another node) leaves the
grant as the bound. The count costs one write per member.

A member that has run long (``move_after``: 100 times its name's average, between 0.05 and
0.2 s) no longer holds back its siblings: its worker gives back
the leave to start the members after it, and those move to other Ray tasks (as groups, so a
timed one's clock still starts when it begins); the worker then gets no leave for them. One
task that hangs until its timeout, or an untimed one that takes minutes, would otherwise keep
up to ``GROUP_MAX`` quick ones waiting.

A long member blocked in a call (a sleep, a socket read, a lock) lends its CPU to the members
moved on behind it: its worker says whether its process used less than ``LEND_BELOW`` of a CPU
while it ran (and its thread does not wait for a CPU, as one at work on a busy machine does),
and the executor then starts the first group of them as a Ray task that asks Ray for no CPU,
on its own node, beside the blocked one. Otherwise they would wait for a CPU that
nothing uses: a few tasks stalled until their timeout held every CPU of a node, and the quick
tasks behind them waited that long. The loan ends with the member that lent it: once it ends,
or its worker says it uses the CPU again, the borrowing group starts no member past its grant,
and the rest move on to Ray tasks that ask for a CPU again. Every loan has a blocked lender, so
the groups at work on a node never outnumber its CPUs; what loans cost is a worker process each
(Ray starts one for a Ray task that asks for no CPU when none is idle, a second or so of a CPU).
An executor lends at most ``LOANS_PER_CPU`` CPUs per CPU of its node. A loan stands while its
lender blocks: once the group on it is done, or if no sibling waited behind the lender, the CPU
goes on to the oldest group whose worker has not asked for leave yet (its Ray task waits for a
CPU, likely one a blocked member holds); its members move to a group on the loan, and the Ray
task they leave gets leave for none. With no such group, the next group launched takes it.
Loans that served only the blocked member's own siblings left the groups Ray held for a CPU
waiting for the first timeout: in the main job, a third of its tasks in about one run in three.
A member whose process has a child process lends nothing: the child may
be the one at work.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import tempfile
import time
import uuid
from typing import Any

from raylane.models import TaskMessage, TaskRecord

GROUP_MAX = 64  # tasks in one Ray task at most
GRANT_MAX = 32  # members one grant covers at most
GRANT_SPAN_S = 0.02  # the members' work one grant aims to cover
# A member that has run this long has the siblings behind it moved on (at most; a name whose
# members are quick moves them sooner, see ``move_after``). Stalled members next to one another
# in a group (tasks submitted together) start this far apart, one after the other; a move costs
# a Ray task's start, a few milliseconds, small beside this. The main job, whose five stalled
# tasks end it, ran at a median of 545 tasks/s with 0.2 s and 489 with 0.5 s (six runs each,
# alternating).
MOVE_AFTER_S = 0.2
# ... and at least this long: one turn of its worker's sender (``worker.HELD_REPORT_S``), over
# which it sees whether the member is blocked.
MOVE_AFTER_MIN_S = 0.05
# A member that has run this many times the average of its name's members is past the rest.
MOVE_AFTER_MEANS = 100
# A long member whose process used less than this share of a CPU while it ran is blocked, and
# lends its CPU. A member at work uses all of one; a blocked one's process, about a hundredth
# (Ray's threads and the worker's own).
LEND_BELOW = 0.25
# Loans an executor makes at most, per CPU of its node: each costs a worker process, and with
# one, a node runs at most twice its CPUs' worth of groups, as many processes as an executor
# warms (``executor.WARM_PER_CPU``). Four made no difference to the main job beside one once
# loans pass on to the groups that wait for a CPU: Ray started 2-7 workers in its runs either
# way.
LOANS_PER_CPU = 1


def groupable(msg: TaskMessage) -> bool:
    """Whether a task may share a Ray task with others of its name: at most one CPU, nothing
    else, and no soft timeout (its timer is the worker's, one per Ray task)."""
    r = msg.resources
    return msg.soft_timeout_s is None and 0 < r.num_cpus <= 1 and r.num_gpus == 0 and r.memory_mb is None


# How long a member past its timeout may take to stop, at most: the interrupt, then the kill of
# its worker, each after the executor's grace (runs.KILL_GRACE_S), and a margin for the messages.
STOP_ALLOWANCE_S = 3.0


def wait_allowance(timeouts: list[float | None], position: int) -> float:
    """How long the member at ``position`` of a group whose members have ``timeouts`` may wait
    before it starts: every other member may run to its timeout and take ``STOP_ALLOWANCE_S`` to
    stop. (Not only those before it: a group started again after a kill runs them in another
    order.) Untimed groups never wait for a clock."""
    timed = [t for t in timeouts if t is not None]
    if len(timed) < len(timeouts):
        return 0.0
    return sum(t + STOP_ALLOWANCE_S for i, t in enumerate(timed) if i != position)


def next_grant(last: int, mean_s: float) -> int:
    """How many more members a group's worker asks leave to start, its last grant having been
    ``last`` (0 before the first) and its members having taken ``mean_s`` each: about
    ``GRANT_SPAN_S`` of work, at least one, at most twice the last grant (a group that slows
    down shrinks its grants at once, one that speeds up grows them step by step) and
    ``GRANT_MAX``."""
    fit = int(GRANT_SPAN_S / mean_s) if mean_s > 0 else GRANT_MAX
    return max(1, min(GRANT_MAX, 2 * last, fit))


def move_after(mean_s: float | None) -> float:
    """How long a member runs before the siblings behind it move on, when members of its task
    name took ``mean_s`` on average (None: none has run yet): ``MOVE_AFTER_MEANS`` times that,
    between ``MOVE_AFTER_MIN_S`` and ``MOVE_AFTER_S``. Stalled members next to one another start
    that far apart; a member of a quick name that ran 50 ms is far past its siblings already."""
    if mean_s is None:
        return MOVE_AFTER_S
    return min(MOVE_AFTER_S, max(MOVE_AFTER_MIN_S, MOVE_AFTER_MEANS * mean_s))


def first_grant(mean_s: float | None) -> int:
    """How many members a group's worker asks leave to start first, when members of its task
    name took ``mean_s`` each in earlier groups (None: none ran yet, so one member)."""
    return 1 if mean_s is None else next_grant(GRANT_MAX, mean_s)


class MemberTimes:
    """How long members of each task name took, a moving average per name, as an executor heard
    from its groups' workers: what sizes a group's first grant. At most ``names`` names are kept,
    the ones heard of last."""

    WEIGHT = 0.2  # of each new run in the average

    def __init__(self, names: int = 10_000):
        self._mean: dict[str, float] = {}
        self._names = names

    def add(self, name: str, seconds: float) -> None:
        """A member of task ``name`` ran ``seconds``."""
        last = self._mean.pop(name, None)
        self._mean[name] = seconds if last is None else last + self.WEIGHT * (seconds - last)
        if len(self._mean) > self._names:
            self._mean.pop(next(iter(self._mean)))

    def mean(self, name: str) -> float | None:
        """The average run of a member of ``name``; None if none was heard of."""
        return self._mean.get(name)


def group_size(n: int, cpus: int) -> int:
    """Members per group when ``n`` tasks of one kind arrive: as many Ray tasks as the cluster
    has CPUs, each with a share of the tasks (at least two, at most ``GROUP_MAX``)."""
    return min(GROUP_MAX, max(2, -(-n // max(1, cpus))))


def chunks(items: list, size: int) -> list[list]:
    """``items`` in consecutive pieces of at most ``size``."""
    return [items[k : k + size] for k in range(0, len(items), size)]


def plan(msgs: list[TaskMessage], cpus: int) -> list[list[int]]:
    """How to run ``msgs``, in units that each hold one run slot: groups of tasks of one name
    that may share a Ray task (when several arrive at once), and tasks alone; in arrival order
    of each unit's first task. Every index appears in exactly one unit."""
    buckets: dict[tuple, list[int]] = {}
    units: list[list[int]] = []
    for i, m in enumerate(msgs):
        if groupable(m):
            buckets.setdefault((m.name, m.resources, m.timeout_s is None), []).append(i)
        else:
            units.append([i])
    for idx in buckets.values():
        for chunk in chunks(idx, group_size(len(idx), cpus)):
            units.extend([chunk] if len(chunk) > 1 else [[i] for i in chunk])
    return sorted(units)


@functools.cache
def _count_dir() -> str:
    """Where this node's counts of members started go: in memory (``/dev/shm``) where the node
    has it. Looked up once a process: a worker makes a count for every group it runs."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _count_path(key: str) -> str:
    """Where the worker of the group ``key`` keeps its count of members started."""
    return os.path.join(_count_dir(), f"raylane-started-{key}")


class StartCount:
    """A group's worker's count of the members it started, kept in a file locked while the
    worker lives, for its executor to read should the worker die (``started_when_dead``).
    Without the file (it could not be made) it counts nothing, and the grant stays the bound."""

    def __init__(self, key: str):
        self._path = _count_path(key)
        self._fd: int | None = None
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: no one else holds it
        except OSError:
            os.close(fd)
            return
        self._fd = fd

    def starting(self, count: int) -> None:
        """Member ``count - 1`` is about to start: ``count`` members started."""
        if self._fd is None:
            return
        try:
            os.pwrite(self._fd, count.to_bytes(4, "little"), 0)
        except OSError:
            # A count left short would say a member never started that did: the file goes, and
            # the grant stays the bound. Should it not go, this member does not start.
            os.unlink(self._path)
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """The group ended in order: the executor heard every member's end, and needs no count."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            os.close(self._fd)
            self._fd = None


# A count whose worker is gone is read by its executor at once; one older than this, unlocked, was
# left by an executor that ended before it could read it.
COUNT_KEPT_S = 60.0


def sweep_counts(older_than_s: float = COUNT_KEPT_S) -> int:
    """Remove this node's counts (``StartCount``) that no live process holds, older than
    ``older_than_s``: those of groups whose executor ended with their worker. How many went."""
    where = _count_dir()
    gone = 0
    try:
        names = [n for n in os.listdir(where) if n.startswith("raylane-started-")]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(where, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < older_than_s:
                continue
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # raises while a worker holds it
            os.unlink(path)
            gone += 1
        except OSError:
            continue
        finally:
            os.close(fd)
    return gone


async def started_when_dead(key: str, tries: int = 10, every_s: float = 0.02) -> int | None:
    """How many members the dead worker of the group ``key`` started, by its ``StartCount``;
    the file is removed. None if there is no count on this node, or its lock is still held
    after ``tries`` (a process holding it still lives: it could start one more)."""
    path = _count_path(key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        for i in range(tries):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # the process may still be on its way out
                if i == tries - 1:
                    return None
                await asyncio.sleep(every_s)
        return int.from_bytes(os.pread(fd, 4, 0).ljust(4, b"\0"), "little")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


class Group:
    """A Ray task running several claimed tasks in turn, as its executor tracks it."""

    def __init__(self, members: list[tuple[TaskMessage, TaskRecord]]):
        self.members = members
        # What its worker names it by when it calls the executor. Not a member's id: a task id
        # recurs (a retry's new attempt may be grouped while the group of its last attempt still
        # runs a sibling, and members moved on start again in a group of their own), and a call
        # meant for one group must never reach another.
        self.key = uuid.uuid4().hex
        self.index = {msg.id: i for i, (msg, _) in enumerate(members)}
        self.reported: set[str] = set()  # members whose outcome has arrived
        self.ran: set[str] = set()  # ... of those, the ones that ran
        self.cancelled: set[str] = set()
        self.signal = asyncio.Event()
        self.gen: Any = None  # the Ray task's stream of reports (an ObjectRefGenerator)
        self.running: str | None = None  # the member its worker ran when the signal came
        self.interrupted: set[str] = set()
        self.granted = 0  # members before this index may have started
        self.started: int | None = None  # members started, as the worker said once signalled
        # Members from this index on were moved to another Ray task (behind a member that runs
        # long, see ``Runs.group_long``): this group's worker never gets leave to start them.
        self.kept = len(members)
        self.moved: set[str] = set()
        self.lending: str | None = None  # the member blocked in a call whose CPU others borrow
        self.borrowers: list[Group] = []  # the groups that run on that CPU
        self.on_loan = False  # this group runs on a CPU lent by a blocked member, not one of its own
        self.lender: Group | None = None  # ... that member's group

    def attempt_of(self, task_id: str) -> int:
        """The attempt of member ``task_id`` this group runs."""
        return self.members[self.index[task_id]][0].attempt

    def take_waiting(self, started: int) -> list[tuple[TaskMessage, TaskRecord]]:
        """Take the members from index ``started`` on (the worker started those before it, and
        gave back its leave for the rest) that are neither over nor cancelled out of this group:
        from now on its worker never starts them."""
        self.granted = min(self.granted, started)
        waiting = [
            (msg, running)
            for msg, running in self.members[self.granted : self.kept]
            if msg.id not in self.reported and msg.id not in self.cancelled
        ]
        self.kept = self.granted
        self.moved.update(msg.id for msg, _ in waiting)
        return waiting

    def note_started(self, started: int | None) -> None:
        """The worker started ``started`` members at most (None: it is not known), and starts no more."""
        if started is not None:
            self.started = started if self.started is None else min(self.started, started)

    def possibly_started(self) -> list[str]:
        """The members that may have run and whose end has not been heard: those the worker had
        leave to start, or, once it said how many it had started when signalled (it starts no
        more after the signal), those. When its worker dies, these are the members whose fate
        is unknown: a member past its timeout is killed with its worker, and its siblings
        granted behind it, which never started, run again."""
        upto = self.granted if self.started is None else min(self.granted, self.started)
        return [m.id for m, _ in self.members[:upto] if m.id not in self.reported]
