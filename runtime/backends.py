"""Factories of the status store and the task queue: the one place that picks an implementation.

An address ``memory://<name>`` (as OpenSearch URL or Kafka bootstrap) gives the in-memory
twin of that name, shared within the process; any other address gives the real client.
"""

from __future__ import annotations

import threading

from raylane.config import KafkaConnection, OpenSearchConnection
from raylane.memory import InMemoryBroker, InMemoryQueueReader, InMemoryStore, InMemoryTaskQueue
from raylane.queue import ENVELOPE_BYTES, KafkaQueueReader, KafkaTaskQueue, QueueReader, TaskQueue
from raylane.signing import Signer
from raylane.store import OpenSearchStore, StatusStore

MEMORY = "memory://"

_lock = threading.Lock()
_stores: dict[str, InMemoryStore] = {}
_brokers: dict[str, InMemoryBroker] = {}


def is_memory(address: str) -> bool:
    """Whether ``address`` names an in-memory twin."""
    return address.startswith(MEMORY)


def memory_store(name: str) -> InMemoryStore:
    """The process's in-memory store called ``name`` (made on first use)."""
    with _lock:
        return _stores.setdefault(name, InMemoryStore())


def memory_broker(name: str) -> InMemoryBroker:
    """The process's in-memory broker called ``name`` (made on first use)."""
    with _lock:
        return _brokers.setdefault(name, InMemoryBroker())


def open_store(conn: OpenSearchConnection, alias: str, copies: int | None = None) -> StatusStore:
    """The status store at ``conn``, its records behind ``alias`` (each shard in ``copies`` copies)."""
    if is_memory(conn.url):
        return memory_store(f"{conn.url[len(MEMORY) :]}/{alias}")
    return OpenSearchStore(conn, alias, copies=copies)


def _address(kafka: KafkaConnection | str) -> str:
    return kafka.bootstrap if isinstance(kafka, KafkaConnection) else kafka


def open_queue(
    kafka: KafkaConnection | str,
    *,
    prefix: str,
    dlq_topic: str,
    partitions: int,
    max_payload_bytes: int,
    signer: Signer,
    copies: int | None = None,
) -> TaskQueue:
    """The producing side of the queues at ``kafka``."""
    if is_memory(_address(kafka)):
        return InMemoryTaskQueue(
            memory_broker(_address(kafka)[len(MEMORY) :]),
            prefix=prefix,
            dlq_topic=dlq_topic,
            partitions=partitions,
            max_payload_bytes=max_payload_bytes,
            signer=signer,
        )
    return KafkaTaskQueue(
        kafka,
        prefix=prefix,
        dlq_topic=dlq_topic,
        partitions=partitions,
        max_payload_bytes=max_payload_bytes,
        signer=signer,
        copies=copies,
    )


def open_reader(
    kafka: KafkaConnection | str, *, prefix: str, group: str, max_payload_bytes: int, member: int = 0, members: int = 1
) -> QueueReader:
    """Reader ``member`` of ``members`` of every queue topic at ``kafka``."""
    if is_memory(_address(kafka)):
        return InMemoryQueueReader(
            memory_broker(_address(kafka)[len(MEMORY) :]), prefix=prefix, group=group, member=member, members=members
        )
    return KafkaQueueReader(
        kafka,
        prefix=prefix,
        group=group,
        max_message=max_payload_bytes + ENVELOPE_BYTES,
        member=member,
        members=members,
    )
