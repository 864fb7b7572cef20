"""raylane's exception tree; every error a user or an actor sees derives from ``RaylaneError``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from raylane.text import printable


def _rebuild(cls: type, message: str, attrs: dict) -> RaylaneError:
    err: RaylaneError = Exception.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(attrs)
    return err


def error_named(name: Any, message: Any, attrs: Any) -> RaylaneError:
    """The raylane error of class ``name`` with ``message`` and ``attrs``, as it came in JSON from
    an actor: only a class of this module is made, by name; any other name gives a ``RaylaneError``."""
    kind = globals().get(name) if isinstance(name, str) else None
    if not (isinstance(kind, type) and issubclass(kind, RaylaneError) and kind.__module__ == __name__):
        kind = RaylaneError
    return _rebuild(kind, str(message), attrs if isinstance(attrs, dict) else {})


class RaylaneError(Exception):
    """Base class of every raylane error."""

    def __reduce__(self):
        # Subclasses take their ids as constructor arguments; rebuild from message and
        # attributes so an error crosses Ray process boundaries intact.
        return _rebuild, (type(self), str(self), dict(self.__dict__))


class ConfigError(RaylaneError):
    """A setting is unknown or invalid."""


class StackError(RaylaneError):
    """A local service could not be fetched, started or stopped."""

    def __init__(self, message: str, service: str | None = None, log_file: str | None = None):
        if log_file:
            message = f"{message} (see {log_file})"
        super().__init__(message)
        self.service = service
        self.log_file = log_file


class NotInitialized(RaylaneError):
    """The SDK was used before ``raylane.init()``."""


class ServiceUnavailable(RaylaneError):
    """Kafka, OpenSearch or Ray could not be reached."""


class QueueUnavailable(ServiceUnavailable):
    """Kafka refused or timed out a produce; the task was not enqueued."""


class StoreUnavailable(ServiceUnavailable):
    """OpenSearch refused or timed out a request."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status OpenSearch answered, if it answered


class InvalidSignature(RaylaneError):
    """Something read back from Kafka or OpenSearch is not signed with the cluster's secret; it was not used."""


class InvalidTaskInput(RaylaneError):
    """A submit was rejected before anything was written: bad name, arguments or size."""


class UnknownTaskName(InvalidTaskInput):
    """No task of that name is registered."""

    def __init__(self, name: str, known: list[str] | None = None):
        hint = f"; registered tasks: {', '.join(sorted(known))}" if known else ""
        super().__init__(
            f"no task named {name!r} is registered{hint}. Define it with @raylane.task(name=...) "
            f"and call raylane.init() in the process that defines it."
        )
        self.name = name


class PayloadTooLarge(InvalidTaskInput):
    """The task's JSON arguments exceed the configured payload limit."""

    def __init__(self, size: int, limit: int, at_least: bool = False):
        super().__init__(
            f"task arguments are {'at least ' if at_least else ''}{size} bytes of JSON, "
            f"over the limit of {limit} bytes "
            f"(RAYLANE_MAX_PAYLOAD_BYTES); pass a reference (path, URL, id) instead of the data"
        )
        self.size = size
        self.limit = limit


class ArgumentsTooDeep(InvalidTaskInput):
    """The task's arguments nest lists and dicts deeper than the limit."""

    def __init__(self, where: str, limit: int):
        super().__init__(
            f"{where} nests lists and dicts more than {limit} levels deep (RAYLANE_MAX_DEPTH); "
            f"flatten it or pass a reference instead"
        )
        self.where = where
        self.limit = limit


class RecordRefused(InvalidTaskInput):
    """The status store refused a task's record for its content (not for an outage)."""


class ResultTooLarge(RaylaneError):
    """A task's result is over the result size limit; the task fails with this error type."""

    def __init__(self, size: int, limit: int, at_least: bool = False):
        super().__init__(
            f"the result is {'at least ' if at_least else ''}{size} bytes of JSON, over the limit of {limit} bytes "
            f"(RAYLANE_MAX_RESULT_BYTES); store large outputs elsewhere and return a reference"
        )
        self.size = size
        self.limit = limit


