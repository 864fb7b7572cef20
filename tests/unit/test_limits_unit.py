"""Limits and priorities without services: the keeper's gates, priority run slots, priority
topics, and the ids routed to the keeper that counts a key."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
from pydantic import ValidationError

from raylane.actors.common import PrioritySlots
from raylane.actors.gates import Gates
from raylane.memory import InMemoryBroker, InMemoryQueueReader, InMemoryTaskQueue
from raylane.models import SubmitRequest, TaskRecord, rate_per_s
from raylane.protocol import keeper_of, routed_id
from raylane.queue import priority_of, topic_of, topics_of
from raylane.signing import Signer

from contracts import message


def limited(key: str = "k", *, max_concurrency: int | None = None, rate: str | None = None, priority: int = 0):
    msg = message().model_copy(
        update={"concurrency_key": key, "max_concurrency": max_concurrency, "rate_limit": rate, "priority": priority}
    )
    return TaskRecord.pending(msg)


def test_a_limited_task_starts_scheduled():
    rec = limited(max_concurrency=1)
    assert rec.state.value == "SCHEDULED" and rec.limited and rec.version == 1
    assert not TaskRecord.pending(message()).limited


def test_max_concurrency_admits_that_many_and_one_more_per_end():
    gates = Gates()
    recs = [limited(max_concurrency=2) for _ in range(5)]
    for r in recs:
        gates.wait(r)
    first = gates.admit(0.0)
    assert [(r.id, w) for r, w in first] == [(r.id, None) for r in recs[:2]]
    assert gates.admit(1.0) == [] and gates.is_waiting(recs[2].id)
    gates.ended(recs[0].id, 0)
    assert [r.id for r, _ in gates.admit(2.0)] == [recs[2].id]
    gates.ended(recs[3].id, 0)  # cancelled while waiting: it never gets a place
    gates.ended(recs[1].id, 0)
    assert [r.id for r, _ in gates.admit(3.0)] == [recs[4].id]
    assert gates.counts() == {"waiting": 0, "holding": 2}


def test_keys_and_tenants_are_counted_apart():
    gates = Gates()
    a, b = limited("a", max_concurrency=1), limited("b", max_concurrency=1)
    other_tenant = TaskRecord.pending(
        message(tenant="t2").model_copy(update={"concurrency_key": "a", "max_concurrency": 1})
    )
    for r in (a, b, other_tenant):
        gates.wait(r)
    assert len(gates.admit(0.0)) == 3


def test_priority_then_arrival_within_a_key():
    gates = Gates()
    low = [limited(max_concurrency=1) for _ in range(3)]
    high = limited(max_concurrency=1, priority=9)
    for r in [*low, high]:
        gates.wait(r)
    order = []
    for t in range(4):
        [(r, _)] = gates.admit(float(t))
        order.append(r.id)
        gates.ended(r.id, 0)
    assert order == [high.id] + [r.id for r in low]


def test_a_rate_gives_each_start_a_slot_admitted_a_little_ahead():
    from raylane.actors.gates import LEAD_S

    gates = Gates()
    for _ in range(30):
        gates.wait(limited(rate="10/s"))
    starts = []
    for t in range(0, 200, 5):  # a pass every 50 ms for 2 s
        now = t / 100
        for _, wait_s in gates.admit(now):
            assert 0 <= wait_s <= LEAD_S + 1e-9
            starts.append(now + wait_s)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps and all(abs(g - 0.1) < 1e-9 for g in gaps)  # ten a second, evenly
    assert starts[0] == 0 and 1.9 <= starts[-1] <= 2.0 + LEAD_S


def test_a_newer_attempt_takes_over_the_place_of_the_old():
    gates = Gates()
    first = limited(max_concurrency=1)
    gates.wait(first)
    assert [r.id for r, _ in gates.admit(0.0)] == [first.id]
    retry = first.model_copy(update={"attempt": 1})
    gates.wait(retry)  # the retry's SCHEDULED record came before the FAILED one was seen
    gates.ended(first.id, 0)  # the old attempt's end frees nothing the retry holds
    assert gates.is_waiting(first.id)
    assert [r.attempt for r, _ in gates.admit(1.0)] == [1]


def test_a_running_task_found_after_a_restart_holds_its_place():
    gates = Gates()
    running = limited(max_concurrency=1)
    gates.holding(running)
    waiting = limited(max_concurrency=1)
    gates.wait(waiting)
    assert gates.admit(0.0) == []
    gates.ended(running.id, 0)
    assert [r.id for r, _ in gates.admit(0.1)] == [waiting.id]


@pytest.mark.parametrize(("text", "per_s"), [("100/s", 100.0), ("30/m", 0.5), ("36/h", 0.01)])
def test_rates(text, per_s):
    assert rate_per_s(text) == pytest.approx(per_s)


@pytest.mark.parametrize(
    "bad",
    [{"rate_limit": "0/s"}, {"rate_limit": "1.5/s"}, {"rate_limit": "10/d"}, {"priority": 10}, {"max_concurrency": 0}],
)
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValidationError):
        SubmitRequest(name="demo.add", **bad)


def test_routed_ids_land_on_the_chosen_keeper():
    for keepers in (1, 2, 3, 7):
        for keeper in range(keepers):
            for _ in range(50):
                task_id = routed_id(uuid.uuid4().hex, keeper, keepers)
                assert len(task_id) == 32 and int(task_id, 16) >= 0
                assert keeper_of(task_id, keepers) == keeper
    assert routed_id("ffffffff" + "0" * 24, 2, 3)[:8] != "ffffffff"  # never past 32 bits


def test_priority_topics_cannot_be_a_queue_topic():
    prefix = "raylane.tasks."
    assert topic_of(prefix, "q") == "raylane.tasks.q" and topic_of(prefix, "q", 9) == "raylane.tasks-p9.q"
    assert priority_of(prefix, "raylane.tasks.q-p9.x") == 0
    assert priority_of(prefix, "raylane.tasks-p9.q") == 9
    assert priority_of(prefix, "raylane.dlq") is None
    assert len(topics_of(prefix, "q")) == 10


def test_priority_slots_serve_higher_priority_first():
    async def run():
        slots = PrioritySlots(1)
        await slots.acquire()
        order: list[str] = []

        async def take(name: str, priority: int):
            await slots.acquire(priority)
            order.append(name)

        tasks = [asyncio.create_task(take(n, p)) for n, p in (("low1", 0), ("low2", 0), ("high", 9), ("mid", 5))]
        await asyncio.sleep(0)
        assert slots.locked()
        for _ in tasks:
            slots.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        slots.release()
        assert not slots.locked()
        return order

    assert asyncio.run(run()) == ["high", "mid", "low1", "low2"]


def _broker() -> tuple[InMemoryBroker, InMemoryTaskQueue]:
    broker = InMemoryBroker()
    queue = InMemoryTaskQueue(
        broker,
        prefix="raylane.tasks.",
        dlq_topic="raylane.dlq",
        partitions=1,
        max_payload_bytes=1 << 20,
        signer=Signer(b"k" * 32),
    )
    return broker, queue


def test_the_twin_reads_higher_priorities_first():
    broker, queue = _broker()
    low = [message() for _ in range(5)]
    urgent = message().model_copy(update={"priority": 9})
    queue.produce_many([*low, urgent])
    reader = InMemoryQueueReader(broker, prefix="raylane.tasks.", group="g")
    first = reader.poll(1, 0.1)
    assert [c.topic for c in first] == ["raylane.tasks-p9.default"]


def test_a_tenant_quota_counts_the_store_and_what_was_accepted_since():
    from raylane.ratelimit import OpenTaskQuota, OverLimit

    now = [0.0]
    stored = {"a": 3, "b": 0}
    asked: list[str] = []

    async def count(tenant: str) -> int:
        asked.append(tenant)
        return stored[tenant]

    quota = OpenTaskQuota(5, count, max_age_s=1.0, clock=lambda: now[0])

    async def run():
        await quota.admit("a", 2)  # 3 + 2 = 5: fits
        with pytest.raises(OverLimit) as over:
            await quota.admit("a", 1)  # the two just accepted count, though the store does not show them yet
        assert over.value.retry_after_s == 1.0 and "quota is 5" in str(over.value)
        await quota.admit("b", 5)
        await quota.admit("a", 10, limit=20)  # the token's own quota
        now[0] = 2.0
        stored["a"] = 0  # they finished
        with pytest.raises(OverLimit):
            await quota.admit("a", 5)  # or the store's search does not show them yet
        now[0] = 5.5
        await quota.admit("a", 5)  # long enough for the store to show every one of them

    asyncio.run(run())
    assert asked == ["a", "b", "a", "a"]  # the store is asked once a second per tenant at most


def test_a_tenant_quota_counts_what_the_stores_search_does_not_show_yet():
    """A count taken a second after some tasks were accepted may miss them (the store's search
    shows a write after its next refresh, later on a busy node): they still count."""
    from raylane.ratelimit import OpenTaskQuota, OverLimit

    now = [0.0]

    async def count(tenant: str) -> int:
        return 0  # the store's search shows none of them

    quota = OpenTaskQuota(3, count, max_age_s=1.0, clock=lambda: now[0])

    async def run():
        for t in (0.0, 0.6, 1.2):  # one submit at a time, slowly: the count is taken again in between
            now[0] = t
            await quota.admit("a", 1)
        now[0] = 2.4
        with pytest.raises(OverLimit):
            await quota.admit("a", 1)

    asyncio.run(run())


def test_every_record_field_is_in_the_status_index_mapping():
    """The index's mapping is strict: a field of TaskRecord that it lacks makes every record refused."""
    from raylane.store import _mappings

    written = {name for name, f in TaskRecord.model_fields.items() if not f.exclude}
    assert written <= set(_mappings()["properties"])


