"""The task queue: one Kafka topic per queue, ``raylane.tasks.<queue>``, keyed by task id.

A task of priority p > 0 goes to its queue's topic of that priority, ``raylane.tasks-p<p>.<queue>``
(made on first use; a queue name cannot make a topic with that prefix). Readers read every
priority of every queue, and a message of a higher priority is read before those of lower
priorities that are not yet read: strict priority, since a partition is a log read in order.

``TaskQueue`` (producing) and ``QueueReader`` (a consumer-group member) are the contract;
the Kafka classes implement them and translate kafka-python's errors into raylane's.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from raylane.compat import forget_deleted_topics, forget_empty_partitions, free_fetch_slot
from raylane.config import KafkaConnection
from raylane.errors import ConfigError, QueueUnavailable
from raylane.models import TaskMessage
from raylane.signing import SIGNATURE_HEADER, Signer

T = TypeVar("T")

log = logging.getLogger(__name__)

ENVELOPE_BYTES = 64 * 1024  # room for the message's own fields next to its arguments
DLQ_VALUE_BYTES = 16 * 1024  # a dead letter keeps at most this much of the message it replaces
DLQ_REASON_CHARS = 2000
PRIORITY_CHECK_S = 0.1  # how often a reader of several priorities looks for waiting urgent messages
COMMIT_TIMEOUT_MS = 5000  # an offset commit takes milliseconds; kafka-python would wait up to 30 s
# kafka-python backs off up to 30 s between reconnects; after a broker restart raylane
# should be back within about a second.
_RECONNECT = {"reconnect_backoff_ms": 50, "reconnect_backoff_max_ms": 1000}


@dataclass(frozen=True)
class Consumed:
    """One message as read from a queue topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    signature: bytes | None = None  # the ``raylane-signature`` header, if the message has one


@dataclass(frozen=True)
class PartitionState:
    """One assigned partition as a reader sees it; ``lag`` is None until both offsets are known."""

    topic: str
    partition: int
    position: int | None
    end: int | None
    paused: bool

    @property
    def lag(self) -> int | None:
        return None if self.position is None or self.end is None else max(0, self.end - self.position)


class TaskQueue(abc.ABC):
    """Contract of the producing side.

    - ``produce_many`` returns only once every message is acknowledged by all in-sync
      replicas; it raises ``QueueUnavailable`` if any is not, in which case the caller
      must treat all of them as not enqueued.
    - Producing is idempotent per producer session (no duplicates from internal retries).
    """

    @abc.abstractmethod
    def ensure_queue(self, queue: str) -> str:
        """Create the queue's topic if missing; returns the topic name."""

    @abc.abstractmethod
    def queue_exists(self, queue: str) -> bool:
        """Whether the queue's topic exists already."""

    @abc.abstractmethod
    def produce_many(self, messages: Sequence[TaskMessage]) -> None:
        """Enqueue messages, keyed by task id, and wait for their acknowledgement."""

    @abc.abstractmethod
    def dead_letter(self, item: Consumed, reason: str) -> None:
        """Move a message that cannot be processed to the dead-letter topic, with the reason."""

    @abc.abstractmethod
    def dead_letters(self, limit: int) -> list[dict]:
        """The newest ``limit`` dead letters, newest first: each its body (see
        ``dead_letter_body``) with ``dlq_partition`` and ``dlq_offset``, where it lies in the DLQ."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release connections."""


def letter_as_read(value: bytes | None, partition: int, offset: int) -> dict:
    """A dead letter as read: its body (or, if it is not one, what it holds) and where it lies."""
    try:
        body = json.loads(value or b"")
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        body = {"reason": None, "value": (value or b"")[:DLQ_VALUE_BYTES].decode(errors="replace")}
    return {**body, "dlq_partition": partition, "dlq_offset": offset}


