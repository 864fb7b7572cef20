"""Actors of raylane built outside Ray for the unit tier: their config on the in-memory twins of
the store and the queue, metrics that record nothing, and a StatusKeeper built so."""

from __future__ import annotations

from typing import Any

import ray

from raylane.config import KafkaConnection, OpenSearchConnection
from raylane.protocol import ActorConfig


class NoMetrics:
    """Stands in for an actor's Ray metrics, which need a Ray worker to report to."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def memory_config(name: str, **overrides: Any) -> ActorConfig:
    """An ``ActorConfig`` whose store and queue are the in-memory twins named ``name`` (one
    broker and one store per name, shared by the actors built with it)."""
    fields: dict[str, Any] = dict(
        kafka=KafkaConnection(bootstrap=f"memory://{name}"),
        opensearch=OpenSearchConnection(url=f"memory://{name}"),
        namespace="unit",
        index_alias="tasks",
        topic_prefix="raylane.tasks.",
        dlq_topic="raylane.dlq",
        default_queue="default",
        partitions=1,
        max_payload_bytes=1 << 16,
        max_in_flight=10,
        secret="unit-secret-of-32-bytes-and-more",
    )
    return ActorConfig(**(fields | overrides))


def memory_keeper(monkeypatch: Any, name: str) -> Any:
    """A StatusKeeper on the in-memory twins named ``name``, outside Ray: no metrics, no background
    loops (a test drives its writes, claims and waits itself), other actors looked up as stand-ins."""
    from raylane.actors.status_keeper import StatusKeeper

    monkeypatch.setattr(ray, "get_actor", lambda *args, **kwargs: object())
    keeper = StatusKeeper(memory_config(name))
    keeper.metrics = NoMetrics()  # type: ignore[assignment]
    monkeypatch.setattr(keeper, "_ensure_loops", lambda: None)
    return keeper
