"""The status store: where every task's record lives, written only by versioned writes.

``StatusStore`` is the contract; ``OpenSearchStore`` its implementation. Every write is
an ``index`` with ``version_type=external``: the store accepts it only if its version is
higher than the stored one, and says so per write. Writes never read first.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raylane.asyncbulk import BulkConnection, NotAnswered
from raylane.config import OpenSearchConnection
from raylane.errors import InvalidTaskInput, StoreUnavailable
from raylane.limits import MAX_SEARCH_TEXT_CHARS, MAX_TAGS
from raylane.models import STORE_FIRST, STORE_LAST, PackedRecord, Progress, TaskRecord, WriteOutcome
from raylane.schedules import Schedule
from raylane.states import TaskState

MAX_PAGE = 1000
log = logging.getLogger("raylane.store")

TRANSIENT_RETRY_S = 30.0  # how long writes the store turns away for now are tried again
MAX_BULK_BYTES = 8 << 20  # per bulk request; OpenSearch refuses bodies over 100 MiB (http.max_content_length)


class TaskQuery(BaseModel):
    """Filters of a search or a count; all given filters must match."""

    model_config = ConfigDict(extra="forbid")

    state: list[TaskState] | None = None
    name: str | None = None
    queue: str | None = None
    # A task has at most MAX_TAGS tags: a query asking for more could match nothing.
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = Field(
        None, max_length=MAX_SEARCH_TEXT_CHARS, description="words that must appear in the error message"
    )
    tenant: str | None = Field(None, description="only this tenant's tasks (None: every task)")
    schedule_id: str | None = Field(None, description="only the tasks of this schedule's ticks")
    workflow_id: str | None = Field(None, description="only the tasks of this workflow")

    @field_validator("since", "until")
    @classmethod
    def _within_the_store(cls, value: datetime | None) -> datetime | None:
        """A bound beyond the times a record can hold is moved to the edge of that span: no record
        lies past it, and the store refuses a range that reaches outside it."""
        return None if value is None else within_the_store(value)


def within_the_store(t: datetime) -> datetime:
    """``t`` (a naive time taken as UTC), moved into the span of times a record can hold."""
    return min(max(t if t.tzinfo else t.replace(tzinfo=UTC), STORE_FIRST), STORE_LAST)


def encode_cursor(cursor: list | None) -> str | None:
    """A search cursor (``search``'s second answer) as an opaque URL-safe string."""
    return None if cursor is None else base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> list | None:
    """The search cursor ``encode_cursor`` made of ``text``; ``InvalidTaskInput`` for anything else."""
    if not text:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        value = None
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], str)
    ):
        raise InvalidTaskInput("the cursor is not one raylane handed out")
    return value


def finished_states(states: Sequence[TaskState] | None, done: str = "purged") -> list[TaskState]:
    """The terminal states among ``states`` (all terminal states if None); a state that is not
    terminal is an error: its tasks are not finished (and so cannot be ``done``)."""
    if states is None:
        return [s for s in TaskState if s.terminal]
    unfinished = [s.value for s in states if not s.terminal]
    if unfinished:
        raise InvalidTaskInput(f"only finished tasks are {done}; {', '.join(unfinished)} is not a terminal state")
    return list(states)


class TaskEnd(NamedTuple):
    """How one attempt ended, for charts: its state and when it was created, started and ended."""

    state: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime


