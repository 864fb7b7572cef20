"""Pydantic models that cross process boundaries: task messages on Kafka and records in OpenSearch."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raylane.errors import InvalidTaskInput
from raylane.states import TaskState, version_of

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_BACKOFF_S = 3600.0  # no retry waits longer than an hour
MAX_DELAY_S = 366 * 24 * 3600.0  # a task may be delayed up to a year
# The span of time the status store's timestamps hold (nanoseconds from the epoch in a signed
# 64-bit count): no record can hold a time outside it.
STORE_FIRST = datetime(1970, 1, 1, tzinfo=UTC)
STORE_LAST = datetime(2262, 4, 11, tzinfo=UTC)
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"  # printable ASCII without spaces
SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
CONCURRENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
RATE_LIMIT_PATTERN = r"^[1-9][0-9]{0,5}/[smh]$"  # starts per second, minute or hour
MAX_PRIORITY = 9
MAX_CONCURRENCY = 100_000


def _storable(value: datetime) -> datetime:
    if not STORE_FIRST <= value <= STORE_LAST:
        raise ValueError(
            f"{value.isoformat()} is outside the times a record can hold "
            f"({STORE_FIRST:%Y-%m-%d} to {STORE_LAST:%Y-%m-%d})"
        )
    return value


StorableTime = Annotated[AwareDatetime, AfterValidator(_storable)]
"""A time given by a caller (an eta, an expiry): with a zone, and one a record can hold."""


DURATION_PATTERN = r"^[1-9][0-9]{0,5}[smhdw]$"  # 90s, 30m, 12h, 7d, 2w
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_s(text: str) -> float:
    """Seconds of a duration such as ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 12h, 7d or 2w")
    return float(text[:-1]) * _DURATION_UNITS[text[-1]]


def rate_per_s(rate_limit: str) -> float:
    """Tasks a second allowed by a rate limit such as ``"100/s"``, ``"30/m"`` or ``"5/h"``."""
    count, unit = rate_limit.split("/")
    return float(count) / {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def limit_key(tenant: str | None, concurrency_key: str | None, name: str) -> str:
    """The key a task's limits count under: its ``concurrency_key``, else its task name, within
    its tenant (one tenant's keys never limit another's tasks)."""
    return f"{tenant or ''}\0{concurrency_key or name}"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def validated(model: Any, raw: Any, what: str) -> Any:
    """``raw`` as a ``model`` (as it is if it is one already); ``InvalidTaskInput`` naming the
    first few problems otherwise, so that bad input is never mistaken for a failure."""
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        raise InvalidTaskInput(f"invalid {what}: {problems}") from e


def from_now(seconds: float | timedelta, what: str) -> datetime:
    """The time ``seconds`` (a number or a timedelta) from now; ``InvalidTaskInput`` when no
    time is that far (NaN, infinite, or past the calendar)."""
    try:
        return utcnow() + (seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds))
    except (OverflowError, ValueError):
        raise InvalidTaskInput(f"{what} of {seconds!r} seconds from now is no time at all") from None


def new_task_id() -> str:
    """A fresh task id (32 hex digits)."""
    return uuid.uuid4().hex


class Resources(BaseModel):
    """Ray resources a task's Ray task asks for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory_mb: int | None = Field(None, ge=1)

    @field_validator("num_cpus", "num_gpus")
    @classmethod
    def _ray_precision(cls, v: float) -> float:
        if abs(round(v, 4) - v) > 1e-12:
            raise ValueError(f"{v} has more than 4 decimal places, which Ray does not accept")
        return v


class RetryPolicy(BaseModel):
    """When a failed attempt is tried again: up to ``max_retries`` times, for the listed
    exception types (all when empty), after an exponential backoff with jitter (between
    half and all of the capped exponential delay)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(0, ge=0, le=100)
    retry_on: list[str] = Field(default_factory=list, description="exception type names; empty = any")
    backoff_s: float = Field(0.5, ge=0, le=MAX_BACKOFF_S, description="base delay before the first retry")
    backoff_max_s: float = Field(30.0, ge=0, le=MAX_BACKOFF_S, description="cap of the delay (at most an hour)")

    def retries(self, attempt: int, error_type: str | None, error_types: Sequence[str] = ()) -> bool:
        """Whether a failure of ``attempt`` with ``error_type`` is tried again: ``retry_on`` names it
        or one of its bases (``error_types``, each ``module:qualname``), by qualname or by
        ``module.qualname``."""
        if attempt >= self.max_retries:
            return False
        if not self.retry_on:
            return True
        names = {error_type}
        for full in error_types:
            module, _, qualname = full.partition(":")
            names.update((qualname, f"{module}.{qualname}"))
        return any(name in names for name in self.retry_on)

    def delay_s(self, attempt: int, rand: float) -> float:
        """Delay before attempt ``attempt + 1``, given a uniform random number in [0, 1)."""
        delay = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        return delay / 2 + rand * delay / 2