class QueueReader(abc.ABC):
    """Contract of a queue reader: poll, then commit what has been settled.

    Offsets are committed only by ``commit``; a message not committed is delivered again
    after a crash or when its partition moves to another reader.
    """

    @abc.abstractmethod
    def poll(self, max_records: int, timeout_s: float) -> list[Consumed]:
        """Up to ``max_records`` messages, waiting at most ``timeout_s``."""

    @abc.abstractmethod
    def commit(self, offsets: dict[tuple[str, int], int]) -> set[tuple[str, int]]:
        """Commit ``{(topic, partition): next offset to read}``; returns the partitions left out
        because this reader no longer reads them."""

    @abc.abstractmethod
    def resize(self, members: int) -> None:
        """Read as one of ``members`` readers from now on (the deployment grew): the partitions
        now another reader's are left (their later commits are left out, and their messages not
        committed are read again by their new reader), and the ones now this reader's are read
        from their committed offsets."""

    @abc.abstractmethod
    def hold(self, topics: set[str], returned: list[Consumed]) -> list[Consumed]:
        """Pause the assigned partitions of ``topics`` (resuming all others), and give back the
        messages of ``returned`` that belong to them: they are read again once resumed."""

    @abc.abstractmethod
    def partitions(self) -> list[PartitionState]:
        """The partitions assigned to this reader: where it reads, how far the log goes, whether paused."""

    @abc.abstractmethod
    def urgent(self) -> bool:
        """Whether messages of a higher priority than others assigned here wait unread: a caller
        whose window is full of lower-priority messages should poll for them anyway."""

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group."""


PRIORITIES = range(10)


def _priority_prefix(prefix: str, priority: int) -> str:
    return f"{prefix.rstrip('.')}-p{priority}."


def _send(producer: Any, topic: str, key: bytes, value: bytes, headers: list, partitions: list[int]) -> Any:
    """``producer.send`` of one record, placed among ``partitions`` by a CRC of its key: the
    client's own partitioner hashes the key in Python, at about a fifth of the cost of a send.
    Should a partition be gone since they were read, the client places it."""
    if partitions:
        with contextlib.suppress(ValueError):  # the client's "unrecognized partition"
            return producer.send(
                topic, key=key, value=value, headers=headers, partition=partitions[zlib.crc32(key) % len(partitions)]
            )
    return producer.send(topic, key=key, value=value, headers=headers)


def topic_of(prefix: str, queue: str, priority: int = 0) -> str:
    """The Kafka topic of ``queue``'s tasks of ``priority`` (0 is the queue's own topic)."""
    return f"{prefix}{queue}" if priority == 0 else f"{_priority_prefix(prefix, priority)}{queue}"


def topics_of(prefix: str, queue: str) -> set[str]:
    """Every topic ``queue``'s tasks may be in, one per priority."""
    return {topic_of(prefix, queue, p) for p in PRIORITIES}


def priority_of(prefix: str, topic: str) -> int | None:
    """The priority of a queue topic; None if ``topic`` is not one."""
    if topic.startswith(prefix) and len(topic) > len(prefix):
        return 0
    for p in PRIORITIES[1:]:
        pp = _priority_prefix(prefix, p)
        if topic.startswith(pp) and len(topic) > len(pp):
            return p
    return None


def queue_of(prefix: str, topic: str) -> str | None:
    """The queue whose tasks ``topic`` holds (of any priority); None if it holds none."""
    priority = priority_of(prefix, topic)
    if priority is None:
        return None
    return topic[len(prefix) :] if priority == 0 else topic[len(_priority_prefix(prefix, priority)) :]


def kafka_options(kafka: KafkaConnection | str) -> dict[str, Any]:
    """kafka-python client options for ``kafka`` (a bare address: PLAINTEXT), with raylane's quick reconnects."""
    conn = kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(bootstrap=kafka)
    return {**conn.client_options(), **_RECONNECT}


_REPLICATED_PRODUCE_S = 30.0
_SINGLE_COPY_PRODUCE_S = 10.0
# After a failed connection kafka-python leaves a broker alone for up to reconnect_backoff_max_ms,
# and an admin request meanwhile fails at once ("No node_id provided") even if the broker is back.
# An admin call is tried again for this long, so one blip does not refuse the submits that follow.
_ADMIN_RETRY_S = 3.0


