"""The Python SDK: connect, submit, look up, search, count, wait for and cancel tasks.

``init()`` attaches to the configured clusters, or starts the local stack when none are
configured, and deploys raylane's actors if they are not running yet. Every call then
goes to the RequestHandler actor, its errors raised here as raylane's own; a wait for one
task goes to the StatusKeeper that owns it, which answers as its end is written. A driver on
the node of those actors submits single tasks and waits over their sockets
(``raylane.actors.channel``): a Ray actor call costs this machine about 2 ms each way, a
socket's a tenth of that, and both are on a task's round trip.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from raylane.compat import enable_ray_token_auth, ray_dashboard_url
from raylane.config import Endpoints, Settings
from raylane.errors import (
    InvalidTaskInput,
    NotInitialized,
    ServiceUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskTimedOut,
    WaitTimeout,
)
from raylane.models import SubmitRequest, TaskRecord, duration_s
from raylane.protocol import ActorConfig, find_request_handler, keeper_handles, keeper_of, unwrap, unwrap_json
from raylane.registry import TaskDefinition, jsonable, typed_result
from raylane.retrying import backoff_s
from raylane.schedules import Schedule
from raylane.sockets import SUBMIT, WAIT, BlockingClient, ChannelClosed, ChannelUnreachable, NodeChannels, wait_answer
from raylane.states import TaskState

log = logging.getLogger("raylane")

_IDEMPOTENT = {
    "get",
    "wait",
    "wait_many",
    "search",
    "counts",
    "dead_letters",
    "refresh",
    "set_paused",
    "task_names",
    "keep_definitions",
}
_WAIT_SLICE_S = 30.0  # one server-side wait at most; longer waits are several
_WAIT_IDS = 20_000  # task ids in one bulk wait call
_TASK_ID = re.compile(r"^[0-9a-f]{32}$")
_KEEPERS_AGAIN_S = 10.0  # how long a connection that could not find the keepers waits before looking again
_SOCKET_SLACK_S = 60.0  # how long past its own time a call by socket waits for its answer
# How long the driver waits for an actor to say where its socket is: a busy actor's answer is not
# waited out (its calls go by Ray meanwhile, and the socket is asked for again later).
_ASK_SOCKET_S = 5.0
_UNSENT = object()  # a call by socket that was not made
_lock = threading.RLock()
_conn: _Connection | None = None


def _said(answer: Any, ask: tuple) -> TaskRecord | tuple:
    """What a keeper's answer to a wait for one task says: the task's final record, or the
    RequestHandler call that answers instead: ``ask`` (the wait) where the keeper cannot tell,
    a ``get`` of the current record where the task did not finish in time."""
    if answer.records:
        return answer.records[0].unpack()
    if not answer.unread and not answer.unknown:
        return ("get", ask[1])
    return ask


class _Connection:
    def __init__(self, settings: Settings, handler, owns_ray: bool):
        self.settings = settings
        self.handler = handler
        self.owns_ray = owns_ray
        self.published: set[int] = set()
        self._keepers: list = []  # the StatusKeepers' handles, by index, once found
        self._keepers_sought = -_KEEPERS_AGAIN_S  # when they were last looked for (monotonic)
        self._channels = NodeChannels(_node_id(), _KEEPERS_AGAIN_S)
        self.by_socket = 0  # calls answered over a socket

    def publish(self, *definitions: TaskDefinition) -> None:
        """Register definitions in Ray and keep a copy of each in the store (one call for all), so
        queued tasks can still run after the Ray cluster restarts."""
        from raylane import registry

        kept = [(defn.name, *registry.publish(defn)) for defn in definitions]
        self.call("keep_definitions", kept)
        self.published.update(id(defn) for defn in definitions)

    def wait(self, task_id: str, timeout_s: float) -> TaskRecord:
        """``task_id``'s record once it is terminal, or its current record after ``timeout_s``.
        The keeper that owns the task holds the wait and answers it as the end is written, one
        message from here (on its socket when it is on this node). The RequestHandler is asked
        where that keeper cannot tell (it does not know the task open, or no longer holds its
        end) or cannot be reached."""
        import ray
        from ray.exceptions import RayActorError

        ask = ("wait", task_id, timeout_s)
        said: TaskRecord | tuple = ask
        keeper = self._keeper_of(task_id)
        if keeper is not None:
            answer = self._by_socket(
                f"keeper/{keeper_of(task_id, len(self._keepers))}",
                keeper,
                WAIT,
                [[task_id], timeout_s, True],
                timeout_s,
            )
            try:
                if answer is _UNSENT:
                    answer = ray.get(keeper.wait_any.remote([task_id], timeout_s, unknown_first=True))
                else:
                    answer = wait_answer(answer)
                said = _said(answer, ask)
            except RayActorError:
                self._keepers = []  # looked for again later: a keeper may have been replaced
        return said if isinstance(said, TaskRecord) else self.call(*said)

    def _by_socket(self, label: str, actor: Any, method: str, body: Any, timeout_s: float) -> Any:
        """The answer of ``method`` of ``actor`` called over its socket, when it is on this node;
        ``_UNSENT`` if the call was not made (the caller calls by Ray). Only for calls that may be
        made twice: one whose answer is lost is made again by Ray."""
        client = self._socket(label, actor)
        if client is None:
            return _UNSENT
        try:
            answer = client.call(method, body, timeout_s + _SOCKET_SLACK_S)
        except ChannelClosed:
            self._channels.failed(label)
            return _UNSENT
        self.by_socket += 1
        return answer

    def _socket(self, label: str, actor: Any) -> BlockingClient | None:
        """This thread's connection to ``actor``'s socket, if it has one on this node."""
        import ray

        return self._channels.client(label, lambda: ray.get(actor.local_channel.remote(), timeout=_ASK_SOCKET_S))

    def _submit_by_socket(self, request: dict) -> Any:
        """The task id of ``request`` submitted over the socket of this node's RequestHandler;
        ``_UNSENT`` if it was not sent (no socket, or arguments that JSON would change: those the
        handler judges as they are). A submit whose answer is lost is reported, not repeated."""
        try:
            exact = json.loads(json.dumps(request, allow_nan=False)) == request
        except (TypeError, ValueError, RecursionError):
            exact = False
        client = self._socket("handler", self.handler) if exact else None
        if client is None:
            return _UNSENT
        try:
            answer = client.call(SUBMIT, request)  # held as long as a Ray call would be
        except ChannelUnreachable:
            self._channels.failed("handler")
            return _UNSENT
        except ChannelClosed as e:
            self._channels.failed("handler")
            raise ServiceUnavailable(f"raylane's RequestHandler failed during submit: {e}") from e
        self.by_socket += 1
        return unwrap_json(answer)

    async def await_wait(self, task_id: str, timeout_s: float) -> TaskRecord:
        """``wait``, awaited on the caller's event loop."""
        from ray.exceptions import RayActorError

        ask = ("wait", task_id, timeout_s)
        said: TaskRecord | tuple = ask
        keeper = self._keeper_of(task_id)
        if keeper is not None:
            try:
                said = _said(await keeper.wait_any.remote([task_id], timeout_s, unknown_first=True), ask)
            except RayActorError:
                self._keepers = []
        return said if isinstance(said, TaskRecord) else await self.acall(*said)

    def _keeper_of(self, task_id: str) -> Any:
        """The handle of the keeper that owns ``task_id``; None if it is not a task id, or the
        keepers cannot be found."""
        if not _TASK_ID.match(task_id):
            return None
        keepers = self._keepers
        if not keepers and time.monotonic() - self._keepers_sought >= _KEEPERS_AGAIN_S:
            self._keepers_sought = time.monotonic()
            try:
                keepers = self._keepers = keeper_handles(self.settings.namespace)
            except Exception as e:  # the RequestHandler answers meanwhile
                log.debug("the StatusKeepers could not be found: %r", e)
        return keepers[keeper_of(task_id, len(keepers))] if keepers else None

    async def acall(self, method: str, *args: Any) -> Any:
        """``call``, awaited on the caller's event loop: Ray's object references are awaitable."""
        from ray.exceptions import RayActorError

        deadline = time.monotonic() + 60
        tries = 0
        while True:
            try:
                return unwrap(await getattr(self.handler, method).remote(*args))
            except RayActorError as e:
                if method not in _IDEMPOTENT or time.monotonic() > deadline:
                    raise ServiceUnavailable(f"raylane's RequestHandler failed during {method}: {e}") from e
                tries += 1
                await asyncio.sleep(backoff_s(tries, base_s=0.1, cap_s=1.0))

    def call(self, method: str, *args: Any) -> Any:
        """Call the RequestHandler. Read-only calls ride out a restart of the actor; a submit or
        cancel that fails on the way is reported, never repeated blindly."""
        import ray
        from ray.exceptions import RayActorError

        if method == SUBMIT and (task_id := self._submit_by_socket(*args)) is not _UNSENT:
            return task_id
        deadline = time.monotonic() + 60
        tries = 0
        while True:
            try:
                return unwrap(ray.get(getattr(self.handler, method).remote(*args)))
            except RayActorError as e:
                if method not in _IDEMPOTENT or time.monotonic() > deadline:
                    raise ServiceUnavailable(f"raylane's RequestHandler failed during {method}: {e}") from e
                tries += 1
                time.sleep(backoff_s(tries, base_s=0.1, cap_s=1.0))


