"""What the SDK, the HTTP API and the actors say to each other: actor names, the actors'
configuration, and the typed replies that cross between them.

It sits below both ``raylane`` (the SDK) and ``raylane.actors``, so neither imports the other
for these.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, SecretStr, SerializationInfo, field_serializer

from raylane.backends import open_queue, open_reader, open_store
from raylane.config import MAX_CONSUMERS, KafkaConnection, OpenSearchConnection, reveal_secret
from raylane.errors import RaylaneError, error_named
from raylane.limits import Limits
from raylane.models import PackedRecord
from raylane.queue import QueueReader, TaskQueue
from raylane.signing import Signer
from raylane.store import StatusStore

STATUS_KEEPER = "StatusKeeper"
EXECUTOR = "Executor"
REQUEST_HANDLER = "RequestHandler"
QUEUE_CONSUMER = "QueueConsumer"
# The Ray concurrency group of the StatusKeeper's and the RequestHandler's waits, apart from
# their writes and submits (DESIGN.md, "Control plane at scale").
WAITS = "waits"
MAX_WAITS = 10_000  # waits one actor holds at once
PER_CPU_RUNNING = 16  # tasks an executor runs at once per CPU of its node, unless configured
# The keeper's reason for refusing a claim that made its task's record (the task had none).
UNRECORDED = "the task had no record when it was claimed (its submit failed, or its record was removed); it was not run"


def handler_name(node_id: str | None = None) -> str:
    """Actor name of the RequestHandler placed on node ``node_id``; without one, of the first
    (on the node that deployed raylane), whose presence means raylane is deployed."""
    return REQUEST_HANDLER if node_id is None else f"{REQUEST_HANDLER}@{node_id}"


def find_request_handler(namespace: str):
    """A running RequestHandler, the one on the caller's node when there is one; None when raylane
    is not deployed in this cluster. Handlers keep no state: any of them serves any request."""
    import ray

    try:
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # not connected to a node (a client outside the cluster)
        here = None
    for name in ([handler_name(here)] if here else []) + [handler_name()]:
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:
            continue
    return None


def keeper_name(index: int) -> str:
    """Actor name of StatusKeeper ``index``: ``StatusKeeper``, then ``StatusKeeper-1``, ..."""
    return STATUS_KEEPER if index == 0 else f"{STATUS_KEEPER}-{index}"


def keeper_handles(namespace: str) -> list:
    """Handles of the StatusKeepers of ``namespace``, by index (a keeper Ray is restarting keeps
    its name). Empty when raylane is not deployed; ``ValueError`` if one of them cannot be found."""
    import ray

    count = len(live_members(namespace, STATUS_KEEPER))
    return [ray.get_actor(keeper_name(i), namespace=namespace) for i in range(count)]


def keeper_of_key(key: str, keepers: int) -> int:
    """The StatusKeeper that counts the limits of ``key`` (a concurrency key or task name)."""
    return zlib.crc32(key.encode()) % keepers


def routed_id(task_id: str, keeper: int, keepers: int) -> str:
    """``task_id`` with its first eight hex digits moved to the nearest value that ``keeper_of``
    gives to ``keeper``: the tasks of one limit key then all belong to the keeper counting it."""
    if keepers == 1:
        return task_id
    head = int(task_id[:8], 16)
    head = head - head % keepers + keeper
    if head > 0xFFFFFFFF:
        head -= keepers
    return f"{head:08x}{task_id[8:]}"


def keeper_of(task_id: str, keepers: int) -> int:
    """The StatusKeeper that owns ``task_id``, of ``keepers``: the only one that writes its record,
    watches its deadline and answers its waiters. Task ids are random hex, so the split is even."""
    if keepers == 1:
        return 0
    try:
        return int(task_id[:8], 16) % keepers
    except ValueError:  # not a task id raylane made; any fixed choice will do
        return zlib.crc32(task_id.encode()) % keepers


def live_members(namespace: str, role: str) -> list[str]:
    """The names of the live actors of ``role`` (``EXECUTOR``, ``QUEUE_CONSUMER``) in ``namespace``,
    in index order: those of nodes that joined after deploy too."""
    import ray

    def index(name: str) -> int:
        return int(name.rsplit("-", 1)[1]) if name != role and name.rsplit("-", 1)[-1].isdigit() else 0

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and (a["name"] == role or a["name"].startswith(f"{role}-"))
    ]
    return sorted(names, key=index)


def executor_name(index: int) -> str:
    """Actor name of executor ``index``: ``Executor``, then ``Executor-1``, ``Executor-2``..."""
    return EXECUTOR if index == 0 else f"{EXECUTOR}-{index}"


class HandOff(StrEnum):
    """What became of a task handed to an executor."""

    STARTED = "started"  # claimed (RUNNING accepted) and launched, or already running here
    SKIPPED = "skipped"  # the claim lost to a newer version: cancelled, or taken by another attempt
    REFUSED = "refused"  # the store refused the RUNNING record outright: it can never be written


class HandOffResult(NamedTuple):
    """The outcome of one hand-off, with the store's reason when it was refused."""

    outcome: HandOff
    reason: str | None = None


