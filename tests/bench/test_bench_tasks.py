"""Benchmarks (run with ``./dev bench``): numbers and ratios against a baseline, no timing assertions.

- latency: submit-to-result of one task at a time through raylane, against a bare Ray task
  round trip measured in the same process (the floor raylane builds on);
- throughput: a batch of tasks submitted with submit_many and run to the end.

Results are printed and written to ``bench-results/tasks.json``.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import ray

import raylane

pytestmark = pytest.mark.bench


@raylane.task(name="bench.noop")
def noop(i: int) -> int:
    return i


@ray.remote
def _bare(i: int) -> int:
    return i


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def _record(name: str, data: dict) -> None:
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    path = out / "tasks.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = data
    path.write_text(json.dumps(results, indent=2))
    print(f"\n{name}: {json.dumps(data)}")


def test_latency_one_at_a_time(rl):
    n = 200
    for i in range(10):  # warm both paths
        noop.submit(i).result(timeout=60)
        ray.get(_bare.remote(i))
    bare, lane = [], []
    for i in range(n):
        t = time.perf_counter()
        ray.get(_bare.remote(i))
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert noop.submit(i).result(timeout=60) == i
        lane.append(time.perf_counter() - t)
    data = {
        "n": n,
        "raylane_p50_ms": round(_pct(lane, 50) * 1000, 1), "raylane_p99_ms": round(_pct(lane, 99) * 1000, 1),
        "bare_ray_p50_ms": round(_pct(bare, 50) * 1000, 2), "bare_ray_p99_ms": round(_pct(bare, 99) * 1000, 2),
    }
    data["p50_ratio_vs_bare_ray"] = round(statistics.median(lane) / statistics.median(bare), 1)
    _record("latency", data)


def test_throughput_batch(rl):
    n = 2000
    started = time.perf_counter()
    handles = noop.submit_many([(i,) for i in range(n)])
    submitted = time.perf_counter() - started
    for h in handles:
        h.wait(timeout=600)
    total = time.perf_counter() - started
    t = time.perf_counter()
    ray.get([_bare.remote(i) for i in range(n)])
    bare = time.perf_counter() - t
    _record("throughput", {
        "n": n, "submit_per_s": round(n / submitted, 1), "end_to_end_per_s": round(n / total, 1),
        "bare_ray_per_s": round(n / bare, 1), "ratio_vs_bare_ray": round((n / bare) / (n / total), 1),
    })
