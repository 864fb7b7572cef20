"""A batch through a deployment of its own on a three-broker Kafka (configured by the environment),
with the leader of the queue's first partition killed (SIGKILL) a third of the way through the
submits. Prints one JSON line: how each task ended, and the copies the queue topic was made
with; the deployment, its index and its topics are removed at the end. Run by
tests/test_replication.py."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from drivers import run_in_own_deployment

import raylane
from raylane.config import Settings

PREFIX = "replication-result: "


@raylane.task(name="repl.square")
def square(x: int) -> int:
    return x * x


def _topic_layout(settings, topic: str) -> tuple[dict, str]:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(**settings.kafka().client_options())
    try:
        [described] = admin.describe_topics([topic])
        config = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return described, config["topic"][topic]["min.insync.replicas"]["value"]
    finally:
        admin.close()


def main(settings: Settings) -> dict:
    """Submit a batch in chunks, kill the leader of partition 0 a third of the way through, and
    report what became of the batch."""
    pids = {int(k): v for k, v in json.loads(os.environ["REPLICATION_BROKER_PIDS"]).items()}
    chunks, per_chunk = 12, 100
    handles = []
    killed = None
    started = time.monotonic()
    for c in range(chunks):
        handles += square.submit_many([(c * per_chunk + i,) for i in range(per_chunk)])
        if c == chunks // 3:
            described, _ = _topic_layout(settings, f"{settings.topic_prefix}{settings.default_queue}")
            killed = next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == 0)
            os.kill(pids[killed], signal.SIGKILL)
    records = raylane.wait_all(handles, timeout=300)
    took = time.monotonic() - started
    described, min_isr = _topic_layout(settings, f"{settings.topic_prefix}{settings.default_queue}")
    states: dict[str, int] = {}
    for r in records:
        states[r.state.value] = states.get(r.state.value, 0) + 1
    out = {
        "submitted": len(handles),
        "states": states,
        "results_ok": [r.result for r in records] == [i * i for i in range(len(handles))],
        "killed_broker": killed,
        "copies": sorted({len(p["replica_nodes"]) for p in described["partitions"]}),
        "min_insync_replicas": min_isr,
        "seconds": round(took, 1),
    }
    return out


if __name__ == "__main__":
    sys.exit(run_in_own_deployment(PREFIX, main))
