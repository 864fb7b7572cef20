"""The task state machine: states, their levels, and the version of every status write.

This module is the only place that decides a write's version. The store accepts a write
only when its version is higher than the stored one, so a level only moves forward and,
of two writes of the same level and attempt, exactly one wins.
"""

from __future__ import annotations

from enum import Enum

ATTEMPT_STRIDE = 10  # version = attempt * ATTEMPT_STRIDE + level


class TaskState(str, Enum):  # noqa: UP042 -- str() and f-strings keep "TaskState.X", as before
    """Where a task is in its life."""

    PENDING = "PENDING"  # accepted and queued
    SCHEDULED = "SCHEDULED"  # accepted, queued, waiting for its start time
    RUNNING = "RUNNING"  # an executor took it and its Ray task runs
    SUCCEEDED = "SUCCEEDED"  # returned a result
    FAILED = "FAILED"  # raised, or could not be run
    CANCELLED = "CANCELLED"  # cancelled before it finished
    TIMED_OUT = "TIMED_OUT"  # ran past its timeout and was killed

    @property
    def level(self) -> int:
        """1 queued, 2 running, 3 terminal."""
        return _LEVELS[self]

    @property
    def terminal(self) -> bool:
        """Whether no later write of this attempt can follow."""
        return self.level == 3


_LEVELS = {
    TaskState.PENDING: 1,
    TaskState.SCHEDULED: 1,
    TaskState.RUNNING: 2,
    TaskState.SUCCEEDED: 3,
    TaskState.FAILED: 3,
    TaskState.CANCELLED: 3,
    TaskState.TIMED_OUT: 3,
}

TERMINAL_STATES = frozenset(s for s in TaskState if s.terminal)


def version_of(state: TaskState, attempt: int) -> int:
    """The external version of a write that puts attempt ``attempt`` in ``state``."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    return attempt * ATTEMPT_STRIDE + state.level


def split_version(version: int) -> tuple[int, int]:
    """``(attempt, level)`` of a stored version."""
    return divmod(version, ATTEMPT_STRIDE)


def may_follow(stored_version: int, state: TaskState, attempt: int) -> bool:
    """Whether the store would accept a write of ``state`` for ``attempt`` over ``stored_version``.

    This mirrors the store's own rule for callers that already hold a record (cancel,
    queries); writers on the hot path never call it, they let the store decide.
    """
    return version_of(state, attempt) > stored_version
