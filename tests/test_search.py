"""Search and counts over what was written: filters, newest-first order, and paging past 10,000."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

import raylane
from raylane.errors import TaskFailed
from raylane.models import utcnow
from raylane.states import TaskState


@raylane.task(name="test.search.fail")
def fail_with(words: str) -> None:
    raise RuntimeError(words)


@raylane.task(name="test.search.ok")
def ok(n: int) -> int:
    return n


def test_filters_and_order(rl, unique):
    tag = f"t-{unique}"
    before = utcnow()
    good = ok.options(tags=[tag]).submit_many([(i,) for i in range(5)])
    bad = [
        fail_with.options(tags=[tag]).submit(f"quota exceeded for bucket {unique}"),
        fail_with.options(tags=[tag]).submit("network unreachable"),
    ]
    for h in good:
        h.wait(timeout=60)
    for h in bad:
        with pytest.raises(TaskFailed):
            h.result(timeout=60)
    rl.refresh()

    everything = rl.search(tag=tag, limit=100)
    assert {r.id for r in everything} == {h.id for h in good + bad}
    created = [r.created_at for r in everything]
    assert created == sorted(created, reverse=True)

    assert {r.id for r in rl.search(tag=tag, state="FAILED")} == {h.id for h in bad}
    assert {r.id for r in rl.search(tag=tag, state=[TaskState.SUCCEEDED])} == {h.id for h in good}
    assert {r.id for r in rl.search(tag=tag, name="test.search.ok")} == {h.id for h in good}
    assert [r.id for r in rl.search(tag=tag, text=f"quota {unique}")] == [bad[0].id]
    assert rl.search(tag=tag, text="no such words anywhere") == []
    assert len(rl.search(tag=tag, since=before)) == 7
    assert rl.search(tag=tag, since=utcnow() + timedelta(minutes=1)) == []
    assert rl.search(tag=tag, until=before) == []
    assert len(rl.search(tag=tag, limit=3)) == 3
    assert rl.counts(tag=tag) == {"SUCCEEDED": 5, "FAILED": 2}
    assert rl.counts(tag=tag, state="FAILED") == {"FAILED": 2}


@pytest.fixture
def big_queue(rl, store, stack, settings, unique):
    """A paused queue whose records and topic are removed afterwards, so that 10,500 held tasks
    do not stay behind in the stack the suite ran on."""
    from kafka import KafkaAdminClient
    from opensearchpy import helpers

    from raylane.queue import topic_of

    queue = f"big-{unique}"
    rl.pause(queue)
    yield queue
    query = {"query": {"term": {"queue": queue}}, "_source": False}
    ids = [h["_id"] for h in helpers.scan(store.client, index=store.alias, query=query)]
    index = next(iter(store.client.indices.get_alias(name=store.alias)))
    helpers.bulk(store.client, ({"_op_type": "delete", "_index": index, "_id": i} for i in ids), chunk_size=5000)
    admin = KafkaAdminClient(**stack.endpoints().kafka.client_options())
    try:
        admin.delete_topics([topic_of(settings.topic_prefix, queue)])
    finally:
        admin.close()
    rl.resume(queue)


def test_search_and_counts_past_ten_thousand(rl, big_queue):
    # Given 10,500 tasks held PENDING on a paused queue
    n, queue, tag = 10_500, big_queue, big_queue
    from raylane.client import submit_requests
    from raylane.models import SubmitRequest

    ids: list[str] = []
    for start in range(0, n, 1500):
        batch = [
            SubmitRequest(name="raylane.echo", args=[i], queue=queue, tags=[tag])
            for i in range(start, min(n, start + 1500))
        ]
        ids.extend(h.id for h in submit_requests(batch))
    rl.refresh()

    # When searched without a cap below their number, and counted
    found = rl.search(tag=tag, limit=20_000)
    counts = rl.counts(tag=tag)

    # Then every one is returned once, newest first, and counted
    assert len(found) == n and {r.id for r in found} == set(ids)
    assert all(a.created_at >= b.created_at for a, b in itertools.pairwise(found))
    assert counts == {"PENDING": n}
    assert len(rl.search(tag=tag, limit=10_001)) == 10_001
