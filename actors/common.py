"""What every raylane actor shares: its configuration, names, and how errors cross to callers."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ConfigDict

from raylane.config import OpenSearchAuth
from raylane.errors import RaylaneError

STATUS_KEEPER = "StatusKeeper"
EXECUTOR = "Executor"
REQUEST_HANDLER = "RequestHandler"
QUEUE_CONSUMER = "QueueConsumer"


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
    max_in_flight: int
    max_running: int
    consumer_group: str = "raylane-workers"


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
