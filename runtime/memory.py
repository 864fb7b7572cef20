"""In-memory twins of the status store and the task queue, for the unit tier.

``InMemoryStore`` honours external versions exactly as OpenSearch does: a write is accepted
only if its version is higher than the stored one, otherwise it is a 409 conflict, and every
write of a bulk gets its own outcome. It also refuses what OpenSearch refuses for content
(a document that does not fit the strict mapping, one nested too deep, one too large).
``InMemoryBroker`` stands for a Kafka cluster: topics of partitions, consumer-group offsets;
``InMemoryTaskQueue`` and ``InMemoryQueueReader`` are its producer and reader.

Both pass the same contract suites as the real implementations (tests/contracts.py).
Reached through ``raylane.backends`` with the address ``memory://<name>``: one process shares
one store (and one broker) per name.
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from raylane.errors import QueueUnavailable, StoreUnavailable
from raylane.models import PackedRecord, Progress, TaskMessage, TaskRecord, WriteOutcome
from raylane.queue import (
    ENVELOPE_BYTES,
    Consumed,
    PartitionState,
    QueueReader,
    TaskQueue,
    dead_letter_body,
    letter_as_read,
    owner_of,
    priority_of,
    topic_of,
)
from raylane.schedules import Schedule
from raylane.signing import Signer
from raylane.states import TaskState
from raylane.store import MAX_BULK_BYTES, StatusStore, TaskEnd, TaskQuery, finished_states

# What OpenSearch refuses for content: objects nested past index.mapping.depth.limit, and
# request bodies over http.max_content_length.
_DEPTH_LIMIT = 20
_MAX_CONTENT_BYTES = 100 << 20
_WORD = re.compile(r"\w+")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of ``value``, counting no further than ``limit + 1``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d + 1 > limit:
                return d + 1
            deepest = max(deepest, d + 1)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _words(text: str | None) -> set[str]:
    return {w.lower() for w in _WORD.findall(text or "")}


def _at(t: datetime) -> float:
    """Seconds since the epoch (a naive time taken as UTC), for ordering and ranges."""
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


class InMemoryStore(StatusStore):
    """Task records in a dict, written only by versioned writes (thread-safe).

    Searches see every accepted write at once, which the contract allows (it promises
    visibility after ``refresh``, not delay). ``get`` and ``get_many`` return copies."""

    def __init__(self, max_bulk_bytes: int = MAX_BULK_BYTES) -> None:
        self.max_bulk_bytes = max_bulk_bytes
        self._lock = threading.Lock()
        self._docs: dict[str, tuple[int, bytes]] = {}  # id -> (version, document)
        self._records: dict[str, TaskRecord] = {}
        self._paused: set[str] = set()
        self._definitions: dict[str, tuple[str, bytes, str | None]] = {}
        self._beats: dict[str, int] = {}
        self._progress: dict[str, Progress] = {}
        self._schedules: dict[str, Schedule] = {}
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise StoreUnavailable("the in-memory store is closed")

    def ensure_schema(self) -> None:
        self._check_open()

    def write_many(self, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        self._check_open()
        out = []
        with self._lock:
            for r in records:
                out.append(self._write(PackedRecord.of(r)))
        return out

    def _write(self, p: PackedRecord) -> WriteOutcome:
        def refused(status: int, reason: str) -> WriteOutcome:
            return WriteOutcome(task_id=p.id, version=p.version, accepted=False, status=status, reason=reason)

        if len(p.doc) > _MAX_CONTENT_BYTES:
            return refused(413, f"request_entity_too_large: the record is {len(p.doc)} bytes")
        try:
            raw = json.loads(p.doc)
        except ValueError as e:
            return refused(400, f"mapper_parsing_exception: {e}")
        if _depth(raw, _DEPTH_LIMIT) > _DEPTH_LIMIT:
            return refused(400, f"mapper_parsing_exception: the document is nested deeper than {_DEPTH_LIMIT}")
        try:
            record = TaskRecord.model_validate(raw)
        except ValidationError as e:
            return refused(400, f"strict_dynamic_mapping_exception: {e.errors()[0]['msg']}")
        stored = self._docs.get(p.id)
        if stored is not None and stored[0] >= p.version:
            return refused(409, "conflict")
        self._docs[p.id] = (p.version, p.doc)
        self._records[p.id] = record
        return WriteOutcome(task_id=p.id, version=p.version, accepted=True, status=201 if stored is None else 200)

    def get(self, task_id: str) -> TaskRecord | None:
        self._check_open()
        with self._lock:
            r = self._records.get(task_id)
        return r.model_copy(deep=True) if r is not None else None

    def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        self._check_open()
        with self._lock:
            return {i: self._records[i].model_copy(deep=True) for i in task_ids if i in self._records}

    @staticmethod
    def _matches(r: TaskRecord, q: TaskQuery) -> bool:
        created = _at(r.created_at)
        return (
            (not q.state or r.state in q.state)
            and all(
                getattr(q, f) is None or getattr(r, f) == getattr(q, f)
                for f in ("name", "queue", "tenant", "schedule_id", "workflow_id")
            )
            and all(t in r.tags for t in q.tags)
            and (q.since is None or created >= _at(q.since))
            and (q.until is None or created < _at(q.until))
            and (not q.text or _words(q.text) <= _words(r.error))
        )

    def _selected(self, q: TaskQuery) -> list[TaskRecord]:
        with self._lock:
            return [r for r in self._records.values() if self._matches(r, q)]

    def search(
        self, query: TaskQuery, limit: int = 100, after: list | None = None
    ) -> tuple[list[TaskRecord], list | None]:
        self._check_open()
        hits = sorted(((_at(r.created_at), r.id), r) for r in self._selected(query))
        hits.reverse()  # newest first, then by id descending, as the OpenSearch store sorts
        if after:
            cursor = (float(after[0]), str(after[1]))
            hits = [h for h in hits if h[0] < cursor]
        page = hits[:limit]
        more = len(hits) > limit
        return [r.model_copy(deep=True) for _, r in page], list(page[-1][0]) if more and page else None

    def counts(self, query: TaskQuery) -> dict[str, int]:
        self._check_open()
        out: dict[str, int] = {}
        for r in self._selected(query):
            out[r.state.value] = out.get(r.state.value, 0) + 1
        return out

    def counts_by_queue(self, query: TaskQuery) -> dict[str, dict[str, int]]:
        self._check_open()
        out: dict[str, dict[str, int]] = {}
        for r in self._selected(query):
            per = out.setdefault(r.queue, {})
            per[r.state.value] = per.get(r.state.value, 0) + 1
        return out

    def ends(self, query: TaskQuery, since: datetime, limit: int = 10_000) -> list[TaskEnd]:
        self._check_open()
        cut = _at(since)
        done = [r for r in self._selected(query) if r.finished_at is not None and _at(r.finished_at) >= cut]
        done.sort(key=lambda r: _at(r.finished_at), reverse=True)  # type: ignore[arg-type]
        return [TaskEnd(r.state.value, r.created_at, r.started_at, r.finished_at) for r in done[:limit]]  # type: ignore[arg-type]

    def set_paused(self, queue: str, paused: bool) -> None:
        self._check_open()
        with self._lock:
            (self._paused.add if paused else self._paused.discard)(queue)

    def paused_queues(self) -> set[str]:
        self._check_open()
        with self._lock:
            return set(self._paused)

    def save_definitions(self, definitions: Sequence[tuple[str, str, bytes, str]]) -> None:
        self._check_open()
        with self._lock:
            for name, digest, blob, signature in definitions:
                self._definitions[name] = (digest, bytes(blob), signature)

    def load_definition(self, name: str) -> tuple[str, bytes, str | None] | None:
        self._check_open()
        with self._lock:
            return self._definitions.get(name)

    def put_progress(self, progress: Sequence[Progress]) -> None:
        self._check_open()
        with self._lock:
            self._progress.update((p.task_id, p) for p in progress)

    def progress_of(self, task_ids: Sequence[str]) -> dict[str, Progress]:
        self._check_open()
        with self._lock:
            return {i: self._progress[i] for i in task_ids if i in self._progress}

    def heartbeat(self, owner: str, beat: int) -> None:
        self._check_open()
        with self._lock:
            self._beats[owner] = beat

    def heartbeats(self) -> dict[str, int]:
        self._check_open()
        with self._lock:
            return dict(self._beats)

    def delete_heartbeats(self, owners: Sequence[str]) -> None:
        self._check_open()
        with self._lock:
            for o in owners:
                self._beats.pop(o, None)

    def _oldest(self, keep, key, limit: int) -> list[TaskRecord]:
        with self._lock:
            chosen = [r for r in self._records.values() if keep(r)]
        chosen.sort(key=key)
        return [r.model_copy(deep=True) for r in chosen[:limit]]

    def running_not_owned_by(self, owners: set[str], limit: int) -> list[TaskRecord]:
        self._check_open()
        return self._oldest(
            lambda r: r.state is TaskState.RUNNING and r.lease_owner not in owners, lambda r: _at(r.updated_at), limit
        )

    def running_owned_by(self, owner: str, before: datetime, limit: int) -> list[TaskRecord]:
        self._check_open()
        cut = _at(before)
        return self._oldest(
            lambda r: r.state is TaskState.RUNNING and r.lease_owner == owner and _at(r.updated_at) < cut,
            lambda r: _at(r.updated_at),
            limit,
        )

    def stale_pending(self, before: datetime, skip_queues: set[str], limit: int) -> list[TaskRecord]:
        self._check_open()
        cut = _at(before)
        return self._oldest(
            lambda r: r.state is TaskState.PENDING and _at(r.updated_at) < cut and r.queue not in skip_queues,
            lambda r: _at(r.updated_at),
            limit,
        )

    def overdue_scheduled(self, before: datetime, skip_queues: set[str], limit: int) -> list[TaskRecord]:
        self._check_open()
        cut = _at(before)
        return self._oldest(
            lambda r: (
                r.state is TaskState.SCHEDULED
                and r.not_before is not None
                and _at(r.not_before) < cut
                and r.queue not in skip_queues
                and not r.limited
            ),
            lambda r: _at(r.not_before),
            limit,
        )

    def waiting_for_parents(self, before: datetime, limit: int) -> list[TaskRecord]:
        self._check_open()
        cut = _at(before)
        return self._oldest(
            lambda r: r.waits_for_parents and _at(r.updated_at) < cut, lambda r: _at(r.updated_at), limit
        )

    def unfinished_retries(self, before: datetime, limit: int) -> list[TaskRecord]:
        self._check_open()
        cut = _at(before)
        return self._oldest(
            lambda r: r.state is TaskState.FAILED and r.will_retry and _at(r.updated_at) < cut,
            lambda r: _at(r.updated_at),
            limit,
        )

    def save_schedule(self, schedule: Schedule) -> None:
        self._check_open()
        with self._lock:
            old = self._schedules.get(schedule.key)
            kept = {"paused": old.paused, "last_tick": old.last_tick} if old else {"last_tick": None}
            self._schedules[schedule.key] = schedule.model_copy(update=kept, deep=True)

    def get_schedule(self, key: str) -> Schedule | None:
        self._check_open()
        with self._lock:
            s = self._schedules.get(key)
        return s.model_copy(deep=True) if s else None

    def list_schedules(self, tenant: str | None = None) -> list[Schedule]:
        self._check_open()
        with self._lock:
            chosen = [s for k, s in sorted(self._schedules.items()) if tenant is None or s.tenant == tenant]
        return [s.model_copy(deep=True) for s in chosen]

    def delete_schedule(self, key: str) -> bool:
        self._check_open()
        with self._lock:
            return self._schedules.pop(key, None) is not None

    def set_schedule_paused(self, key: str, paused: bool) -> bool:
        self._check_open()
        with self._lock:
            s = self._schedules.get(key)
            if s is None:
                return False
            self._schedules[key] = s.model_copy(update={"paused": paused})
            return True

    def advance_schedule(self, key: str, tick: datetime) -> None:
        self._check_open()
        with self._lock:
            s = self._schedules.get(key)
            if s is not None and (s.last_tick is None or s.last_tick < tick):
                self._schedules[key] = s.model_copy(update={"last_tick": tick})

    def purge(self, before: datetime, states: Sequence[TaskState] | None = None) -> int:
        self._check_open()
        wanted = set(finished_states(states))
        with self._lock:
            gone = [
                i
                for i, r in self._records.items()
                if r.state in wanted and not r.will_retry and r.finished_at and _at(r.finished_at) < _at(before)
            ]
            for task_id in gone:
                del self._records[task_id]
                del self._docs[task_id]
                self._progress.pop(task_id, None)
        return len(gone)

    def refresh(self) -> None:
        self._check_open()

    def close(self) -> None:
        """Nothing to release; the records stay, as an OpenSearch cluster outlives a client."""


class InMemoryBroker:
    """Topics of partitions and the committed offsets of consumer groups, shared by the in-memory
    producers and readers of one process (as one Kafka cluster is shared by its clients)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.topics: dict[str, list[list[Consumed]]] = {}
        self.committed: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> next offset
        self.max_message: dict[str, int] = {}
        self.down = False

    def check_up(self) -> None:
        if self.down:
            raise QueueUnavailable("the in-memory broker is down")

    def create_topic(self, topic: str, partitions: int, max_message: int) -> None:
        with self.cond:
            self.check_up()
            if topic not in self.topics:
                self.topics[topic] = [[] for _ in range(partitions)]
                self.max_message[topic] = max_message

    def append(self, topic: str, key: bytes | None, value: bytes, signature: bytes | None) -> Consumed:
        with self.cond:
            self.check_up()
            parts = self.topics[topic]
            p = zlib.crc32(key or b"") % len(parts)
            if len(value) > self.max_message[topic]:
                raise QueueUnavailable(f"message of {len(value)} bytes is larger than {topic} takes")
            item = Consumed(topic, p, len(parts[p]), key, value, signature)
            parts[p].append(item)
            self.cond.notify_all()
            return item