# The error type of an attempt whose worker did not start the function (its executor's lease
# could not be confirmed): it is tried again outside the retry budget, up to this many times in a row.
NOT_STARTED = "NotStarted"
MAX_NOT_STARTED = 5


class AttemptSummary(BaseModel):
    """How one earlier attempt ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempt: int
    state: str
    error_type: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


MAX_WORKFLOW_NODES = 1000  # tasks in one workflow at most
FAILURE_POLICIES = ("cancel", "skip", "continue")


class FlowLinks(BaseModel):
    """Where a task sits in its workflow: the tasks it waits for (its parents, in order), the
    tasks waiting for it (its children), how it takes its parents' results, and what the
    workflow does when one of its tasks does not succeed.

    - ``takes``: ``"result"``, the one parent's result comes first among its arguments;
      ``"results"``, the list of its parents' results, in order; None, nothing (``.si()``).
    - ``on_failure``: ``"cancel"``, every unfinished task of the workflow is cancelled;
      ``"skip"``, only the tasks that depend on it (directly or not) are; ``"continue"``,
      they run anyway, given None for its result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    waiting_on: list[str] = Field(default_factory=list, max_length=MAX_WORKFLOW_NODES)
    children: list[str] = Field(default_factory=list, max_length=MAX_WORKFLOW_NODES)
    takes: Literal["result", "results"] | None = None
    on_failure: Literal["cancel", "skip", "continue"] = "cancel"


