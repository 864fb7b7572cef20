"""The real services of the stack, used directly: Kafka round trip and OpenSearch external versions."""
from __future__ import annotations

import json

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConflictError


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
    consumer = KafkaConsumer(topic, bootstrap_servers=stack.kafka.address, group_id=f"g-{unique}",
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=15000)
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