class Reply(NamedTuple):
    """How a task's run ended, as its worker reports it: the result, or the error."""

    ok: bool
    result: Any = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    # The error's class and its bases, each "module:qualname", most specific first (not object).
    error_types: tuple[str, ...] = ()
    # When the function began and returned in its worker (epoch seconds): the record's hops.
    began: float | None = None
    returned: float | None = None
    # No reply came: the worker died, or was killed or ended itself (made by the executor).
    abnormal: bool = False

    @classmethod
    def failure(cls, error_type: str, error: str | None, traceback: str | None = None) -> Reply:
        """A run that failed with ``error_type``."""
        return cls(False, None, error_type, error, traceback)

    @classmethod
    def lost(cls, error_type: str, error: str) -> Reply:
        """A run whose worker ended without a reply."""
        return cls(False, None, error_type, error, abnormal=True)


class ActorConfig(BaseModel):
    """Everything an actor needs to reach the services; passed at creation, never read from the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka: KafkaConnection
    opensearch: OpenSearchConnection
    namespace: str
    index_alias: str
    topic_prefix: str
    dlq_topic: str
    default_queue: str
    partitions: int
    replication: int | None = None  # copies of each partition and shard (None: derived from the cluster)
    retention_s: float | None = None  # finished records older than this are purged daily (None: kept)
    otlp_endpoint: str | None = None  # where executors export a trace per finished task
    otlp_sample_ratio: float = 1.0  # of finished tasks, the share traced (by task id)
    max_payload_bytes: int
    max_result_bytes: int = 1 << 20
    max_depth: int = 16
    max_in_flight: int
    max_running: int | None = None  # tasks an executor runs at once; None: PER_CPU_RUNNING per CPU of its node
    autoscaling: bool = False  # the cluster grows on demand: tasks no node can run yet are accepted
    consumers: int | None = None  # None: one beside each executor (at most one per partition)
    executors: int | None = None  # None until deployment places one on each node
    # The node of each executor, in order, when they are placed one per node (consumer i then
    # sits beside executor i mod executors); empty: Ray places them.
    executor_nodes: list[str] = []
    keepers: int = 1
    recovery_check_s: float = 30.0  # how often an executor looks for lost messages and claims left behind
    consumer_group: str = "raylane-workers"
    secret: SecretStr  # the cluster secret: signs queue messages and kept task definitions

    def executor_names(self) -> list[str]:
        """The names of the deployment's executors, in order."""
        return [executor_name(j) for j in range(self.executors or 1)]

    def consumer_count(self) -> int:
        """How many QueueConsumers the deployment runs: as configured, or one beside each executor,
        at most one per partition of a new queue (a consumer without a partition reads nothing)."""
        if self.consumers is not None:
            return self.consumers
        return max(1, min(self.executors or 1, self.partitions, MAX_CONSUMERS))

    def executor_for(self, consumer: int) -> str:
        """The executor QueueConsumer ``consumer`` hands its tasks to (the one beside it when placed)."""
        return executor_name(consumer % (self.executors or 1))

    @field_serializer("secret")
    def _dump_secret(self, value: SecretStr, info: SerializationInfo) -> str | None:
        return reveal_secret(value, info)

    def limits(self) -> Limits:
        """The input limits in force for submissions and results."""
        return Limits(self.max_payload_bytes, self.max_result_bytes, self.max_depth)

    def signer(self) -> Signer:
        """Signs and checks queue messages and task definitions under the cluster secret."""
        return Signer.of(self.secret)

    def store(self) -> StatusStore:
        """A client of the status store."""
        return open_store(self.opensearch, self.index_alias, self.replication)

    def queue(self) -> TaskQueue:
        """A producer to the queues (and the dead-letter topic)."""
        return open_queue(
            self.kafka,
            prefix=self.topic_prefix,
            dlq_topic=self.dlq_topic,
            partitions=self.partitions,
            max_payload_bytes=self.max_payload_bytes,
            signer=self.signer(),
            copies=self.replication,
        )

    def reader(self, member: int, members: int | None = None) -> QueueReader:
        """Reader ``member`` of ``members`` (by default ``consumer_count()``) of every queue topic."""
        return open_reader(
            self.kafka,
            prefix=self.topic_prefix,
            group=self.consumer_group,
            max_payload_bytes=self.max_payload_bytes,
            member=member,
            members=members or self.consumer_count(),
        )