def _node_id() -> str | None:
    """The Ray node this process runs on; None when it is not attached to one."""
    import ray

    try:
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # a client outside the cluster
        return None


def _dashboard_url(wait_s: float = 60.0) -> str:
    """The dashboard address Ray reports. A Ray head that has just started may not report it for a
    moment (its dashboard registers after the head is up): look again until it does."""
    deadline = time.monotonic() + wait_s
    while True:
        url = ray_dashboard_url()
        if url:
            return url
        if time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"Ray reported no dashboard address within {wait_s:g}s; set RAYLANE_RAY_DASHBOARD_URL"
            )
        time.sleep(0.2)


def _actor_config(settings: Settings, endpoints: Endpoints):

    return ActorConfig(
        kafka=endpoints.kafka,
        opensearch=endpoints.opensearch,
        namespace=settings.namespace,
        index_alias=settings.index_alias,
        topic_prefix=settings.topic_prefix,
        dlq_topic=settings.dlq_topic,
        default_queue=settings.default_queue,
        partitions=settings.partitions,
        replication=settings.replication,
        retention_s=duration_s(settings.retention) if settings.retention else None,
        otlp_endpoint=settings.otlp_endpoint,
        otlp_sample_ratio=settings.otlp_sample_ratio,
        max_payload_bytes=settings.max_payload_bytes,
        max_result_bytes=settings.max_result_bytes,
        max_depth=settings.max_depth,
        max_in_flight=settings.max_in_flight,
        max_running=settings.max_running,
        autoscaling=settings.autoscaling,
        consumers=settings.consumers,
        keepers=settings.keepers,
        executors=settings.executors,
        recovery_check_s=settings.recovery_check_s,
        secret=settings.cluster_secret(),
    )