def test_the_twin_says_when_a_higher_priority_waits_unread():
    broker, queue = _broker()
    reader = InMemoryQueueReader(broker, prefix="raylane.tasks.", group="g")
    queue.produce_many([message() for _ in range(3)])
    reader.poll(1, 0.1)
    assert not reader.urgent()  # one priority only
    queue.produce_many([message().model_copy(update={"priority": 5})])
    assert reader.urgent()
    assert reader.poll(1, 0.1)[0].topic == "raylane.tasks-p5.default"
    assert not reader.urgent()


_GIB = 1024**3


def test_a_request_no_node_can_run_is_refused_with_what_the_largest_node_offers():
    """A task asking for resources no node has used to be accepted and claimed, and then waited
    for good in its executor's run slot: enough of them kept a node's executor from running
    anything. Each resource must fit on one node, not across nodes."""
    from raylane.errors import InvalidTaskInput
    from raylane.limits import check_placeable

    nodes = [{"CPU": 4.0, "memory": 8.0 * _GIB}, {"CPU": 2.0, "GPU": 1.0, "memory": 4.0 * _GIB}]
    check_placeable(4, 0, None, nodes)
    check_placeable(2, 1, 4096, nodes)
    check_placeable(0, 0, None, nodes)
    for cpus, gpus, memory_mb in ((8, 0, None), (4, 1, None), (1, 2, None), (1, 0, 16 * 1024), (3, 1, None)):
        with pytest.raises(InvalidTaskInput) as refused:
            check_placeable(cpus, gpus, memory_mb, nodes)
        assert "no node of the cluster can run this task" in str(refused.value)
        assert "the largest node offers 2 CPU, 1 GPU, 4096 MiB memory" in str(refused.value)
        assert "RAYLANE_AUTOSCALING=1" in str(refused.value)


