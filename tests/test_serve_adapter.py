"""raylane behind Ray Serve's asynchronous task API (TaskProcessorAdapter), driven through Serve's own
adapter factory and task-consumer wiring."""

from __future__ import annotations

import time

import pytest
from conftest import wait_until
from ray.serve.schema import TaskProcessorConfig
from ray.serve.task_consumer import instantiate_adapter_from_config, task_consumer, task_handler

from raylane.errors import TaskAlreadyFinished
from raylane.serve import RaylaneTaskProcessorAdapter


def test_serve_task_consumer_runs_on_raylane(rl, unique):
    config = TaskProcessorConfig(
        queue_name=f"serve-{unique}", adapter=RaylaneTaskProcessorAdapter, adapter_config={}, max_retries=1
    )

    @task_consumer(task_processor_config=config)
    class Reports:
        @task_handler(name="render")
        def render(self, title: str, pages: int) -> str:
            return f"{title}:{pages}"

        @task_handler(name="stall")
        def stall(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

    # What a Serve replica does on start: build the adapter, register the handlers, start consuming.
    consumer = Reports()
    consumer.initialize_callable(consumer_concurrency=2)

    # What an ingress deployment does: enqueue by name through its own adapter.
    producer = instantiate_adapter_from_config(config)
    queued = producer.enqueue_task_sync("render", args=["q3", 12])
    assert queued.status in ("PENDING", "RUNNING", "SUCCEEDED") and len(queued.id) == 32
    done = wait_until(
        lambda: (r := producer.get_task_status_sync(queued.id)).status == "SUCCEEDED" and r,
        timeout=60,
        what="the Serve task to finish",
    )
    assert done.result == "q3:12"

    slow = producer.enqueue_task_sync("stall", args=[30.0])
    producer.cancel_task_sync(slow.id)
    assert producer.get_task_status_sync(slow.id).status == "CANCELLED"
    with pytest.raises(TaskAlreadyFinished):
        producer.cancel_task_sync(queued.id)
    with pytest.raises(TypeError):
        producer.enqueue_task_sync("render", args=["x", 1], countdown=5)

    rl.refresh()
    metrics = producer.get_metrics_sync()
    assert metrics["tasks_by_state"].get("SUCCEEDED") == 1 and metrics["tasks_by_state"].get("CANCELLED") == 1
    assert producer.health_check_sync() == [{"component": "raylane", "healthy": True}]
