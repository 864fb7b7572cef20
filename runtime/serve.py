"""raylane as the task queue of a Ray Serve application (Serve's asynchronous task API).

    from ray.serve.schema import TaskProcessorConfig
    from raylane.serve import RaylaneTaskProcessorAdapter

    config = TaskProcessorConfig(queue_name="reports", adapter=RaylaneTaskProcessorAdapter,
                                 adapter_config={})   # raylane settings, e.g. {"namespace": "raylane"}

Use it with ``@task_consumer(task_processor_config=config)`` and ``@task_handler`` as with
Serve's Celery adapter, and enqueue from any deployment with
``instantiate_adapter_from_config(config).enqueue_task_sync("name", args=[...])``.

A task is named ``serve.<queue>.<handler name>`` in raylane and has the usual raylane record:
it can be looked up, searched, counted, cancelled and waited on. Unlike Celery's consumer,
which runs handlers inside the replica, raylane runs each task as its own Ray task from its
Executor, with raylane's timeout, retry and cancel semantics; ``start_consumer`` therefore
starts nothing, and a handler must not depend on replica state that cannot be pickled with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.serve.schema import TaskProcessorAdapter, TaskProcessorConfig, TaskResult

import raylane
from raylane.client import submit_requests
from raylane.models import SubmitRequest, TaskRecord


def _result(record: TaskRecord) -> TaskResult:
    return TaskResult(
        id=record.id,
        status=record.state.value,
        created_at=record.created_at.timestamp(),
        result=record.result if record.result is not None else record.error,
    )


class RaylaneTaskProcessorAdapter(TaskProcessorAdapter):
    """Serve's ``TaskProcessorAdapter`` on raylane: Kafka for the queue, OpenSearch for the status."""

    def __init__(self, config: TaskProcessorConfig, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if config.adapter_config is not None and not isinstance(config.adapter_config, dict):
            raise TypeError("adapter_config of the raylane adapter is a dict of raylane settings (or None)")
        self.config = config
        self._settings = dict(config.adapter_config or {})

    def _name(self, task_name: str) -> str:
        return f"serve.{self.config.queue_name}.{task_name}"

    def initialize(self, consumer_concurrency: int = 0) -> None:
        """Connect to raylane (starting nothing if it already runs)."""
        raylane.init(**self._settings)

    def register_task_handle(self, func: Callable, name: str | None = None) -> None:
        """Declare ``func`` as the raylane task ``serve.<queue>.<name>``, retried ``max_retries`` times."""
        raylane.task(
            name=self._name(name or func.__name__),
            queue=self.config.queue_name,
            max_retries=self.config.max_retries or 0,
        )(func)

    def enqueue_task_sync(
        self, task_name: str, args: Any | None = None, kwargs: Any | None = None, **options
    ) -> TaskResult:
        """Submit a task; ``options`` may carry raylane's ``tags``. Returns its PENDING state."""
        tags = options.pop("tags", ())
        if options:
            raise TypeError(f"unsupported task options for the raylane adapter: {sorted(options)}")
        [handle] = submit_requests(
            [
                SubmitRequest(
                    name=self._name(task_name),
                    args=list(args or []),
                    kwargs=dict(kwargs or {}),
                    queue=self.config.queue_name,
                    tags=list(tags),
                )
            ]
        )
        return _result(handle.record())

    def get_task_status_sync(self, task_id: str) -> TaskResult:
        """The task's state, and its result (or error message) once finished."""
        return _result(raylane.get(task_id))

    def cancel_task_sync(self, task_id: str) -> None:
        """Cancel the task (raises ``TaskAlreadyFinished`` if it has finished)."""
        raylane.cancel(task_id)

    def start_consumer(self, **kwargs) -> None:
        """Nothing to start: raylane's own consumers and executor run the tasks."""

    def stop_consumer(self, timeout: float = 10.0) -> None:
        """Nothing to stop (see ``start_consumer``)."""

    def get_metrics_sync(self) -> dict[str, Any]:
        """Tasks of this queue per state."""
        return {"queue": self.config.queue_name, "tasks_by_state": raylane.counts(queue=self.config.queue_name)}

    def health_check_sync(self) -> list[dict]:
        """One entry: whether raylane answers."""
        try:
            raylane.counts(queue=self.config.queue_name)
            return [{"component": "raylane", "healthy": True}]
        except raylane.RaylaneError as e:
            return [{"component": "raylane", "healthy": False, "error": str(e)}]
