"""The RequestHandler: validates and creates tasks, and answers queries, waits and cancels.

A submit is checked completely (name, JSON, size, signature and type hints) before
anything is written; then the PENDING record is written and the message produced. If
the produce fails, the record is closed as FAILED so no half task is left waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import ray

from raylane import registry
from raylane.actors.channel import ChannelAddress, ChannelServer, Method
from raylane.actors.common import settle_collector
from raylane.actors.keepers import Keepers
from raylane.errors import (
    InvalidTaskInput,
    QueueUnavailable,
    RecordRefused,
    ScheduleNotFound,
    StoreUnavailable,
    TaskAlreadyFinished,
    TaskNotFinished,
    TaskNotFound,
)
from raylane.limits import check_arguments_shape, check_placeable, check_tags, check_timeout
from raylane.models import (
    MAX_DELAY_S,
    NAME_PATTERN,
    QUEUE_PATTERN,
    STORE_FIRST,
    FlowLinks,
    PackedRecord,
    Resources,
    SubmitRequest,
    TaskMessage,
    TaskRecord,
    WorkflowRequest,
    limit_key,
    new_task_id,
    utcnow,
    validated,
)
from raylane.protocol import (
    EXECUTOR,
    QUEUE_CONSUMER,
    WAITS,
    ActorConfig,
    keeper_of_key,
    live_members,
    replies_errors,
    reply_as_json,
    routed_id,
    unwrap,
)
from raylane.queue import queue_of
from raylane.schedules import SCHEDULE_ID_PATTERN, Schedule
from raylane.sockets import SUBMIT
from raylane.states import TaskState
from raylane.store import TaskEnd, TaskQuery, finished_states

log = logging.getLogger("raylane.request_handler")

MAX_REPLAY = 10_000  # tasks one replay starts again at most

_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_WAIT_IDS = 100_000  # ids in one wait_many call
_GET_MANY = 1000  # ids per real-time multi-get
_NODES_EVERY_S = 10.0  # how old the nodes' resources may be when a task's request is checked against them
_NODES_AGAIN_S = 1.0  # a request none fits reads them again, but not more often than this


def idempotent_id(key: str, tenant: str | None) -> str:
    """The task id of an idempotency key: the same key (of the same tenant) always gives the
    same id, so the store itself lets only the first submit create the task."""
    return hashlib.sha256(f"raylane-idempotency\0{tenant or ''}\0{key}".encode()).hexdigest()[:32]


def _deadline(timeout_s: float) -> float:
    """When a wait of ``timeout_s`` seconds ends, on the monotonic clock."""
    if not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s):
        raise InvalidTaskInput(f"a wait's timeout is a finite number of seconds, not {timeout_s!r}")
    return time.monotonic() + timeout_s


async def _awaited(ref: Any) -> Any:
    return await ref


async def _tell(refs: list, failed: str) -> None:
    """Wait up to 5 s for each call of ``refs`` (a change told to other actors), logging each that
    failed or did not answer with ``failed``: the told actors also read the change themselves later."""
    calls = [asyncio.wait_for(_awaited(ref), 5.0) for ref in refs]
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(outcome, BaseException):
            log.warning("%s: %r", failed, outcome)


def _cancelled(record: TaskRecord) -> TaskRecord:
    """The CANCELLED record that ends an unfinished task; of a failed attempt with a retry
    coming, the coming attempt's."""
    return record.moved_to(
        TaskState.CANCELLED,
        attempt=record.attempt + 1 if record.will_retry else record.attempt,
        will_retry=False,
        error_type="Cancelled",
        error="cancelled by request",
    )


def _submit_body(body: Any) -> dict:
    """The request of a submit sent by socket (``TypeError`` for what no caller sends); it is
    validated as a Ray call's is."""
    if not isinstance(body, dict):
        raise TypeError("a submit crosses as its request")
    return body


def _request(raw: dict | SubmitRequest) -> SubmitRequest:
    return validated(SubmitRequest, raw, "submit request")