class KafkaTaskQueue(TaskQueue):
    """Producer side on Kafka: ``acks=all``, idempotent producer, topics created on first use.
    Every task message carries its signature under the cluster secret in a header."""

    def __init__(
        self,
        kafka: KafkaConnection | str,
        *,
        prefix: str,
        dlq_topic: str,
        partitions: int,
        max_payload_bytes: int,
        signer: Signer,
        produce_timeout_s: float | None = None,
        copies: int | None = None,
    ):
        self._options = kafka_options(kafka)
        self.bootstrap = self._options["bootstrap_servers"]
        self.signer = signer
        self.prefix = prefix
        self.dlq_topic = dlq_topic
        self.partitions = partitions
        self.max_message = max_payload_bytes + ENVELOPE_BYTES
        self._produce_timeout_s = produce_timeout_s
        self.copies = copies
        self._known: set[str] = set()
        self._lock = threading.Lock()
        # Submits of many threads meet a client not made yet: one of them makes it, and no other
        # makes a second, whose connections and sender thread no one would close. Reentrant: the
        # producer's timeouts ask the admin client for the cluster's brokers. Always taken after
        # ``_lock``, never before it.
        self._clients_lock = threading.RLock()
        self._producer = None
        self._admin = None

    @property
    def produce_timeout_s(self) -> float:
        """How long a produce waits for Kafka's acknowledgement before the submit fails: as given,
        or 30 s where topics have several copies and 10 s where they have one.

        With copies, a broker's death is ridden out: its partitions get new leaders once the
        controller drops it, after Kafka's broker session timeout (9 s by default) plus an election,
        and a submit should wait for that rather than fail. With one copy nothing takes over, and
        the submit had better fail soon with QueueUnavailable."""
        if self._produce_timeout_s is None:
            try:
                several = self.replication_factor() > 1
            except Exception:  # the cluster cannot be asked: what the produce meets will say more
                return _SINGLE_COPY_PRODUCE_S
            self._produce_timeout_s = _REPLICATED_PRODUCE_S if several else _SINGLE_COPY_PRODUCE_S
        return self._produce_timeout_s

    def _get_producer(self):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        with self._clients_lock:
            if self._producer is None:
                try:
                    self._producer = KafkaProducer(
                        **self._options,
                        acks="all",
                        enable_idempotence=True,
                        linger_ms=2,
                        # A batch per partition as large as a message may be. With the client's
                        # 16 KiB, a produce of hundreds filled a batch, started the next, and from
                        # then on woke the sender thread for every message it added (a socket
                        # write each, and the GIL handed back and forth).
                        batch_size=self.max_message,
                        max_request_size=self.max_message,
                        request_timeout_ms=int(self.produce_timeout_s * 1000),
                        max_block_ms=int(self.produce_timeout_s * 1000),
                    )
                except (KafkaError, OSError) as e:
                    raise QueueUnavailable(f"Kafka at {self.bootstrap} unreachable: {e}") from e
                forget_deleted_topics(self._producer, after_s=self.produce_timeout_s)
            return self._producer

    def _admin_client(self):
        from kafka import KafkaAdminClient

        with self._clients_lock:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self._options, request_timeout_ms=int(_SINGLE_COPY_PRODUCE_S * 1000))
            return self._admin

    def _ask_admin(self, call: Callable[[Any], T]) -> T:
        """``call(admin client)``, tried again for a few seconds while the brokers are only
        waiting out a reconnect backoff or refuse the connection (a broker restarting)."""
        from kafka.errors import KafkaConnectionError, NodeNotReadyError

        deadline = time.monotonic() + _ADMIN_RETRY_S
        while True:
            try:
                return call(self._admin_client())
            except (NodeNotReadyError, KafkaConnectionError):
                if time.monotonic() >= deadline:
                    raise
            time.sleep(_RECONNECT["reconnect_backoff_ms"] / 1000)

    def _ensure_topic(self, topic: str) -> str:
        from kafka.admin import NewTopic
        from kafka.errors import InvalidReplicationFactorError, KafkaError, TopicAlreadyExistsError

        with self._lock:
            if topic in self._known:
                return topic
            try:
                if topic not in set(self._ask_admin(lambda admin: admin.list_topics())):
                    copies = self.replication_factor()
                    new = NewTopic(
                        topic,
                        num_partitions=self.partitions,
                        replication_factor=copies,
                        topic_configs={
                            "max.message.bytes": str(self.max_message),
                            # acks=all then means: on at least two brokers, where there are several.
                            "min.insync.replicas": str(max(1, copies - 1)),
                        },
                    )
                    # A retried create may meet the topic its first try made.
                    with contextlib.suppress(TopicAlreadyExistsError):
                        self._ask_admin(lambda admin: admin.create_topics([new]))
            except InvalidReplicationFactorError as e:
                raise ConfigError(
                    f"could not create Kafka topic {topic} with {self.replication_factor()} copies: {e} "
                    "(RAYLANE_REPLICATION is more than the cluster's brokers?)"
                ) from e
            except (KafkaError, OSError) as e:
                raise QueueUnavailable(f"could not create Kafka topic {topic}: {e}") from e
            self._known.add(topic)
            return topic

    def replication_factor(self) -> int:
        """Copies of each partition of a new topic: ``copies``, or as many as the cluster has
        brokers, up to 3 (asked once)."""
        if self.copies is None:
            brokers = self._ask_admin(lambda admin: admin.describe_cluster())["brokers"]
            self.copies = min(3, max(1, len(brokers)))
        return self.copies

    def ensure_queue(self, queue: str) -> str:
        return self._ensure_topic(topic_of(self.prefix, queue))

    def queue_exists(self, queue: str) -> bool:
        from kafka.errors import KafkaError

        topic = topic_of(self.prefix, queue)
        with self._lock:
            if topic in self._known:
                return True
            try:
                exists = topic in set(self._ask_admin(lambda admin: admin.list_topics()))
            except (KafkaError, OSError) as e:
                raise QueueUnavailable(f"could not list Kafka topics: {e}") from e
            if exists:
                self._known.add(topic)
            return exists

    def produce_many(self, messages: Sequence[TaskMessage]) -> None:
        from kafka.errors import KafkaError

        topics = {topic_of(self.prefix, m.queue, m.priority) for m in messages}
        for topic in topics:
            self._ensure_topic(topic)
        producer = self._get_producer()
        try:
            futures = []
            partitions = {topic: sorted(producer.partitions_for(topic) or ()) for topic in topics}
            for m in messages:
                value = m.to_bytes()
                topic = topic_of(self.prefix, m.queue, m.priority)
                futures.append(
                    _send(
                        producer,
                        topic,
                        m.id.encode(),
                        value,
                        [(SIGNATURE_HEADER, self.signer.sign_message(value).encode())],
                        partitions[topic],
                    )
                )
            producer.flush(timeout=self.produce_timeout_s)
            for f in futures:
                f.get(timeout=self.produce_timeout_s)
        except (KafkaError, OSError) as e:
            # A topic may have been deleted since it was made (its queue removed): the next produce
            # looks for it again, and makes it if it is gone, instead of waiting on it for ever.
            with self._lock:
                self._known -= topics
            raise QueueUnavailable(f"Kafka did not acknowledge {len(messages)} task message(s): {e}") from e
        finally:
            forget_empty_partitions(producer)

    def dead_letter(self, item: Consumed, reason: str) -> None:
        from kafka.errors import KafkaError

        self._ensure_topic(self.dlq_topic)
        try:
            body = json.dumps(dead_letter_body(item, reason)).encode()
            self._get_producer().send(self.dlq_topic, key=item.key, value=body).get(timeout=self.produce_timeout_s)
        except (KafkaError, OSError) as e:
            raise QueueUnavailable(f"could not write to {self.dlq_topic}: {e}") from e

    def dead_letters(self, limit: int) -> list[dict]:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError
        from kafka.structs import TopicPartition

        try:
            consumer = KafkaConsumer(**self._options, enable_auto_commit=False, consumer_timeout_ms=1000)
        except (KafkaError, OSError) as e:
            raise QueueUnavailable(f"Kafka at {self.bootstrap} unreachable: {e}") from e
        try:
            found = consumer.partitions_for_topic(self.dlq_topic)
            if not found:
                return []
            parts = [TopicPartition(self.dlq_topic, p) for p in sorted(found)]
            consumer.assign(parts)
            ends = consumer.end_offsets(parts)
            starts = consumer.beginning_offsets(parts)
            # The newest ``limit`` of each partition hold the newest ``limit`` of all.
            wanted = 0
            for tp in parts:
                first = max(starts[tp], ends[tp] - limit)
                consumer.seek(tp, first)
                wanted += ends[tp] - first
            letters: list[tuple[int, dict]] = []
            deadline = time.monotonic() + 30
            while len(letters) < wanted and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    for r in batch:
                        letters.append((r.timestamp, letter_as_read(r.value, r.partition, r.offset)))
            letters.sort(key=lambda t: (-t[0], -t[1]["dlq_offset"]))
            return [letter for _, letter in letters[:limit]]
        except (KafkaError, OSError) as e:
            raise QueueUnavailable(f"could not read {self.dlq_topic}: {e}") from e
        finally:
            consumer.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def dead_letter_body(item: Consumed, reason: str) -> dict:
    """The dead letter of ``item``: why it was refused, where it came from, and the start of it.
    Bounded whatever the message was, so that a dead letter always fits where it goes."""
    value = item.value or b""
    return {
        "reason": reason[:DLQ_REASON_CHARS],
        "topic": item.topic,
        "partition": item.partition,
        "offset": item.offset,
        "key": (item.key or b"")[:200].decode(errors="replace") or None,
        "value": value[:DLQ_VALUE_BYTES].decode(errors="replace"),
        "value_bytes": len(value),
        "truncated": len(value) > DLQ_VALUE_BYTES,
    }


