"""The bench's parts against the real stack: what a part leaves behind when it is over."""

from __future__ import annotations

from raylane.bench import suite
from raylane.queue import topic_of


def test_the_soak_removes_its_records_and_its_topic(rl, store, settings):
    out = suite._soak(60, progress=False)
    assert out["tasks"] == 60 and "ids" not in out  # the ids are the cleanup's, not the report's
    store.client.indices.refresh(index=store.alias)
    body = {"query": {"term": {"queue": out["queue"]}}}
    assert store.client.count(index=store.alias, body=body)["count"] == 0
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**suite._connection_endpoints().kafka.client_options())
    try:
        assert topic_of(settings.topic_prefix, out["queue"]) not in admin.list_topics()
    finally:
        admin.close()