def test_the_handler_reads_the_nodes_again_before_it_refuses_and_not_with_autoscaling(monkeypatch):
    """A node that joined since the nodes were last read counts; on a cluster that grows on
    demand nothing is refused."""
    from raylane.actors import request_handler
    from raylane.errors import InvalidTaskInput
    from raylane.models import Resources

    listed = [{"Alive": True, "Resources": {"CPU": 4.0}}]
    reads = []
    monkeypatch.setattr(request_handler.ray, "nodes", lambda: reads.append(1) or listed)
    handler = object.__new__(request_handler.RequestHandler)
    handler.config = type("Config", (), {"autoscaling": False})()
    handler._nodes, handler._nodes_read, handler._fits = [], float("-inf"), set()
    gpu = Resources(num_cpus=1, num_gpus=1)
    handler._check_placeable(Resources())
    handler._check_placeable(Resources())  # known to fit: no read
    assert len(reads) == 1
    with pytest.raises(InvalidTaskInput):
        handler._check_placeable(gpu)
    assert len(reads) == 1  # just read: not again at once
    handler._nodes_read -= 2 * request_handler._NODES_AGAIN_S
    listed.append({"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}})
    handler._check_placeable(gpu)
    assert len(reads) == 2
    handler.config.autoscaling = True
    handler._check_placeable(Resources(num_cpus=1000))