class TaskMessage(BaseModel):
    """What a queue message carries: the task's name and JSON arguments, never code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    name: str = Field(pattern=NAME_PATTERN)
    queue: str = Field(pattern=QUEUE_PATTERN)
    attempt: int = Field(0, ge=0, le=100)  # never more than RetryPolicy.max_retries allows
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0)
    resources: Resources = Field(default_factory=Resources)
    tags: list[str] = Field(default_factory=list)
    created_at: AwareDatetime
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    not_before: AwareDatetime | None = None  # a delayed task or a retry waits until then (SCHEDULED)
    attempts: list[AttemptSummary] = Field(default_factory=list)
    tenant: str | None = Field(None, pattern=TENANT_PATTERN)
    expires_at: AwareDatetime | None = None  # not started by then: CANCELLED as expired
    soft_timeout_s: float | None = Field(None, gt=0)  # SoftTimeLimitExceeded is raised in the task then
    schedule_id: str | None = Field(None, pattern=SCHEDULE_ID_PATTERN)  # the schedule whose tick made it
    priority: int = Field(0, ge=0, le=MAX_PRIORITY)  # 9 runs first
    # Limits: at most max_concurrency RUNNING, and rate_limit starts, per limit key (see limit_key).
    concurrency_key: str | None = Field(None, pattern=CONCURRENCY_KEY_PATTERN)
    max_concurrency: int | None = Field(None, ge=1, le=MAX_CONCURRENCY)
    rate_limit: str | None = Field(None, pattern=RATE_LIMIT_PATTERN)
    # Of a task in a workflow (raylane.chain, group, chord): the workflow, the parent whose
    # result it takes first (None for a first task), and the links to the others.
    workflow_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    parent_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    flow: FlowLinks | None = None
    seal: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # see ``Signer.seal``

    @property
    def limited(self) -> bool:
        """Whether this task waits for its turn under a concurrency or rate limit."""
        return self.max_concurrency is not None or self.rate_limit is not None

    def to_bytes(self) -> bytes:
        """The message as UTF-8 JSON for Kafka: the fields that differ from their defaults (a
        reader fills in the rest), so options a task does not use cost it no bytes."""
        return self.model_dump_json(exclude_defaults=True).encode()


# The hops of an attempt's way that its record keeps, in order, each as seconds from created_at:
# a consumer read its message; the executor got it; the executor's RUNNING write was accepted
# (started_at, just before, is when it took a run slot); the function began and returned in its
# worker. finished_at is when the executor had the reply.
HOPS = ("read", "handed", "claimed", "began", "returned")


class TaskRecord(BaseModel):
    """A task's status document in OpenSearch; each write replaces the whole record."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    queue: str
    state: TaskState
    level: int
    attempt: int = 0
    version: int
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    error_types: list[str] | None = None  # the error's class and bases, "module:qualname", most specific first
    traceback: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    timeout_s: float | None = None
    resources: Resources = Field(default_factory=Resources)
    tags: list[str] = Field(default_factory=list)
    worker: str | None = None
    lease_owner: str | None = None  # the executor incarnation whose heartbeat keeps a RUNNING task alive
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    attempts: list[AttemptSummary] = Field(default_factory=list)
    will_retry: bool = False  # a FAILED attempt that a new attempt follows
    tenant: str | None = None  # set for tasks submitted over HTTP; None for the SDK inside the cluster
    not_before: datetime | None = None  # a SCHEDULED attempt starts no earlier than this
    expires_at: datetime | None = None  # a task not started by then ends CANCELLED as expired
    soft_timeout_s: float | None = None
    idempotency_key: str | None = None
    schedule_id: str | None = None  # the schedule whose tick made this task
    priority: int = 0
    concurrency_key: str | None = None
    max_concurrency: int | None = None
    rate_limit: str | None = None
    # Seconds from created_at at which this attempt passed each hop of its way (see HOPS).
    hops: dict[str, float] | None = None
    # Of a RUNNING record claimed in a timed group: how long it may wait behind its siblings
    # before it begins. Its deadline is the claim + this + its timeout until its worker says when
    # it began; kept in the record so that a restarted keeper holds the same backstop.
    group_wait_s: float | None = None
    workflow_id: str | None = None  # the workflow this task is a step of (see FlowLinks)
    parent_id: str | None = None
    flow: FlowLinks | None = None
    # The cluster's signature of what the task was asked to do (``Signer.seal``): a sweep carries
    # on only records that bear it, so a record written into the store by anyone else runs nothing.
    seal: str | None = None
    # How far a RUNNING attempt has got (``raylane.progress``), filled in when the record is
    # read by id; kept beside the record and never written with it (see ``Progress``).
    progress: float | None = Field(None, exclude=True)
    progress_message: str | None = Field(None, exclude=True)

    @field_validator("result")
    @classmethod
    def _json_result(cls, v: Any, info: ValidationInfo) -> Any:
        # A result parsed from JSON is JSON: checking it again would cost a dump of it per
        # record read (a wait for thousands of results reads thousands).
        if info.mode == "python":
            json.dumps(v)
        return v

    @classmethod
    def pending(cls, msg: TaskMessage, idempotency_key: str | None = None) -> TaskRecord:
        """The first record of a task just accepted: PENDING, or SCHEDULED until its ``not_before``."""
        waits = msg.limited or (msg.not_before and msg.not_before > utcnow()) or (msg.flow and msg.flow.waiting_on)
        state = TaskState.SCHEDULED if waits else TaskState.PENDING
        return cls(
            **{f: getattr(msg, f) for f in _CARRIED},
            state=state,
            level=1,
            version=version_of(TaskState.PENDING, msg.attempt),
            idempotency_key=idempotency_key,
        )

    def moved_to(self, state: TaskState, **changes: Any) -> TaskRecord:
        """A copy of this record in ``state``, with the version the state machine gives it."""
        attempt = changes.pop("attempt", self.attempt)
        now = utcnow()
        if state is TaskState.RUNNING:
            changes.setdefault("started_at", now)
        if state.terminal:
            changes.setdefault("finished_at", now)
        return self.model_copy(
            update=dict(
                state=state,
                level=state.level,
                attempt=attempt,
                version=version_of(state, attempt),
                updated_at=now,
                **changes,
            )
        )

    @property
    def terminal(self) -> bool:
        """Whether this record ends its attempt (in any way)."""
        return self.state.terminal

    @property
    def limited(self) -> bool:
        """Whether this task waits for its turn under a concurrency or rate limit."""
        return self.max_concurrency is not None or self.rate_limit is not None

    @property
    def waits_for_parents(self) -> bool:
        """Whether this is a workflow's task that starts once its parents have ended (SCHEDULED,
        first attempt, with parents): its message is sent then, not at a time."""
        return (
            self.state is TaskState.SCHEDULED
            and self.attempt == 0
            and self.flow is not None
            and bool(self.flow.waiting_on)
            and self.not_before is None
        )

    def with_parents_results(self, results: list[Any]) -> TaskMessage:
        """The message that starts this waiting task, given its parents' results in order: the
        result (or the list of them) comes first among its arguments, as its ``takes`` says."""
        args = list(self.args)
        if self.flow is not None and self.flow.takes == "result":
            args = [results[0], *args]
        elif self.flow is not None and self.flow.takes == "results":
            args = [list(results), *args]
        return self.message().model_copy(update={"args": args})

    @property
    def limit_key(self) -> str:
        """The key its limits count under (see ``limit_key``)."""
        return limit_key(self.tenant, self.concurrency_key, self.name)

    @property
    def finished(self) -> bool:
        """Whether the task is over: its attempt ended and no retry follows."""
        return self.state.terminal and not self.will_retry

    def message(self) -> TaskMessage:
        """The queue message that runs this record's attempt (no earlier than its ``not_before``)."""
        return TaskMessage(**{f: getattr(self, f) for f in _CARRIED})

    def retried(self, delay_s: float) -> tuple[TaskRecord, TaskMessage]:
        """The record of the next attempt after this failed one, and its queue message: SCHEDULED
        until ``delay_s`` from now (PENDING when there is no delay). The message is to be sent
        once the delay is over, so that a waiting retry holds no place in a consumer. A limited
        task's next attempt is SCHEDULED too: it waits for its turn again."""
        summary = AttemptSummary(
            attempt=self.attempt,
            state=self.state.value,
            error_type=self.error_type,
            error=self.error,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )
        state = TaskState.SCHEDULED if delay_s > 0 or self.limited else TaskState.PENDING
        nxt = self.moved_to(
            state,
            attempt=self.attempt + 1,
            will_retry=False,
            started_at=None,
            finished_at=None,
            worker=None,
            lease_owner=None,
            hops=None,
            attempts=[*self.attempts, summary],
            not_before=utcnow() + timedelta(seconds=delay_s) if delay_s > 0 else None,
        )
        return nxt, nxt.message()

    @property
    def attempts_run(self) -> int:
        """Earlier attempts that may have run the function: those that ended ``NotStarted`` never
        did, and do not count against ``max_retries``."""
        return self.attempt - sum(1 for a in self.attempts if a.error_type == NOT_STARTED)

    def retries_after(self, error_type: str | None, error_types: Sequence[str] = ()) -> bool:
        """Whether this attempt, failing with ``error_type``, is tried again: one that never started
        always is (at most ``MAX_NOT_STARTED`` times in a row); others as the retry policy says."""
        if error_type == NOT_STARTED:
            streak = 0
            for a in reversed(self.attempts):
                if a.error_type != NOT_STARTED:
                    break
                streak += 1
            return streak < MAX_NOT_STARTED
        return self.retry.retries(self.attempts_run, error_type, error_types)

    def with_hops(self, **at: float | None) -> TaskRecord:
        """A copy with the hops of ``at`` (epoch seconds; None: not known) added, relative to created_at."""
        return self.model_copy(update={"hops": self.hops_with(**at)})

    def hops_with(self, **at: float | None) -> dict[str, float]:
        """This record's hops with those of ``at`` added (see ``with_hops``), for a copy that
        changes more than its hops: one copy of a record, not two."""
        created = self.created_at.timestamp()
        hops = dict(self.hops or {})
        hops.update({hop: round(t - created, 6) for hop, t in at.items() if t is not None})
        return hops

    def to_doc(self) -> dict:
        """The record as an OpenSearch document."""
        return self.model_dump(mode="json")

    @classmethod
    def from_doc(cls, doc: dict) -> TaskRecord:
        """A record from an OpenSearch ``_source``."""
        return cls.model_validate(doc)


