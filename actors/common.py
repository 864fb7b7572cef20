"""What every raylane actor shares: its configuration, names, and how errors cross to callers."""
from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from pydantic import BaseModel, ConfigDict, SecretStr, SerializationInfo, field_serializer

from raylane.backends import open_queue, open_reader, open_store
from raylane.config import OpenSearchAuth, reveal_secret
from raylane.errors import RaylaneError
from raylane.limits import Limits
from raylane.queue import QueueReader, TaskQueue
from raylane.signing import Signer
from raylane.store import StatusStore

STATUS_KEEPER = "StatusKeeper"
EXECUTOR = "Executor"
REQUEST_HANDLER = "RequestHandler"
QUEUE_CONSUMER = "QueueConsumer"


def executor_name(index: int) -> str:
    """Actor name of executor ``index``: ``Executor``, then ``Executor-1``, ``Executor-2``..."""
    return EXECUTOR if index == 0 else f"{EXECUTOR}-{index}"


# Prefix of a hand-off outcome whose RUNNING claim the store refused outright (not a version
# conflict): the task's record can never be written, so its message is dead-lettered.
REFUSED = "refused: "


class ActorConfig(BaseModel):
    """Everything an actor needs to reach the services; passed at creation, never read from the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka_bootstrap: str
    opensearch: OpenSearchAuth
    namespace: str
    index_alias: str
    topic_prefix: str
    dlq_topic: str
    default_queue: str
    partitions: int
    max_payload_bytes: int
    max_result_bytes: int = 1 << 20
    max_depth: int = 16
    max_in_flight: int
    max_running: int
    consumers: int = 1
    executors: int = 1
    consumer_group: str = "raylane-workers"
    secret: SecretStr  # the cluster secret: signs queue messages and kept task definitions

    @field_serializer("secret")
    def _dump_secret(self, value: SecretStr, info: SerializationInfo) -> Optional[str]:
        return reveal_secret(value, info)

    def limits(self) -> Limits:
        """The input limits in force for submissions and results."""
        return Limits(self.max_payload_bytes, self.max_result_bytes, self.max_depth)

    def signer(self) -> Signer:
        """Signs and checks queue messages and task definitions under the cluster secret."""
        return Signer.of(self.secret)

    def store(self) -> StatusStore:
        """A client of the status store."""
        return open_store(self.opensearch, self.index_alias)

    def queue(self) -> TaskQueue:
        """A producer to the queues (and the dead-letter topic)."""
        return open_queue(self.kafka_bootstrap, prefix=self.topic_prefix, dlq_topic=self.dlq_topic,
                          partitions=self.partitions, max_payload_bytes=self.max_payload_bytes, signer=self.signer())

    def reader(self, member: int) -> QueueReader:
        """Reader ``member`` of ``consumers`` of every queue topic."""
        return open_reader(self.kafka_bootstrap, prefix=self.topic_prefix, group=self.consumer_group,
                           max_payload_bytes=self.max_payload_bytes, member=member, members=self.consumers)


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


class GroupCommit:
    """Coalesces concurrent calls into batches: one ``flush(batch)`` in flight at a time, and
    items that arrive meanwhile form the next batch. Batches grow with load; an idle caller
    is flushed at once."""

    def __init__(self, flush: Callable[[list], Awaitable[list]], max_batch: int = 1000):
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list = []
        self._wakeup = None
        self._loop_task = None

    async def submit_many(self, items: list) -> list:
        """Results of ``flush`` for ``items``, in order; a failed flush raises in every caller of that batch."""
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as e:  # every waiter of the batch learns of the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), result in zip(batch, results):
                    if not fut.done():
                        fut.set_result(result)