class WaitAnswer(NamedTuple):
    """A keeper's answer to a wait (see ``StatusKeeper.wait_any``). The records travel packed:
    the keeper parses none of them, and the caller each once."""

    records: list[PackedRecord]  # final records of tasks that ended
    unread: list[str]  # tasks that ended, whose records the book no longer holds: read from the store
    unknown: list[str]  # tasks not known open here (or not the asking tenant's): looked up in the store


@dataclass(frozen=True)
class ErrorReply:
    """A raylane error returned (not raised) by an actor method, so callers see it without Ray's wrapping."""

    error: RaylaneError


def replies_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn a raised ``RaylaneError`` into an ``ErrorReply`` the client re-raises as is."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except RaylaneError as e:
            return ErrorReply(e)

    return wrapper


def unwrap(value: Any) -> Any:
    """The value of an actor reply, raising the error it carries."""
    if isinstance(value, ErrorReply):
        raise value.error
    return value


def reply_as_json(value: Any) -> dict:
    """An actor reply as it crosses a channel (JSON): ``{"value": ...}``, or for an ``ErrorReply``
    its error's class name (the most specific of ``raylane.errors``: an error Ray wrapped on its
    way from another actor crosses as the error it wraps), message and JSON attributes (see
    ``unwrap_json``)."""
    if not isinstance(value, ErrorReply):
        return {"value": value}
    error = value.error
    kind = next(c for c in type(error).__mro__ if c.__module__ == RaylaneError.__module__)
    cause = getattr(error, "cause", None)
    found = {**error.__dict__, **(cause.__dict__ if isinstance(cause, RaylaneError) else {})}
    attrs = {}
    for name, attr in found.items():
        try:
            json.dumps(attr, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            continue  # not JSON: left behind rather than failing the whole answer
        attrs[name] = attr
    return {"raised": [kind.__name__, str(error), attrs]}


def unwrap_json(answer: Any) -> Any:
    """The value of a reply from ``reply_as_json``, raising the raylane error it carries (see
    ``raylane.errors.error_named``)."""
    if not isinstance(answer, dict):
        raise RaylaneError(f"an actor answered {type(answer).__name__}, not a reply")
    if "raised" not in answer:
        return answer.get("value")
    name, message, attrs = answer["raised"]
    raise error_named(name, message, attrs)
