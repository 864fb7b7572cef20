"""Where a deployment puts its executors and consumers, decided from Ray's list of nodes."""

from __future__ import annotations

import pytest

from raylane.actors import deploy


def _node(node_id: str, cpus: float, alive: bool = True) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus} if cpus else {}}


@pytest.fixture
def nodes(monkeypatch):
    listed: list[dict] = []
    monkeypatch.setattr(deploy.ray, "nodes", lambda: listed)
    return listed


def test_one_executor_per_node_with_cpus_the_deploying_node_first(nodes):
    nodes += [_node("c", 4), _node("a", 2), _node("head", 0), _node("b", 8, alive=False), _node("d", 2)]
    assert deploy.nodes_for_executors("d") == ["d", "a", "c"]
    assert deploy.nodes_for_executors("head") == ["a", "c", "d"]


def test_a_cluster_without_cpus_still_gets_an_executor(nodes):
    nodes += [_node("head", 0), _node("x", 0)]
    assert deploy.nodes_for_executors("head") == ["head", "x"]


def test_consumers_feed_the_executor_beside_them():
    from raylane.protocol import ActorConfig

    config = ActorConfig.model_construct(executors=3, executor_nodes=["n0", "n1", "n2"])
    assert config.executor_names() == ["Executor", "Executor-1", "Executor-2"]
    assert [config.executor_for(i) for i in range(4)] == ["Executor", "Executor-1", "Executor-2", "Executor"]
    assert deploy.resolve_placement(config) is config  # a configured number is kept as it is


def test_a_service_jobs_namespace_is_read_from_its_entrypoint():
    from raylane.bench.scale import service_namespace

    entry = "/usr/bin/python3 -m raylane.actors.service --config-key service-config:ab12 --namespace 'my ns'"
    assert service_namespace(entry) == "my ns"
    assert service_namespace("/usr/bin/python3 -m raylane.actors.service") is None


@pytest.mark.parametrize(
    ("executors", "partitions", "consumers", "expected"),
    [
        (3, 4, None, 3),  # one beside each node's executor, so every node's executor is fed
        (1, 4, None, 1),
        (8, 4, None, 4),  # a consumer past the partitions would read nothing
        (None, 4, None, 1),
        (3, 4, 2, 2),  # a configured number is kept as it is
    ],
)
def test_consumers_default_to_one_beside_each_executor(executors, partitions, consumers, expected):
    from raylane.protocol import ActorConfig

    config = ActorConfig.model_construct(executors=executors, partitions=partitions, consumers=consumers)
    assert config.consumer_count() == expected


def test_live_members_are_listed_in_index_order_with_those_placed_later(monkeypatch):
    import ray.util

    from raylane.protocol import EXECUTOR, QUEUE_CONSUMER, live_members

    named = ["Executor-10", "Executor", "QueueConsumer-1", "Executor-2", "ExecutorX", "RequestHandler@n1"]
    listed = [{"name": n, "namespace": "ns"} for n in named] + [{"name": "Executor-3", "namespace": "other"}]
    monkeypatch.setattr(ray.util, "list_named_actors", lambda all_namespaces=False: listed)
    assert live_members("ns", EXECUTOR) == ["Executor", "Executor-2", "Executor-10"]
    assert live_members("ns", QUEUE_CONSUMER) == ["QueueConsumer-1"]