def _endpoints(settings: Settings, start_missing: bool) -> Endpoints:
    """Configured addresses, with the local stack filling in (and, if asked, starting) what is not configured."""
    from raylane.stack import LocalStack

    stack = LocalStack(settings)
    local = {
        "kafka": settings.kafka_bootstrap is None,
        "opensearch": settings.opensearch_url is None,
        "ray": settings.ray_address is None and not _ray_address_from_env(),
    }
    needed = [name for name, is_local in local.items() if is_local]
    if start_missing and needed and not all(stack.get(n).pid() for n in needed):
        stack.up(only=needed)
    return Endpoints(
        kafka=settings.kafka() if settings.kafka_bootstrap else stack.kafka.connection(),
        opensearch=settings.opensearch() if settings.opensearch_url else stack.opensearch.connection(),
        ray_address=settings.ray_address or (stack.ray.address if local["ray"] else None),
    )


def _ray_address_from_env() -> bool:
    import ray

    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))


def _use_token_auth() -> None:
    """Connect with token authentication, as the local Ray head runs (``ray start`` with RAY_AUTH_MODE=token)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return

    enable_ray_token_auth()


def deploy_on_local_stack(stack, http: bool = False) -> str | None:
    """Deploy raylane's actors on a running local stack (used by ``raylane stack up``), and
    with ``http`` the HTTP API too; returns the API's URL when it was deployed."""
    init(_settings=stack.settings)
    try:
        if http:
            from raylane.api import deploy_http

            return deploy_http(stack.settings)
        return None
    finally:
        shutdown()


def current_settings() -> Settings:
    """The settings ``init()`` connected with."""
    return _connection().settings


def init(**overrides: Any) -> None:
    """Attach to the configured stack, or start the local one; deploy raylane's actors if missing.

    Keyword arguments override settings read from ``RAYLANE_*`` environment variables.
    Safe to call more than once, and from inside a Ray task or job.
    """
    import ray

    # The SDK's one way into deployment: raylane.actors is imported here and nowhere else in raylane.
    from raylane.actors.deploy import deploy
    from raylane.tasks import defined_here

    global _conn
    with _lock:
        if _conn is not None:
            return
        settings = overrides.pop("_settings", None) or Settings.from_env(**overrides)
        owns_ray = False
        endpoints: Endpoints | None = None
        if not ray.is_initialized():
            if settings.ray_address is None and not os.environ.get("RAY_ADDRESS"):
                endpoints = _endpoints(settings, start_missing=True)
            if endpoints is not None and endpoints.ray_address:
                _use_token_auth()
            address = (
                settings.ray_address or os.environ.get("RAY_ADDRESS") or (endpoints.ray_address if endpoints else None)
            )
            ray.init(address=address, namespace=settings.namespace, logging_level=logging.WARNING)
            owns_ray = True
        handler = find_request_handler(settings.namespace)
        if handler is None:
            endpoints = endpoints or _endpoints(settings, start_missing=False)
            dashboard = settings.ray_dashboard_url or _dashboard_url()
            if not dashboard.startswith("http"):
                dashboard = f"http://{dashboard}"
            handler = deploy(_actor_config(settings, endpoints), dashboard)
        conn = _Connection(settings, handler, owns_ray)
        from raylane.builtin import echo

        conn.publish(echo.definition, *defined_here())
        _conn = conn


