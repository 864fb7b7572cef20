"""The seams' contract suites on OpenSearch and Kafka (the same tests as on the in-memory twins)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime

import pytest
from conftest import wait_until

from raylane.asyncbulk import BulkConnection
from raylane.config import OpenSearchConnection
from raylane.queue import KafkaQueueReader, KafkaTaskQueue
from raylane.states import TaskState
from raylane.store import OpenSearchStore

from contracts import (
    QueueContract,
    SchemaContract,
    StoreContract,
    VersionProperties,
    drain,
    message,
    pending,
    schedule,
)


@pytest.fixture
def opensearch_store(stack):
    """A store on a fresh alias of the local OpenSearch, removed afterwards."""
    alias = f"raylane-contract-{uuid.uuid4().hex[:8]}"
    store = OpenSearchStore(stack.endpoints().opensearch, alias)
    store.ensure_schema()
    yield store
    store.drop()
    store.close()


def test_a_dropped_store_leaves_no_index_and_no_template(opensearch_store):
    # Given a scratch store that made its control index as well as its task index
    store = opensearch_store
    store.set_paused("q", True)
    assert store.client.indices.get(index=f"{store.alias}*")
    # When it is dropped, nothing of it is left: a bench run after run leaves no indices behind
    store.drop()
    assert store.client.indices.get(index=f"{store.alias}*", ignore_unavailable=True, allow_no_indices=True) == {}
    assert not store.client.indices.exists_index_template(name=f"{store.alias}-template")


class TestOpenSearchSchema(SchemaContract):
    @pytest.fixture
    def fresh_stores(self, stack):
        alias = f"raylane-contract-{uuid.uuid4().hex[:8]}"
        made: list[OpenSearchStore] = []

        def make(n: int) -> list[OpenSearchStore]:
            made.extend(OpenSearchStore(stack.endpoints().opensearch, alias) for _ in range(n))
            return made

        yield make
        made[0].drop()
        for s in made:
            s.close()


def test_more_schedules_than_one_search_returns_are_all_listed(opensearch_store):
    """A search returns at most 10,000 hits and each schedule is two documents (its definition
    and its cursor): 5,001 schedules, written in one bulk request, are all listed."""
    store = opensearch_store
    made = [schedule(f"c{i:05d}", tenant="many") for i in range(5001)]
    store.save_schedule(made[0])  # makes and maps the control index
    lines = []
    for i, s in enumerate(made):
        spec = s.model_dump_json(exclude={"paused", "last_tick"})
        docs = [(f"schedule:{s.key}", {"kind": "schedule", "schedule_key": s.key, "spec_json": spec, "paused": False})]
        docs.append((f"schedule-tick:{s.key}", {"kind": "schedule_tick", "schedule_key": s.key, "last_tick_ms": i}))
        for doc_id, doc in docs:
            lines += [json.dumps({"index": {"_index": store._control_index, "_id": doc_id}}), json.dumps(doc)]
    resp = store.client.bulk(body="\n".join(lines) + "\n", refresh="true")
    assert not resp["errors"]
    listed = store.list_schedules("many")
    assert [s.id for s in listed] == [s.id for s in made]
    assert listed[-1].last_tick == datetime.fromtimestamp(5000 / 1000, UTC)


def test_calls_made_side_by_side_keep_their_connections(opensearch_store, caplog):
    """A keeper searches, reads and writes at once: its store keeps a connection for each call in
    flight. urllib3 keeps one unless told, so a call beside another opened a connection of its
    own (a TLS handshake, on a secure store) and dropped it after."""
    from concurrent.futures import ThreadPoolExecutor

    from raylane.store import POOL_CONNECTIONS

    store = opensearch_store
    pool = store.client.transport.connection_pool.connection.pool  # urllib3's, which counts its connections
    before = pool.num_connections
    with (
        caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"),
        ThreadPoolExecutor(POOL_CONNECTIONS) as threads,
    ):
        found = list(threads.map(lambda i: store.get_many([f"missing-{i}"]), range(40 * POOL_CONNECTIONS)))
    assert found == [{}] * (40 * POOL_CONNECTIONS)
    assert pool.num_connections - before <= POOL_CONNECTIONS
    assert not [r for r in caplog.records if "discarding connection" in r.getMessage()]


def test_writes_from_an_event_loop_go_out_on_its_own_connection(opensearch_store):
    # Given a store on the local OpenSearch (plain HTTP, no signing)
    store = opensearch_store
    records = [pending() for _ in range(3)]

    async def write_twice():
        first = await store.write_many_async(records)
        again = await store.write_many_async([r.moved_to(TaskState.RUNNING) for r in records])
        return first, again

    # When a loop writes twice, both requests go out on the loop's kept connection, not the client's
    first, again = asyncio.run(write_twice())
    assert all(o.accepted for o in first + again)
    assert store.bulk_stats() == {"loop_bulks": 2, "loop_bulks_not_answered": 0}
    assert {store.get(r.id).state for r in records} == {TaskState.RUNNING}


def test_a_write_the_loops_connection_cannot_make_goes_through_the_client(opensearch_store):
    # Given a store whose loop connection leads nowhere (nothing listens on port 9)
    store = opensearch_store
    store._bulk_connection = BulkConnection(OpenSearchConnection(url="http://127.0.0.1:9"), timeout_s=5)
    rec = pending()
    # When a loop writes, the write is made all the same, through the client, and counted as not answered
    [outcome] = asyncio.run(store.write_many_async([rec]))
    assert outcome.accepted and store.get(rec.id).state is TaskState.PENDING
    assert store.bulk_stats() == {"loop_bulks": 0, "loop_bulks_not_answered": 1}


class TestOpenSearchStore(StoreContract):
    @pytest.fixture
    def contract_store(self, opensearch_store):
        return opensearch_store


class TestOpenSearchVersions(VersionProperties):
    examples = 25

    @pytest.fixture
    def contract_store(self, opensearch_store):
        return opensearch_store


class TestKafkaQueue(QueueContract):
    @pytest.fixture
    def prefix(self, stack):
        return f"contract.{uuid.uuid4().hex[:8]}."

    @pytest.fixture
    def contract_queue(self, stack, prefix):
        queue = KafkaTaskQueue(
            stack.kafka.address,
            prefix=prefix,
            dlq_topic=f"dlq.{prefix}x",
            partitions=2,
            max_payload_bytes=1 << 20,
            signer=self.signer,
        )
        yield queue
        queue.close()

    @pytest.fixture
    def drop_topic(self, stack):
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)

        def drop(topic: str) -> None:
            admin.delete_topics([topic])
            wait_until(lambda: topic not in set(admin.list_topics()), timeout=60, what=f"{topic} deleted")

        yield drop
        admin.close()

    @pytest.fixture
    def contract_reader(self, stack, prefix):
        readers = []

        def make(member=0, members=1, group=None, prefix=prefix):
            r = KafkaQueueReader(
                stack.kafka.address,
                prefix=prefix,
                group=group or uuid.uuid4().hex,
                max_message=2 << 20,
                member=member,
                members=members,
            )
            readers.append(r)
            return r

        yield make
        for r in readers:
            r.close()

    def test_a_large_produce_fills_its_batches_without_waking_the_sender_per_message(
        self, contract_queue, contract_reader
    ):
        msgs = [message(queue="a") for _ in range(2000)]
        contract_queue.produce_many(msgs[:1])  # the producer made, and the topic known
        accumulator = contract_queue._get_producer()._accumulator
        full = []
        append = accumulator.append

        def noted(*args, **kwargs):
            result = append(*args, **kwargs)
            full.append(result[1])  # (future, batch_is_full, new_batch_created, ...)
            return result

        accumulator.append = noted
        try:
            contract_queue.produce_many(msgs[1:])
        finally:
            accumulator.append = append
        # A full batch wakes the sender thread; with the client's 16 KiB batches every message
        # added after the first full one reported one (about 1,400 of these 1,999 messages).
        assert len(full) == len(msgs) - 1 and not any(full), sum(full)
        got = drain(contract_reader(), len(msgs))
        assert sorted(c.key for c in got) == sorted(m.id.encode() for m in msgs)
        assert {c.partition for c in got} == {0, 1}
