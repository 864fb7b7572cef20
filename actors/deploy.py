"""Start raylane's actors in the connected Ray cluster, or find the ones already running."""

from __future__ import annotations

import shlex
import sys
import time
import uuid
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raylane.actors.executor import Executor
from raylane.actors.queue_consumer import QueueConsumer
from raylane.actors.request_handler import RequestHandler
from raylane.actors.status_keeper import StatusKeeper
from raylane.compat import kv_del, kv_get, kv_put
from raylane.config import REVEAL
from raylane.errors import StackError
from raylane.protocol import (
    MAX_WAITS,
    QUEUE_CONSUMER,
    REQUEST_HANDLER,
    WAITS,
    ActorConfig,
    executor_name,
    find_request_handler,
    handler_name,
    keeper_name,
)


def _options(config: ActorConfig, name: str) -> dict:
    # Actors coordinate and wait; they reserve no CPU so tasks get all of it.
    return dict(
        name=name, namespace=config.namespace, get_if_exists=True, max_restarts=-1, num_cpus=0, max_concurrency=10_000
    )


# Ray records a metric series per Ray task name in the process that submits a task and in the one
# that runs it, and never forgets one. raylane names every Ray task after its task
# (raylane:<name>:<id>), so the Executor and its workers would grow by about 20 KB a task,
# without bound; they run without Ray's metrics (raylane's own come from the other actors).
# Child tasks inherit an actor's runtime environment, so this covers the workers too.
_EXECUTOR_ENV = {"env_vars": {"RAY_enable_metrics_collection": "0"}}
# Held waits have places of their own: however many there are, a write or a submit finds one.
_WAITS = {WAITS: MAX_WAITS}


def _with_waits(cls: type) -> Any:
    """``cls`` as a Ray actor class with the ``waits`` concurrency group (which Ray takes only
    here, not in ``.options``)."""
    remote: Any = ray.remote  # its type stubs do not list concurrency_groups
    return remote(concurrency_groups=_WAITS)(cls)


# Ray honours a placement (SPREAD, or a soft node affinity) only for actors that reserve some
# resource. A sliver of CPU would keep a whole one-CPU task off the node (1.999 CPUs left of 2),
# so the token reservation is a KiB of memory.
_TOKEN = {"memory": 1024}


def _placed(node_id: str | None) -> dict:
    # Soft: if the node is gone, Ray restarts the actor on another one rather than not at all.
    if node_id is None:
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=True), **_TOKEN}