class InMemoryTaskQueue(TaskQueue):
    """The producing side on an ``InMemoryBroker``; messages are signed as on Kafka."""

    def __init__(
        self,
        broker: InMemoryBroker,
        *,
        prefix: str,
        dlq_topic: str,
        partitions: int,
        max_payload_bytes: int,
        signer: Signer,
    ) -> None:
        self.broker, self.prefix, self.dlq_topic, self.partitions = broker, prefix, dlq_topic, partitions
        self.max_message = max_payload_bytes + ENVELOPE_BYTES
        self.signer = signer

    def ensure_queue(self, queue: str) -> str:
        return self._ensure_topic(topic_of(self.prefix, queue))

    def _ensure_topic(self, topic: str) -> str:
        self.broker.create_topic(topic, self.partitions, self.max_message)
        return topic

    def queue_exists(self, queue: str) -> bool:
        self.broker.check_up()
        return topic_of(self.prefix, queue) in self.broker.topics

    def produce_many(self, messages: Sequence[TaskMessage]) -> None:
        encoded = [
            (self._ensure_topic(topic_of(self.prefix, m.queue, m.priority)), m.id.encode(), m.to_bytes())
            for m in messages
        ]
        with self.broker.cond:  # all or nothing, as a failed acknowledgement leaves the caller knowing nothing
            for topic, _, value in encoded:
                if len(value) > self.broker.max_message[topic]:
                    raise QueueUnavailable(f"message of {len(value)} bytes is larger than {topic} takes")
            for topic, key, value in encoded:
                self.broker.append(topic, key, value, self.signer.sign_message(value).encode())

    def dead_letter(self, item: Consumed, reason: str) -> None:
        self.broker.create_topic(self.dlq_topic, 1, 1 << 20)
        self.broker.append(self.dlq_topic, item.key, json.dumps(dead_letter_body(item, reason)).encode(), None)

    def dead_letters(self, limit: int) -> list[dict]:
        with self.broker.cond:
            self.broker.check_up()
            items = [c for part in self.broker.topics.get(self.dlq_topic, []) for c in part]
        # One partition: the offsets are the order they came in.
        return [letter_as_read(c.value, c.partition, c.offset) for c in reversed(items)][:limit]

    def close(self) -> None:
        """Nothing to flush: every produce is acknowledged when it returns."""


