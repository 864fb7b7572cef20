"""Unit tier (no services): how the Kafka queue client makes and uses its Kafka clients."""

from __future__ import annotations

import threading
import time

import kafka
import pytest
from kafka.errors import NodeNotReadyError

from raylane.errors import QueueUnavailable
from raylane.queue import KafkaTaskQueue
from raylane.signing import Signer

_made: list[_SlowProducer] = []


class _SlowProducer:
    """Stands in for KafkaProducer: takes a while to connect, and notes each one made."""

    def __init__(self, **options):
        time.sleep(0.2)
        _made.append(self)


class _BlippingAdmin:
    """Stands in for KafkaAdminClient right after its broker came back: its first requests find
    the broker still in kafka-python's reconnect backoff."""

    not_ready = 2
    asked = 0

    def __init__(self, **options):
        pass

    def list_topics(self):
        type(self).asked += 1
        if type(self).asked <= type(self).not_ready:
            raise NodeNotReadyError("No node_id provided")
        return ["raylane.tasks.there"]


def _queue() -> KafkaTaskQueue:
    return KafkaTaskQueue(
        "127.0.0.1:9",
        prefix="raylane.tasks.",
        dlq_topic="raylane.dlq",
        partitions=1,
        max_payload_bytes=1024,
        signer=Signer(b"k" * 32),
        produce_timeout_s=1.0,
    )


def test_threads_that_meet_a_producer_not_made_yet_share_one(monkeypatch):
    """Submits from many threads of a fresh RequestHandler used to make one KafkaProducer each;
    all but one were dropped unclosed, each with its connections and sender thread."""
    monkeypatch.setattr(kafka, "KafkaProducer", _SlowProducer)
    _made.clear()
    queue = _queue()
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(queue._get_producer())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_made) == 1
    assert len(got) == 8 and all(p is _made[0] for p in got)


def test_a_topic_check_rides_out_the_reconnect_backoff_of_a_broker_that_is_back(monkeypatch):
    """A tenant's submit checks its queue's topic with the admin client. Right after a Kafka
    restart that check failed at once ("No node_id provided"), and the submit was refused."""
    monkeypatch.setattr(kafka, "KafkaAdminClient", _BlippingAdmin)
    _BlippingAdmin.asked, _BlippingAdmin.not_ready = 0, 2
    assert _queue().queue_exists("there")
    assert _BlippingAdmin.asked == 3


def test_a_topic_check_gives_up_when_the_broker_stays_away(monkeypatch):
    """During a real outage the check still fails, as QueueUnavailable, once the retries run out."""
    monkeypatch.setattr(kafka, "KafkaAdminClient", _BlippingAdmin)
    monkeypatch.setattr("raylane.queue._ADMIN_RETRY_S", 0.3)
    _BlippingAdmin.asked, _BlippingAdmin.not_ready = 0, 10**9
    with pytest.raises(QueueUnavailable, match="No node_id provided"):
        _queue().queue_exists("there")
    assert _BlippingAdmin.asked > 1


class _ConsumerMissingAnEnd:
    """Stands in for KafkaConsumer when the broker leaves a partition out of its log-end offsets
    (its topic being deleted, its leader moving): kafka-python then raises KeyError."""

    def __init__(self, **options):
        pass

    def end_offsets(self, partitions):
        raise KeyError(partitions[0])


def test_a_partition_whose_end_is_not_told_holds_no_priority_back(monkeypatch):
    """The reader asks the ends of the partitions of higher priorities to decide which to hold
    back. A KeyError from kafka-python there failed the whole poll, and the consumer stopped
    reading every queue for a second; now those ends count as unknown for the pass."""
    from kafka.structs import TopicPartition

    from raylane.queue import KafkaQueueReader

    monkeypatch.setattr(kafka, "KafkaConsumer", _ConsumerMissingAnEnd)
    reader = KafkaQueueReader("127.0.0.1:9", prefix="raylane.tasks", group="g", max_message=1024)
    assert reader._ends([TopicPartition("raylane.tasks-p5.default", 3)]) == {}


class _PlacingProducer:
    """Stands in for KafkaProducer's ``send``: knows partitions 0 and 1 only, as its metadata
    would, and answers with the partition it was given."""

    def send(self, topic, key, value, headers, partition=None):
        if partition is not None and partition not in (0, 1):
            raise ValueError(f"Unrecognized partition {partition} for topic {topic}")
        return partition


def test_a_record_is_placed_by_its_key_and_left_to_the_client_when_its_partition_is_gone():
    from raylane.queue import _send

    producer = _PlacingProducer()
    keys = [f"{i:032x}".encode() for i in range(40)]
    placed = [_send(producer, "t", k, b"{}", [], [0, 1]) for k in keys]
    assert set(placed) == {0, 1}
    assert placed == [_send(producer, "t", k, b"{}", [], [0, 1]) for k in keys]  # the same key, the same place
    # Read before the topic shrank to two partitions: the client places what no longer fits.
    again = [_send(producer, "t", k, b"{}", [], [0, 1, 2, 3]) for k in keys]
    assert None in again and all(p in (0, 1, None) for p in again)
    assert _send(producer, "t", keys[0], b"{}", [], []) is None  # partitions not known: the client's choice
