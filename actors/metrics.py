"""raylane's metrics, exported with ``ray.util.metrics``.

Ray's metrics agent on each node serves them on the node's Prometheus endpoint
(``--metrics-export-port``) with Ray's ``ray_`` prefix, e.g. ``ray_raylane_tasks_finished_total``;
the dashboard's Metrics view shows them once Prometheus scrapes that endpoint.

Every status write passes through the StatusKeeper, so task counts are taken there from the
writes the store accepted: a task counted as finished finished exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cached_property

from raylane.models import PackedRecord, TaskRecord, WriteOutcome
from raylane.states import TaskState

_BATCH_SIZES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]


class KeeperMetrics:
    """Task state changes and status-write costs, recorded by the StatusKeeper."""

    @cached_property
    def _m(self):
        from ray.util.metrics import Counter, Gauge, Histogram

        return {
            "running": Gauge("raylane_tasks_running", "Tasks RUNNING right now (claimed, not yet ended)."),
            "submitted": Counter(
                "raylane_tasks_submitted", "Tasks accepted for running (PENDING written).", tag_keys=("name", "queue")
            ),
            "started": Counter(
                "raylane_tasks_started", "Attempts that started running (RUNNING written).", tag_keys=("name", "queue")
            ),
            "finished": Counter(
                "raylane_tasks_finished",
                "Tasks that reached a terminal state, by state.",
                tag_keys=("name", "queue", "state"),
            ),
            "retries": Counter(
                "raylane_task_retries", "Failed attempts that are tried again.", tag_keys=("name", "queue")
            ),
            "writes": Counter(
                "raylane_status_writes",
                "Versioned status writes, by outcome (accepted; rejected as stale; refused by the store).",
                tag_keys=("outcome",),
            ),
            "batch": Histogram(
                "raylane_status_write_batch_size", "Records per bulk status write.", boundaries=_BATCH_SIZES
            ),
            "latency": Histogram(
                "raylane_status_write_seconds", "Duration of a bulk status write.", boundaries=_SECONDS
            ),
        }

    def running(self, n: int) -> None:
        """The number of RUNNING tasks the keeper watches."""
        self._m["running"].set(n)

    def flushed(
        self, records: Sequence[TaskRecord | PackedRecord], outcomes: Sequence[WriteOutcome], seconds: float
    ) -> None:
        """Record one bulk write and the state changes it made."""
        m = self._m
        m["batch"].observe(len(records))
        m["latency"].observe(seconds)
        # Counted here and added once per distinct set of tags: a bulk write holds hundreds of
        # records of a few names, and each ``inc`` of a Ray metric costs more than the counting.
        counts = {"accepted": 0, "rejected": 0, "refused": 0}
        changes: Counter[tuple[str, str, str, str | None]] = Counter()
        for record, outcome in zip(records, outcomes, strict=False):
            if not outcome.accepted:
                counts["rejected" if outcome.reason == "conflict" else "refused"] += 1
                continue
            counts["accepted"] += 1
            if record.state is TaskState.PENDING:
                if record.attempt == 0:
                    changes["submitted", record.name, record.queue, None] += 1
            elif record.state is TaskState.RUNNING:
                changes["started", record.name, record.queue, None] += 1
            elif record.will_retry:
                changes["retries", record.name, record.queue, None] += 1
            else:
                changes["finished", record.name, record.queue, record.state.value] += 1
        for (metric, name, queue, state), n in changes.items():
            tags = {"name": name, "queue": queue} if state is None else {"name": name, "queue": queue, "state": state}
            m[metric].inc(n, tags)
        for kind, n in counts.items():
            if n:
                m["writes"].inc(n, {"outcome": kind})


class ConsumerMetrics:
    """Queue lag, messages held and dead letters, recorded by each QueueConsumer."""

    def __init__(self, consumer: int):
        self._consumer = str(consumer)

    @cached_property
    def _m(self):
        from ray.util.metrics import Counter, Gauge

        return {
            "lag": Gauge(
                "raylane_queue_lag",
                "Messages not yet read, per queue topic partition.",
                tag_keys=("topic", "partition"),
            ),
            "held": Gauge(
                "raylane_consumer_in_flight",
                "Messages read and not yet handed over or settled.",
                tag_keys=("consumer",),
            ),
            "dlq": Counter("raylane_dead_letters", "Messages moved to the dead-letter topic.", tag_keys=("topic",)),
        }

    def lag(self, partitions: Sequence[dict]) -> None:
        """Set the lag of every partition whose offsets are known."""
        for p in partitions:
            if p["lag"] is not None:
                self._m["lag"].set(p["lag"], {"topic": p["topic"], "partition": str(p["partition"])})

    def held(self, n: int) -> None:
        self._m["held"].set(n, {"consumer": self._consumer})

    def dead_lettered(self, topic: str) -> None:
        self._m["dlq"].inc(1, {"topic": topic})