class ResultNotSerializable(RaylaneError):
    """A task's result is not JSON, or nests too deep to store; the task fails with this error type."""


class TaskNotFound(RaylaneError):
    """No task has this id."""

    def __init__(self, task_id: str):
        super().__init__(f"no task with id {task_id!r}")
        self.task_id = task_id


class ScheduleNotFound(RaylaneError):
    """No schedule has this id (for the caller's tenant)."""

    def __init__(self, schedule_id: str):
        super().__init__(f"no schedule with id {schedule_id!r}")
        self.schedule_id = schedule_id


class TaskAlreadyFinished(RaylaneError):
    """A cancel came after the task had already reached a terminal state."""

    def __init__(self, task_id: str, state: str):
        super().__init__(f"task {task_id} already finished as {state}; nothing to cancel")
        self.task_id = task_id
        self.state = state


class TaskNotFinished(RaylaneError):
    """A retry of a task that has not finished: only a finished task starts a new attempt."""

    def __init__(self, task_id: str, state: str):
        super().__init__(f"task {task_id} is {state}, not finished; only a finished task can be retried")
        self.task_id = task_id
        self.state = state


class TaskFailed(RaylaneError):
    """The task raised; carries the exception type, message and traceback, and the exception's
    class and bases (``error_types``, each ``module:qualname``) to match it against."""

    def __init__(
        self,
        task_id: str,
        error_type: str | None,
        message: str | None,
        traceback: str | None,
        error_types: Sequence[str] | None = None,
    ):
        # Python prints an uncaught exception's message to a terminal: it shows what the task said,
        # and the attributes keep it as said.
        super().__init__(f"task {task_id} failed: {printable(str(error_type))}: {printable(str(message))}")
        self.task_id = task_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        self.error_types = list(error_types or ())

    def matches(self, *classes: type[BaseException]) -> bool:
        """Whether the task's exception was one of ``classes`` or of a subclass of one:
        ``err.matches(ValueError)`` is true for a ``UnicodeDecodeError``."""
        if not self.error_types:  # a record from before the classes were kept: its own name only
            return any(c.__qualname__ == self.error_type for c in classes)
        return any(f"{c.__module__}:{c.__qualname__}" in self.error_types for c in classes)

    def as_original(self) -> BaseException | None:
        """The task's exception made again in this process, with its message (and this error as its
        cause), if its class is one this process has already imported and can be made from a
        message; else None. No module is imported for it: a record's class names come from the
        store, and naming a module must not run its code."""
        for full in self.error_types[:1]:
            module, _, qualname = full.partition(":")
            found: Any = sys.modules.get(module)
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if isinstance(found, type) and issubclass(found, BaseException):
                try:
                    original = found(self.message)
                except Exception:  # a class that wants other arguments
                    return None
                original.__cause__ = self
                return original
        return None


class TaskCancelled(RaylaneError):
    """The task was cancelled before it produced a result."""

    def __init__(self, task_id: str):
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


class TaskTimedOut(RaylaneError):
    """The task ran past its timeout and was killed."""

    def __init__(self, task_id: str, message: str | None = None):
        super().__init__(message or f"task {task_id} timed out")
        self.task_id = task_id


class WaitTimeout(RaylaneError, TimeoutError):
    """A wait for a task's result ended before the task did."""

    def __init__(self, task_id: str, timeout: float, state: str, message: str | None = None):
        super().__init__(message or f"task {task_id} still {state} after waiting {timeout:g}s")
        self.task_id = task_id
        self.state = state


class SoftTimeLimitExceeded(RaylaneError):
    """Raised inside a task that runs past its ``soft_timeout``: it may catch it and clean up
    before its hard ``timeout`` kills it. Left uncaught, the task ends FAILED with this error type."""