# What a message and its record both carry, copied from one to the other: a field added to both
# travels with no further change.
_CARRIED = tuple(f for f in TaskMessage.model_fields if f in TaskRecord.model_fields)
# What a task was asked to do, the same for each of its attempts: what its seal covers. An
# attempt's number, its history and when it may start change from one attempt to the next.
ORDER = set(_CARRIED) - {"attempt", "attempts", "not_before", "seal"}


def order_bytes(order: TaskMessage | TaskRecord) -> bytes:
    """The canonical bytes of ``order``'s ``ORDER`` fields: the same for a message and for the
    records made from it, after any number of trips through JSON. A record is put as the
    message it carries, so that both are dumped by one model, with its fields in one order
    (raises ``ValidationError`` if the record could make no valid message)."""
    message = order if isinstance(order, TaskMessage) else order.message()
    return message.model_dump_json(include=ORDER).encode()


class WorkflowNode(BaseModel):
    """One task of a workflow to submit: its request, the earlier tasks it waits for (their
    positions in the workflow's list, in the order their results are passed), and how it takes
    their results (see ``FlowLinks``)."""

    model_config = ConfigDict(extra="forbid")

    request: SubmitRequest
    after: list[int] = Field(default_factory=list, max_length=MAX_WORKFLOW_NODES)
    takes: Literal["result", "results"] | None = None