def published_if_connected(defn: TaskDefinition) -> None:
    """Publish a task defined after ``init()`` right away."""
    with _lock:
        if _conn is not None and id(defn) not in _conn.published:
            _conn.publish(defn)


def shutdown() -> None:
    """Detach from raylane (and from Ray, if ``init`` connected it). The actors keep running."""
    import ray

    global _conn
    with _lock:
        if _conn is not None and _conn.owns_ray and ray.is_initialized():
            ray.shutdown()
        _conn = None


def _connection() -> _Connection:
    if _conn is None:
        raise NotInitialized("call raylane.init() first")
    return _conn


def is_initialized() -> bool:
    """Whether ``init()`` has connected this process."""
    return _conn is not None


T = TypeVar("T")


class TaskHandle(Generic[T]):
    """A submitted task: look it up, wait for it, or cancel it by id. ``TaskHandle[T]`` gives
    results of type ``T`` (a handle made from an id alone is ``TaskHandle[Any]``)."""

    __slots__ = ("_final", "_returns", "id")

    def __init__(self, task_id: str):
        self.id = task_id
        self._final: TaskRecord | None = None  # the finished record, once a wait has seen it
        # The task's result hint where it is not plain JSON (a datetime, a model...): a handle
        # from the task's own submit gives its result as that type, one from an id as JSON.
        self._returns: Any = None

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def record(self) -> TaskRecord:
        """The task's current record."""
        return get(self.id)

    def status(self) -> TaskState:
        """The task's current state."""
        return self.record().state

    def wait(self, timeout: float | None = None) -> TaskRecord:
        """Block until the task is terminal and return its record; ``WaitTimeout`` after ``timeout`` seconds."""
        if self._final is None:
            self._final = wait(self.id, timeout)
        return self._final

    def result(self, timeout: float | None = None) -> T:
        """The task's result (converted to the function's result type where that is not plain
        JSON, for a handle of the task's own submit); raises ``TaskFailed``, ``TaskCancelled``,
        ``TaskTimedOut`` or ``WaitTimeout``."""
        return typed_result(self._returns, result_of(self.wait(timeout)))

    def cancel(self) -> TaskRecord:
        """Cancel the task; ``TaskAlreadyFinished`` if it had already finished."""
        return cancel(self.id)

    def __await__(self) -> Generator[Any, None, T]:
        """``await handle``: the task's result, as ``result()`` gives it, without blocking the loop."""
        return self.aresult().__await__()

    async def aresult(self, timeout: float | None = None) -> T:
        """``result`` for asyncio (see ``raylane.aas_completed``)."""
        if self._final is None:
            self._final = await _await_final(self.id, timeout)
        return typed_result(self._returns, result_of(self._final))

    async def arecord(self) -> TaskRecord:
        """``record`` for asyncio."""
        return await aget(self.id)

    def retry(self) -> TaskHandle[T]:
        """Start a new attempt of the finished task (see ``raylane.retry``); returns this handle,
        whose ``wait`` and ``result`` are then of the new attempt."""
        retry(self.id)
        self._final = None
        return self


def result_of(record: TaskRecord) -> Any:
    """The result of a terminal record, or the error its end corresponds to."""
    if record.state is TaskState.SUCCEEDED:
        return record.result
    if record.state is TaskState.FAILED:
        raise TaskFailed(record.id, record.error_type, record.error, record.traceback, record.error_types)
    if record.state is TaskState.CANCELLED:
        raise TaskCancelled(record.id)
    if record.state is TaskState.TIMED_OUT:
        raise TaskTimedOut(record.id, f"task {record.id} timed out: {record.error}")
    raise WaitTimeout(record.id, 0, record.state.value)