def nodes_for_executors(here: str) -> list[str]:
    """The alive Ray nodes that offer CPUs (every alive node if none does), ``here`` first when it is
    one of them, then by node id: where executors go, one each."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    with_cpus = [n["NodeID"] for n in alive if n.get("Resources", {}).get("CPU", 0) > 0]
    nodes = sorted(with_cpus or [n["NodeID"] for n in alive])
    return sorted(nodes, key=lambda n: n != here) if nodes else [here]


def resolve_placement(config: ActorConfig) -> ActorConfig:
    """``config`` with its executors decided: as configured, or one on each node with CPUs."""
    if config.executors is not None:
        return config
    nodes = nodes_for_executors(ray.get_runtime_context().get_node_id())
    return config.model_copy(update={"executors": len(nodes), "executor_nodes": nodes})


_PLACE_TIMEOUT_S = 120.0  # for a new node's actor to answer; past it, the supervisor goes on


class Deployment:
    """The handles of a deployment's actors, which live as long as their owner holds them; and
    the actors of nodes that join later, placed by ``grow``."""

    def __init__(
        self,
        config: ActorConfig,
        handler: Any,
        keepers: list[Any],
        executors: list[Any],
        consumers: list[Any],
        handlers: dict[str, Any],
    ):
        self.config = config
        self.handler = handler  # the first RequestHandler, on the deploying node
        self.keepers, self.executors, self.consumers = keepers, executors, consumers
        self.handlers = handlers  # the RequestHandlers of the other nodes, by node
        self.executor_nodes = list(config.executor_nodes)
        self.known = {ray.get_runtime_context().get_node_id(), *handlers}  # nodes whose actors are placed

    @property
    def loopers(self) -> list[Any]:
        """The keepers and executors: actors with loops to keep running (consumers are told more)."""
        return [*self.keepers, *self.executors]

    def size(self) -> int:
        """How many actors the deployment has."""
        return 1 + len(self.keepers) + len(self.executors) + len(self.consumers) + len(self.handlers)

    def grow(self) -> list[str]:
        """Place the actors of nodes that joined since the last look: a RequestHandler on each,
        and, unless the number of executors is configured, an Executor on each with CPUs, with
        a QueueConsumer beside it when consumers follow the executors (``RAYLANE_CONSUMERS``
        unset) and a partition is left for it. Returns the names of the actors placed."""
        alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        placed: list[str] = []
        for node in sorted(set(alive) - self.known):
            self.known.add(node)
            executor: Any = None
            if self.executor_nodes and alive[node].get("Resources", {}).get("CPU", 0) > 0:
                placed += self._add_executor(node)
                executor = self.executors[-1]
            handler = (
                _with_waits(RequestHandler)
                .options(**_options(self.config, handler_name(node)), **_placed(node))
                .remote(self.config)
            )
            self.handlers[node] = handler  # kept from now on, even if it is slow to answer
            ray.get(handler.task_names.remote(), timeout=_PLACE_TIMEOUT_S)
            placed.append(handler_name(node))
            if executor is not None:  # only now: the handler would have waited behind the workers' starts
                executor.warm_workers.remote()
        return placed

    def _add_executor(self, node: str) -> list[str]:
        j = len(self.executors)
        nodes = [*self.executor_nodes, node]
        config = self.config.model_copy(update={"executors": j + 1, "executor_nodes": nodes})
        name = executor_name(j)
        executor: Any = (
            ray.remote(Executor)
            .options(**_options(config, name), **_placed(node), runtime_env=_EXECUTOR_ENV)
            .remote(config)
        )
        # Kept (and supervised) from now on: an actor whose handle is dropped is gone.
        self.executors.append(executor)
        self.executor_nodes = nodes
        ray.get(executor.ensure_running.remote(), timeout=_PLACE_TIMEOUT_S)
        if config.consumer_count() <= len(self.consumers):  # configured, or one per partition already
            return [name]
        # The others read their new share first, then the new consumer its own: a partition may
        # go unread for a moment, but none is read twice (which its claims would settle anyway).
        i = len(self.consumers)
        members = i + 1
        ray.get([c.ensure_running.remote(members) for c in self.consumers], timeout=_PLACE_TIMEOUT_S)
        consumer: Any = (
            ray.remote(QueueConsumer)
            .options(**_options(config, f"{QUEUE_CONSUMER}-{i}"), **_placed(node))
            .remote(config.model_copy(update={"consumers": members}), i, name)
        )
        # Counted from now on: the others already read as one of ``members``.
        self.consumers.append(consumer)
        ray.get(consumer.ensure_running.remote(members), timeout=_PLACE_TIMEOUT_S)
        return [name, f"{QUEUE_CONSUMER}-{i}"]


def create_actors(config: ActorConfig) -> Deployment:
    """Create (or find) every actor, owned by the calling driver, and wait until all are ready.

    Executors go one to each node with CPUs (unless their number is configured), each consumer
    beside the executor it feeds, and a RequestHandler to every node, so that a caller's requests,
    a queue's tasks and their claims stay on one node where they can. Nodes that join later
    get theirs from ``Deployment.grow``.

    The first RequestHandler is created last: once it exists, the deployment is complete.
    """
    config = resolve_placement(config)
    nodes = config.executor_nodes
    # Actor handles are dynamic (methods are reached through .remote): typed as Any.
    keepers: list[Any] = [
        _with_waits(StatusKeeper).options(**_options(config, keeper_name(k))).remote(config, k)
        for k in range(config.keepers)
    ]
    ray.get([k.get_stats.remote() for k in keepers])
    executors: list[Any] = [
        ray.remote(Executor)
        .options(**_options(config, name), **_placed(nodes[j] if nodes else None), runtime_env=_EXECUTOR_ENV)
        .remote(config)
        for j, name in enumerate(config.executor_names())
    ]
    ray.get([e.get_stats.remote() for e in executors])
    consumers: list[Any] = []
    for i in range(config.consumer_count()):
        opts = _options(config, f"{QUEUE_CONSUMER}-{i}")
        if nodes:
            opts.update(_placed(nodes[i % len(nodes)]))
        else:
            # Spread over the nodes, so that one node's loss stops only its share until Ray restarts
            # them elsewhere.
            opts.update(scheduling_strategy="SPREAD", **_TOKEN)
        consumers.append(ray.remote(QueueConsumer).options(**opts).remote(config, i))
    ray.get([a.ensure_running.remote() for a in [*keepers, *executors, *consumers]])
    here = ray.get_runtime_context().get_node_id()
    others = sorted({n["NodeID"] for n in ray.nodes() if n.get("Alive")} - {here})
    local: dict[str, Any] = {
        n: _with_waits(RequestHandler).options(**_options(config, handler_name(n)), **_placed(n)).remote(config)
        for n in others
    }
    ray.get([h.task_names.remote() for h in local.values()])
    handler: Any = (
        _with_waits(RequestHandler).options(**_options(config, handler_name()), **_placed(here)).remote(config)
    )
    ray.get(handler.task_names.remote())
    # Only now: an actor created meanwhile would wait behind the workers' starts. One executor per
    # node: the deployment's executors on a node share its pool of workers (those of one Ray job),
    # and a second warm-up there would start as many more, to be stopped again once idle.
    first_on_node: dict[str, Any] = {}
    for e, node in zip(executors, ray.get([e.node.remote() for e in executors]), strict=True):
        first_on_node.setdefault(node, e)
    for e in first_on_node.values():
        e.warm_workers.remote()
    return Deployment(config, handler, keepers, executors, consumers, local)


def actor_stats(namespace: str) -> dict:
    """Counters of every raylane actor that keeps them (all but the RequestHandler), by actor name."""
    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and not a["name"].startswith(REQUEST_HANDLER)
    )
    return {n: ray.get(ray.get_actor(n, namespace=namespace).get_stats.remote()) for n in names}


def actor_node_ids(namespace: str) -> dict[str, str]:
    """The node each live raylane actor runs on, by actor name."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        limit=1000,
        filters=[("ray_namespace", "=", namespace), ("state", "=", "ALIVE")],
    )
    return {a.name: a.node_id for a in actors if a.name and a.node_id}