class InMemoryQueueReader(QueueReader):
    """Reader ``member`` of ``members`` of every queue topic on an ``InMemoryBroker``, splitting
    partitions by ``owner_of`` as the Kafka reader does, and committing under ``group``."""

    def __init__(self, broker: InMemoryBroker, *, prefix: str, group: str, member: int = 0, members: int = 1) -> None:
        if not 0 <= member < members:
            raise ValueError(f"member {member} is not one of {members} readers")
        self.broker, self.prefix, self.group, self.member, self.members = broker, prefix, group, member, members
        self._position: dict[tuple[str, int], int] = {}
        self._paused: set[tuple[str, int]] = set()

    def _assigned(self) -> list[tuple[str, int]]:
        mine: list[tuple[str, int]] = []
        for topic, parts in self.broker.topics.items():
            if priority_of(self.prefix, topic) is not None:
                mine.extend((topic, p) for p in range(len(parts)) if owner_of(topic, p, self.members) == self.member)
        for tp in mine:
            self._position.setdefault(tp, self.broker.committed.get((self.group, *tp), 0))
        return sorted(mine)

    def _take(self, max_records: int) -> list[Consumed]:
        out: list[Consumed] = []
        # Higher priorities first, as the Kafka reader lets lower ones wait while they have messages.
        for tp in sorted(self._assigned(), key=lambda tp: -(priority_of(self.prefix, tp[0]) or 0)):
            if tp in self._paused:
                continue
            log = self.broker.topics[tp[0]][tp[1]]
            start = self._position[tp]
            batch = log[start : start + max_records - len(out)]
            self._position[tp] = start + len(batch)
            out.extend(batch)
            if len(out) >= max_records:
                break
        return out

    def urgent(self) -> bool:
        with self.broker.cond:
            waiting = {
                priority_of(self.prefix, tp[0]) or 0
                for tp in self._assigned()
                if tp not in self._paused and len(self.broker.topics[tp[0]][tp[1]]) > self._position[tp]
            }
        return len(waiting) > 1

    def poll(self, max_records: int, timeout_s: float) -> list[Consumed]:
        deadline = time.monotonic() + timeout_s
        with self.broker.cond:
            while True:
                self.broker.check_up()
                items = self._take(max_records)
                left = deadline - time.monotonic()
                if items or left <= 0:
                    return items
                self.broker.cond.wait(left)

    def commit(self, offsets: dict[tuple[str, int], int]) -> set[tuple[str, int]]:
        with self.broker.cond:
            self.broker.check_up()
            assigned = set(self._assigned())
            for tp, offset in offsets.items():
                if tp in assigned:
                    self.broker.committed[(self.group, *tp)] = offset
            return offsets.keys() - assigned

    def resize(self, members: int) -> None:
        if not 0 <= self.member < members:
            raise ValueError(f"member {self.member} is not one of {members} readers")
        with self.broker.cond:
            self.members = members
            # A partition left behind is read from its committed offset when it comes back.
            for tp in [tp for tp in self._position if owner_of(tp[0], tp[1], members) != self.member]:
                del self._position[tp]

    def hold(self, topics: set[str], returned: list[Consumed]) -> list[Consumed]:
        with self.broker.cond:
            self._paused = {tp for tp in self._assigned() if tp[0] in topics}
            keep = []
            for item in returned:
                tp = (item.topic, item.partition)
                if item.topic in topics:
                    self._position[tp] = min(self._position.get(tp, item.offset), item.offset)
                else:
                    keep.append(item)
            return keep

    def partitions(self) -> list[PartitionState]:
        with self.broker.cond:
            return [
                PartitionState(t, p, self._position.get((t, p)), len(self.broker.topics[t][p]), (t, p) in self._paused)
                for t, p in self._assigned()
            ]

    def close(self) -> None:
        """Leaves nothing behind: offsets not committed are read again by the next reader."""