class RequestHandler:
    """Front door of raylane: every SDK, CLI and job call lands here."""

    def __init__(self, config: ActorConfig):
        self.config = config
        self.store = config.store()
        self.store.ensure_schema()
        self.queue = config.queue()
        self.queue.ensure_queue(config.default_queue)
        # Its PENDING writes (and the rest) go to the keepers of its node by their sockets: sending
        # one by Ray took the handler about 0.7 ms before the task's produce could start.
        self._keepers = Keepers(config.namespace, config.keepers, node=ray.get_runtime_context().get_node_id())
        self._signer = config.signer()
        self._limits = config.limits()
        self._nodes: list[dict[str, float]] = []  # each alive node's total resources
        self._nodes_read = float("-inf")
        self._fits: set[tuple[float, float, int | None]] = set()  # requests known to fit those nodes
        # Drivers of this node submit by socket (see raylane.actors.channel); made when first asked for.
        self._channel: ChannelServer | None = None
        self._submitted_by_socket = 0
        settle_collector()

    def _read_nodes(self) -> None:
        try:
            nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
        except Exception as e:  # Ray's GCS is busy: judge by the nodes last seen
            log.warning("reading the cluster's nodes failed: %r", e)
            nodes = self._nodes
        self._nodes, self._nodes_read, self._fits = nodes, time.monotonic(), set()

    def _check_placeable(self, resources: Resources) -> None:
        """Refuse a task no node of the cluster could run (unless the cluster adds nodes on demand):
        Ray would keep it waiting for good, in a run slot of its executor."""
        if self.config.autoscaling:
            return
        if time.monotonic() - self._nodes_read > _NODES_EVERY_S:
            self._read_nodes()
        request = (resources.num_cpus, resources.num_gpus, resources.memory_mb)
        if request in self._fits or not self._nodes:
            return
        try:
            check_placeable(*request, self._nodes)
        except InvalidTaskInput:
            if time.monotonic() - self._nodes_read < _NODES_AGAIN_S:
                raise
            self._read_nodes()  # a node may have joined since they were read
            check_placeable(*request, self._nodes)
        self._fits.add(request)

    def _message(self, req: SubmitRequest, leading: int = 0) -> TaskMessage:
        """The message of a valid request (``leading``: arguments its workflow adds before its own)."""
        defn = registry.load(req.name)
        if req.named_options:
            parameters, accepts_any = defn.parameter_names()
            req = req.with_named_options(parameters, accepts_any)
        if req.tenant is not None and req.queue is not None and not self.queue.queue_exists(req.queue):
            # Tenants (HTTP clients) use the queues there are; they do not make Kafka topics.
            raise InvalidTaskInput(f"queue {req.queue!r} does not exist; tenants can use existing queues only")
        # The shape first: nothing below (type checks, encoding) may meet a value nested without bound.
        check_arguments_shape(req.args, req.kwargs, self._limits)
        timeout_s = req.timeout_s if req.timeout_s is not None else defn.timeout_s
        tags = req.tags if req.tags is not None else list(defn.tags)
        check_timeout(timeout_s)
        check_tags(tags)
        resources = req.resources or defn.resources
        self._check_placeable(resources)
        defn.validate_call(req.args, req.kwargs, leading)
        now = utcnow()
        if req.eta is not None and req.eta > now + timedelta(seconds=MAX_DELAY_S):
            raise InvalidTaskInput(
                f"eta {req.eta.isoformat()} is more than {MAX_DELAY_S / 86400:g} days ahead, "
                "the most a task may be delayed"
            )
        not_before = max(
            (t for t in (req.eta, now + timedelta(seconds=req.delay_s) if req.delay_s else None) if t is not None),
            default=None,
        )
        if req.expires_at is not None and not_before is not None and req.expires_at <= not_before:
            raise InvalidTaskInput(f"the task would expire ({req.expires_at.isoformat()}) before it is due")
        if req.concurrency_key is not None and req.max_concurrency is None and req.rate_limit is None:
            raise InvalidTaskInput("a concurrency_key needs max_concurrency or rate_limit to limit anything")
        task_id = idempotent_id(req.idempotency_key, req.tenant) if req.idempotency_key else new_task_id()
        if req.max_concurrency is not None or req.rate_limit is not None:
            # The keeper that counts the key's limits must own the task: it alone sees its writes.
            key = limit_key(req.tenant, req.concurrency_key, req.name)
            task_id = routed_id(task_id, keeper_of_key(key, self.config.keepers), self.config.keepers)
        return TaskMessage(
            id=task_id,
            priority=req.priority or 0,
            concurrency_key=req.concurrency_key,
            max_concurrency=req.max_concurrency,
            rate_limit=req.rate_limit,
            not_before=not_before if not_before and not_before > now else None,
            expires_at=req.expires_at,
            soft_timeout_s=req.soft_timeout_s,
            name=req.name,
            queue=req.queue or defn.queue or self.config.default_queue,
            args=req.args,
            kwargs=req.kwargs,
            timeout_s=timeout_s,
            resources=resources,
            tags=tags,
            created_at=utcnow(),
            retry=defn.retry
            if req.max_retries is None
            else defn.retry.model_copy(update={"max_retries": req.max_retries}),
            tenant=req.tenant,
        )

    async def _create(self, messages: list[TaskMessage], keys: list[str | None] | None = None) -> list[str]:
        keys = keys or [None] * len(messages)
        # Sealed here, as they are accepted: from now on their records can be carried on by sweeps.
        messages = [self._signer.sealed(m) for m in messages]
        records = [TaskRecord.pending(m, k) for m, k in zip(messages, keys, strict=True)]
        # A new task's message is sent beside its PENDING write, not after it: the round trip is
        # shorter by a produce. Should the write fail, the message is harmless: a claim that finds
        # no record before it is refused, and its record closed (``StatusKeeper.claim``). A task
        # with an idempotency key may exist already, and its message must not be sent again, so
        # it waits for the write's answer; so does a SCHEDULED task, whose keeper sends it later.
        early = [
            i
            for i, (r, k) in enumerate(zip(records, keys, strict=True))
            if k is None and r.state is TaskState.PENDING and r.attempt == 0
        ]
        writes = self._keepers.write_sent(records)
        unsent: QueueUnavailable | None = None
        if early:
            try:
                await asyncio.to_thread(self.queue.produce_many, [messages[i] for i in early])
            except QueueUnavailable as e:
                unsent = e
        outcomes = await writes
        # A conflict on the first record of a task with an idempotency key means that task exists
        # already: its id is the answer, and its message (sent by its first submit) is not sent again.
        existing = {
            i for i, o in enumerate(outcomes) if not o.accepted and o.reason == "conflict" and keys[i] is not None
        }
        refused = [(i, o) for i, o in enumerate(outcomes) if not o.accepted and i not in existing]
        if refused:
            # All or none: the accepted records of this submission are closed; a message already
            # sent for one finds it closed, and does not run.
            closed = [
                r.moved_to(
                    TaskState.FAILED,
                    error_type="NotEnqueued",
                    error="not enqueued: another task of the same submission was refused",
                )
                for r, o in zip(records, outcomes, strict=True)
                if o.accepted
            ]
            if closed:
                await self._keepers.write(closed)
            i, first = refused[0]
            what = f"task #{i}" if len(records) > 1 else "the task"
            if first.refused_for_content:
                raise RecordRefused(f"the status store refused the record of {what}: {first.reason}")
            raise StoreUnavailable(
                f"{len(refused)} PENDING record(s) were refused: {first.reason}", status=first.status
            )
        if unsent is not None:
            await self._fail_unsent([records[i] for i in early])
            raise unsent
        sent = set(early)
        due = [i for i, r in enumerate(records) if i not in existing and i not in sent and r.state is TaskState.PENDING]
        if due:
            try:
                await asyncio.to_thread(self.queue.produce_many, [messages[i] for i in due])
            except QueueUnavailable:
                await self._fail_unsent([records[i] for i in due])
                raise
        return [m.id for m in messages]

    async def _fail_unsent(self, records: list[TaskRecord]) -> None:
        """Close the records of tasks whose messages Kafka did not acknowledge."""
        await self._keepers.write(
            [
                r.moved_to(
                    TaskState.FAILED,
                    error_type="QueueUnavailable",
                    error="the task could not be enqueued; Kafka did not acknowledge it",
                )
                for r in records
            ]
        )

    async def local_channel(self) -> ChannelAddress | None:
        """Where the drivers of this handler's node submit single tasks by socket, with the token
        they present; None if the socket cannot be made here (they call this actor)."""
        if self._channel is None:
            node = ray.get_runtime_context().get_node_id()
            self._channel = ChannelServer({SUBMIT: Method(_submit_body, self._submit_json)}, node, "RequestHandler")
        return await self._channel.listen()

    async def _submit_json(self, request: dict) -> dict:
        self._submitted_by_socket += 1
        return reply_as_json(await self.submit(request))

    async def get_stats(self) -> dict:
        """Counters of the ways this handler's calls went: submits that came by its socket
        (``submitted_by_socket``), records sent to keepers by theirs (``written_by_socket``), and
        how many keepers it reaches so now (``keeper_sockets``)."""
        return {
            "submitted_by_socket": self._submitted_by_socket,
            "written_by_socket": self._keepers.sent_by_socket,
            "keeper_sockets": self._keepers.sockets,
        }

    @replies_errors
    async def submit(self, request: dict) -> str:
        """Validate and enqueue one task; returns its id."""
        req = _request(request)
        [task_id] = await self._create([self._message(req)], [req.idempotency_key])
        return task_id

    @replies_errors
    async def submit_many(self, requests: list[dict]) -> list[str]:
        """Validate all, then enqueue all; if any is invalid nothing is written. Returns ids in order."""
        messages, keys = [], []
        for i, raw in enumerate(requests):
            try:
                req = _request(raw)
                messages.append(self._message(req))
                keys.append(req.idempotency_key)
            except InvalidTaskInput as e:
                e.args = (f"task #{i}: {e}",)
                raise
        return await self._create(messages, keys) if messages else []

    @replies_errors
    async def submit_workflow(self, request: dict, tenant: str | None = None) -> dict:
        """Validate every task of a workflow (see ``WorkflowRequest``), then create them all at once:
        its first tasks PENDING and queued, the others SCHEDULED until their parents end (their
        keepers send them then). Nothing is written if any is invalid. Returns the workflow's id
        and its tasks' ids, in order. With ``tenant``, every task is that tenant's."""
        wf = validated(WorkflowRequest, request, "workflow")
        messages = []
        for i, node in enumerate(wf.nodes):
            req = node.request if tenant is None else node.request.model_copy(update={"tenant": tenant})
            try:
                messages.append(self._message(req, leading=1 if node.takes else 0))
            except InvalidTaskInput as e:
                e.args = (f"task #{i}: {e}",)
                raise
        workflow_id = new_task_id()
        ids = [m.id for m in messages]
        children: list[list[str]] = [[] for _ in ids]
        for i, node in enumerate(wf.nodes):
            for p in node.after:
                children[p].append(ids[i])
        linked = [
            m.model_copy(
                update={
                    "workflow_id": workflow_id,
                    "parent_id": ids[node.after[0]] if node.after else None,
                    "flow": FlowLinks(
                        waiting_on=[ids[p] for p in node.after],
                        children=children[i],
                        takes=node.takes,
                        on_failure=wf.on_failure,
                    ),
                }
            )
            for i, (m, node) in enumerate(zip(messages, wf.nodes, strict=True))
        ]
        await self._create(linked)
        return {"workflow_id": workflow_id, "task_ids": ids}

    async def _get(self, task_id: str, tenant: str | None = None) -> TaskRecord:
        if not isinstance(task_id, str) or not _ID.match(task_id):
            raise TaskNotFound(str(task_id))
        record = await asyncio.to_thread(self.store.get, task_id)
        # Another tenant's task is reported exactly like a missing one, so ids reveal nothing.
        if record is None or (tenant is not None and record.tenant != tenant):
            raise TaskNotFound(task_id)
        if record.state is TaskState.RUNNING:
            said = (await asyncio.to_thread(self.store.progress_of, [task_id])).get(task_id)
            if said is not None and said.attempt == record.attempt:
                record = record.model_copy(update={"progress": said.fraction, "progress_message": said.message})
        return record

    @replies_errors
    async def get_many(self, task_ids: list[str], tenant: str | None = None) -> dict[str, TaskRecord]:
        """The current records of tasks (real-time), by id; unknown ids (and, with ``tenant``,
        other tenants' tasks) are left out. At most 10,000 ids."""
        if not isinstance(task_ids, list) or len(task_ids) > MAX_REPLAY:
            raise InvalidTaskInput(f"get_many takes a list of at most {MAX_REPLAY} task ids")
        return await self._records(task_ids, tenant)

    async def _records(self, task_ids: list, tenant: str | None) -> dict[str, TaskRecord]:
        ids = [i for i in task_ids if isinstance(i, str) and _ID.match(i)]
        found: dict[str, TaskRecord] = {}
        for i in range(0, len(ids), _GET_MANY):
            found.update(await asyncio.to_thread(self.store.get_many, ids[i : i + _GET_MANY]))
        return {k: r for k, r in found.items() if tenant is None or r.tenant == tenant}

    @replies_errors
    async def get(self, task_id: str, tenant: str | None = None) -> TaskRecord:
        """The current record of a task (real-time); with ``tenant``, only if the task is that tenant's."""
        return await self._get(task_id, tenant)

    @replies_errors
    async def cancel(self, task_id: str, tenant: str | None = None) -> TaskRecord:
        """Cancel a task that has not finished; raises ``TaskAlreadyFinished`` if it has.
        With ``tenant``, only that tenant's task (any other is ``TaskNotFound``)."""
        for _ in range(5):
            record = await self._get(task_id, tenant)
            if record.finished:
                raise TaskAlreadyFinished(task_id, record.state.value)
            cancelled = _cancelled(record)
            [outcome] = await self._keepers.write([cancelled])
            if outcome.accepted:
                return cancelled
            # Rejected: the task finished first, or moved to a new attempt; look again.
        record = await self._get(task_id)
        raise TaskAlreadyFinished(task_id, record.state.value)

    @replies_errors
    async def cancel_many(self, task_ids: list[str], tenant: str | None = None) -> list[str]:
        """Cancel the unfinished tasks among ``task_ids`` (at most 10,000): one read and one write
        for all of them, not a round trip each; running ones are killed. Returns the ids cancelled,
        in the order given; tasks that had finished and unknown ids (with ``tenant``, other
        tenants' tasks too) are left out."""
        if not isinstance(task_ids, list) or len(task_ids) > MAX_REPLAY:
            raise InvalidTaskInput(f"cancel_many takes a list of at most {MAX_REPLAY} task ids")
        if not all(isinstance(i, str) for i in task_ids):
            raise InvalidTaskInput("cancel_many takes task ids, which are strings")
        cancelled: set[str] = set()
        open_ = list(dict.fromkeys(task_ids))
        for _ in range(5):
            ends = [_cancelled(r) for r in (await self._records(open_, tenant)).values() if not r.finished]
            outcomes = await self._keepers.write(ends) if ends else []
            cancelled.update(r.id for r, o in zip(ends, outcomes, strict=True) if o.accepted)
            # Rejected: the task finished first, or moved to a new attempt; look again.
            open_ = [r.id for r, o in zip(ends, outcomes, strict=True) if not o.accepted]
            if not open_:
                break
        return [i for i in dict.fromkeys(task_ids) if i in cancelled]

    @replies_errors
    async def cancel_matching(self, query: dict, limit: int = 1000, tenant: str | None = None) -> list[str]:
        """Cancel every unfinished task matching ``query`` (see ``TaskQuery``; its states, if
        given, must be unfinished ones: PENDING, SCHEDULED, RUNNING), at most ``limit``
        (1-10,000); running ones are killed. Returns the ids cancelled; tasks that finished
        meanwhile are left as they ended."""
        q = self._query(query)
        if tenant is not None:
            q = q.model_copy(update={"tenant": tenant})
        finished = [s.value for s in q.state or [] if s.terminal]
        if finished:
            raise InvalidTaskInput(f"only unfinished tasks are cancelled; {', '.join(finished)} is a terminal state")
        q = q.model_copy(update={"state": q.state or [s for s in TaskState if not s.terminal]})
        if q.workflow_id is not None:
            # A workflow's tasks are created together, just now perhaps: all must be found.
            await asyncio.to_thread(self.store.refresh)

        async def cancel(page: list[TaskRecord]) -> list[str]:
            ends = [_cancelled(r) for r in page if not r.finished]
            outcomes = await self._keepers.write(ends) if ends else []
            return [r.id for r, o in zip(ends, outcomes, strict=True) if o.accepted]

        return await self._each_page(q, limit, cancel)

    async def _each_page(
        self, q: TaskQuery, limit: int, act: Callable[[list[TaskRecord]], Awaitable[list[str]]]
    ) -> list[str]:
        """Apply ``act`` to the records matching ``q``, a page at a time, newest first, until it
        has done ``limit`` (1-10,000) or none are left; the ids it did, in order."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_REPLAY:
            raise InvalidTaskInput(f"limit must be between 1 and {MAX_REPLAY}, got {limit!r}")
        done: list[str] = []
        after = None
        while len(done) < limit:
            page, after = await asyncio.to_thread(self.store.search, q, min(500, limit - len(done)), after)
            if page:
                done += await act(page)
            if after is None or not page:
                break
        return done

    @replies_errors
    async def retry(self, task_id: str, tenant: str | None = None) -> TaskRecord:
        """Start a new attempt of a finished task (in any terminal state): its record moves to the
        next attempt, PENDING (SCHEDULED if it waits for a limit), keeping the finished attempt
        in ``attempts``; returns that record. ``TaskNotFinished`` if the task has not finished
        (a retry that raced this one included). With ``tenant``, only that tenant's task."""
        record = await self._get(task_id, tenant)
        if not record.finished:
            raise TaskNotFinished(task_id, record.state.value)
        if not self._signer.seal_ok(record):
            raise InvalidTaskInput(
                f"task {task_id}'s record does not bear this cluster's seal (it was written or changed outside"
                " raylane); it is not started again"
            )
        [started] = await self._start_again([record])
        if started is None:
            raise TaskNotFinished(task_id, (await self._get(task_id)).state.value)
        return started

    @replies_errors
    async def replay(self, query: dict, limit: int = 1000, tenant: str | None = None) -> list[str]:
        """Start a new attempt of every finished task matching ``query`` (see ``TaskQuery``; only
        terminal states, FAILED if none is given), at most ``limit`` (1-10,000), newest first;
        returns the ids started again. Tasks that moved on meanwhile are left as they are."""
        q = self._query(query)
        if tenant is not None:
            q = q.model_copy(update={"tenant": tenant})
        q = q.model_copy(update={"state": finished_states(q.state or [TaskState.FAILED], "replayed")})

        async def start(page: list[TaskRecord]) -> list[str]:
            done = [r for r in page if r.finished]
            return [r.id for r in await self._start_again(done) if r is not None] if done else []

        return await self._each_page(q, limit, start)

    @replies_errors
    async def dead_letters(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` (1-10,000) dead letters, newest first. Each says why it was set
        aside and where it came from, and, where its message named a task raylane recorded
        (``task_id``), that task's ``state`` now: a finished one can be replayed."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_REPLAY:
            raise InvalidTaskInput(f"limit must be between 1 and {MAX_REPLAY}, got {limit!r}")
        letters = await asyncio.to_thread(self.queue.dead_letters, limit)
        keys = [k for k in (letter.get("key") for letter in letters) if isinstance(k, str) and _ID.match(k)]
        records = await asyncio.to_thread(self.store.get_many, keys) if keys else {}
        for letter in letters:
            record = records.get(letter.get("key") or "")
            letter["task_id"] = record.id if record is not None else None
            letter["state"] = record.state.value if record is not None else None
            letter["replayable"] = record is not None and record.finished
        return letters

    @replies_errors
    async def replay_dead_letters(self, limit: int = 100) -> list[str]:
        """Start again the tasks of the newest ``limit`` dead letters whose tasks raylane recorded
        and that have finished (a dead-lettered task is recorded FAILED). The new attempt is made
        from the task's record, never from the message: a message raylane did not sign names no
        recorded task, and so starts nothing. Returns the ids started again."""
        letters = unwrap(await self.dead_letters(limit))
        ids = list(dict.fromkeys(d["task_id"] for d in letters if d["replayable"]))
        if not ids:
            return []
        records = await asyncio.to_thread(self.store.get_many, ids)
        done = [records[i] for i in ids if i in records and records[i].finished]
        return [r.id for r in await self._start_again(done) if r is not None] if done else []

    async def _start_again(self, records: list[TaskRecord]) -> list[TaskRecord | None]:
        """The next attempts of finished ``records``, written and enqueued; None for each whose
        write lost (the task moved on meanwhile), and for each that does not bear the cluster's
        seal (what it asks was not asked of raylane: it is never run)."""
        sealed = [self._signer.seal_ok(r) for r in records]
        if not all(sealed):
            log.warning("%d record(s) do not bear this cluster's seal; not started again", sealed.count(False))
            kept = iter(await self._start_again([r for r, ok in zip(records, sealed, strict=True) if ok]))
            return [next(kept) if ok else None for ok in sealed]
        nexts = [r.retried(0.0) for r in records]
        outcomes = await self._keepers.write([nxt for nxt, _ in nexts])
        due = [(nxt, msg) for (nxt, msg), o in zip(nexts, outcomes, strict=True) if o.accepted]
        pending = [(nxt, msg) for nxt, msg in due if nxt.state is TaskState.PENDING]  # SCHEDULED: its keeper sends it
        try:
            if pending:
                await asyncio.to_thread(self.queue.produce_many, [msg for _, msg in pending])
        except QueueUnavailable:
            failed = [
                nxt.moved_to(
                    TaskState.FAILED,
                    error_type="QueueUnavailable",
                    error="the new attempt could not be enqueued; Kafka did not acknowledge it",
                )
                for nxt, _ in pending
            ]
            await self._keepers.write(failed)
            raise
        return [nxt if o.accepted else None for (nxt, _), o in zip(nexts, outcomes, strict=True)]

    @ray.method(concurrency_group=WAITS)
    @replies_errors
    async def wait(self, task_id: str, timeout_s: float, tenant: str | None = None) -> TaskRecord:
        """The task's record once it is terminal, or its current record after ``timeout_s``
        (with ``tenant``, only that tenant's task)."""
        if not isinstance(task_id, str) or not _ID.match(task_id):
            raise TaskNotFound(str(task_id))
        done = await self._await_finished([task_id], _deadline(timeout_s), tenant, must_exist=True)
        return done[0].unpack() if done else await self._get(task_id, tenant)

    async def _await_finished(
        self, task_ids: list[str], deadline: float, tenant: str | None, must_exist: bool = False
    ) -> list[PackedRecord]:
        """Records (packed) of ``task_ids`` that finish by ``deadline``, in the first batch the keepers
        report; [] at the deadline. The keepers answer from the writes they saw: the store is read
        only for tasks they do not know open (a keeper restarted since, or the task is older than
        what it keeps), and for those that ended before the wait whose records they no longer
        hold. With ``must_exist``, an id the store does not have either (or, with ``tenant``,
        another tenant's task) is ``TaskNotFound``; without, unknown ids are simply waited for."""
        look_up = must_exist
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            answer = await self._keepers.wait_any(task_ids, left, tenant=tenant, unknown_first=look_up)
            others = [r.id for r in answer.records if tenant is not None and r.tenant != tenant]
            if must_exist and others:
                raise TaskNotFound(others[0])
            mine = [r for r in answer.records if tenant is None or r.tenant == tenant]
            stored = answer.unread + answer.unknown
            if stored:
                found = await self._finished_in_store(stored, tenant, must_exist=must_exist)
                mine += [PackedRecord.of(r) for r in found]
                # What the store has is known to exist now: from here on it is waited for.
                look_up = must_exist = False
            if mine:
                return mine
            if not stored and not answer.records:
                return []
            # Ended, but not the caller's to see (another tenant's) or gone since: wait for the rest only.
            gone = set(answer.unread) | {r.id for r in answer.records}
            task_ids = [i for i in task_ids if i not in gone]
            if not task_ids:
                return []

    @ray.method(concurrency_group=WAITS)
    @replies_errors
    async def wait_many(
        self, task_ids: list[str], timeout_s: float, read_store: bool = True, tenant: str | None = None
    ) -> list[bytes]:
        """Finished records among ``task_ids``, each as its JSON document: at once those already
        finished, else those that finish within ``timeout_s``, in batches as the keepers accept
        their ends; an empty list after ``timeout_s``. Documents, not records, because they come
        by the thousand: the keepers hold them so, and the caller parses each once. With
        ``read_store``, ids the keepers do not know open are looked up in the store, and
        ``TaskNotFound`` is raised for an unknown id (or, with ``tenant``, another's). Callers
        call again with the ids still open (``read_store=False`` is enough then: the keepers
        report what ended between calls)."""
        if len(task_ids) > MAX_WAIT_IDS:
            raise InvalidTaskInput(f"at most {MAX_WAIT_IDS} task ids per wait, got {len(task_ids)}")
        for task_id in task_ids:
            if not isinstance(task_id, str) or not _ID.match(task_id):
                raise TaskNotFound(str(task_id))
        done = await self._await_finished(list(task_ids), _deadline(timeout_s), tenant, must_exist=read_store)
        return [r.doc for r in done]

    async def _finished_in_store(self, task_ids: list[str], tenant: str | None, must_exist: bool) -> list[TaskRecord]:
        found: dict[str, TaskRecord] = {}
        for k in range(0, len(task_ids), _GET_MANY):
            found.update(await asyncio.to_thread(self.store.get_many, task_ids[k : k + _GET_MANY]))
        if must_exist:
            for task_id in task_ids:
                rec = found.get(task_id)
                if rec is None or (tenant is not None and rec.tenant != tenant):
                    raise TaskNotFound(task_id)
        return [r for r in found.values() if r.finished and (tenant is None or r.tenant == tenant)]

    @replies_errors
    async def search(
        self, query: dict, limit: int = 100, after: list | None = None
    ) -> tuple[list[TaskRecord], list | None]:
        """Records matching ``query`` (see ``TaskQuery``), newest first, and the cursor of the next page."""
        q = self._query(query)
        if limit < 0:
            raise InvalidTaskInput(f"limit must be >= 0, got {limit}")
        return await asyncio.to_thread(self.store.search, q, limit, after)

    @replies_errors
    async def counts(self, query: dict) -> dict[str, int]:
        """Number of tasks per state among those matching ``query``."""
        return await asyncio.to_thread(self.store.counts, self._query(query))

    @replies_errors
    async def ends(self, query: dict, since: datetime, limit: int = 10_000) -> list[TaskEnd]:
        """How the tasks matching ``query`` that ended since ``since`` went (``StatusStore.ends``)."""
        return await asyncio.to_thread(self.store.ends, self._query(query), since, min(max(1, limit), 10_000))

    @replies_errors
    async def purge(self, older_than_s: float, states: list[str] | None = None) -> int:
        """Delete the records of tasks finished more than ``older_than_s`` ago (of ``states`` only,
        if given); returns how many."""
        try:
            parsed = None if states is None else [TaskState(s) for s in states]
        except ValueError as e:
            raise InvalidTaskInput(f"not a task state: {e}") from None
        if not isinstance(older_than_s, int | float) or math.isnan(older_than_s) or older_than_s <= 0:
            raise InvalidTaskInput(f"older_than must be a positive number of seconds, got {older_than_s!r}")
        now = utcnow()
        if older_than_s >= (now - STORE_FIRST).total_seconds():
            return 0  # no record finished before 1970
        return await asyncio.to_thread(self.store.purge, now - timedelta(seconds=older_than_s), parsed)

    @replies_errors
    async def refresh(self) -> None:
        """Make every accepted write visible to search now."""
        await asyncio.to_thread(self.store.refresh)

    @replies_errors
    async def keep_definitions(self, definitions: list[tuple[str, str, bytes]]) -> None:
        """Keep published task definitions (name, digest, pickle) in the store, signed with the
        cluster secret, so that queued tasks outlive a Ray restart. Callers reach this method
        through Ray only (the cluster's trusted channel); the HTTP API has no route to it."""
        signed = []
        for name, digest, blob in definitions:
            if not isinstance(name, str) or not re.match(NAME_PATTERN, name) or not isinstance(blob, bytes):
                raise InvalidTaskInput(f"not a task definition: {name!r}")
            if hashlib.sha256(blob).hexdigest() != digest:
                raise InvalidTaskInput(f"the digest of task definition {name!r} does not match its pickle")
            signed.append((name, digest, blob, self._signer.sign_definition(name, digest, blob)))
        await asyncio.to_thread(self.store.save_definitions, signed)

    @replies_errors
    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume a queue; consumers see the change within about a second."""
        if not isinstance(queue, str) or not re.match(QUEUE_PATTERN, queue):
            raise InvalidTaskInput(f"queue name {queue!r} must match {QUEUE_PATTERN}")
        await asyncio.to_thread(self.store.set_paused, queue, paused)
        await self._tell_consumers(queue, paused)

    async def _tell_consumers(self, queue: str, paused: bool) -> None:
        # So that the switch holds for every message produced once this returns. A consumer that
        # cannot be told now reads the stored switch when it starts again, and within a second anyway.
        change = "pause" if paused else "resume"
        await _tell(
            [consumer.pause_changed.remote(queue, paused) for consumer in self._consumers()],
            f"a consumer was not told of the {change} of queue {queue}",
        )

    @replies_errors
    async def queue_overview(self, tenant: str | None = None) -> list[dict]:
        """Each queue the consumers read, or with unfinished tasks, or paused: its Kafka lag
        (messages not yet read by the consumers, of every priority; None until known), its
        PENDING, SCHEDULED and RUNNING tasks (only ``tenant``'s, if given), and whether it is
        paused; by name."""
        unfinished = [s for s in TaskState if not s.terminal]
        counts = await asyncio.to_thread(self.store.counts_by_queue, TaskQuery(state=unfinished, tenant=tenant))
        paused = await asyncio.to_thread(self.store.paused_queues)
        lag: dict[str, int | None] = {}
        for parts in await self._each_consumer("partitions"):
            for p in parts:
                queue = queue_of(self.config.topic_prefix, p["topic"])
                if queue is None:
                    continue
                lag.setdefault(queue, None)
                if p["lag"] is not None:
                    lag[queue] = (lag[queue] or 0) + p["lag"]
        return [
            {
                "queue": q,
                "lag": lag.get(q),
                "pending": counts.get(q, {}).get("PENDING", 0),
                "scheduled": counts.get(q, {}).get("SCHEDULED", 0),
                "running": counts.get(q, {}).get("RUNNING", 0),
                "paused": q in paused,
            }
            for q in sorted(set(counts) | set(lag) | paused)
        ]

    def _consumers(self) -> list:
        """The live QueueConsumer actors."""
        found = []
        for name in live_members(self.config.namespace, QUEUE_CONSUMER):
            try:
                found.append(ray.get_actor(name, namespace=self.config.namespace))
            except ValueError:  # gone since it was listed
                continue
        return found

    async def _each_consumer(self, method: str) -> list:
        """What ``method`` of every live QueueConsumer answers (within 5 s; the others are left out)."""
        calls = [asyncio.wait_for(_awaited(getattr(c, method).remote()), 5.0) for c in self._consumers()]
        return [o for o in await asyncio.gather(*calls, return_exceptions=True) if not isinstance(o, BaseException)]

    @replies_errors
    async def executor_overview(self) -> list[dict]:
        """Each live Executor: its name, node, incarnation, tasks running (and the Ray tasks they
        run in, of at most ``max_running``), the seconds its lease still holds, and its counters."""
        from ray.util.state import list_actors

        # The deployment's own, and those of nodes that joined after it.
        names = list(dict.fromkeys([*self.config.executor_names(), *live_members(self.config.namespace, EXECUTOR)]))
        try:
            nodes = {
                a.name: a.node_id
                for a in await asyncio.to_thread(
                    list_actors, filters=[("ray_namespace", "=", self.config.namespace), ("state", "=", "ALIVE")]
                )
                if a.name
            }
        except Exception:  # the state API is away: the view goes on without nodes
            nodes = {}
        out = []
        for name in names:
            try:
                actor = ray.get_actor(name, namespace=self.config.namespace)
                stats = await asyncio.wait_for(_awaited(actor.get_stats.remote()), 5.0)
            except (ValueError, TimeoutError, ray.exceptions.RayError):
                out.append({"name": name, "alive": False, "node": nodes.get(name)})
                continue
            out.append({"name": name, "alive": True, "node": nodes.get(name), **stats})
        return out

    @replies_errors
    async def paused_queues(self) -> list[str]:
        """Names of the paused queues."""
        return sorted(await asyncio.to_thread(self.store.paused_queues))

    @replies_errors
    async def task_names(self) -> list[str]:
        """Names of the registered tasks."""
        return registry.registered_names()

    # ----- schedules
    @replies_errors
    async def save_schedule(self, spec: dict, tenant: str | None = None) -> Schedule:
        """Create a schedule, or replace the definition of the one with this id (its last tick is
        kept, so no tick runs twice). The task and its arguments are checked as a submit's are."""
        if not isinstance(spec, dict):
            raise InvalidTaskInput("a schedule is a JSON object")
        schedule = validated(Schedule, {**spec, "tenant": tenant, "created_at": utcnow().isoformat()}, "schedule")
        if schedule.never_due():
            raise InvalidTaskInput(f"invalid schedule: cron {schedule.cron!r} matches no date (say, 30 February)")
        req = SubmitRequest(
            name=schedule.task,
            args=schedule.args,
            kwargs=schedule.kwargs,
            queue=schedule.queue,
            timeout_s=schedule.timeout_s,
            tags=schedule.tags,
            tenant=tenant,
        )
        # Sealed: a scheduler fires only a message the cluster made (``Schedule.tick_record``).
        message = self._signer.sealed(self._message(req))
        schedule = schedule.model_copy(update={"message": message, "last_tick": None})
        await asyncio.to_thread(self.store.save_schedule, schedule)
        await self._tell_schedulers()
        return await self._schedule(schedule.id, tenant)

    def _schedule_key(self, schedule_id: str, tenant: str | None) -> str:
        if not isinstance(schedule_id, str) or not re.match(SCHEDULE_ID_PATTERN, schedule_id):
            raise ScheduleNotFound(str(schedule_id))
        return f"{tenant or '-'}:{schedule_id}"

    @replies_errors
    async def get_schedule(self, schedule_id: str, tenant: str | None = None) -> Schedule:
        """A schedule; ``ScheduleNotFound`` if there is none (of ``tenant``, when given)."""
        return await self._schedule(schedule_id, tenant)

    async def _schedule(self, schedule_id: str, tenant: str | None) -> Schedule:
        found = await asyncio.to_thread(self.store.get_schedule, self._schedule_key(schedule_id, tenant))
        if found is None:
            raise ScheduleNotFound(schedule_id)
        return found.model_copy(update={"message": None})

    @replies_errors
    async def list_schedules(self, tenant: str | None = None) -> list[Schedule]:
        """Every schedule (of ``tenant``, when given), by id."""
        found = await asyncio.to_thread(self.store.list_schedules, tenant)
        return [s.model_copy(update={"message": None}) for s in found if tenant is not None or s.tenant is None]

    @replies_errors
    async def delete_schedule(self, schedule_id: str, tenant: str | None = None) -> None:
        """Remove a schedule (tasks of ticks already fired are left as they are)."""
        if not await asyncio.to_thread(self.store.delete_schedule, self._schedule_key(schedule_id, tenant)):
            raise ScheduleNotFound(schedule_id)
        await self._tell_schedulers()

    @replies_errors
    async def set_schedule_paused(self, schedule_id: str, paused: bool, tenant: str | None = None) -> Schedule:
        """Pause or resume a schedule; ticks that fall while it is paused are skipped."""
        key = self._schedule_key(schedule_id, tenant)
        if not await asyncio.to_thread(self.store.set_schedule_paused, key, bool(paused)):
            raise ScheduleNotFound(schedule_id)
        await self._tell_schedulers()
        return await self._schedule(schedule_id, tenant)

    async def _tell_schedulers(self) -> None:
        # So that a pause or a delete holds from the next pass of every scheduler on, and a new
        # schedule's first tick is not late. A keeper that cannot be told now reads the schedules
        # when it starts again, and within REREAD_EVERY_S anyway.
        await _tell(
            [k.schedules_changed.remote() for k in self._keepers.handles],
            "a keeper was not told that the schedules changed",
        )

    @staticmethod
    def _query(query: dict) -> TaskQuery:
        return validated(TaskQuery, query, "query")