_CONFIG_KEY = "service-config:"


def put_service_config(config: ActorConfig) -> str:
    """Keep ``config`` (secrets included) in Ray's KV store for the service job; returns its key."""
    key = _CONFIG_KEY + uuid.uuid4().hex
    kv_put(key, config.model_dump_json(context=REVEAL), namespace=config.namespace)
    return key


def take_service_config(key: str, namespace: str) -> ActorConfig:
    """The configuration ``put_service_config`` kept under ``key``; it is removed from the KV store."""
    if not key.startswith(_CONFIG_KEY):
        raise StackError(f"not a raylane service configuration key: {key!r}", service="raylane")
    raw = kv_get(key, namespace=namespace)
    if raw is None:
        raise StackError(f"no raylane service configuration under {key!r} in Ray's KV store", service="raylane")
    kv_del(key, namespace=namespace)
    return ActorConfig.model_validate_json(raw)


def deploy(config: ActorConfig, dashboard_url: str, timeout_s: float = 180.0):
    """Run the raylane service job (which owns the actors) and return the RequestHandler once it answers."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    # The configuration carries secrets (the cluster secret, the OpenSearch password): it goes
    # through Ray's own KV store, never on the job's command line or in its metadata.
    key = put_service_config(config)
    entrypoint = " ".join(
        [
            shlex.quote(sys.executable),
            "-m",
            "raylane.actors.service",
            "--config-key",
            key,
            "--namespace",
            shlex.quote(config.namespace),
        ]
    )
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=f"raylane-service-{uuid.uuid4().hex[:8]}",
            metadata={"raylane": "service"},
        )
    except RuntimeError as e:  # the job API answered with an error
        raise StackError(
            f"Ray at {dashboard_url} did not accept the raylane service job: {e}", service="raylane"
        ) from e
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        handler = find_request_handler(config.namespace)
        if handler is not None:
            ray.get(handler.task_names.remote())
            return handler
        status = client.get_job_status(job_id)
        if status in (JobStatus.FAILED, JobStatus.STOPPED):
            logs = client.get_job_logs(job_id)[-3000:]
            raise StackError(
                f"the raylane service job {job_id} ended ({status}) before its actors were ready:\n{logs}",
                service="raylane",
            )
        time.sleep(0.2)
    raise StackError(f"raylane's actors were not ready within {timeout_s:.0f}s (Ray job {job_id})", service="raylane")
