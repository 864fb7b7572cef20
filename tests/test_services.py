"""The real services of the stack, used directly: Kafka round trip and OpenSearch external versions."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from conftest import wait_until
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConflictError

from raylane.signing import Signer


def test_kafka_produce_consume_round_trip(stack, unique):
    topic = f"test.roundtrip.{unique}"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    producer = KafkaProducer(bootstrap_servers=stack.kafka.address, acks="all", enable_idempotence=True)
    sent = [{"n": i} for i in range(20)]
    for msg in sent:
        producer.send(topic, key=str(msg["n"]).encode(), value=json.dumps(msg).encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka.address,
        group_id=f"g-{unique}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15000,
    )
    got = []
    for record in consumer:
        got.append(json.loads(record.value))
        if len(got) == len(sent):
            break
    consumer.commit()
    consumer.close()
    admin.delete_topics([topic])
    admin.close()
    assert sorted(m["n"] for m in got) == list(range(20))


def test_opensearch_external_versions(stack, unique):
    client = OpenSearch(hosts=[stack.opensearch.address])
    index = f"test-versions-{unique}"
    client.indices.create(index=index)
    try:
        r = client.index(index=index, id="t1", body={"state": "PENDING"}, version=1, version_type="external")
        assert r["_version"] == 1
        r = client.index(index=index, id="t1", body={"state": "RUNNING"}, version=2, version_type="external")
        assert r["_version"] == 2
        # A write whose version does not advance is refused by the store itself.
        for stale in (2, 1):
            with pytest.raises(ConflictError):
                client.index(index=index, id="t1", body={"state": "PENDING"}, version=stale, version_type="external")
        doc = client.get(index=index, id="t1")
        assert doc["_version"] == 2 and doc["_source"]["state"] == "RUNNING"
    finally:
        client.indices.delete(index=index)
        client.close()


def _thread_cpu_s(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _test_queue(stack, prefix: str, unique: str, partitions: int, **options):
    """A producer of test messages on topics of their own, under a test secret."""
    from raylane.queue import KafkaTaskQueue

    return KafkaTaskQueue(
        stack.kafka.address,
        prefix=f"test.{prefix}.{unique}.",
        dlq_topic=f"test.dlq.{unique}",
        partitions=partitions,
        max_payload_bytes=1024,
        signer=Signer(b"test-secret-of-16-bytes"),
        **options,
    )


def test_producer_idles_after_its_queue_topic_is_deleted(stack, settings, unique):
    # kafka-python's sender spins on a deleted topic's partitions if it keeps their (empty) queues.
    from raylane.models import TaskMessage, new_task_id, utcnow

    queue = _test_queue(stack, "deleted", unique, partitions=2)
    try:
        topic = queue.ensure_queue("q")

        def produce(q: str) -> None:
            queue.produce_many(
                [TaskMessage(id=new_task_id(), name="raylane.echo", queue=q, created_at=utcnow()) for _ in range(10)]
            )

        produce("q")
        [sender] = [t for t in threading.enumerate() if t.name.startswith("kafka-python-producer")]
        admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)
        admin.delete_topics([topic])
        wait_until(lambda: topic not in admin.list_topics(), what=f"{topic} deleted")
        admin.close()
        produce("other")  # the producer refreshes its metadata and learns that the topic is gone
        window_start, cpu_start = time.monotonic(), _thread_cpu_s(sender.native_id)
        time.sleep(2.0)  # the measuring window: a spinning sender burns about this much CPU in it
        used = _thread_cpu_s(sender.native_id) - cpu_start
        assert used < 0.25 * (time.monotonic() - window_start), f"producer thread used {used:.2f}s of CPU while idle"
    finally:
        queue.close()


def test_producer_stops_asking_for_a_deleted_topic(stack, unique):
    # kafka-python asks for the metadata of every topic it wrote to, ten times a second while the
    # cluster does not know one: a deleted queue topic cost that for as long as the producer lived.
    from raylane.errors import QueueUnavailable
    from raylane.models import TaskMessage, new_task_id, utcnow

    # The produce timeout is how long a topic may stay unknown before it is forgotten.
    queue = _test_queue(stack, "forgotten", unique, partitions=1, produce_timeout_s=2.0)
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)
    try:
        topic = queue.ensure_queue("q")
        queue.produce_many([TaskMessage(id=new_task_id(), name="raylane.echo", queue="q", created_at=utcnow())])
        producer = queue._get_producer()
        admin.delete_topics([topic])
        wait_until(lambda: topic not in admin.list_topics(), what=f"{topic} deleted")
        # A send to another queue has the producer ask for metadata again, and learn that the
        # topic is gone.
        queue.produce_many([TaskMessage(id=new_task_id(), name="raylane.echo", queue="other", created_at=utcnow())])

        def metadata_age_s() -> float:
            return producer.metrics()["producer-metrics"]["metadata-age"]

        # Asked ten times a second, the metadata is never older than about 0.1 s; once the topic
        # is forgotten, nothing asks until the next periodic refresh, minutes away.
        wait_until(lambda: metadata_age_s() > 3.0, timeout=30, what=lambda: f"metadata age {metadata_age_s():.2f}s")

        # A send to the forgotten topic asks for it again: the first learns that it is gone, and
        # the next makes it again.
        def produce() -> None:
            queue.produce_many([TaskMessage(id=new_task_id(), name="raylane.echo", queue="q", created_at=utcnow())])

        with pytest.raises(QueueUnavailable):
            produce()
        produce()
        assert topic in admin.list_topics()
    finally:
        admin.close()
        queue.close()


def test_reader_commit_leaves_out_a_deleted_topic(stack, unique):
    # Given a reader that read from two queue topics, one of which is then deleted
    from raylane.models import TaskMessage, new_task_id, utcnow
    from raylane.queue import KafkaQueueReader, KafkaTaskQueue

    prefix = f"test.commit.{unique}."
    queue = KafkaTaskQueue(
        stack.kafka.address,
        prefix=prefix,
        dlq_topic=f"test.dlq.{unique}",
        partitions=1,
        max_payload_bytes=1024,
        signer=Signer(b"test-secret-of-16-bytes"),
    )
    reader = KafkaQueueReader(
        stack.kafka.address, prefix=prefix, group=f"test-commit-{unique}", max_message=1 << 20, refresh_s=0.2
    )
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)
    try:
        gone_topic, kept_topic = queue.ensure_queue("gone"), queue.ensure_queue("kept")
        queue.produce_many(
            [TaskMessage(id=new_task_id(), name="raylane.echo", queue=q, created_at=utcnow()) for q in ("gone", "kept")]
        )
        read: list = []
        wait_until(
            lambda: read.extend(reader.poll(10, 0.2)) or {c.topic for c in read} == {gone_topic, kept_topic},
            what=lambda: f"both messages read (read {read})",
        )
        offsets = {(c.topic, c.partition): c.offset + 1 for c in read}
        admin.delete_topics([gone_topic])
        wait_until(lambda: gone_topic not in admin.list_topics(), what=f"{gone_topic} deleted")

        # When the reader commits both before it has looked at the topics again
        left_out = reader.commit(offsets)

        # Then the deleted topic's offset is left out, and the other one is committed
        assert left_out == {(gone_topic, 0)}
        committed = KafkaConsumer(
            bootstrap_servers=stack.kafka.address, group_id=f"test-commit-{unique}", enable_auto_commit=False
        )
        try:
            from kafka.structs import TopicPartition

            assert committed.committed(TopicPartition(kept_topic, 0)) == offsets[(kept_topic, 0)]
        finally:
            committed.close()
        # And a later commit of the remaining partition goes through on its own
        assert reader.commit({(kept_topic, 0): offsets[(kept_topic, 0)]}) == set()
    finally:
        admin.close()
        reader.close()
        queue.close()


def test_topics_and_indices_are_made_with_as_many_copies_as_the_cluster_allows(stack, settings, unique):
    from kafka.admin import ConfigResource, ConfigResourceType

    from raylane.queue import KafkaTaskQueue
    from raylane.store import OpenSearchStore

    # One broker and one data node here: one copy of each partition, and no replica that could
    # never be placed (a shard with one would keep its index yellow for good).
    queue = KafkaTaskQueue(
        stack.kafka.address,
        prefix=f"test.copies.{unique}.",
        dlq_topic=f"test.copies.{unique}.dlq",
        partitions=1,
        max_payload_bytes=1024,
        signer=Signer.of(settings.cluster_secret()),
    )
    topic = queue.ensure_queue("q")
    queue.close()
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)
    try:
        [described] = admin.describe_topics([topic])
        assert {len(p["replica_nodes"]) for p in described["partitions"]} == {1}
        config = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        assert config["topic"][topic]["min.insync.replicas"]["value"] == "1"
        admin.delete_topics([topic])
    finally:
        admin.close()
    store = OpenSearchStore(stack.endpoints().opensearch, f"test-copies-{unique}")
    try:
        store.ensure_schema()
        store.set_paused("q", True)  # makes the control index
        health = store.client.cluster.health(index=f"test-copies-{unique}*", level="indices")["indices"]
        assert {name: h["status"] for name, h in health.items()} == {
            f"test-copies-{unique}-000001": "green",
            f"test-copies-{unique}_control": "green",
        }
    finally:
        store.drop()
        store.close()


def test_writes_wait_out_an_index_blocked_for_writes(stack, unique):
    from raylane.models import TaskMessage, TaskRecord, new_task_id, utcnow
    from raylane.store import OpenSearchStore

    store = OpenSearchStore(stack.endpoints().opensearch, f"test-block-{unique}")
    index = f"test-block-{unique}-000001"
    try:
        store.ensure_schema()
        store.client.indices.put_settings(index=index, body={"index": {"blocks.write": True}})

        def unblock() -> None:
            store.client.indices.put_settings(index=index, body={"index": {"blocks.write": False}})

        timer = threading.Timer(1.5, unblock)
        timer.start()
        records = [
            TaskRecord.pending(TaskMessage(id=new_task_id(), name="t.block", queue="q", created_at=utcnow()))
            for _ in range(3)
        ]
        outcomes = store.write_many(records)
        timer.join()
        # Turned away while the block held (403 cluster_block_exception), accepted once it was lifted.
        assert [(o.accepted, o.status) for o in outcomes] == [(True, 201)] * 3, outcomes
    finally:
        store.drop()
        store.close()