class StatusStore(abc.ABC):
    """Contract of a status store.

    - ``write_many`` is idempotent per (id, version) and never reads; a write whose version
      is not higher than the stored one is rejected with reason "conflict".
    - ``get`` is real-time: it sees every accepted write.
    - Searches and counts see writes after the store's refresh (about a second).
    - Every method raises ``StoreUnavailable`` when the store cannot be reached.
    """

    @abc.abstractmethod
    def ensure_schema(self) -> None:
        """Create the index template, the index and its alias if missing (idempotent)."""

    @abc.abstractmethod
    def write_many(self, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        """Versioned writes, one outcome per record, in order."""

    async def write_many_async(self, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        """``write_many`` for a caller on an event loop, which goes on with other work meanwhile
        (here on a thread of its own; a store may do better)."""
        return await asyncio.to_thread(self.write_many, records)

    def bulk_stats(self) -> dict[str, int]:
        """Counters of how this store's writes went out, where it has any to tell."""
        return {}

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The current record of ``task_id``, or None."""

    @abc.abstractmethod
    def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        """Current records of the ids that exist (real-time)."""

    @abc.abstractmethod
    def search(
        self, query: TaskQuery, limit: int = 100, after: list | None = None
    ) -> tuple[list[TaskRecord], list | None]:
        """Up to ``limit`` records, newest first, and the cursor to pass as ``after`` for the next page."""

    @abc.abstractmethod
    def counts(self, query: TaskQuery) -> dict[str, int]:
        """Number of tasks per state among those matching ``query``."""

    @abc.abstractmethod
    def counts_by_queue(self, query: TaskQuery) -> dict[str, dict[str, int]]:
        """Number of tasks per queue and state among those matching ``query``."""

    @abc.abstractmethod
    def ends(self, query: TaskQuery, since: datetime, limit: int = 10_000) -> list[TaskEnd]:
        """How the tasks matching ``query`` that finished at or after ``since`` went, the latest
        ``limit`` of them, newest first (a sample of the latest when there are more)."""

    @abc.abstractmethod
    def set_paused(self, queue: str, paused: bool) -> None:
        """Record durably whether consumers may take tasks of ``queue``."""

    @abc.abstractmethod
    def paused_queues(self) -> set[str]:
        """The queues currently paused."""

    @abc.abstractmethod
    def save_definitions(self, definitions: Sequence[tuple[str, str, bytes, str]]) -> None:
        """Keep published task definitions (name, digest, pickle, signature), so that they outlive
        the Ray cluster. The store keeps them as given; checking the signature is the reader's job."""

    @abc.abstractmethod
    def load_definition(self, name: str) -> tuple[str, bytes, str | None] | None:
        """The kept definition of ``name``: its digest, pickle and signature (None if it has none);
        None if there is none."""

    @abc.abstractmethod
    def put_progress(self, progress: Sequence[Progress]) -> None:
        """Keep the latest progress of running tasks, one per task (a later one replaces it),
        beside their records: no record, and no version, changes."""

    @abc.abstractmethod
    def progress_of(self, task_ids: Sequence[str]) -> dict[str, Progress]:
        """The progress kept of each of ``task_ids`` that has one (of whichever attempt said it)."""

    @abc.abstractmethod
    def heartbeat(self, owner: str, beat: int) -> None:
        """Record that executor incarnation ``owner`` is alive: its heartbeat counter is now ``beat``
        (raised on every call; readers judge liveness by seeing it change, on their own clock).

        An owner's first beat (1) is in ``heartbeats()`` at once: a new lease is seen before any
        claim made under it. A later beat may take up to the store's refresh interval (about a
        second) to be seen; a reader that sees a renewal late judges the lease to end later than
        it does, never sooner, and the owner's workers end by its true end (see fencing)."""

    @abc.abstractmethod
    def heartbeats(self) -> dict[str, int]:
        """The heartbeat counter of every executor incarnation that has one."""

    @abc.abstractmethod
    def delete_heartbeats(self, owners: Sequence[str]) -> None:
        """Remove the heartbeats of long-gone incarnations."""

    @abc.abstractmethod
    def running_not_owned_by(self, owners: set[str], limit: int) -> list[TaskRecord]:
        """RUNNING records whose lease owner is not one of ``owners``, oldest first."""

    @abc.abstractmethod
    def running_owned_by(self, owner: str, before: datetime, limit: int) -> list[TaskRecord]:
        """RUNNING records of lease owner ``owner`` last written before ``before``, oldest first."""

    @abc.abstractmethod
    def stale_pending(self, before: datetime, skip_queues: set[str], limit: int) -> list[TaskRecord]:
        """PENDING records last written before ``before``, outside ``skip_queues``, oldest first."""

    @abc.abstractmethod
    def overdue_scheduled(self, before: datetime, skip_queues: set[str], limit: int) -> list[TaskRecord]:
        """SCHEDULED records due (``not_before``) before ``before``, outside ``skip_queues``, oldest
        first; not limited ones (``TaskRecord.limited``: their keepers send them when their turn
        comes, so however many wait, they do not hide an overdue one from a sweep)."""

    @abc.abstractmethod
    def unfinished_retries(self, before: datetime, limit: int) -> list[TaskRecord]:
        """FAILED records with a retry to follow (``will_retry``), last written before ``before``."""

    @abc.abstractmethod
    def waiting_for_parents(self, before: datetime, limit: int) -> list[TaskRecord]:
        """Workflow tasks that wait for their parents (``TaskRecord.waits_for_parents``), last
        written before ``before``, oldest first."""

    # ----- schedules (see raylane.schedules); keyed by ``Schedule.key``
    @abc.abstractmethod
    def save_schedule(self, schedule: Schedule) -> None:
        """Create a schedule or replace its definition; a stored ``last_tick`` is kept."""

    @abc.abstractmethod
    def get_schedule(self, key: str) -> Schedule | None:
        """The schedule stored under ``key`` (real-time), or None."""

    @abc.abstractmethod
    def list_schedules(self, tenant: str | None = None) -> list[Schedule]:
        """Every schedule (only ``tenant``'s when given), by id. Sees saves, pauses and deletes at once."""

    @abc.abstractmethod
    def delete_schedule(self, key: str) -> bool:
        """Remove a schedule; False if there was none."""

    @abc.abstractmethod
    def set_schedule_paused(self, key: str, paused: bool) -> bool:
        """Pause or resume a schedule; False if there is none."""

    @abc.abstractmethod
    def advance_schedule(self, key: str, tick: datetime) -> None:
        """Set the schedule's ``last_tick`` to ``tick`` unless it is already as late (never back);
        nothing if the schedule is gone."""

    @abc.abstractmethod
    def purge(self, before: datetime, states: Sequence[TaskState] | None = None) -> int:
        """Delete the records of tasks that finished before ``before`` (of ``states`` only, if
        given: terminal states); a task whose retry follows is not finished. Returns how many."""

    @abc.abstractmethod
    def refresh(self) -> None:
        """Make every accepted write visible to search."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""


def _utc(t: datetime) -> str:
    """``t`` in ISO 8601 at UTC (a naive time is taken as UTC); OpenSearch refuses offsets beyond ±18:00."""
    return (t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()


# The version of the task index's mapping, kept in its _meta; it goes up with every change of
# the mapping. A change that only adds fields is applied in place at start; one OpenSearch
# cannot apply in place (a field's type) moves the records to a new index
# (``OpenSearchStore.migrate``). 1: indices made before the version was kept; 2: hops; 3: error_types;
# 4: workflow_id, parent_id and flow; 5: group_wait_s; 6: seal.
MAPPING_VERSION = 6
_MIGRATION_MARGIN = timedelta(minutes=10)  # writes made this long before a migration's first copy are copied again
_MIGRATION_WAIT_S = 600.0  # how long a process waits for another's migration to finish


POOL_CONNECTIONS = 8  # connections to OpenSearch a store keeps open for calls made side by side
SCHEDULE_PAGE = 5000  # control documents read per search when listing schedules


def _mappings() -> dict:
    kw = {"type": "keyword"}
    date = {"type": "date_nanos"}
    stored_only = {"type": "object", "enabled": False}
    return {
        "_meta": {"raylane_mapping": MAPPING_VERSION},
        "dynamic": "strict",
        "properties": {
            "id": kw,
            "name": kw,
            "queue": kw,
            "state": kw,
            "tags": kw,
            "worker": kw,
            "error_type": kw,
            "error_types": kw,
            "lease_owner": kw,
            "tenant": kw,
            "level": {"type": "byte"},
            "attempt": {"type": "integer"},
            "version": {"type": "long"},
            "created_at": date,
            "started_at": date,
            "finished_at": date,
            "updated_at": date,
            "not_before": date,
            "expires_at": date,
            "idempotency_key": kw,
            "schedule_id": kw,
            "workflow_id": kw,
            "parent_id": kw,
            "flow": stored_only,
            "concurrency_key": kw,
            "rate_limit": kw,
            "hops": stored_only,
            "priority": {"type": "byte"},
            "max_concurrency": {"type": "integer"},
            "timeout_s": {"type": "float"},
            "soft_timeout_s": {"type": "float"},
            "group_wait_s": {"type": "float", "index": False},
            "seal": {"type": "keyword", "index": False, "doc_values": False},
            "error": {"type": "text"},
            "traceback": {"type": "text", "index": False},
            # Arbitrary user JSON: kept in _source, never mapped, so it cannot explode the mapping.
            "args": stored_only,
            "kwargs": stored_only,
            "result": stored_only,
            "resources": stored_only,
            "retry": stored_only,
            "attempts": stored_only,
            "will_retry": {"type": "boolean"},
        },
    }


# What a bulk write's answer is read for: a full answer per write is about ten times as long to make and parse.
_WRITE_ANSWER = "items.*.status,items.*.error"
_WRITE_QUERY = "filter_path=" + _WRITE_ANSWER


def _outcomes(records: Sequence[TaskRecord | PackedRecord], items: list) -> list[WriteOutcome]:
    """The outcomes of versioned writes of ``records`` from a bulk answer's ``items`` (in order)."""
    out = []
    for r, item in zip(records, items, strict=False):
        res = item["index"]
        status = res.get("status", 500)
        if status in (200, 201):
            out.append(WriteOutcome(task_id=r.id, version=r.version, accepted=True, status=status))
        elif status == 409:
            out.append(WriteOutcome(task_id=r.id, version=r.version, accepted=False, reason="conflict", status=409))
        else:
            err = res.get("error", {})
            out.append(
                WriteOutcome(
                    task_id=r.id,
                    version=r.version,
                    accepted=False,
                    status=status,
                    reason=f"{err.get('type', status)}: {err.get('reason', '')}",
                )
            )
    return out


def _end_of(doc: dict) -> TaskEnd:
    def at(v: str | None) -> datetime | None:
        return datetime.fromisoformat(v) if v else None

    return TaskEnd(doc["state"], at(doc["created_at"]), at(doc.get("started_at")), at(doc["finished_at"]))  # type: ignore[arg-type]


class OpenSearchStore(StatusStore):
    """Task records in OpenSearch behind the alias ``alias`` (document id = task id, ``_version`` = state version)."""

    def __init__(
        self,
        conn: OpenSearchConnection,
        alias: str = "raylane-tasks",
        timeout_s: float = 30.0,
        max_bulk_bytes: int = MAX_BULK_BYTES,
        copies: int | None = None,
    ):
        from opensearchpy import OpenSearch

        self.alias = alias
        self.max_bulk_bytes = max_bulk_bytes
        self.schedule_page = SCHEDULE_PAGE
        self.copies = copies
        self._replicas_known: int | None = None
        self._client = OpenSearch(
            **conn.client_options(),
            timeout=timeout_s,
            max_retries=2,
            retry_on_timeout=True,
            http_compress=False,
            # Connections kept for reuse. urllib3 keeps one unless told, so each call made beside
            # another (a keeper's claim beside its writes, a search beside both) opened a new
            # connection, a TLS handshake on a secure store, and dropped it after.
            pool_maxsize=POOL_CONNECTIONS,
        )
        self._control_mapped = False
        self._bulk_connection = BulkConnection(conn, timeout_s) if BulkConnection.possible(conn) else None

    @property
    def client(self):
        """The underlying opensearch-py client (for tests and operators)."""
        return self._client

    def _call(self, fn, *args, **kwargs):
        from opensearchpy.exceptions import ConnectionError as OSConnectionError
        from opensearchpy.exceptions import TransportError

        try:
            return fn(*args, **kwargs)
        except OSConnectionError as e:
            raise StoreUnavailable(f"OpenSearch unreachable: {e}") from e
        except TransportError as e:
            # Not found, and "already exists" (another client made it first): the caller decides.
            if e.status_code == 404 or e.error == "resource_already_exists_exception":
                raise
            raise StoreUnavailable(
                f"OpenSearch error {e.status_code}: {e.error}",
                status=e.status_code if isinstance(e.status_code, int) else None,
            ) from e

    def replicas(self) -> int:
        """Replicas of each shard: ``copies`` - 1, or by default as many copies as the cluster
        has data nodes, up to 3."""
        if self._replicas_known is None:
            if self.copies is not None:
                self._replicas_known = self.copies - 1
            else:
                nodes = self._call(self._client.cluster.health)["number_of_data_nodes"]
                self._replicas_known = min(3, max(1, nodes)) - 1
        return self._replicas_known

    def ensure_schema(self) -> None:
        from opensearchpy.exceptions import RequestError

        c = self._client
        replicas = self.replicas()
        self._call(
            c.indices.put_index_template,
            name=f"{self.alias}-template",
            body={
                "index_patterns": [f"{self.alias}-*"],
                "template": {
                    "settings": {
                        "number_of_shards": 1,
                        "number_of_replicas": replicas,
                        "refresh_interval": "1s",
                        "max_result_window": 10000,
                    },
                    "mappings": _mappings(),
                },
            },
        )
        if self._call(c.indices.exists_alias, name=self.alias):
            # An index made by an older raylane gains the fields added since (and the version in
            # its _meta); one whose mapping cannot become this one in place (a field of another
            # type) is migrated.
            try:
                self._call(c.indices.put_mapping, index=self.alias, body=_mappings())
            except StoreUnavailable as e:
                if e.status != 400:
                    raise
                log.warning("the mapping of %s cannot change in place (%s); migrating", self.alias, e)
                self.migrate()
            # Replicas may change at any time: the indices made before follow the setting.
            self._call(c.indices.put_settings, index=self.alias, body={"index": {"number_of_replicas": replicas}})
        else:
            try:
                self._call(
                    c.indices.create,
                    index=f"{self.alias}-000001",
                    body={"aliases": {self.alias: {"is_write_index": True}}},
                )
            except RequestError as e:
                if "resource_already_exists" not in str(e):
                    raise StoreUnavailable(f"could not create the index of {self.alias}: {e}") from e
        # The control index too, with its mapping and replicas, before any write could make it
        # with OpenSearch's defaults (a replica a single node can never place).
        self._map_control()

    def drop(self) -> None:
        """Delete this store's indices (every generation of its task index, and its control
        index) and its template. For scratch stores, a bench's or a test's: never a deployment's."""
        c = self._client
        self._call(c.indices.delete, index=f"{self.alias}-*,{self._control_index}", ignore_unavailable=True)
        self._call(c.indices.delete_index_template, name=f"{self.alias}-template", ignore=[404])

    def write_index(self) -> str:
        """The index the alias writes to."""
        aliases = self._call(self._client.indices.get_alias, name=self.alias)
        writing = [i for i, a in aliases.items() if a["aliases"][self.alias].get("is_write_index", len(aliases) == 1)]
        if len(writing) != 1:
            raise StoreUnavailable(f"the alias {self.alias} has no single write index: {sorted(aliases)}")
        return writing[0]

    def mapping_version(self) -> int:
        """The mapping version of the index the alias writes to (1 if it keeps none)."""
        index = self.write_index()
        mapping = self._call(self._client.indices.get_mapping, index=index)[index]["mappings"]
        return int(mapping.get("_meta", {}).get("raylane_mapping", 1))

    def migrate(self) -> str:
        """Move every record to a new index with the current mapping and make it the alias's;
        returns its name. Writes go on meanwhile: the records are copied once, the old index is
        then blocked for writes (a write the block turns away is tried again, see ``write_many``),
        what was written since the copy began is copied again, and the alias moves to the new
        index in one step. Versions are copied as they are (external), so a copy never undoes a
        newer write. Several processes may call this at once: the first to make the new index
        migrates, the others wait for it."""
        from opensearchpy.exceptions import RequestError

        c = self._client
        old = self.write_index()
        number = int(old.rsplit("-", 1)[1]) if old.rsplit("-", 1)[-1].isdigit() else 1
        new = f"{self.alias}-{number + 1:06d}"
        try:
            self._call(c.indices.create, index=new)  # the template gives it the mapping and settings
        except RequestError as e:
            if "resource_already_exists" not in str(e):
                raise StoreUnavailable(f"could not create {new}: {e}") from e
            deadline = time.monotonic() + _MIGRATION_WAIT_S
            while self.write_index() != new:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"another migration of {self.alias} to {new} did not finish") from None
                time.sleep(1.0)
            return new
        began = datetime.now(UTC)
        self._call(c.indices.refresh, index=old)
        self._copy(old, new, {"match_all": {}})
        self._call(c.indices.put_settings, index=old, body={"index": {"blocks.write": True}})
        self._call(c.indices.refresh, index=old)
        self._copy(old, new, {"range": {"updated_at": {"gte": _utc(began - _MIGRATION_MARGIN)}}})
        self._call(
            c.indices.update_aliases,
            body={
                "actions": [
                    {"remove": {"index": old, "alias": self.alias}},
                    {"add": {"index": new, "alias": self.alias, "is_write_index": True}},
                ]
            },
        )
        self._call(c.indices.delete, index=old)
        log.warning("migrated %s from %s to %s (mapping version %d)", self.alias, old, new, MAPPING_VERSION)
        return new

    def write_many(self, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        if not records:
            return []
        return self._write_built(records, self._lines(records))

    def _write_built(self, records: Sequence[TaskRecord | PackedRecord], lines: list[bytes]) -> list[WriteOutcome]:
        """``write_many`` of ``records`` whose bulk lines (``_lines``) are made already."""
        return self._settled(records, lines, self._write_lines(records, lines, list(range(len(lines)))))

    def _settled(
        self, records: Sequence[TaskRecord | PackedRecord], lines: list[bytes], outcomes: list[WriteOutcome]
    ) -> list[WriteOutcome]:
        """``outcomes`` of a first try, with the writes the store turned away for now tried again,
        for a while, so that no writer takes an overloaded or briefly write-blocked index (a
        migration's last step) for a refusal."""
        deadline = time.monotonic() + TRANSIENT_RETRY_S
        tries = 0
        while True:
            again = [i for i, o in enumerate(outcomes) if o.transient]
            if not again:
                return outcomes
            if time.monotonic() >= deadline:
                if len(again) == len(outcomes):
                    # Nothing was written: the writers may safely send it all again.
                    raise StoreUnavailable(f"the store turned every write away: {outcomes[0].reason}", status=503)
                return outcomes
            tries += 1
            time.sleep(min(2.0, 0.05 * 2**tries))
            for i, outcome in zip(again, self._write_lines(records, lines, again), strict=True):
                outcomes[i] = outcome

    def _lines(self, records: Sequence[TaskRecord | PackedRecord]) -> list[bytes]:
        """The bulk request's lines of ``records``: per record, its versioned ``index`` and its document."""
        index = json.dumps(self.alias)
        return [
            f'{{"index":{{"_index":{index},"_id":{json.dumps(r.id)},"version":{r.version},'
            f'"version_type":"external"}}}}\n'.encode()
            + PackedRecord.of(r).doc
            + b"\n"
            for r in records
        ]

    async def write_many_async(self, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        """``write_many`` from the caller's event loop, on a connection of the loop's own
        (``raylane.asyncbulk``), without a thread's wake-ups or the client's layers; through the
        client, on a thread, what that connection cannot do: a signed store, a request too
        large for one bulk, one made beside another, one that got no answer there. Writes the
        store turned away for now are tried again through the client, as ``write_many`` would."""
        if not records:
            return []
        lines = self._lines(records)
        fast = self._bulk_connection
        if fast is None or fast.busy() or sum(map(len, lines)) > self.max_bulk_bytes:
            return await asyncio.to_thread(self._write_built, records, lines)
        try:
            answer = json.loads(await fast.bulk(b"".join(lines), _WRITE_QUERY))
            outcomes = _outcomes(records, answer["items"])
            if len(outcomes) != len(records):
                raise NotAnswered(f"{len(outcomes)} answers to {len(records)} writes")
        except (NotAnswered, ValueError, KeyError, TypeError, AttributeError) as e:
            # As opensearch-py's own retry would, the request goes again: a write that was carried
            # out comes back a conflict, as after any retry of a request whose answer was lost.
            log.debug("bulk write on the loop's connection got no answer (%r); through the client", e)
            return await asyncio.to_thread(self._write_built, records, lines)
        if any(o.transient for o in outcomes):
            return await asyncio.to_thread(self._settled, records, lines, outcomes)
        return outcomes

    def bulk_stats(self) -> dict[str, int]:
        """Bulk writes answered on event loops' own connections, and those left to the client."""
        fast = self._bulk_connection
        return {"loop_bulks": fast.requests, "loop_bulks_not_answered": fast.not_answered} if fast else {}

    def _write_lines(
        self, records: Sequence[TaskRecord | PackedRecord], lines: list[bytes], which: list[int]
    ) -> list[WriteOutcome]:
        # Bounded in bytes as well as in count: one huge record must not fail its neighbours.
        out: list[WriteOutcome] = []
        chunk: list[int] = []
        size = 0
        for i in which:
            line = lines[i]
            if chunk and size + len(line) > self.max_bulk_bytes:
                out.extend(self._bulk(records, lines, chunk))
                chunk, size = [], 0
            chunk.append(i)
            size += len(line)
        out.extend(self._bulk(records, lines, chunk))
        return out

    def _bulk(
        self, records: Sequence[TaskRecord | PackedRecord], lines: list[bytes], chunk: list[int]
    ) -> list[WriteOutcome]:
        """One bulk request for the records at ``chunk``; a request the store finds too large is
        split, down to the one record that is, which alone is refused."""
        try:
            resp = self._call(self._client.bulk, body=b"".join(lines[i] for i in chunk), filter_path=_WRITE_ANSWER)
        except StoreUnavailable as e:
            if e.status != 413:
                raise
            if len(chunk) > 1:
                half = len(chunk) // 2
                return self._bulk(records, lines, chunk[:half]) + self._bulk(records, lines, chunk[half:])
            r = records[chunk[0]]
            return [
                WriteOutcome(
                    task_id=r.id,
                    version=r.version,
                    accepted=False,
                    status=413,
                    reason=f"request_entity_too_large: the record is {len(lines[chunk[0]])} bytes",
                )
            ]
        return _outcomes([records[i] for i in chunk], resp["items"])

    def get(self, task_id: str) -> TaskRecord | None:
        from opensearchpy.exceptions import NotFoundError

        try:
            doc = self._call(self._client.get, index=self.alias, id=task_id, realtime=True)
        except NotFoundError:
            return None
        return TaskRecord.from_doc(doc["_source"])

    def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        if not task_ids:
            return {}
        resp = self._call(self._client.mget, index=self.alias, body={"ids": list(task_ids)}, realtime=True)
        return {d["_id"]: TaskRecord.from_doc(d["_source"]) for d in resp["docs"] if d.get("found")}

    def _filter(self, q: TaskQuery) -> dict:
        must: list[dict] = []
        if q.state:
            must.append({"terms": {"state": [s.value for s in q.state]}})
        for field in ("name", "queue", "tenant", "schedule_id", "workflow_id"):
            if getattr(q, field):
                must.append({"term": {field: getattr(q, field)}})
        for tag in q.tags:
            must.append({"term": {"tags": tag}})
        if q.since or q.until:
            rng: dict[str, Any] = {}
            if q.since:
                rng["gte"] = _utc(q.since)
            if q.until:
                rng["lt"] = _utc(q.until)
            must.append({"range": {"created_at": rng}})
        query: dict = {"bool": {"filter": must}}
        if q.text:
            query["bool"]["must"] = [{"match": {"error": {"query": q.text, "operator": "and"}}}]
        return query

    def search(
        self, query: TaskQuery, limit: int = 100, after: list | None = None
    ) -> tuple[list[TaskRecord], list | None]:
        out: list[TaskRecord] = []
        cursor = after
        while len(out) < limit:
            size = min(MAX_PAGE, limit - len(out))
            body: dict = {
                "query": self._filter(query),
                "size": size,
                "track_total_hits": False,
                "sort": [{"created_at": "desc"}, {"id": "desc"}],
            }
            if cursor:
                body["search_after"] = cursor
            hits = self._call(self._client.search, index=self.alias, body=body)["hits"]["hits"]
            out.extend(TaskRecord.from_doc(h["_source"]) for h in hits)
            if len(hits) < size:
                return out, None
            cursor = hits[-1]["sort"]
        return out, cursor

    def counts(self, query: TaskQuery) -> dict[str, int]:
        body = {
            "query": self._filter(query),
            "size": 0,
            "track_total_hits": False,
            "aggs": {"states": {"terms": {"field": "state", "size": len(TaskState)}}},
        }
        resp = self._call(self._client.search, index=self.alias, body=body)
        return {b["key"]: b["doc_count"] for b in resp["aggregations"]["states"]["buckets"]}

    def counts_by_queue(self, query: TaskQuery) -> dict[str, dict[str, int]]:
        body = {
            "query": self._filter(query),
            "size": 0,
            "track_total_hits": False,
            "aggs": {
                "queues": {
                    "terms": {"field": "queue", "size": 1000},
                    "aggs": {"states": {"terms": {"field": "state", "size": len(TaskState)}}},
                }
            },
        }
        resp = self._call(self._client.search, index=self.alias, body=body)
        return {
            q["key"]: {b["key"]: b["doc_count"] for b in q["states"]["buckets"]}
            for q in resp["aggregations"]["queues"]["buckets"]
        }

    def ends(self, query: TaskQuery, since: datetime, limit: int = 10_000) -> list[TaskEnd]:
        filters = self._filter(query)
        filters["bool"]["filter"].append({"range": {"finished_at": {"gte": _utc(within_the_store(since))}}})
        body = {
            "query": filters,
            "size": min(limit, 10_000),
            "sort": [{"finished_at": "desc"}],
            "_source": ["state", "created_at", "started_at", "finished_at"],
            "track_total_hits": False,
        }
        hits = self._call(self._client.search, index=self.alias, body=body)["hits"]["hits"]
        return [_end_of(h["_source"]) for h in hits]

    @property
    def _control_index(self) -> str:
        # Outside the task index pattern, so the strict task mapping does not apply.
        return f"{self.alias}_control"

    def set_paused(self, queue: str, paused: bool) -> None:
        from opensearchpy.exceptions import NotFoundError

        if paused:
            self._call(
                self._client.index,
                index=self._control_index,
                id=f"paused:{queue}",
                body={"kind": "paused", "queue": queue},
                refresh="true",
            )
        else:
            with contextlib.suppress(NotFoundError):
                self._call(self._client.delete, index=self._control_index, id=f"paused:{queue}", refresh="true")

    def paused_queues(self) -> set[str]:
        from opensearchpy.exceptions import NotFoundError

        try:
            resp = self._call(
                self._client.search,
                index=self._control_index,
                body={"query": {"term": {"kind.keyword": "paused"}}, "size": 1000},
            )
        except NotFoundError:
            return set()
        return {h["_source"]["queue"] for h in resp["hits"]["hits"]}

    def save_definitions(self, definitions: Sequence[tuple[str, str, bytes, str]]) -> None:
        if not definitions:
            return
        if not self._control_mapped:
            self._map_control()
        body: list[dict] = []
        for name, digest, blob, signature in definitions:
            body.append({"index": {"_index": self._control_index, "_id": f"definition:{name}"}})
            body.append(
                {
                    "kind": "definition",
                    "name": name,
                    "digest": digest,
                    "signature": signature,
                    "blob": base64.b64encode(blob).decode(),
                }
            )
        resp = self._call(self._client.bulk, body=body)
        if resp.get("errors"):
            failed = [i["index"].get("error") for i in resp["items"] if i["index"].get("error")]
            raise StoreUnavailable(f"could not keep {len(failed)} task definition(s): {failed[0]}")

    def _map_control(self) -> None:
        # A pickle is kept, never searched: map it as binary (not indexed) before the first one. A
        # schedule's definition is JSON kept whole (a string, so an update replaces it, never merges).
        from opensearchpy.exceptions import NotFoundError, RequestError

        mapping = {
            "properties": {
                "blob": {"type": "binary"},
                "spec_json": {"type": "keyword", "index": False, "doc_values": False},
                "schedule_key": {"type": "keyword"},
                "paused": {"type": "boolean"},
                "last_tick_ms": {"type": "long"},
            }
        }
        try:
            self._call(self._client.indices.put_mapping, index=self._control_index, body=mapping)
            self._call(
                self._client.indices.put_settings,
                index=self._control_index,
                body={"index": {"number_of_replicas": self.replicas()}},
            )
        except NotFoundError:
            try:
                settings = {"number_of_shards": 1, "number_of_replicas": self.replicas()}
                self._call(
                    self._client.indices.create,
                    index=self._control_index,
                    body={"settings": settings, "mappings": mapping},
                )
            except RequestError as e:
                if "resource_already_exists" not in str(e):
                    raise StoreUnavailable(f"could not create {self._control_index}: {e}") from e
        self._control_mapped = True

    def load_definition(self, name: str) -> tuple[str, bytes, str | None] | None:
        from opensearchpy.exceptions import NotFoundError

        try:
            doc = self._call(self._client.get, index=self._control_index, id=f"definition:{name}")
        except NotFoundError:
            return None
        src = doc["_source"]
        try:
            blob = base64.b64decode(src.get("blob") or "", validate=True)
        except ValueError:
            blob = b""  # not base64: it cannot match its digest, so the reader refuses it
        signature = src.get("signature")
        return str(src.get("digest")), blob, signature if isinstance(signature, str) else None

    def put_progress(self, progress: Sequence[Progress]) -> None:
        if not progress:
            return
        body: list[dict] = []
        for p in progress:
            body.append({"index": {"_index": self._control_index, "_id": f"progress:{p.task_id}"}})
            # "at" is a heartbeat's date in this index: the epoch seconds go under a name of their own.
            doc = {"task_id": p.task_id, "attempt": p.attempt, "fraction": p.fraction, "message": p.message}
            body.append({"kind": "progress", **doc, "said_at": p.at})
        resp = self._call(self._client.bulk, body=body, filter_path="errors,items.*.error")
        if resp.get("errors"):
            first = next(i for i in resp["items"] if next(iter(i.values())).get("error"))
            raise StoreUnavailable(f"progress was not kept: {next(iter(first.values()))['error']}")

    def progress_of(self, task_ids: Sequence[str]) -> dict[str, Progress]:
        from opensearchpy.exceptions import NotFoundError

        if not task_ids:
            return {}
        ids = [f"progress:{i}" for i in task_ids]
        try:
            resp = self._call(self._client.mget, index=self._control_index, body={"ids": ids}, realtime=True)
        except NotFoundError:
            return {}
        out = {}
        for doc in resp["docs"]:
            src = doc.get("_source") if doc.get("found") else None
            if src:
                p = Progress(src["task_id"], src["attempt"], src["fraction"], src.get("message"), src["said_at"])
                out[p.task_id] = p
        return out

    def heartbeat(self, owner: str, beat: int) -> None:
        # "at" is for people reading the index; no reader compares it with its own clock.
        self._call(
            self._client.index,
            index=self._control_index,
            id=f"executor:{owner}",
            body={"kind": "executor", "owner": owner, "beat": beat, "at": datetime.now(UTC).isoformat()},
            # A forced refresh of the control index took seconds under load, and each second a
            # heartbeat takes is a second of lease lost; only a new owner must be seen at once.
            refresh="true" if beat == 1 else "false",
        )

    def heartbeats(self) -> dict[str, int]:
        from opensearchpy.exceptions import NotFoundError

        body = {"query": {"term": {"kind.keyword": "executor"}}, "size": 10_000, "_source": ["owner", "beat"]}
        try:
            resp = self._call(self._client.search, index=self._control_index, body=body)
        except NotFoundError:
            return {}
        return {
            h["_source"]["owner"]: int(h["_source"].get("beat") or 0)
            for h in resp["hits"]["hits"]
            if isinstance(h["_source"].get("owner"), str)
        }

    def delete_heartbeats(self, owners: Sequence[str]) -> None:
        if not owners:
            return
        body = [{"delete": {"_index": self._control_index, "_id": f"executor:{o}"}} for o in owners]
        # Refreshed as a heartbeat is: a reader must not see a deleted owner again.
        self._call(self._client.bulk, body=body, refresh="true")

    def running_not_owned_by(self, owners: set[str], limit: int) -> list[TaskRecord]:
        return self._oldest([{"term": {"state": TaskState.RUNNING.value}}], {"lease_owner": sorted(owners)}, limit)

    def running_owned_by(self, owner: str, before: datetime, limit: int) -> list[TaskRecord]:
        filters: list[dict] = [
            {"term": {"state": TaskState.RUNNING.value}},
            {"term": {"lease_owner": owner}},
            {"range": {"updated_at": {"lt": _utc(before)}}},
        ]
        return self._oldest(filters, None, limit)

    def stale_pending(self, before: datetime, skip_queues: set[str], limit: int) -> list[TaskRecord]:
        return self._unchanged_since(TaskState.PENDING, before, {"queue": sorted(skip_queues)}, limit)

    def overdue_scheduled(self, before: datetime, skip_queues: set[str], limit: int) -> list[TaskRecord]:
        filters: list[dict] = [
            {"term": {"state": TaskState.SCHEDULED.value}},
            {"range": {"not_before": {"lt": _utc(before)}}},
        ]
        limited = [{"exists": {"field": "max_concurrency"}}, {"exists": {"field": "rate_limit"}}]
        return self._oldest(filters, {"queue": sorted(skip_queues)}, limit, "not_before", limited)

    def unfinished_retries(self, before: datetime, limit: int) -> list[TaskRecord]:
        return self._unchanged_since(TaskState.FAILED, before, {"will_retry": [False]}, limit)

    def waiting_for_parents(self, before: datetime, limit: int) -> list[TaskRecord]:
        filters: list[dict] = [
            {"term": {"state": TaskState.SCHEDULED.value}},
            {"term": {"attempt": 0}},
            {"exists": {"field": "workflow_id"}},
            {"range": {"updated_at": {"lt": _utc(before)}}},
        ]
        found = self._oldest(filters, None, limit)
        return [r for r in found if r.waits_for_parents]

    def _unchanged_since(
        self, state: TaskState, before: datetime, exclude: dict, limit: int, field: str = "updated_at"
    ) -> list[TaskRecord]:
        """Records in ``state`` whose ``field`` lies before ``before``, oldest first, none matching ``exclude``."""
        return self._oldest(
            [{"term": {"state": state.value}}, {"range": {field: {"lt": _utc(before)}}}], exclude, limit, field
        )

    def _oldest(
        self,
        filters: list[dict],
        exclude: dict | None,
        limit: int,
        field: str = "updated_at",
        nor: Sequence[dict] = (),
    ) -> list[TaskRecord]:
        """Up to ``limit`` records matching ``filters``, none of ``exclude`` and none of the queries
        ``nor``, by ``field`` ascending."""
        body = {
            "query": {"bool": {"filter": filters, "must_not": ([{"terms": exclude}] if exclude else []) + list(nor)}},
            "size": limit,
            "sort": [{field: "asc"}],
        }
        hits = self._call(self._client.search, index=self.alias, body=body)["hits"]["hits"]
        return [TaskRecord.from_doc(h["_source"]) for h in hits]

    def save_schedule(self, schedule: Schedule) -> None:
        if not self._control_mapped:
            self._map_control()
        spec = schedule.model_dump_json(exclude={"paused", "last_tick"})
        doc = {"kind": "schedule", "schedule_key": schedule.key, "spec_json": spec}
        # An upsert of the definition only: the paused flag is set on creation, last_tick never.
        self._call(
            self._client.update,
            index=self._control_index,
            id=f"schedule:{schedule.key}",
            body={"doc": doc, "upsert": dict(doc, paused=schedule.paused, last_tick_ms=None)},
            refresh="true",
            retry_on_conflict=5,
        )

    @staticmethod
    def _schedule_of(src: dict, tick_ms: int | None) -> Schedule:
        return Schedule.model_validate_json(src["spec_json"]).model_copy(
            update={
                "paused": bool(src.get("paused")),
                "last_tick": datetime.fromtimestamp(tick_ms / 1000, UTC) if tick_ms is not None else None,
            }
        )

    def get_schedule(self, key: str) -> Schedule | None:
        from opensearchpy.exceptions import NotFoundError

        ids = [f"schedule:{key}", f"schedule-tick:{key}"]
        try:
            resp = self._call(self._client.mget, index=self._control_index, body={"ids": ids}, realtime=True)
        except NotFoundError:
            return None
        spec, tick = (d.get("_source") if d.get("found") else None for d in resp["docs"])
        return self._schedule_of(spec, tick and tick.get("last_tick_ms")) if spec else None

    def list_schedules(self, tenant: str | None = None) -> list[Schedule]:
        from opensearchpy.exceptions import NotFoundError

        filters: list[dict] = [{"terms": {"kind.keyword": ["schedule", "schedule_tick"]}}]
        if tenant is not None:
            filters.append({"prefix": {"schedule_key": f"{tenant}:"}})
        # Page by page: a search returns at most 10,000 hits, and a schedule is two documents.
        body: dict = {
            "query": {"bool": {"filter": filters}},
            "size": self.schedule_page,
            "sort": [{"schedule_key": "asc"}, {"kind.keyword": "asc"}],
        }
        hits: list[dict] = []
        while True:
            try:
                page = self._call(self._client.search, index=self._control_index, body=body)["hits"]["hits"]
            except NotFoundError:
                return []
            hits.extend(page)
            if len(page) < self.schedule_page:
                break
            body["search_after"] = page[-1]["sort"]
        specs = {h["_source"]["schedule_key"]: h["_source"] for h in hits if h["_source"]["kind"] == "schedule"}
        ticks = {
            h["_source"]["schedule_key"]: h["_source"].get("last_tick_ms")
            for h in hits
            if h["_source"]["kind"] == "schedule_tick"
        }
        return [self._schedule_of(specs[k], ticks.get(k)) for k in sorted(specs)]

    def delete_schedule(self, key: str) -> bool:
        from opensearchpy.exceptions import NotFoundError

        try:
            self._call(self._client.delete, index=self._control_index, id=f"schedule:{key}", refresh="true")
        except NotFoundError:
            return False
        with contextlib.suppress(NotFoundError):
            self._call(self._client.delete, index=self._control_index, id=f"schedule-tick:{key}", refresh="true")
        return True

    def set_schedule_paused(self, key: str, paused: bool) -> bool:
        from opensearchpy.exceptions import NotFoundError

        try:
            self._call(
                self._client.update,
                index=self._control_index,
                id=f"schedule:{key}",
                body={"doc": {"paused": paused}},
                refresh="true",
                retry_on_conflict=5,
            )
        except NotFoundError:
            return False
        return True

    def advance_schedule(self, key: str, tick: datetime) -> None:
        # The cursor is a document of its own whose external version is the tick: the store keeps
        # the latest, as it does for task records, with no script and no read.
        if self.get_schedule(key) is None:
            return
        ms = round(tick.timestamp() * 1000)
        try:
            self._call(
                self._client.index,
                index=self._control_index,
                id=f"schedule-tick:{key}",
                body={"kind": "schedule_tick", "schedule_key": key, "last_tick_ms": ms},
                version=ms,
                version_type="external",
                refresh="true",
            )
        except StoreUnavailable as e:
            if e.status != 409:  # 409: a later tick is already kept
                raise

    def purge(self, before: datetime, states: Sequence[TaskState] | None = None) -> int:
        query = {
            "bool": {
                "filter": [
                    {"terms": {"state": [s.value for s in finished_states(states)]}},
                    {"range": {"finished_at": {"lt": _utc(before)}}},
                ],
                "must_not": [{"term": {"will_retry": True}}],
            }
        }
        deleted = 0
        for page in self._scan(self.alias, query):
            # Each delete holds only if the record is as it was found (a later write keeps it).
            body = [
                {
                    "delete": {
                        "_index": h["_index"],
                        "_id": h["_id"],
                        "if_seq_no": h["_seq_no"],
                        "if_primary_term": h["_primary_term"],
                    }
                }
                for h in page
            ]
            resp = self._call(self._client.bulk, body=body, filter_path="items.*.status")
            gone = [
                h["_id"]
                for h, item in zip(page, resp.get("items", []), strict=False)
                if item["delete"]["status"] == 200
            ]
            deleted += len(gone)
            if gone:  # their progress goes with them (most have none: a missing one is no error)
                said = [{"delete": {"_index": self._control_index, "_id": f"progress:{i}"}} for i in gone]
                self._call(self._client.bulk, body=said, filter_path="errors")
        self.refresh()
        return deleted

    def _scan(self, index: str, query: dict, source: bool = False, page: int = 1000):
        """Every hit of ``query`` in ``index``, a page at a time, with its version and sequence
        number (and its document, with ``source``). It pages by task id rather than by delete or
        reindex by query: those are in OpenSearch's reindex module, which not every cluster has
        (the local stack's distribution has none)."""
        after = None
        while True:
            body: dict[str, Any] = {
                "query": query,
                "size": page,
                "sort": [{"id": "asc"}],
                "_source": source,
                "version": True,
                "seq_no_primary_term": True,
            }
            if after is not None:
                body["search_after"] = after
            hits = self._call(self._client.search, index=index, body=body)["hits"]["hits"]
            if hits:
                yield hits
            if len(hits) < page:
                return
            after = hits[-1]["sort"]

    def _copy(self, source: str, dest: str, query: dict) -> int:
        """Copy the documents of ``source`` that match ``query`` into ``dest`` with their versions;
        a copy older than what ``dest`` holds is refused there (a conflict), as a write would be.
        Returns how many were copied."""
        copied = 0
        for page in self._scan(source, query, source=True):
            body = b"".join(
                json.dumps(
                    {"index": {"_index": dest, "_id": h["_id"], "version": h["_version"], "version_type": "external"}}
                ).encode()
                + b"\n"
                + json.dumps(h["_source"]).encode()
                + b"\n"
                for h in page
            )
            resp = self._call(self._client.bulk, body=body, filter_path=_WRITE_ANSWER)
            for item in resp.get("items", []):
                status = item["index"]["status"]
                if status in (200, 201):
                    copied += 1
                elif status != 409:
                    raise StoreUnavailable(f"copying into {dest} failed: {item['index'].get('error')}", status=status)
        self._call(self._client.indices.refresh, index=dest)
        return copied

    def refresh(self) -> None:
        self._call(self._client.indices.refresh, index=self.alias)

    def close(self) -> None:
        self._client.close()
        if self._bulk_connection is not None:
            self._bulk_connection.close()
