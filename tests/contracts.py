"""Contract suites of the seams: every implementation of ``StatusStore`` and of ``TaskQueue`` /
``QueueReader`` must pass the same tests.

A subclass provides the implementation under test through a fixture (``contract_store``, or
``contract_queue`` and ``contract_reader``); tests/unit runs them on the in-memory twins,
tests/test_contracts.py on OpenSearch and Kafka.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from raylane.errors import InvalidTaskInput, QueueUnavailable
from raylane.models import FlowLinks, PackedRecord, Progress, TaskMessage, TaskRecord
from raylane.schedules import Schedule
from raylane.signing import Signer
from raylane.states import TaskState
from raylane.store import StatusStore, TaskQuery

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# The cluster secret of records and messages made here: what they ask is sealed, as a submit seals it.
SIGNER = Signer(b"contract-secret-of-16+-bytes")


def message(
    name: str = "demo.add",
    *,
    at: datetime = T0,
    tags: list[str] | None = None,
    queue: str = "default",
    tenant: str | None = None,
) -> TaskMessage:
    """A task message with a fresh id, sealed under ``SIGNER``."""
    return SIGNER.sealed(
        TaskMessage(
            id=uuid.uuid4().hex, name=name, queue=queue, args=[1, 2], created_at=at, tags=tags or [], tenant=tenant
        )
    )


def pending(name: str = "demo.add", **kw) -> TaskRecord:
    """The PENDING record of a fresh task."""
    return TaskRecord.pending(message(name, **kw))


def schedule(sid: str, *, tenant: str | None = None, **spec) -> Schedule:
    """A schedule of demo.add (every minute unless ``spec`` says otherwise)."""
    spec.setdefault("args", [1, 2])
    if "cron" not in spec:
        spec.setdefault("every_s", 60)
    return Schedule(id=sid, task="demo.add", tenant=tenant, created_at=T0, message=message(tenant=tenant), **spec)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


class StoreContract:
    """What every ``StatusStore`` promises (see its docstring)."""

    def test_a_write_is_accepted_only_above_the_stored_version(self, contract_store: StatusStore):
        rec = pending()
        [first] = contract_store.write_many([rec])
        assert first.accepted and first.status == 201
        [again] = contract_store.write_many([rec])
        assert not again.accepted and again.reason == "conflict" and again.status == 409
        running = rec.moved_to(TaskState.RUNNING)
        [up] = contract_store.write_many([running])
        assert up.accepted and up.status == 200
        [down] = contract_store.write_many([rec])
        assert not down.accepted and down.status == 409 and not down.refused_for_content
        assert contract_store.get(rec.id).state is TaskState.RUNNING

    def test_every_write_of_a_bulk_has_its_own_outcome_in_order(self, contract_store: StatusStore):
        a, b = pending(), pending()
        contract_store.write_many([a.moved_to(TaskState.RUNNING)])
        outcomes = contract_store.write_many([a, b, b.moved_to(TaskState.RUNNING), PackedRecord.of(b)])
        assert [(o.task_id, o.accepted) for o in outcomes] == [(a.id, False), (b.id, True), (b.id, True), (b.id, False)]
        assert [o.version for o in outcomes] == [1, 1, 2, 1]

    def test_writes_from_an_event_loop_have_the_same_outcomes(self, contract_store: StatusStore):
        a, b = pending(), pending()
        contract_store.write_many([a.moved_to(TaskState.RUNNING)])
        batch = [a, b, b.moved_to(TaskState.RUNNING), PackedRecord.of(b)]
        outcomes = asyncio.run(contract_store.write_many_async(batch))
        assert [(o.task_id, o.accepted, o.status) for o in outcomes] == [
            (a.id, False, 409),
            (b.id, True, 201),
            (b.id, True, 200),
            (b.id, False, 409),
        ]
        assert contract_store.get(b.id).state is TaskState.RUNNING
        assert asyncio.run(contract_store.write_many_async([])) == []

    def test_a_level_never_goes_back_and_one_terminal_write_of_an_attempt_wins(self, contract_store: StatusStore):
        rec = pending()
        running = rec.moved_to(TaskState.RUNNING)
        cancelled = running.moved_to(TaskState.CANCELLED)
        done = running.moved_to(TaskState.SUCCEEDED, result={"x": 1})
        outcomes = contract_store.write_many([rec, cancelled, running, done])
        assert [o.accepted for o in outcomes] == [True, True, False, False]
        got = contract_store.get(rec.id)
        assert got.state is TaskState.CANCELLED and got.result is None and got.version == 3

    def test_a_retry_is_a_higher_version(self, contract_store: StatusStore):
        failed = pending().moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED, error="x", will_retry=True)
        nxt, _ = failed.retried(0)
        late_cancel = failed.moved_to(TaskState.CANCELLED)
        outcomes = contract_store.write_many([failed, nxt, late_cancel])
        assert [o.accepted for o in outcomes] == [True, True, False]
        got = contract_store.get(nxt.id)
        assert (got.attempt, got.state, got.version) == (1, TaskState.PENDING, 11)
        assert [a.state for a in got.attempts] == ["FAILED"]

    def test_a_record_the_store_cannot_hold_is_refused_alone(self, contract_store: StatusStore):
        bad = pending().model_copy(update={"args": [nested(40)]})
        good = pending()
        outcomes = contract_store.write_many([bad, good])
        assert not outcomes[0].accepted and outcomes[0].refused_for_content, outcomes[0]
        assert outcomes[1].accepted
        assert contract_store.get(bad.id) is None and contract_store.get(good.id) is not None

    def test_a_record_read_back_bears_the_seal_it_was_written_with(self, contract_store: StatusStore):
        # Sweeps carry on only records whose seal holds: every value must come back as it went in.
        odd = [0.1, 1e300, -0.0, 2**62, "é\u2028\x00", {"z": [None, True], "a": {}}, []]
        msg = SIGNER.sealed(message().model_copy(update={"args": odd, "kwargs": {"b": 1.5, "a": "x"}, "timeout_s": 60}))
        rec = TaskRecord.pending(msg).moved_to(TaskState.RUNNING, worker="w", lease_owner="o")
        contract_store.write_many([rec])
        got = contract_store.get(rec.id)
        assert got is not None and got.seal == msg.seal and SIGNER.seal_ok(got)
        # ... and what was changed in the store does not bear it
        assert not SIGNER.seal_ok(got.model_copy(update={"kwargs": {"b": 1.5, "a": "y"}}))

    def test_get_is_real_time_and_get_many_gives_only_what_exists(self, contract_store: StatusStore):
        rec = pending()
        contract_store.write_many([rec])
        assert contract_store.get(rec.id) == rec
        missing = uuid.uuid4().hex
        assert contract_store.get(missing) is None
        assert contract_store.get_many([rec.id, missing]) == {rec.id: rec}
        assert contract_store.get_many([]) == {}

    def test_search_filters_and_orders_newest_first(self, contract_store: StatusStore):
        name = f"demo.s{uuid.uuid4().hex[:8]}"
        recs = [pending(name, at=T0 + timedelta(seconds=i), tags=["odd"] if i % 2 else ["even"]) for i in range(6)]
        failed = recs[0].moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED, error="Disk quota exceeded on /data")
        other = pending(f"{name}x")
        contract_store.write_many([*recs, failed, other])
        contract_store.refresh()
        found, _ = contract_store.search(TaskQuery(name=name), limit=100)
        assert [r.id for r in found] == [r.id for r in reversed(recs)]
        odd, _ = contract_store.search(TaskQuery(name=name, tags=["odd"]))
        assert {r.id for r in odd} == {recs[1].id, recs[3].id, recs[5].id}
        window, _ = contract_store.search(
            TaskQuery(name=name, since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4))
        )
        assert [r.id for r in window] == [recs[3].id, recs[2].id]
        by_state, _ = contract_store.search(TaskQuery(name=name, state=[TaskState.FAILED]))
        assert [r.id for r in by_state] == [recs[0].id]
        by_text, _ = contract_store.search(TaskQuery(name=name, text="quota DISK"))
        assert [r.id for r in by_text] == [recs[0].id]
        assert contract_store.search(TaskQuery(name=name, text="quota memory"))[0] == []

    def test_ranges_past_the_times_a_record_holds_find_what_lies_within(self, contract_store: StatusStore):
        """A search or count from before 1970, or until after 2262, takes the span records can hold;
        the store refused such a range outright."""
        name = f"demo.r{uuid.uuid4().hex[:8]}"
        recs = [pending(name, at=T0 + timedelta(seconds=i)) for i in range(3)]
        contract_store.write_many(recs)
        contract_store.refresh()
        far_back, far_ahead = datetime(1900, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)
        found, _ = contract_store.search(TaskQuery(name=name, since=far_back, until=far_ahead))
        assert [r.id for r in found] == [r.id for r in reversed(recs)]
        assert contract_store.counts(TaskQuery(name=name, since=datetime(1, 1, 1, tzinfo=UTC))) == {"PENDING": 3}
        assert contract_store.search(TaskQuery(name=name, until=far_back))[0] == []
        assert contract_store.counts(TaskQuery(name=name, since=far_ahead)) == {}
        assert contract_store.ends(TaskQuery(name=name), since=far_back) == []

    def test_search_pages_cover_every_match_once(self, contract_store: StatusStore):
        name = f"demo.p{uuid.uuid4().hex[:8]}"
        same_time = [pending(name) for _ in range(5)]  # equal created_at: the id breaks the tie
        contract_store.write_many(same_time + [pending(name, at=T0 + timedelta(seconds=i)) for i in range(1, 6)])
        contract_store.refresh()
        seen, cursor, pages = [], None, 0
        while True:
            page, cursor = contract_store.search(TaskQuery(name=name), limit=3, after=cursor)
            seen.extend(r.id for r in page)
            pages += 1
            if cursor is None:
                break
            json.dumps(cursor)  # a cursor travels to HTTP clients as JSON
            assert pages < 10
        assert len(seen) == 10 and len(set(seen)) == 10

    def test_counts_per_state(self, contract_store: StatusStore):
        name = f"demo.c{uuid.uuid4().hex[:8]}"
        a, b, c = pending(name), pending(name), pending(name)
        contract_store.write_many(
            [
                a,
                b,
                c,
                b.moved_to(TaskState.RUNNING),
                c.moved_to(TaskState.RUNNING).moved_to(TaskState.SUCCEEDED, result=1),
            ]
        )
        contract_store.refresh()
        assert contract_store.counts(TaskQuery(name=name)) == {"PENDING": 1, "RUNNING": 1, "SUCCEEDED": 1}
        assert contract_store.counts(TaskQuery(name=name, state=[TaskState.RUNNING])) == {"RUNNING": 1}
        assert contract_store.counts(TaskQuery(name=f"{name}-none")) == {}

    def test_purge_deletes_only_tasks_finished_before_the_cutoff(self, contract_store: StatusStore):
        name = f"demo.p{uuid.uuid4().hex[:8]}"
        now = datetime.now(UTC)
        old, recent = now - timedelta(days=10), now - timedelta(days=1)

        def ended(state: TaskState, at: datetime, **kw) -> TaskRecord:
            return pending(name).moved_to(TaskState.RUNNING).moved_to(state, finished_at=at, **kw)

        gone_ok, gone_failed = ended(TaskState.SUCCEEDED, old), ended(TaskState.FAILED, old)
        kept = [
            ended(TaskState.SUCCEEDED, recent),
            ended(TaskState.FAILED, old, will_retry=True),  # a retry follows: not finished
            pending(name).moved_to(TaskState.RUNNING),
            pending(name),
        ]
        contract_store.write_many([gone_ok, gone_failed, *kept])
        contract_store.refresh()
        cutoff = now - timedelta(days=7)
        assert contract_store.purge(cutoff, [TaskState.FAILED]) == 1
        assert contract_store.get(gone_failed.id) is None and contract_store.get(gone_ok.id) is not None
        assert contract_store.purge(cutoff) == 1
        assert contract_store.get(gone_ok.id) is None
        assert set(contract_store.get_many([r.id for r in kept])) == {r.id for r in kept}
        contract_store.refresh()
        assert sum(contract_store.counts(TaskQuery(name=name)).values()) == len(kept)
        with pytest.raises(InvalidTaskInput):
            contract_store.purge(cutoff, [TaskState.RUNNING])

    def test_paused_queues_are_kept(self, contract_store: StatusStore):
        q = f"q{uuid.uuid4().hex[:8]}"
        assert q not in contract_store.paused_queues()
        contract_store.set_paused(q, True)
        assert q in contract_store.paused_queues()
        contract_store.set_paused(q, False)
        contract_store.set_paused(q, False)  # idempotent
        assert q not in contract_store.paused_queues()

    def test_definitions_are_kept_as_given(self, contract_store: StatusStore):
        name = f"demo.d{uuid.uuid4().hex[:8]}"
        assert contract_store.load_definition(name) is None
        contract_store.save_definitions([(name, "digest", b"\x80\x05blob\x00", "sig")])
        assert contract_store.load_definition(name) == ("digest", b"\x80\x05blob\x00", "sig")
        contract_store.save_definitions([(name, "digest2", b"new", "sig2")])
        assert contract_store.load_definition(name) == ("digest2", b"new", "sig2")

    def test_every_schedule_is_listed_however_many_there_are(self, contract_store: StatusStore):
        tenant = f"t{uuid.uuid4().hex[:8]}"
        if hasattr(contract_store, "schedule_page"):
            contract_store.schedule_page = 3  # pages of three documents: a schedule and a half
        made = [schedule(f"p{i}", tenant=tenant) for i in range(7)]
        for s in made:
            contract_store.save_schedule(s)
        contract_store.advance_schedule(made[4].key, T0 + timedelta(minutes=3))
        listed = contract_store.list_schedules(tenant)
        assert [s.id for s in listed] == [f"p{i}" for i in range(7)]
        assert listed[4].last_tick == T0 + timedelta(minutes=3) and listed[3].last_tick is None
        for s in made:
            contract_store.delete_schedule(s.key)

    def test_schedules_are_kept_paused_and_advanced_only_forward(self, contract_store: StatusStore):
        sid = f"s{uuid.uuid4().hex[:8]}"
        s = schedule(sid, tenant="t1")
        assert contract_store.get_schedule(s.key) is None
        contract_store.save_schedule(s)
        got = contract_store.get_schedule(s.key)
        assert got is not None and got.every_s == 60 and got.message == s.message and got.last_tick is None
        assert [x.id for x in contract_store.list_schedules("t1") if x.id == sid] == [sid]
        assert all(x.tenant == "t2" for x in contract_store.list_schedules("t2"))
        assert sid not in [x.id for x in contract_store.list_schedules("t2")]
        contract_store.advance_schedule(s.key, T0 + timedelta(minutes=2))
        contract_store.advance_schedule(s.key, T0 + timedelta(minutes=1))  # never back
        assert contract_store.get_schedule(s.key).last_tick == T0 + timedelta(minutes=2)
        # A new definition replaces the old one whole (no field of it is merged) and keeps last_tick.
        contract_store.save_schedule(schedule(sid, tenant="t1", cron="*/5 * * * *", kwargs={"b": 2}))
        got = contract_store.get_schedule(s.key)
        assert got.cron == "*/5 * * * *" and got.every_s is None and got.kwargs == {"b": 2}
        assert got.last_tick == T0 + timedelta(minutes=2)
        assert contract_store.set_schedule_paused(s.key, True)
        assert [x.paused for x in contract_store.list_schedules("t1") if x.id == sid] == [True]
        assert contract_store.set_schedule_paused(s.key, False)
        assert not contract_store.get_schedule(s.key).paused
        assert contract_store.delete_schedule(s.key)
        assert not contract_store.delete_schedule(s.key)
        assert not contract_store.set_schedule_paused(s.key, True)
        contract_store.advance_schedule(s.key, T0)  # gone: nothing happens
        assert contract_store.get_schedule(s.key) is None
        assert sid not in [x.id for x in contract_store.list_schedules()]

    def test_progress_is_kept_beside_the_record_and_goes_with_it(self, contract_store: StatusStore):
        running = pending(f"demo.g{uuid.uuid4().hex[:8]}").moved_to(TaskState.RUNNING)
        contract_store.write_many([running])
        contract_store.heartbeat(uuid.uuid4().hex[:16], 1)  # progress lives beside heartbeats, fields and all
        contract_store.put_progress([Progress(running.id, 0, 0.25, "a quarter", 1.0)])
        contract_store.put_progress([Progress(running.id, 0, 0.5, None, 2.0)])  # the latest replaces it
        assert contract_store.progress_of([running.id, "0" * 32]) == {
            running.id: Progress(running.id, 0, 0.5, None, 2.0)
        }
        assert contract_store.get(running.id).version == running.version  # no record was written
        done = running.moved_to(TaskState.SUCCEEDED, finished_at=datetime.now(UTC) - timedelta(days=30))
        contract_store.write_many([done])
        contract_store.refresh()
        assert contract_store.purge(datetime.now(UTC) - timedelta(days=20), [TaskState.SUCCEEDED]) >= 1
        assert contract_store.progress_of([running.id]) == {}

    def test_heartbeats(self, contract_store: StatusStore):
        a, b = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
        contract_store.heartbeat(a, 1)
        contract_store.heartbeat(b, 1)
        beats = contract_store.heartbeats()  # a first beat is seen at once
        assert beats[a] == 1 and beats[b] == 1
        contract_store.heartbeat(a, 2)  # a later one within about a second
        deadline = time.monotonic() + 10
        while contract_store.heartbeats()[a] != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        beats = contract_store.heartbeats()
        assert beats[a] == 2 and beats[b] == 1
        contract_store.delete_heartbeats([a])
        contract_store.delete_heartbeats([])
        beats = contract_store.heartbeats()
        assert a not in beats and beats[b] == 1

    def test_recovery_queries(self, contract_store: StatusStore):
        owner = uuid.uuid4().hex[:16]
        now = datetime.now(UTC)
        mine = pending().moved_to(TaskState.RUNNING, lease_owner=owner)
        old_mine = pending().moved_to(TaskState.RUNNING, lease_owner=owner)
        old_mine = old_mine.model_copy(update={"updated_at": now - timedelta(minutes=5)})
        orphan = pending().moved_to(TaskState.RUNNING, lease_owner=uuid.uuid4().hex[:16])
        stale = pending().model_copy(update={"updated_at": now - timedelta(minutes=5)})
        fresh = pending()
        due = pending().model_copy(update={"state": TaskState.SCHEDULED, "not_before": now - timedelta(seconds=30)})
        later = pending().model_copy(update={"state": TaskState.SCHEDULED, "not_before": now + timedelta(hours=1)})
        # Limited tasks waiting for their turn are their keepers' to send, however long they wait.
        turn = [
            due.model_copy(update={"id": uuid.uuid4().hex, "not_before": now - timedelta(hours=1), **limit})
            for limit in ({"max_concurrency": 1}, {"rate_limit": "1/s"})
        ]
        half = pending().moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED, will_retry=True)
        half = half.model_copy(update={"updated_at": now - timedelta(minutes=5)})
        final = pending().moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED)
        final = final.model_copy(update={"updated_at": now - timedelta(minutes=5)})
        recs = [mine, old_mine, orphan, stale, fresh, due, later, half, final, *turn]
        assert all(o.accepted for o in contract_store.write_many(recs))
        contract_store.refresh()
        ids = {r.id for r in recs}

        def found(rs: list[TaskRecord]) -> set[str]:
            return {r.id for r in rs} & ids

        assert found(contract_store.running_not_owned_by({owner}, 10_000)) == {orphan.id}
        assert found(contract_store.running_owned_by(owner, now - timedelta(minutes=1), 10_000)) == {old_mine.id}
        assert found(contract_store.running_owned_by(owner, now + timedelta(minutes=1), 10_000)) == {
            mine.id,
            old_mine.id,
        }
        assert found(contract_store.stale_pending(now - timedelta(minutes=1), set(), 10_000)) == {stale.id}
        assert found(contract_store.stale_pending(now - timedelta(minutes=1), {"default"}, 10_000)) == set()
        assert found(contract_store.overdue_scheduled(now, set(), 10_000)) == {due.id}
        assert found(contract_store.overdue_scheduled(now, set(), 1)) == {due.id}  # not behind those waiting
        assert found(contract_store.unfinished_retries(now - timedelta(minutes=1), 10_000)) == {half.id}

    def test_counts_by_queue_and_ends(self, contract_store: StatusStore):
        tag = uuid.uuid4().hex[:12]
        now = datetime.now(UTC)
        a = [pending(queue="qa", tags=[tag]) for _ in range(3)]
        b = pending(queue="qb", tags=[tag])
        ran = a[0].moved_to(TaskState.RUNNING, started_at=now - timedelta(seconds=5))
        done = ran.moved_to(TaskState.SUCCEEDED, finished_at=now - timedelta(seconds=1))
        old = a[1].moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED, finished_at=now - timedelta(hours=2))
        assert all(o.accepted for o in contract_store.write_many([*a, b, ran, done, old]))
        contract_store.refresh()
        assert contract_store.counts_by_queue(TaskQuery(tags=[tag])) == {
            "qa": {"SUCCEEDED": 1, "FAILED": 1, "PENDING": 1},
            "qb": {"PENDING": 1},
        }
        [end] = contract_store.ends(TaskQuery(tags=[tag]), now - timedelta(hours=1))
        assert end.state == "SUCCEEDED" and end.created_at == done.created_at
        assert end.started_at == done.started_at and end.finished_at == done.finished_at
        assert len(contract_store.ends(TaskQuery(tags=[tag]), now - timedelta(hours=3))) == 2

    def test_workflow_tasks_found_by_workflow_and_while_they_wait(self, contract_store: StatusStore):
        now = datetime.now(UTC)
        flow_id = uuid.uuid4().hex
        first = TaskRecord.pending(message().model_copy(update={"workflow_id": flow_id}))
        waits = message().model_copy(
            update={"workflow_id": flow_id, "parent_id": first.id, "flow": FlowLinks(waiting_on=[first.id])}
        )
        waiting = TaskRecord.pending(waits).model_copy(update={"updated_at": now - timedelta(minutes=5)})
        just_written = TaskRecord.pending(waits.model_copy(update={"id": uuid.uuid4().hex}))
        # Waiting tasks are SCHEDULED without a time; a delayed one is not waiting for parents.
        delayed = waiting.model_copy(update={"id": uuid.uuid4().hex, "not_before": now + timedelta(hours=1)})
        taken = waiting.model_copy(update={"id": uuid.uuid4().hex}).moved_to(TaskState.RUNNING)
        taken = taken.model_copy(update={"updated_at": now - timedelta(minutes=5)})
        recs = [first, waiting, just_written, delayed, taken, pending()]
        assert all(o.accepted for o in contract_store.write_many(recs))
        contract_store.refresh()
        assert waiting.state is TaskState.SCHEDULED and waiting.waits_for_parents
        assert {r.id for r in contract_store.waiting_for_parents(now - timedelta(minutes=1), 10_000)} >= {waiting.id}
        assert not {just_written.id, delayed.id, taken.id, first.id} & {
            r.id for r in contract_store.waiting_for_parents(now - timedelta(minutes=1), 10_000)
        }
        page, _ = contract_store.search(TaskQuery(workflow_id=flow_id), 100)
        assert {r.id for r in page} == {first.id, waiting.id, just_written.id, delayed.id, taken.id}
        assert contract_store.get(waiting.id).flow == FlowLinks(waiting_on=[first.id])


def drain(reader, n: int, timeout: float = 30.0) -> list:
    """Poll ``reader`` until ``n`` messages came (or ``timeout``); everything polled, in order."""
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.extend(reader.poll(n - len(out), 0.2))
    return out


class QueueContract:
    """What every ``TaskQueue`` and ``QueueReader`` promise.

    The subclass provides ``contract_queue``, a producer signing with ``signer``, two partitions
    per queue, whose ``dlq_topic`` ends in ``.`` plus one character (so that a reader with that
    prefix reads it); and ``contract_reader(member=0, members=1, group=..., prefix=...)``, a
    factory of readers of the producer's queues; and ``drop_topic(topic)``, which deletes a topic
    as an operator would, returning once it is gone."""

    signer = SIGNER

    def test_a_queue_exists_once_made(self, contract_queue):
        assert not contract_queue.queue_exists("a")
        topic = contract_queue.ensure_queue("a")
        assert topic == f"{contract_queue.prefix}a"
        assert contract_queue.queue_exists("a") and contract_queue.ensure_queue("a") == topic

    def test_a_queue_whose_topic_was_deleted_is_made_again_by_a_later_produce(
        self, contract_queue, contract_reader, drop_topic
    ):
        contract_queue.produce_many([message(queue="a")])  # the producer has now sent to the topic
        drop_topic(f"{contract_queue.prefix}a")
        again = message(queue="a")
        for attempt in range(2):  # the first produce may find the topic gone; the next makes it again
            try:
                contract_queue.produce_many([again])
                break
            except QueueUnavailable:
                if attempt:
                    raise
        assert [c.key for c in drain(contract_reader(), 1)] == [again.id.encode()]

    def test_produced_messages_are_read_signed(self, contract_queue, contract_reader):
        msgs = [message(queue="a") for _ in range(6)] + [message(queue="b") for _ in range(3)]
        contract_queue.produce_many(msgs)
        got = drain(contract_reader(), 9)
        assert sorted(c.key for c in got) == sorted(m.id.encode() for m in msgs)
        for c in got:
            assert self.signer.message_ok(c.value, c.signature)
            assert TaskMessage.model_validate_json(c.value).id.encode() == c.key
        for p in {(c.topic, c.partition) for c in got}:
            offsets = [c.offset for c in got if (c.topic, c.partition) == p]
            assert offsets == sorted(offsets)

    def test_members_split_the_partitions(self, contract_queue, contract_reader):
        msgs = [message(queue=q) for q in ("a", "b", "c") for _ in range(8)]
        contract_queue.produce_many(msgs)
        first, second = contract_reader(member=0, members=2), contract_reader(member=1, members=2)
        got0, got1 = drain(first, 24, timeout=5), drain(second, 24, timeout=5)
        assert {(c.topic, c.partition) for c in got0}.isdisjoint({(c.topic, c.partition) for c in got1})
        assert sorted(c.key for c in got0 + got1) == sorted(m.id.encode() for m in msgs)

    def test_a_reader_told_of_more_readers_reads_its_new_share(self, contract_queue, contract_reader):
        first = contract_reader(member=0, members=1, group="g-grow")
        before = [message(queue=q) for q in ("a", "b", "c") for _ in range(8)]
        contract_queue.produce_many(before)
        got = drain(first, 24)
        assert first.commit({(c.topic, c.partition): c.offset + 1 for c in got}) == set()
        first.resize(2)
        second = contract_reader(member=1, members=2, group="g-grow")
        after = [message(queue=q) for q in ("a", "b", "c") for _ in range(8)]
        contract_queue.produce_many(after)
        got0, got1 = drain(first, 24, timeout=5), drain(second, 24, timeout=5)
        # Each reads its own share of the partitions, from the offsets committed before.
        assert {(c.topic, c.partition) for c in got0}.isdisjoint({(c.topic, c.partition) for c in got1})
        assert sorted(c.key for c in got0 + got1) == sorted(m.id.encode() for m in after)
        assert got1, "the partitions were not shared"
        # A commit of a partition that moved to the other reader is left out.
        moved = {(c.topic, c.partition): c.offset + 1 for c in got1}
        assert first.commit(moved) == set(moved)
        with pytest.raises(ValueError):
            second.resize(1)

    def test_what_is_not_committed_is_read_again(self, contract_queue, contract_reader):
        msgs = [message(queue="a") for _ in range(6)]
        contract_queue.produce_many(msgs)
        reader = contract_reader(group="g1")
        got = drain(reader, 6)
        assert len(got) == 6
        settled = [c for c in got if c.offset == 0]  # the first of each partition
        assert reader.commit({(c.topic, c.partition): c.offset + 1 for c in settled}) == set()
        reader.close()
        again = drain(contract_reader(group="g1"), 6 - len(settled), timeout=10)
        assert sorted(c.key for c in again) == sorted(c.key for c in got if c.offset != 0)

    def test_a_commit_of_a_partition_not_read_is_left_out(self, contract_queue, contract_reader):
        contract_queue.produce_many([message(queue="a")])
        reader = contract_reader()
        [item] = drain(reader, 1)
        gone = (f"{contract_queue.prefix}nope", 0)
        assert reader.commit({(item.topic, item.partition): item.offset + 1, gone: 1}) == {gone}

    def test_held_topics_are_given_back_and_read_after_resume(self, contract_queue, contract_reader):
        a, b = [message(queue="a") for _ in range(4)], [message(queue="b") for _ in range(4)]
        contract_queue.produce_many(a + b)
        reader = contract_reader()
        got = drain(reader, 8)
        held_topic = f"{contract_queue.prefix}a"
        keep = reader.hold({held_topic}, got)
        assert sorted(c.key for c in keep) == sorted(m.id.encode() for m in b)
        assert all(s.paused == (s.topic == held_topic) for s in reader.partitions())
        assert reader.poll(10, 0.3) == []
        reader.hold(set(), [])
        again = drain(reader, 4)
        assert sorted(c.key for c in again) == sorted(m.id.encode() for m in a)

    def test_partitions_report_lag(self, contract_queue, contract_reader):
        contract_queue.produce_many([message(queue="a") for _ in range(5)])
        reader = contract_reader()
        got = drain(reader, 5)
        # A partition's log end is known once the reader has asked for it (lag is None until
        # then): an empty partition's may come a poll or two after the messages of the others.
        deadline = time.monotonic() + 15
        while True:
            states = [s for s in reader.partitions() if s.topic == f"{contract_queue.prefix}a"]
            if all(s.end is not None for s in states) or time.monotonic() > deadline:
                break
            reader.poll(1, 0.2)
        assert sum(s.end or 0 for s in states) == 5
        assert all(s.lag == 0 for s in states), states
        assert len(got) == 5

    def test_a_dead_letter_keeps_the_reason_and_a_bounded_copy(self, contract_queue, contract_reader):
        contract_queue.produce_many([message(queue="a")])
        [item] = drain(contract_reader(), 1)
        big = item.__class__(item.topic, item.partition, item.offset, item.key, b"x" * 100_000, None)
        contract_queue.dead_letter(big, "cannot be handled")
        [letter] = drain(contract_reader(prefix=contract_queue.dlq_topic[:-1]), 1)
        body = json.loads(letter.value)
        assert body["reason"] == "cannot be handled" and body["truncated"] and body["value_bytes"] == 100_000
        assert (body["topic"], body["offset"], body["key"]) == (item.topic, item.offset, item.key.decode())
        assert len(letter.value) < 20_000
        contract_queue.dead_letter(item, "a second one")
        newest = contract_queue.dead_letters(1)
        assert [d["reason"] for d in newest] == ["a second one"] and newest[0]["key"] == item.key.decode()
        both = contract_queue.dead_letters(10)
        assert [d["reason"] for d in both[:2]] == ["a second one", "cannot be handled"]


# --- the version protocol under random interleavings of its writers ---------------------------------

_WRITERS = ("claim", "succeed", "fail", "fail_retry", "cancel", "timeout", "retry")


def _writer_steps():
    from hypothesis import strategies as st

    step = st.tuples(st.sampled_from(_WRITERS), st.integers(0, 2), st.booleans())
    return st.lists(step, min_size=1, max_size=25)


def _writer_record(base: TaskMessage, kind: str, attempt: int, seen: TaskRecord | None) -> TaskRecord | None:
    """The record writer ``kind`` sends for ``attempt`` of ``base``, built as raylane's writers build
    it; cancel builds on ``seen``, the record as last read (None: it writes nothing)."""

    def claimed() -> TaskRecord:
        return TaskRecord.pending(base.model_copy(update={"attempt": attempt})).moved_to(
            TaskState.RUNNING, lease_owner="e1"
        )

    if kind == "claim":
        return claimed()
    if kind == "succeed":
        return claimed().moved_to(TaskState.SUCCEEDED, result={"attempt": attempt})
    if kind in ("fail", "fail_retry"):
        return claimed().moved_to(
            TaskState.FAILED, error="boom", error_type="ValueError", will_retry=kind == "fail_retry"
        )
    if kind == "timeout":
        return claimed().moved_to(TaskState.TIMED_OUT, error="timed out")
    if kind == "retry":
        return claimed().moved_to(TaskState.FAILED, error="boom", will_retry=True).retried(0)[0]
    if seen is None or seen.state.terminal:  # cancel, from a record that may be stale by now
        return None
    return seen.moved_to(TaskState.CANCELLED, error="cancelled")


class VersionProperties:
    """Random interleavings of the claim, finish, cancel, timeout and retry writers, each building
    its record as raylane's writers do (none reads, except cancel, which may read a stale record),
    written in random batches. Whatever the order:

    - each write is accepted exactly when its version is above every version accepted before;
    - the stored version never goes down;
    - at most one terminal write per attempt is accepted;
    - a stored record has a result if and only if it is SUCCEEDED.

    The subclass provides ``contract_store`` and may lower ``examples``."""

    examples = 200

    def test_version_protocol(self, contract_store: StatusStore):
        from hypothesis import HealthCheck, given, settings

        @settings(
            max_examples=self.examples,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(_writer_steps())
        def run(steps):
            self._check(contract_store, steps)

        run()

    @staticmethod
    def _check(store: StatusStore, steps) -> None:
        base = message()

        highest = 0
        terminal_accepted: dict[int, int] = {}
        seen = None
        batch: list[TaskRecord] = []
        for i, (kind, attempt, ends_batch) in enumerate(steps):
            rec = _writer_record(base, kind, attempt, seen)
            if rec is not None:
                batch.append(rec)
            if not (ends_batch or i == len(steps) - 1) or not batch:
                continue
            outcomes = store.write_many(batch)
            for rec, out in zip(batch, outcomes, strict=True):
                assert out.accepted == (rec.version > highest), (rec.state, rec.version, highest, out)
                if out.accepted:
                    highest = rec.version
                    if rec.state.terminal:
                        terminal_accepted[rec.attempt] = terminal_accepted.get(rec.attempt, 0) + 1
            batch = []
            seen = store.get(base.id)
            if seen is not None:
                assert seen.version == highest
                assert (seen.result is not None) == (seen.state is TaskState.SUCCEEDED), seen
        assert all(n <= 1 for n in terminal_accepted.values()), terminal_accepted


class SchemaContract:
    """Many clients making the schema at once (K keepers starting together on a fresh alias)
    all succeed. The subclass provides ``fresh_stores(n)``, n clients of one fresh store."""

    def test_concurrent_ensure_schema(self, fresh_stores):
        import concurrent.futures

        stores = fresh_stores(6)
        with concurrent.futures.ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(lambda s: s.ensure_schema(), stores))
        rec = pending()
        assert stores[0].write_many([rec])[0].accepted
        assert stores[-1].get(rec.id) == rec
