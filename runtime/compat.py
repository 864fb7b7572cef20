"""Every private internal of Ray and kafka-python that raylane relies on, in one place.

Each shim names the library version it was written against; tests/unit/test_compat.py checks
that each internal is still there and shaped as expected, so an upgrade that moves one fails
there, by name, rather than somewhere in a running cluster.
"""

from __future__ import annotations

from typing import Any

# --- Ray 2.60: the cluster's key-value store (GCS), reached from any driver, actor or worker.
# The public API has no KV store; internal_kv is what Ray's own libraries use for this.


def kv_put(key: str, value: bytes | str, namespace: str, overwrite: bool = True) -> bool:
    """Store ``value`` under ``key``; with ``overwrite=False`` an existing value is kept.
    Returns whether the key existed already."""
    from ray.experimental import internal_kv

    return bool(internal_kv._internal_kv_put(key, value, overwrite=overwrite, namespace=namespace))


def kv_get(key: str, namespace: str) -> bytes | None:
    """The value under ``key``, or None."""
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get(key, namespace=namespace)


def kv_list(prefix: str, namespace: str) -> list[bytes]:
    """Every key starting with ``prefix``."""
    from ray.experimental import internal_kv

    return list(internal_kv._internal_kv_list(prefix, namespace=namespace))


def kv_del(key: str, namespace: str) -> None:
    """Remove ``key`` (nothing if it is not there)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key, namespace=namespace)


# --- Ray 2.60: token authentication and the dashboard's address.


def enable_ray_token_auth() -> None:
    """Make this process authenticate with the token (``~/.ray/auth_token``) from now on: Ray
    caches its auth mode at import, and this refreshes it."""
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


def ray_dashboard_url() -> str | None:
    """The dashboard address of the Ray cluster this process is connected to (host:port or URL),
    or None while the cluster reports none."""
    import ray._private.worker

    return ray._private.worker.get_dashboard_url()


# --- kafka-python 3.0: the producer's per-partition batch queues.


def forget_empty_partitions(producer: Any) -> None:
    """Drop the producer's empty per-partition queues. kafka-python (3.0.12) keeps one for every
    partition ever written and asks for new metadata in a busy loop while any of them has no
    leader, so a queue topic deleted under a running producer would cost a full core forever.
    A queue is made again on the next send to its partition. If the internals change, nothing
    is dropped."""
    acc = getattr(producer, "_accumulator", None)
    batches, lock_of = getattr(acc, "_batches", None), getattr(acc, "_tp_lock", None)
    if not isinstance(batches, dict) or lock_of is None:
        return
    for tp in list(batches):
        with lock_of(tp):
            if tp in batches and not batches[tp]:
                del batches[tp]


# --- kafka-python 3.0: the topics a producer asks metadata for.


def forget_deleted_topics(producer: Any, after_s: float) -> None:
    """Have ``producer`` stop asking for topics the cluster no longer has. kafka-python (3.0.12)
    asks for the metadata of every topic it ever wrote to, and asks again every retry backoff
    (100 ms) while the cluster does not know one of them: a queue topic deleted under a running
    producer cost ten metadata requests a second, in the producer and in the broker, for as long
    as the process lived. A topic unknown in every answer for ``after_s`` with nothing waiting to
    be sent to it is dropped from the requests; a later send to it asks for it again.

    ``after_s`` should be at least the producer's ``max_block_ms``: a send blocks that long at most
    for its topic's metadata, so no send can still be waiting for a topic dropped so. If the
    internals change, nothing is dropped."""
    import time

    metadata: Any = getattr(producer, "_metadata", None)
    acc = getattr(producer, "_accumulator", None)
    if not callable(getattr(metadata, "add_listener", None)) or not isinstance(getattr(metadata, "_topics", None), set):
        return
    missing_since: dict[str, float] = {}

    def on_update(cluster: Any) -> None:
        now = time.monotonic()
        known = cluster.topics(exclude_internal_topics=False)
        pending = {tp.topic for tp, dq in list(getattr(acc, "_batches", {}).items()) if dq}
        for topic in list(missing_since):
            if topic in known or topic not in cluster._topics:
                del missing_since[topic]
        for topic in cluster._topics - known - pending:
            if now - missing_since.setdefault(topic, now) >= after_s:
                cluster._topics.discard(topic)
                del missing_since[topic]

    metadata.add_listener(on_update)


# --- kafka-python 3.0: the fetcher's records parked for paused partitions.


def free_fetch_slot(consumer: Any) -> None:
    """Let the fetcher restore records it parked for a partition that was paused and resumed.
    kafka-python (3.0.12) parks fetched records of a paused partition and restores them only
    while its in-line slot is empty (None); but a drained slot keeps its exhausted (falsy)
    record set, so a resumed partition's parked records may never come back, and the
    partition is never fetched again. Clearing a drained slot lets them back in."""
    fetcher = getattr(consumer, "_fetcher", None)
    current = getattr(fetcher, "_next_partition_records", None)
    if current is not None and not current:
        fetcher._next_partition_records = None  # type: ignore[union-attr]