def owner_of(topic: str, partition: int, members: int) -> int:
    """Which of ``members`` readers reads a partition: a topic's partitions go round-robin,
    starting at a member chosen by the topic's name, so that every reader computes the same split."""
    return (zlib.crc32(topic.encode()) + partition) % members


class KafkaQueueReader(QueueReader):
    """Reads every queue topic (``<prefix>*``) as reader ``member`` of ``members``, committing by hand
    under the consumer group's name.

    Partitions are split by ``owner_of`` and assigned explicitly rather than by the group
    protocol: a new queue then costs no group-wide rebalance (which stops every member), and a
    reader whose process dies is restarted by Ray and takes up the same partitions from their
    committed offsets. Topics are rediscovered every ``refresh_s``.
    """

    def __init__(
        self,
        kafka: KafkaConnection | str,
        *,
        prefix: str,
        group: str,
        max_message: int,
        member: int = 0,
        members: int = 1,
        refresh_s: float = 1.0,
    ):
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        if not 0 <= member < members:
            raise ValueError(f"member {member} is not one of {members} readers")
        self.prefix, self.member, self.members, self.refresh_s = prefix, member, members, refresh_s
        self._options = kafka_options(kafka)
        self._refreshed = 0.0
        self._held: set = set()  # partitions of paused queues
        self._yielding: set = set()  # partitions waiting while a higher priority has messages
        self._prioritized = 0.0
        # KafkaConsumer is not thread-safe; polls and inspection may come from different threads.
        self._lock = threading.Lock()
        try:
            self._consumer = KafkaConsumer(
                **self._options,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=max(max_message, 1 << 20),
            )
        except (KafkaError, OSError) as e:
            raise QueueUnavailable(f"Kafka at {self._options['bootstrap_servers']} unreachable: {e}") from e
        self._offsets: Any = None  # a client of its own for log-end offsets (see _ends)

    def _ends(self, partitions: list) -> dict:
        """Log-end offsets of ``partitions``, asked on a connection of their own: a broker answers
        a connection's requests in order, and the reader's own connection has a fetch waiting
        there (up to 500 ms when there is nothing to read)."""
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        if self._offsets is None:
            self._offsets = KafkaConsumer(**self._options)
        try:
            return self._offsets.end_offsets(partitions)
        except (KafkaError, KeyError) as e:
            # kafka-python raises KeyError for a partition whose end the broker did not say (its
            # topic being deleted, its leader moving). The ends are unknown for this pass, so no
            # priority is held back for them; failing the poll instead held up every queue.
            log.info("log-end offsets of %d partition(s) unknown this pass: %r", len(partitions), e)
            return {}

    def _refresh_assignment(self) -> None:
        from kafka.structs import TopicPartition

        mine = set()
        for topic in self._consumer.topics():
            if priority_of(self.prefix, topic) is not None:
                for p in self._consumer.partitions_for_topic(topic) or ():
                    if owner_of(topic, p, self.members) == self.member:
                        mine.add(TopicPartition(topic, p))
        if mine != self._consumer.assignment():
            self._consumer.assign(sorted(mine))
        self._refreshed = time.monotonic()

    def poll(self, max_records: int, timeout_s: float) -> list[Consumed]:
        from kafka.errors import KafkaError

        try:
            with self._lock:
                if time.monotonic() - self._refreshed >= self.refresh_s:
                    self._refresh_assignment()
                if not self._consumer.assignment():
                    time.sleep(timeout_s)  # nothing to read yet; kafka-python refuses to poll without partitions
                    return []
                if time.monotonic() - self._prioritized >= PRIORITY_CHECK_S:
                    self._prioritize()
                free_fetch_slot(self._consumer)
                batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except (KafkaError, OSError) as e:
            raise QueueUnavailable(f"Kafka poll failed: {e}") from e
        out = []
        for tp, records in batches.items():
            for r in records:
                sig = next((v for k, v in (r.headers or ()) if k == SIGNATURE_HEADER), None)
                out.append(Consumed(tp.topic, tp.partition, r.offset, r.key, r.value, sig))
        return out

    def commit(self, offsets: dict[tuple[str, int], int]) -> set[tuple[str, int]]:
        """Commit ``offsets`` of the partitions this reader still reads; returns the partitions
        it left out because they are no longer its own (their topic was deleted). Kafka would
        neither take nor quickly refuse a commit to a deleted topic: kafka-python retries it
        until its timeout, and every later commit that carried it would wait as long."""
        from kafka.errors import KafkaError

        with self._lock:
            try:
                return self._commit_assigned(offsets)
            except (KafkaError, OSError):
                pass  # a topic deleted since the assignment was last refreshed fails the commit: look again, once
            try:
                self._refresh_assignment()
                return self._commit_assigned(offsets)
            except (KafkaError, OSError) as e:
                raise QueueUnavailable(f"Kafka offset commit failed: {e}") from e

    def resize(self, members: int) -> None:
        from kafka.errors import KafkaError

        if not 0 <= self.member < members:
            raise ValueError(f"member {self.member} is not one of {members} readers")
        with self._lock:
            self.members = members
            try:
                self._refresh_assignment()
            except (KafkaError, OSError):
                self._refreshed = 0.0  # Kafka is away: the next poll moves the partitions
        log.info("reader %d is now one of %d", self.member, members)

    def _commit_assigned(self, offsets: dict[tuple[str, int], int]) -> set[tuple[str, int]]:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        mine = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items() if (t, p) in assigned
        }
        if mine:
            self._consumer.commit(mine, timeout_ms=COMMIT_TIMEOUT_MS)
        return offsets.keys() - assigned

    def _prioritize(self) -> None:
        """Let partitions of a priority wait while a higher priority has messages not yet read:
        a paused partition's fetched but unread messages are dropped (read again on resume),
        so a message of priority 9 is not stuck behind a client-side buffer of priority 0."""
        self._prioritized = time.monotonic()
        by_priority: dict = {}
        for tp in self._consumer.assignment():
            if tp not in self._held:
                by_priority.setdefault(priority_of(self.prefix, tp.topic) or 0, []).append(tp)
        yielding: set = set()
        if len(by_priority) > 1:
            urgent = [tp for p, tps in by_priority.items() if p > 0 for tp in tps]
            ends = self._ends(urgent)
            waiting = set()
            for tp in urgent:
                try:
                    position = self._consumer.position(tp, timeout_ms=0)
                except Exception:  # no position yet (just assigned): read at the next fetch, not known to wait
                    continue
                if position is not None and ends.get(tp, 0) > position:
                    waiting.add(priority_of(self.prefix, tp.topic) or 0)
            if waiting:
                top = max(waiting)
                yielding = {tp for p, tps in by_priority.items() if p < top for tp in tps}
        if yielding != self._yielding:
            self._yielding = yielding
            self._apply_pauses()

    def urgent(self) -> bool:
        with self._lock:
            if not self._consumer.assignment():
                return False
            if time.monotonic() - self._prioritized >= PRIORITY_CHECK_S:
                self._prioritize()
            return bool(self._yielding)

    def _apply_pauses(self) -> None:
        paused = (self._held | self._yielding) & set(self._consumer.assignment())
        to_resume = set(self._consumer.paused()) - paused
        if to_resume:
            self._consumer.resume(*to_resume)
        if paused:
            self._consumer.pause(*paused)

    def hold(self, topics: set[str], returned: list[Consumed]) -> list[Consumed]:
        """Pause the assigned partitions of ``topics`` (resuming all others), and give back the
        messages of ``returned`` that belong to them: they will be read again once resumed."""
        from kafka.structs import TopicPartition

        assigned = self._consumer.assignment()
        self._held = {tp for tp in assigned if tp.topic in topics}
        self._apply_pauses()
        keep: list[Consumed] = []
        first_held: dict = {}
        for item in returned:
            if item.topic in topics:
                tp = TopicPartition(item.topic, item.partition)
                first_held[tp] = min(first_held.get(tp, item.offset), item.offset)
            else:
                keep.append(item)
        for tp, offset in first_held.items():
            self._consumer.seek(tp, offset)
        return keep

    def partitions(self) -> list[PartitionState]:
        """The partitions assigned to this member: where it reads, how far the log goes, whether paused.
        Uses only what the consumer already knows (no broker round trip)."""
        with self._lock:
            return self._partitions()

    def _partitions(self) -> list[PartitionState]:
        paused = self._consumer.paused()
        out = []
        for tp in sorted(self._consumer.assignment()):
            try:
                position = self._consumer.position(tp, timeout_ms=0)
            except Exception:  # no position yet (just assigned): unknown, not an error
                position = None
            out.append(PartitionState(tp.topic, tp.partition, position, self._consumer.highwater(tp), tp in paused))
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)
        if self._offsets is not None:
            self._offsets.close()
