"""raylane's metrics as Prometheus scrapes them from the Ray node's metrics endpoint."""

from __future__ import annotations

import urllib.request

from conftest import wait_until
from prometheus_client.parser import text_string_to_metric_families

import raylane
from raylane.states import TaskState


def _scrape(url: str) -> dict[str, list[tuple[dict, float]]]:
    """Samples by name (``ray_raylane_...``), each with its labels."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_raylane_"):
                out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _total(samples: dict, metric: str, **labels) -> float:
    return sum(v for lab, v in samples.get(metric, []) if all(lab.get(k) == w for k, w in labels.items()))


def test_batch_shows_up_in_ray_prometheus_metrics(rl, stack, unique):
    name = f"test.metrics_{unique}"

    @raylane.task(name=name, timeout=30)
    def maybe_fail(i: int) -> int:
        if i % 5 == 0:
            raise RuntimeError(f"task {i} fails on purpose")
        return i

    handles = maybe_fail.submit_many([(i,) for i in range(20)])
    states = [h.wait(timeout=120).state for h in handles]
    assert states.count(TaskState.SUCCEEDED) == 16 and states.count(TaskState.FAILED) == 4

    expected = {
        ("ray_raylane_tasks_submitted_total", None): 20,
        ("ray_raylane_tasks_started_total", None): 20,
        ("ray_raylane_tasks_finished_total", "SUCCEEDED"): 16,
        ("ray_raylane_tasks_finished_total", "FAILED"): 4,
    }
    seen: dict = {}

    def all_reported() -> bool:
        samples = _scrape(stack.ray.metrics_url)
        for (metric, state), _ in expected.items():
            labels = {"name": name, **({"state": state} if state else {})}
            seen[(metric, state)] = _total(samples, metric, **labels)
        seen["samples"] = samples
        return all(seen[k] == v for k, v in expected.items())

    wait_until(
        all_reported,
        timeout=60,
        interval=1.0,
        what=lambda: f"the task counts on {stack.ray.metrics_url} (last seen {[seen.get(k) for k in expected]})",
    )
    samples = seen["samples"]
    # Status writes: every accepted write counted; batches and their latency observed.
    assert _total(samples, "ray_raylane_status_writes_total", outcome="accepted") >= 60
    assert _total(samples, "ray_raylane_status_write_batch_size_count") > 0
    assert _total(samples, "ray_raylane_status_write_seconds_count") > 0
    # Per-partition queue lag of the default queue, and the executor's running gauge.
    lags = [lab for lab, _ in samples.get("ray_raylane_queue_lag", []) if lab.get("topic") == "raylane.tasks.default"]
    assert {lab["partition"] for lab in lags} == {"0", "1", "2", "3"}
    assert "ray_raylane_tasks_running" in samples and "ray_raylane_consumer_in_flight" in samples
