"""``@raylane.task``: turn a function into a task that can be submitted by name."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from raylane.models import Resources, RetryPolicy, SubmitRequest, from_now, validated
from raylane.registry import TaskDefinition, jsonable, result_hint

if TYPE_CHECKING:
    from raylane.client import TaskHandle
    from raylane.workflows import Signature

P = ParamSpec("P")
R = TypeVar("R")

_defined: dict[str, TaskDefinition] = {}  # tasks defined in this process, published on init


def defined_here() -> list[TaskDefinition]:
    """Every task defined in this process so far."""
    return list(_defined.values())


def _checked(model: Any, **fields: Any) -> Any:
    """``model(**fields)``, with invalid fields reported as ``InvalidTaskInput``."""
    return validated(model, fields, "task options")


def _aware(t: datetime) -> datetime:
    """``t`` with a time zone (a naive time is taken as UTC)."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class TaskFunction(Generic[P, R]):
    """A registered task. Call it to run it here; ``submit`` to run it later on the cluster.

    It keeps the function's signature for type checkers: ``submit`` takes the function's
    parameters and gives a ``TaskHandle`` of its result type (of an ``async def`` function,
    what it returns once awaited)."""

    def __init__(self, definition: TaskDefinition, overrides: dict | None = None):
        self.definition = definition
        self._overrides = overrides or {}
        self.__doc__ = definition.fn.__doc__
        self.__name__ = getattr(definition.fn, "__name__", definition.name)
        self.__wrapped__ = definition.fn

    @property
    def name(self) -> str:
        """The registered name of the task."""
        return self.definition.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here, now (an ``async def`` one gives its coroutine)."""
        return self.definition.fn(*args, **kwargs)

    def options(
        self,
        *,
        timeout: float | None = None,
        queue: str | None = None,
        tags: list[str] | None = None,
        num_cpus: float | None = None,
        max_retries: int | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        expires: float | timedelta | datetime | None = None,
        soft_timeout: float | None = None,
        idempotency_key: str | None = None,
        priority: int | None = None,
        concurrency_key: str | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> TaskFunction[P, R]:
        """The same task with per-submit options:

        - ``timeout``, ``queue``, ``tags``, ``num_cpus``, ``max_retries``: override its defaults;
        - ``delay`` (seconds or a timedelta) or ``eta`` (a datetime; naive means UTC): it is
          SCHEDULED and starts no earlier than that (the later of the two if both are given);
        - ``expires`` (seconds from now, a timedelta or a datetime): not started by then, it
          ends CANCELLED with reason "expired";
        - ``soft_timeout`` (seconds): ``raylane.SoftTimeLimitExceeded`` is raised inside the
          task after that long, before its ``timeout`` kills it;
        - ``idempotency_key``: a second submit with the same key returns the first task's id
          (pending, running or finished), and nothing runs twice;
        - ``priority`` (0-9, default 0): within a queue, a waiting task of higher priority
          starts before any of lower priority (strictly);
        - ``max_concurrency``: at most this many of the tasks of ``concurrency_key`` (default:
          the task's name) RUNNING at once; the others wait SCHEDULED for their turn;
        - ``rate_limit`` (``"100/s"``, ``"30/m"``, ``"5/h"``): starts per ``concurrency_key``
          (default: the task's name), evenly spaced."""
        over = dict(self._overrides)
        if delay is not None:
            over["delay_s"] = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if eta is not None:
            over["eta"] = _aware(eta)
        if expires is not None:
            over["expires_at"] = _aware(expires) if isinstance(expires, datetime) else from_now(expires, "expires")
        if tags is not None:
            over["tags"] = list(tags)
        given = {
            "soft_timeout_s": soft_timeout,
            "idempotency_key": idempotency_key,
            "max_retries": max_retries,
            "timeout_s": timeout,
            "queue": queue,
            "priority": priority,
            "concurrency_key": concurrency_key,
            "max_concurrency": max_concurrency,
            "rate_limit": rate_limit,
        }
        over.update({k: v for k, v in given.items() if v is not None})
        if num_cpus is not None:
            over["resources"] = _checked(Resources, **dict(self.definition.resources.model_dump(), num_cpus=num_cpus))
        return TaskFunction(self.definition, over)

    def request(self, args: Iterable[Any] = (), kwargs: dict | None = None) -> SubmitRequest:
        """The submit request for these arguments (not yet validated against the signature)."""
        return _checked(
            SubmitRequest,
            name=self.name,
            args=[jsonable(a) for a in args],
            kwargs={k: jsonable(v) for k, v in (kwargs or {}).items()},
            **self._overrides,
        )

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments, a step of a workflow (``raylane.chain``,
        ``group``, ``chord``). After another step it takes that step's result as its first
        argument, before these; ``si`` takes none."""
        from raylane.workflows import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a step of a workflow that runs with exactly these arguments,
        taking no result from the step before it."""
        from raylane.workflows import Signature

        return Signature(self, args, kwargs, immutable=True)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueue one run; returns a ``TaskHandle`` at once."""
        from raylane.client import submit_requests

        [handle] = submit_requests([self.request(args, kwargs)], [self.definition])
        handle._returns = result_hint(self.definition.fn)
        return handle

    async def asubmit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """``submit`` for asyncio: the submit runs on a thread, so the event loop goes on meanwhile."""
        import asyncio

        return await asyncio.to_thread(self.submit, *args, **kwargs)

    def submit_many(self, items: Iterable[Any]) -> list[TaskHandle[R]]:
        """Enqueue many runs at once: each item is a tuple of positional arguments, a dict of
        keyword arguments, or a single argument. All are validated before any is written."""
        from raylane.client import submit_requests

        reqs = []
        for item in items:
            if isinstance(item, tuple):
                reqs.append(self.request(item))
            elif isinstance(item, dict):
                reqs.append(self.request((), item))
            else:
                reqs.append(self.request((item,)))
        handles = submit_requests(reqs, [self.definition])
        hint = result_hint(self.definition.fn)
        for h in handles:
            h._returns = hint
        return handles


class _TaskDecorator(Protocol):
    """What ``@raylane.task(...)`` with options gives: a decorator keeping the function's types."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> TaskFunction[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> TaskFunction[P, R]: ...


@overload
def task(fn: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_retries: int = 0,
    retry_on: Iterable[type | str] = (),
    retry_backoff: float = 0.5,
    retry_backoff_max: float = 30.0,
    queue: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    memory_mb: int | None = None,
    tags: Iterable[str] = (),
) -> _TaskDecorator: ...


def task(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_retries: int = 0,
    retry_on: Iterable[type | str] = (),
    retry_backoff: float = 0.5,
    retry_backoff_max: float = 30.0,
    queue: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    memory_mb: int | None = None,
    tags: Iterable[str] = (),
) -> Any:
    """Declare a task: ``@raylane.task(name="demo.add", timeout=5, max_retries=3)``.

    The function's arguments and result must be JSON; its signature and type hints
    are checked on every submit. ``name`` defaults to ``module.qualname``. A failed
    attempt is retried up to ``max_retries`` times (only for the exception types in
    ``retry_on``, if given, and their subclasses; a lost worker counts as ``WorkerLost``), after an
    exponential backoff from ``retry_backoff`` seconds, capped at ``retry_backoff_max``,
    with jitter (each delay lies between half and all of that). Timeouts and cancels are never retried.
    """

    def wrap(f: Callable) -> TaskFunction[Any, Any]:
        retry = RetryPolicy(
            max_retries=max_retries,
            backoff_s=retry_backoff,
            backoff_max_s=retry_backoff_max,
            retry_on=[t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}" for t in retry_on],
        )
        defn = TaskDefinition(
            name=name or f"{f.__module__}.{f.__qualname__}",
            fn=f,
            timeout_s=timeout,
            retry=retry,
            queue=queue,
            resources=Resources(num_cpus=num_cpus, num_gpus=num_gpus, memory_mb=memory_mb),
            tags=tuple(tags),
        )
        _defined[defn.name] = defn
        from raylane.client import published_if_connected

        published_if_connected(defn)
        return TaskFunction(defn)

    return wrap(fn) if fn is not None else wrap
