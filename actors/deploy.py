"""Start raylane's actors in the connected Ray cluster, or find the ones already running."""
from __future__ import annotations

import ray

from raylane.actors.common import EXECUTOR, QUEUE_CONSUMER, REQUEST_HANDLER, STATUS_KEEPER, ActorConfig
from raylane.actors.executor import Executor
from raylane.actors.queue_consumer import QueueConsumer
from raylane.actors.request_handler import RequestHandler
from raylane.actors.status_keeper import StatusKeeper


def _options(config: ActorConfig, name: str) -> dict:
    # Actors coordinate and wait; they reserve no CPU so tasks get all of it.
    return dict(name=name, namespace=config.namespace, lifetime="detached", get_if_exists=True,
                max_restarts=-1, num_cpus=0, max_concurrency=10_000)


def find_request_handler(namespace: str):
    """The running RequestHandler, or None when raylane is not deployed in this cluster."""
    try:
        return ray.get_actor(REQUEST_HANDLER, namespace=namespace)
    except ValueError:
        return None


def deploy(config: ActorConfig, consumers: int = 1):
    """Create (or find) every actor; returns the RequestHandler once all are ready."""
    keeper = ray.remote(StatusKeeper).options(**_options(config, STATUS_KEEPER)).remote(config)
    ray.get(keeper.get_stats.remote())
    executor = ray.remote(Executor).options(**_options(config, EXECUTOR)).remote(config)
    ray.get(executor.get_stats.remote())
    handler = ray.remote(RequestHandler).options(**_options(config, REQUEST_HANDLER)).remote(config)
    members = [ray.remote(QueueConsumer).options(**_options(config, f"{QUEUE_CONSUMER}-{i}")).remote(config, i)
               for i in range(consumers)]
    ray.get([m.ensure_running.remote() for m in members] + [handler.task_names.remote()])
    return handler


def actor_stats(namespace: str, consumers: int = 1) -> dict:
    """Counters of every actor, by actor name (for operators, tests and benchmarks)."""
    names = [STATUS_KEEPER, EXECUTOR] + [f"{QUEUE_CONSUMER}-{i}" for i in range(consumers)]
    return {n: ray.get(ray.get_actor(n, namespace=namespace).get_stats.remote()) for n in names}