# Options a workflow's task cannot have: its start is its parents' end, not a time or a turn
# under a limit, and it is created with its workflow, never alone.
WORKFLOW_EXCLUDED_OPTIONS = ("delay_s", "eta", "idempotency_key", "concurrency_key", "max_concurrency", "rate_limit")


class WorkflowRequest(BaseModel):
    """A workflow to submit: its tasks, each after the earlier ones it names, and what happens to
    the rest when one of them does not succeed (see ``FlowLinks.on_failure``)."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[WorkflowNode] = Field(min_length=1, max_length=MAX_WORKFLOW_NODES)
    on_failure: Literal["cancel", "skip", "continue"] = "cancel"

    @model_validator(mode="after")
    def _a_graph_in_order(self) -> WorkflowRequest:
        for i, node in enumerate(self.nodes):
            if len(set(node.after)) != len(node.after):
                raise ValueError(f"task #{i} names a parent twice")
            if any(not 0 <= p < i for p in node.after):
                raise ValueError(f"task #{i} may only wait for tasks listed before it (0 to {i - 1})")
            if node.takes == "result" and len(node.after) != 1:
                raise ValueError(f"task #{i} takes one parent's result, but has {len(node.after)} parents")
            if node.takes == "results" and not node.after:
                raise ValueError(f"task #{i} takes its parents' results, but has none")
            given = [o for o in WORKFLOW_EXCLUDED_OPTIONS if getattr(node.request, o) is not None]
            if given:
                raise ValueError(f"task #{i}: a workflow's task cannot have {', '.join(given)}")
        return self


class Progress(NamedTuple):
    """How far a running attempt of a task has got, as it said (``raylane.progress``): kept beside
    the task's record, never in it, so it changes no version."""

    task_id: str
    attempt: int
    fraction: float  # 0.0 to 1.0
    message: str | None
    at: float  # epoch seconds, when the task said it


class PackedRecord(NamedTuple):
    """A record on its way to be written: its JSON document and the few fields the writer reads.
    Records cross between actors by the thousand; this way the sender serializes each once
    (pydantic's JSON, a third of the cost of pickling the object), the receiver reads a tuple,
    and the document goes into the bulk request as it is."""

    id: str
    version: int
    state: TaskState
    attempt: int
    will_retry: bool
    name: str
    queue: str
    timeout_s: float | None
    doc: bytes
    lease_owner: str | None = None  # of a RUNNING record: the executor incarnation that runs it
    # Of a RUNNING record (a claim): its ``group_wait_s``, read by the keeper without unpacking.
    wait_s: float = 0.0
    in_workflow: bool = False  # whether its end moves a workflow on (see FlowLinks)
    tenant: str | None = None  # whose task it is, for the keeper's answers to waits

    @classmethod
    def of(cls, record: TaskRecord | PackedRecord) -> PackedRecord:
        """``record`` packed (a packed one as it is)."""
        if isinstance(record, PackedRecord):
            return record
        return cls(
            record.id,
            record.version,
            record.state,
            record.attempt,
            record.will_retry,
            record.name,
            record.queue,
            record.timeout_s,
            # Without the fields that are None: OpenSearch indexes a null no more than a missing
            # field, and every field of a record that may be None defaults to None, so the record
            # reads back the same. A no-op task's document shrinks from about 910 to 530 bytes,
            # and each versioned write costs OpenSearch about a sixth less CPU.
            record.__pydantic_serializer__.to_json(record, exclude_none=True),
            record.lease_owner,
            wait_s=record.group_wait_s or 0.0,
            in_workflow=record.workflow_id is not None,
            tenant=record.tenant,
        )

    @property
    def terminal(self) -> bool:
        """Whether this record ends its attempt (in any way)."""
        return self.state.terminal

    def unpack(self) -> TaskRecord:
        """The record itself."""
        return TaskRecord.model_validate_json(self.doc)


