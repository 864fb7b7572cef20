"""The hand-over from a QueueConsumer to the Executor of its node, over the executor's channel
(``raylane.actors.channel``): the queue messages as read, their signatures already checked by
the consumer, and their outcomes. An executor elsewhere, or one whose connection broke, is
handed the batch by the Ray call, which is safe because a hand-over is idempotent (a message
handed twice is claimed at most once)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from raylane.actors.channel import ChannelClient, Method
from raylane.protocol import HandOff, HandOffResult

START_MANY = "start_many"

StartMany = Callable[[list[bytes], "float | None"], Awaitable[list[HandOffResult]]]


def _parsed(body: Any) -> tuple[list[bytes], float | None]:
    read_at, messages = body["read_at"], body["messages"]
    if not isinstance(read_at, float | int | None) or isinstance(read_at, bool):
        raise TypeError("read_at is a number or null")
    if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
        raise TypeError("messages are a list of strings")
    return [m.encode() for m in messages], read_at


def serving(start_many: StartMany) -> Method:
    """The channel method of an executor's ``start_many``."""

    async def run(argument: tuple[list[bytes], float | None]) -> list[list]:
        outcomes = await start_many(*argument)
        return [[o.outcome.value, o.reason] for o in outcomes]

    return Method(_parsed, run)


def hand_over(client: ChannelClient, messages: list[bytes], read_at: float | None) -> Awaitable[list[HandOffResult]]:
    """Send a batch to the executor at the other end of ``client`` now; its outcomes, to be awaited
    (raising as ``ChannelClient.call`` does)."""
    sent = client.call(START_MANY, {"read_at": read_at, "messages": [m.decode() for m in messages]})
    return _outcomes(sent)


async def _outcomes(sent: Awaitable[Any]) -> list[HandOffResult]:
    return [HandOffResult(HandOff(outcome), reason) for outcome, reason in await sent]