def submit_requests(requests: Sequence[SubmitRequest], definitions: Iterable[TaskDefinition] = ()) -> list[TaskHandle]:
    """Submit prepared requests in one call; all are validated before any is written."""
    conn = _connection()
    for defn in definitions:
        published_if_connected(defn)
    payload = [r.model_dump(exclude_none=True) for r in requests]
    if len(payload) == 1:
        return [TaskHandle(conn.call("submit", payload[0]))]
    return [TaskHandle(i) for i in conn.call("submit_many", payload)]


def submit(name: str, *args: Any, **kwargs: Any) -> TaskHandle:
    """Submit a registered task by name (for tasks defined elsewhere in the cluster).

    Keyword arguments named like an option of ``TaskFunction.options`` (``delay``, ``eta``,
    ``expires``, ``soft_timeout``, ``idempotency_key``, ``timeout``, ``queue``, ``tags``,
    ``max_retries``, ``priority``, ``concurrency_key``, ``max_concurrency``, ``rate_limit``)
    are taken as that option, unless the task has a parameter of that name:
    then they are its argument, as always."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTION_NAMES}
    values = {k: jsonable(v) for k, v in kwargs.items()}
    request = SubmitRequest(name=name, args=[jsonable(a) for a in args], kwargs=values)
    if options:
        # Which of them are options depends on the task's signature, which the cluster knows.
        request = request.model_copy(update={"named_options": _json_options(options)})
    return submit_requests([request])[0]


_OPTION_NAMES = {
    "delay",
    "eta",
    "expires",
    "soft_timeout",
    "idempotency_key",
    "timeout",
    "queue",
    "tags",
    "max_retries",
    "priority",
    "concurrency_key",
    "max_concurrency",
    "rate_limit",
}


def _json_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as JSON: durations in seconds, times in ISO 8601 (UTC when naive)."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, timedelta):
            v = v.total_seconds()
        elif isinstance(v, datetime):
            v = (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
        out[k] = v
    return out


def get_many(task_ids: Iterable[str]) -> dict[str, TaskRecord]:
    """The current records of up to 10,000 tasks, by id, in one call; unknown ids are left out."""
    return _connection().call("get_many", list(task_ids))


def get(task_id: str) -> TaskRecord:
    """The current record of a task; ``TaskNotFound`` for an unknown id."""
    return _connection().call("get", task_id)


def cancel(task_id: str) -> TaskRecord:
    """Cancel a task that has not finished (killing it if it runs); returns the CANCELLED record."""
    return _connection().call("cancel", task_id)


def cancel_many(tasks: Iterable[TaskHandle | str]) -> list[str]:
    """Cancel the unfinished tasks among ``tasks`` (handles or ids, up to 10,000) in one call,
    killing the running ones; returns the ids cancelled. Tasks that had finished and unknown
    ids are left out, as they are."""
    if isinstance(tasks, str | TaskHandle):
        raise InvalidTaskInput("cancel_many takes several tasks (a list of handles or ids); cancel takes one")
    return _connection().call("cancel_many", [t.id if isinstance(t, TaskHandle) else t for t in tasks])


def cancel_matching(
    state: StateFilter = None,
    name: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
    *,
    until: datetime | None = None,
    tags: Iterable[str] = (),
    queue: str | None = None,
    workflow: str | None = None,
) -> list[str]:
    """Cancel every unfinished task matching the filters (as for ``search``; ``state`` may only
    name unfinished states: PENDING, SCHEDULED, RUNNING), at most ``limit`` (up to 10,000);
    running ones are killed. Returns the ids cancelled. ``counts`` with the same filters says
    beforehand how many there are."""
    query = _query(state, name, queue, tags, None, since, until, None, None, workflow)
    return _connection().call("cancel_matching", query, limit)


def cancel_workflow(workflow_id: str) -> list[str]:
    """Cancel every unfinished task of a workflow (running ones are killed); returns the ids cancelled."""
    return cancel_matching(workflow=workflow_id, limit=10_000)


def retry(task_id: str) -> TaskHandle:
    """Start a new attempt of a finished task (whatever its end: failed, timed out, cancelled or
    even succeeded), with the same arguments; the finished attempt is kept in the record's
    ``attempts``. Raises ``TaskNotFinished`` if it has not finished, ``TaskNotFound`` if unknown."""
    return TaskHandle(_connection().call("retry", task_id).id)


def replay(
    state: StateFilter = None,
    name: str | None = None,
    since: datetime | None = None,
    text: str | None = None,
    limit: int = 1000,
    *,
    until: datetime | None = None,
    tags: Iterable[str] = (),
    queue: str | None = None,
    workflow: str | None = None,
) -> list[TaskHandle]:
    """``retry`` in bulk: a new attempt of each finished task matching the filters (as for
    ``search``; ``state`` defaults to FAILED and must name terminal states), at most ``limit``
    (up to 10,000), newest first. Returns handles of the tasks started again."""
    query = _query(state, name, queue, tags, None, since, until, text, None, workflow)
    return [TaskHandle(i) for i in _connection().call("replay", query, limit)]


def dead_letters(limit: int = 100) -> list[dict]:
    """The newest ``limit`` dead letters (messages set aside, with the reason), newest first;
    each names its task (``task_id``, ``state``) where raylane recorded one, and says whether
    ``replay_dead_letters`` would start it again (``replayable``)."""
    return _connection().call("dead_letters", limit)


def replay_dead_letters(limit: int = 100) -> list[TaskHandle]:
    """Start again the recorded, finished tasks of the newest ``limit`` dead letters (a new
    attempt, from the task's record; never from the message). Returns their handles."""
    return [TaskHandle(i) for i in _connection().call("replay_dead_letters", limit)]


def wait(task_id: str, timeout: float | None = None) -> TaskRecord:
    """Block until a task is terminal; returns its record, or raises ``WaitTimeout``."""
    conn = _connection()
    slices = _WaitSlices(task_id, timeout)
    while not (record := conn.wait(task_id, slices.next())).finished:
        slices.after(record)
    return record


async def _await_final(task_id: str, timeout: float | None = None) -> TaskRecord:
    """``wait`` for asyncio: the task's final record, awaited on the caller's event loop with
    no thread; ``WaitTimeout`` after ``timeout`` seconds."""
    conn = _connection()
    slices = _WaitSlices(task_id, timeout)
    while not (record := await conn.await_wait(task_id, slices.next())).finished:
        slices.after(record)
    return record


def _deadline(timeout: float | None) -> float | None:
    """When a wait of ``timeout`` seconds ends, on the monotonic clock (None: it does not)."""
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or math.isnan(timeout):
        # NaN compares false with every time: such a wait would neither end nor wait.
        raise InvalidTaskInput(f"a wait's timeout is a number of seconds or None, not {timeout!r}")
    return time.monotonic() + timeout


class _WaitSlices:
    """The server-side waits a wait for one task is made of: at most ``_WAIT_SLICE_S`` each,
    until ``timeout`` (forever without one)."""

    def __init__(self, task_id: str, timeout: float | None):
        self.task_id, self.timeout = task_id, timeout
        self.deadline = _deadline(timeout)

    def next(self) -> float:
        """The length of the next wait."""
        return (
            _WAIT_SLICE_S if self.deadline is None else min(_WAIT_SLICE_S, max(0.0, self.deadline - time.monotonic()))
        )

    def after(self, record: TaskRecord) -> None:
        """After a wait that ended with ``record`` not finished: ``WaitTimeout`` once the time is up."""
        if self.timeout is not None and self.deadline is not None and time.monotonic() >= self.deadline:
            raise WaitTimeout(self.task_id, self.timeout, record.state.value)


class _Completion:
    """The bookkeeping of ``as_completed`` and ``aas_completed``: the handles still open, the
    next bulk wait to ask the RequestHandler for, and the handles its answer completes."""

    def __init__(self, handles: Iterable[TaskHandle | str], timeout: float | None):
        self.done: list[TaskHandle] = []  # finished before the first call
        self.pending: dict[str, TaskHandle] = {}
        for h in handles:
            handle = TaskHandle(h) if isinstance(h, str) else h
            if handle._final is not None:
                self.done.append(handle)
            else:
                self.pending.setdefault(handle.id, handle)
        self.timeout = timeout
        self.deadline = _deadline(timeout)
        self.read_store = True  # the first call, and any after a silent one, also reads the store

    def next_wait(self) -> tuple:
        """The arguments of the next ``wait_many`` call; ``WaitTimeout`` once the time is up."""
        left = _WAIT_SLICE_S if self.deadline is None else self.deadline - time.monotonic()
        if left <= 0:
            first = next(iter(self.pending))
            raise WaitTimeout(
                first,
                self.timeout or 0.0,
                "open",
                message=f"{len(self.pending)} task(s) still open after waiting {self.timeout:g}s (first: {first})",
            )
        return list(itertools.islice(self.pending, _WAIT_IDS)), min(left, _WAIT_SLICE_S), self.read_store

    def take(self, docs: list[bytes]) -> list[TaskHandle]:
        """The handles that ``docs`` (finished records, as ``wait_many`` answers) complete, each
        now holding its final record."""
        self.read_store = not docs
        out = []
        for doc in docs:
            record = TaskRecord.model_validate_json(doc)
            handle = self.pending.pop(record.id, None)
            if handle is not None:
                handle._final = record
                out.append(handle)
        return out


def as_completed(handles: Iterable[TaskHandle | str], timeout: float | None = None) -> Iterator[TaskHandle]:
    """Yield each task's handle as the task finishes, in the order they finish (each handle
    then holds its final record: ``h.result()`` and ``h.wait()`` need no further call).

    The records come in batches from the StatusKeeper, not one wait per task. Raises
    ``WaitTimeout`` if tasks are still open after ``timeout`` seconds (None: no limit)."""
    c = _Completion(handles, timeout)
    yield from c.done
    conn = _connection() if c.pending else None
    while c.pending:
        assert conn is not None
        yield from c.take(conn.call("wait_many", *c.next_wait()))


async def aas_completed(handles: Iterable[TaskHandle | str], timeout: float | None = None) -> AsyncIterator[TaskHandle]:
    """``as_completed`` for asyncio: ``async for h in raylane.aas_completed(handles)``. The
    waits are awaited on the caller's event loop, with no thread."""
    c = _Completion(handles, timeout)
    for handle in c.done:
        yield handle
    conn = _connection() if c.pending else None
    while c.pending:
        assert conn is not None
        for handle in c.take(await conn.acall("wait_many", *c.next_wait())):
            yield handle


async def await_all(handles: Iterable[TaskHandle | str], timeout: float | None = None) -> list[TaskRecord]:
    """``wait_all`` for asyncio: the final records of all the tasks, in the order given."""
    given = [TaskHandle(h) if isinstance(h, str) else h for h in handles]
    by_id = {h.id: h for h in given}
    async for done in aas_completed(list(by_id.values()), timeout):
        by_id[done.id] = done
    return [by_id[h.id]._final for h in given]  # type: ignore[misc]


async def aget(task_id: str) -> TaskRecord:
    """``get`` for asyncio: the current record of a task, awaited with no thread."""
    return await _connection().acall("get", task_id)


def wait_all(handles: Iterable[TaskHandle | str], timeout: float | None = None) -> list[TaskRecord]:
    """The final records of all the tasks, in the order given, once every one has finished;
    ``WaitTimeout`` if some are still open after ``timeout`` seconds (None: no limit)."""
    given = [TaskHandle(h) if isinstance(h, str) else h for h in handles]
    by_id = {h.id: h for h in given}
    for done in as_completed(list(by_id.values()), timeout):
        by_id[done.id] = done
    return [by_id[h.id].wait() for h in given]


StateFilter = TaskState | str | Iterable[TaskState | str] | None


def _query(
    state: StateFilter = None,
    name: str | None = None,
    queue: str | None = None,
    tags: Iterable[str] = (),
    tag: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    text: str | None = None,
    schedule: str | None = None,
    workflow: str | None = None,
) -> dict:
    states = None
    if state is not None:
        states = [state] if isinstance(state, (str, TaskState)) else list(state)
    q: dict[str, Any] = {
        "state": states,
        "name": name,
        "queue": queue,
        "tags": list(tags) + ([tag] if tag else []),
        "since": since,
        "until": until,
        "text": text,
        "schedule_id": schedule,
        "workflow_id": workflow,
    }
    return {k: v for k, v in q.items() if v not in (None, [])}


def search(
    state: StateFilter = None,
    name: str | None = None,
    since: datetime | None = None,
    text: str | None = None,
    limit: int = 100,
    *,
    until: datetime | None = None,
    tags: Iterable[str] = (),
    tag: str | None = None,
    queue: str | None = None,
    schedule: str | None = None,
    workflow: str | None = None,
) -> list[TaskRecord]:
    """Tasks matching every given filter, newest first, at most ``limit`` (any number: it pages past 10,000).

    ``text`` matches words of the error message; ``since``/``until`` bound the creation time;
    ``schedule`` keeps the tasks fired by that schedule, ``workflow`` the tasks of that workflow.
    Results reflect writes up to about a second old.
    """
    query = _query(state, name, queue, tags, tag, since, until, text, schedule, workflow)
    records, _ = _connection().call("search", query, limit, None)
    return records


def search_page(
    state: StateFilter = None,
    name: str | None = None,
    since: datetime | None = None,
    text: str | None = None,
    limit: int = 100,
    *,
    cursor: str | None = None,
    until: datetime | None = None,
    tags: Iterable[str] = (),
    queue: str | None = None,
    schedule: str | None = None,
    workflow: str | None = None,
) -> tuple[list[TaskRecord], str | None]:
    """One page of ``search`` (at most ``limit`` records, 1,000 at most) and the cursor of the
    next one (None after the last): pass it as ``cursor`` to go on where this page ended."""
    from raylane.store import decode_cursor, encode_cursor

    query = _query(state, name, queue, tags, None, since, until, text, schedule, workflow)
    records, after = _connection().call("search", query, min(limit, 1000), decode_cursor(cursor))
    return records, encode_cursor(after)


def counts(
    state: StateFilter = None,
    name: str | None = None,
    since: datetime | None = None,
    text: str | None = None,
    *,
    until: datetime | None = None,
    tags: Iterable[str] = (),
    tag: str | None = None,
    queue: str | None = None,
    schedule: str | None = None,
    workflow: str | None = None,
) -> dict[str, int]:
    """Number of tasks per state among those matching the filters (as for ``search``)."""
    return _connection().call("counts", _query(state, name, queue, tags, tag, since, until, text, schedule, workflow))


def purge(older_than: float | timedelta | str, state: StateFilter = None) -> int:
    """Delete the records of tasks that finished more than ``older_than`` ago (seconds, a
    timedelta, or a duration such as ``"7d"``), of ``state`` only if given (terminal states);
    returns how many. A task whose retry follows is not finished and is kept. With
    ``RAYLANE_RETENTION`` set, the service does this daily."""
    if isinstance(older_than, str):
        try:
            seconds = duration_s(older_than)
        except ValueError as e:
            raise InvalidTaskInput(str(e)) from None
    else:
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
    if seconds <= 0:
        raise InvalidTaskInput(f"older_than must be positive, got {older_than!r}")
    states = None
    if state is not None:
        given = [state] if isinstance(state, str | TaskState) else list(state)
        states = [s.value if isinstance(s, TaskState) else s for s in given]
    return _connection().call("purge", seconds, states)


def refresh() -> None:
    """Make every status write so far visible to ``search`` and ``counts`` (normally within a second)."""
    _connection().call("refresh")


def pause(queue: str) -> None:
    """Stop consumers from taking new tasks of ``queue`` (submits still succeed; tasks wait PENDING).

    The switch is stored with the task records, so it survives restarts of Ray and of raylane.
    """
    _connection().call("set_paused", queue, True)


def resume(queue: str) -> None:
    """Let consumers take tasks of ``queue`` again."""
    _connection().call("set_paused", queue, False)


def schedule(
    schedule_id: str,
    task: str | Any,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    cron: str | None = None,
    every: float | timedelta | None = None,
    timezone: str = "UTC",
    catch_up: str = "none",
    queue: str | None = None,
    timeout: float | None = None,
    tags: Sequence[str] | None = None,
    paused: bool = False,
) -> Schedule:
    """Run ``task`` (a name or a ``@raylane.task``) on every tick of ``cron`` (five fields, in
    ``timezone``) or ``every`` seconds: exactly one task per tick, however many schedulers run.

    Saving a schedule under an existing id replaces its definition; ticks already fired are
    not fired again. ``catch_up`` says what happens to ticks missed while nothing could fire
    them: "none" skips them, "last" runs the latest once, "all" runs each (see
    ``raylane.schedules``). The tasks carry ``schedule_id``: ``raylane.search(schedule=...)``
    finds them."""
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str):
        raise InvalidTaskInput(f"task must be a task name or a @raylane.task, got {type(task).__name__}")
    spec: dict[str, Any] = {
        "id": schedule_id,
        "task": name,
        "args": list(args),
        "kwargs": dict(kwargs or {}),
        "cron": cron,
        "every_s": every.total_seconds() if isinstance(every, timedelta) else every,
        "timezone": timezone,
        "catch_up": catch_up,
        "queue": queue,
        "timeout_s": timeout,
        "tags": list(tags) if tags is not None else None,
        "paused": paused,
    }
    return _connection().call("save_schedule", spec)


def unschedule(schedule_id: str) -> None:
    """Remove a schedule; ``ScheduleNotFound`` if there is none. Tasks it already fired stay."""
    _connection().call("delete_schedule", schedule_id)


def schedules() -> list[Schedule]:
    """Every schedule, by id, with its ``last_tick``."""
    return _connection().call("list_schedules")


def pause_schedule(schedule_id: str) -> Schedule:
    """Stop a schedule from firing; ticks that fall while it is paused are skipped."""
    return _connection().call("set_schedule_paused", schedule_id, True)


def resume_schedule(schedule_id: str) -> Schedule:
    """Let a paused schedule fire again, from its next tick."""
    return _connection().call("set_schedule_paused", schedule_id, False)
