"""Unit tier (no services): the Kafka queue client makes each of its Kafka clients once."""

from __future__ import annotations

import threading
import time

import kafka

from raylane.queue import KafkaTaskQueue
from raylane.signing import Signer

_made: list[_SlowProducer] = []


class _SlowProducer:
    """Stands in for KafkaProducer: takes a while to connect, and notes each one made."""

    def __init__(self, **options):
        time.sleep(0.2)
        _made.append(self)


def test_threads_that_meet_a_producer_not_made_yet_share_one(monkeypatch):
    """Submits from many threads of a fresh RequestHandler used to make one KafkaProducer each;
    all but one were dropped unclosed, each with its connections and sender thread."""
    monkeypatch.setattr(kafka, "KafkaProducer", _SlowProducer)
    _made.clear()
    queue = KafkaTaskQueue(
        "127.0.0.1:9",
        prefix="raylane.tasks.",
        dlq_topic="raylane.dlq",
        partitions=1,
        max_payload_bytes=1024,
        signer=Signer(b"k" * 32),
        produce_timeout_s=1.0,
    )
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(queue._get_producer())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_made) == 1
    assert len(got) == 8 and all(p is _made[0] for p in got)