class WriteOutcome(NamedTuple):
    """The store's answer to one versioned write (a tuple: they travel back by the thousand)."""

    task_id: str
    version: int
    accepted: bool
    reason: str | None = None  # "conflict" when a newer version was already stored, else an error
    status: int | None = None  # the store's HTTP status for this write

    @property
    def refused_for_content(self) -> bool:
        """Whether the store will never accept this record as it is (its content is at fault, not
        an outage or a newer version): retrying the same write cannot help."""
        return (
            not self.accepted
            and self.status is not None
            and 400 <= self.status < 500
            and self.status not in (409, 429)
            and not self.transient
        )

    @property
    def transient(self) -> bool:
        """Whether the store turned this write away for now (overloaded, an index blocked for
        writes, a shard unavailable, the alias not yet resolved after a restart), not for its
        version or its content: the same write may be accepted when tried again."""
        if self.accepted or self.status is None:
            return False
        reason = self.reason or ""
        blocked = reason.startswith("cluster_block_exception")
        # Right after OpenSearch restarts, a write to the alias can meet an attempt to create an
        # index of the alias's own name: the alias is there, so the same write succeeds later.
        recovering = reason.startswith("invalid_index_name_exception") and "already exists as alias" in reason
        return self.status == 429 or self.status >= 500 or blocked or recovering


_OPTION_FIELDS = {
    "delay": "delay_s",
    "timeout": "timeout_s",
    "soft_timeout": "soft_timeout_s",
}


class SubmitRequest(BaseModel):
    """One task to submit: a registered name, JSON arguments, and optional overrides of its defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(None, pattern=QUEUE_PATTERN)
    timeout_s: float | None = Field(None, gt=0)
    tags: list[str] | None = None
    resources: Resources | None = None
    max_retries: int | None = Field(None, ge=0, le=100)
    tenant: str | None = Field(None, pattern=TENANT_PATTERN)
    delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S, description="start no earlier than this from now")
    eta: StorableTime | None = Field(None, description="start no earlier than this time")
    expires_at: StorableTime | None = Field(None, description="not started by then: CANCELLED as expired")
    soft_timeout_s: float | None = Field(None, gt=0, le=MAX_DELAY_S, description="SoftTimeLimitExceeded after this")
    idempotency_key: str | None = Field(
        None, pattern=IDEMPOTENCY_KEY_PATTERN, description="the same key gives the first task's id, not a new task"
    )
    priority: int | None = Field(None, ge=0, le=MAX_PRIORITY, description="0 (default) to 9; 9 runs first")
    concurrency_key: str | None = Field(
        None, pattern=CONCURRENCY_KEY_PATTERN, description="max_concurrency and rate_limit count per this key"
    )
    max_concurrency: int | None = Field(
        None, ge=1, le=MAX_CONCURRENCY, description="at most this many RUNNING per key (default key: the task name)"
    )
    rate_limit: str | None = Field(
        None, pattern=RATE_LIMIT_PATTERN, description='starts per key, e.g. "100/s", "30/m", "5/h"'
    )
    # From raylane.submit(name, ..., delay=5): keyword arguments named like options, which are
    # options unless the task has parameters of those names (only the cluster knows).
    named_options: dict[str, Any] | None = None

    def with_named_options(self, parameters: set[str], accepts_any: bool) -> SubmitRequest:
        """This request with ``named_options`` sorted out: each becomes the task's keyword argument
        if the task has a parameter of that name (or takes ``**kwargs``), else the option."""
        if not self.named_options:
            return self
        kwargs, update = dict(self.kwargs), {}
        for name, value in self.named_options.items():
            if name in parameters or accepts_any:
                kwargs[name] = value
            elif name == "expires" and isinstance(value, int | float) and not isinstance(value, bool):
                update["expires_at"] = from_now(value, "expires")
            elif name == "expires":
                update["expires_at"] = value
            else:
                update[_OPTION_FIELDS.get(name, name)] = value
        return validated(
            SubmitRequest, {**self.model_dump(exclude={"named_options"}), **update, "kwargs": kwargs}, "options"
        )
