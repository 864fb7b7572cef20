"""Replication on a three-broker Kafka (KRaft, 256 MiB heaps): raylane makes its topics with three
copies and min.insync.replicas 2, and a batch loses nothing when a broker is killed mid-way."""

from __future__ import annotations

import json

import pytest
from conftest import own_deployment, run_driver

from raylane.config import Settings
from raylane.stack.services import Kafka

BASE_PORT = 27400  # node n listens on 27400 + 10 (n - 1), its controller one above


@pytest.fixture(scope="module")
def three_brokers(stack, settings: Settings, tmp_path_factory):
    """Three Kafka nodes, each broker and voter, in a home of their own that shares the downloads."""
    home = tmp_path_factory.mktemp("kafka-3")
    (home / "dist").symlink_to(settings.home / "dist")
    (home / "m2").symlink_to(settings.home / "m2")
    own = settings.model_copy(
        update={"home": home, "kafka_port": BASE_PORT, "kafka_controller_port": BASE_PORT + 1, "kafka_heap_mb": 256}
    )
    nodes = [Kafka(own, node=n, nodes=3) for n in (1, 2, 3)]
    try:
        for k in nodes:
            k.prepare()
        pids = [k.start() for k in nodes]
        for k, pid in zip(nodes, pids, strict=True):
            k.wait_ready(pid, own.start_timeout_s)
        yield nodes
    finally:
        for k in nodes:
            k.stop(grace_s=5)


@pytest.mark.timeout(600)
def test_a_batch_loses_nothing_when_a_broker_is_killed(three_brokers, unique):
    env = {
        "RAYLANE_KAFKA_BOOTSTRAP": ",".join(k.address for k in three_brokers),
        **own_deployment(f"repl-{unique}"),
        "REPLICATION_BROKER_PIDS": json.dumps({k.node: k.pid() for k in three_brokers}),
    }
    out = run_driver("replication_driver.py", env, timeout=540)
    print(f"three brokers, one killed mid-batch: {out}")
    assert out["copies"] == [3] and out["min_insync_replicas"] == "2"
    assert out["killed_broker"] in (1, 2, 3)
    assert out["states"] == {"SUCCEEDED": out["submitted"]} and out["results_ok"]
