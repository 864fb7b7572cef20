"""A Grafana dashboard of raylane's metrics (``raylane metrics grafana``), for the Grafana that
Ray's dashboard embeds or any other reading the Prometheus that scrapes Ray's metrics.

Ray exports raylane's metrics with its ``ray_`` prefix (see ``raylane.actors.metrics``); each
panel here is one PromQL query over them, through a ``datasource`` variable so the dashboard
fits whatever the Prometheus data source is called.
"""

from __future__ import annotations

from typing import Any

UID = "raylane"
_DS = {"type": "prometheus", "uid": "${datasource}"}
_WRITE_SECONDS = "ray_raylane_status_write_seconds_bucket"

# (title, unit, [(PromQL, legend)], what the panel tells)
_PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    (
        "Tasks finished per minute, by state",
        "none",
        [("sum by (state) (rate(ray_raylane_tasks_finished_total[$__rate_interval])) * 60", "{{state}}")],
        "Terminal states the StatusKeepers accepted: each task is counted once.",
    ),
    (
        "Tasks submitted and started per minute",
        "none",
        [
            ("sum(rate(ray_raylane_tasks_submitted_total[$__rate_interval])) * 60", "submitted"),
            ("sum(rate(ray_raylane_tasks_started_total[$__rate_interval])) * 60", "started"),
            ("sum(rate(ray_raylane_task_retries_total[$__rate_interval])) * 60", "retried"),
        ],
        "PENDING records written, attempts claimed (RUNNING written), failed attempts tried again.",
    ),
    (
        "Tasks running",
        "none",
        [("sum(ray_raylane_tasks_running)", "running")],
        "RUNNING tasks the StatusKeepers watch.",
    ),
    (
        "Backlog per queue topic",
        "none",
        [("sum by (topic) (ray_raylane_queue_lag)", "{{topic}}")],
        "Messages in Kafka not yet read by a consumer.",
    ),
    (
        "Messages held by consumers",
        "none",
        [("sum by (consumer) (ray_raylane_consumer_in_flight)", "consumer {{consumer}}")],
        "Read and not yet handed over or settled; at RAYLANE_MAX_IN_FLIGHT a consumer stops polling.",
    ),
    (
        "Dead letters per minute",
        "none",
        [("sum by (topic) (rate(ray_raylane_dead_letters_total[$__rate_interval])) * 60", "{{topic}}")],
        "Messages set aside; raylane dlq ls lists them.",
    ),
    (
        "Status writes per second, by outcome",
        "ops",
        [("sum by (outcome) (rate(ray_raylane_status_writes_total[$__rate_interval]))", "{{outcome}}")],
        "Versioned writes accepted, rejected as stale (a race lost, as designed), or refused by the store.",
    ),
    (
        "Status write latency",
        "s",
        [
            (f"histogram_quantile({q}, sum by (le) (rate({_WRITE_SECONDS}[$__rate_interval])))", f"p{round(q * 100)}")
            for q in (0.5, 0.99)
        ],
        "Duration of one bulk status write to OpenSearch.",
    ),
    (
        "Records per bulk write",
        "none",
        [
            (
                "sum(rate(ray_raylane_status_write_batch_size_sum[$__rate_interval]))"
                " / sum(rate(ray_raylane_status_write_batch_size_count[$__rate_interval]))",
                "mean",
            )
        ],
        "How many status writes share one OpenSearch request.",
    ),
]


def dashboard() -> dict[str, Any]:
    """The dashboard, as Grafana's JSON model: two panels a row, over the last hour."""
    panels = []
    for i, (title, unit, queries, description) in enumerate(_PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "description": description,
                "datasource": _DS,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + k), "datasource": _DS, "expr": expr, "legendFormat": legend}
                    for k, (expr, legend) in enumerate(queries)
                ],
            }
        )
    return {
        "uid": UID,
        "title": "raylane",
        "description": "Tasks, queues and status writes of raylane, from the metrics Ray exports.",
        "tags": ["raylane", "ray"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "panels": panels,
    }


def metric_names() -> set[str]:
    """The metric names (without Prometheus suffixes) the dashboard's queries read."""
    import re

    found = set()
    for _, _, queries, _ in _PANELS:
        for expr, _ in queries:
            for name in re.findall(r"ray_(raylane_\w+)", expr):
                found.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    return found
