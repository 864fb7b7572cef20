"""raylane's lifecycle on the secure local stack (configured by the environment: RAYLANE_SECURE_STACK
and its ports), through a deployment of its own: results, a failure, a timeout, a cancel while
pending, search and counts; then a round trip and a burst, timed. Prints one JSON line; the
deployment, its index and its topics are removed at the end. Run by tests/test_secure_stack.py."""

from __future__ import annotations

import statistics
import sys
import time

import ray
from drivers import run_in_own_deployment

import raylane
from raylane.client import _endpoints
from raylane.config import Settings
from raylane.protocol import keeper_handles

PREFIX = "secure-result: "


@raylane.task(name="secure.echo")
def echo(x: int) -> int:
    return x


@raylane.task(name="secure.boom")
def boom() -> None:
    raise ValueError("boom")


@raylane.task(name="secure.stall", timeout=1.0)
def stall() -> None:
    time.sleep(60)


def timings(rtt_n: int = 30, burst_n: int = 2000) -> dict:
    """Round trip p50 (ms) of one task at a time, and a burst's tasks/s from submit to the last end."""
    for i in range(5):
        echo.submit(i).result(timeout=60)
    lat = []
    for i in range(rtt_n):
        t = time.perf_counter()
        echo.submit(i).result(timeout=60)
        lat.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    handles = echo.submit_many([(i,) for i in range(burst_n)])
    raylane.wait_all(handles, timeout=300)
    took = time.perf_counter() - t
    return {"rtt_p50_ms": round(statistics.median(lat), 1), "burst_tasks_per_s": round(burst_n / took)}


def main(settings: Settings) -> dict:
    """Use the secured deployment as a user would; what each call gave, and the keepers' TLS counters."""
    endpoints = _endpoints(settings, start_missing=False)
    queue = "secure-paused"
    raylane.pause(queue)
    waiting = echo.options(queue=queue).submit(7)
    cancelled = waiting.cancel().state.value
    raylane.resume(queue)
    ok = echo.submit_many([(i,) for i in range(20)])
    failed, timed_out = boom.submit(), stall.submit()
    records = raylane.wait_all([*ok, failed, timed_out], timeout=120)
    raylane.refresh()
    out = {
        "results": [r.result for r in records[:20]],
        "failed": [records[20].state.value, records[20].error_type],
        "timed_out": records[21].state.value,
        "cancelled": cancelled,
        "cancelled_after": raylane.get(waiting.id).state.value,
        "found": len(raylane.search(name="secure.echo", limit=100)),
        "counts": raylane.counts(name="secure.boom"),
        "kafka_protocol": endpoints.kafka.security_protocol,
        "opensearch_url": endpoints.opensearch.url,
        **timings(),
    }
    # The keepers' writes went out on their loops' own TLS connections, with basic auth.
    stats = [ray.get(k.get_stats.remote()) for k in keeper_handles(settings.namespace)]
    out["loop_bulks"] = sum(s["loop_bulks"] for s in stats)
    out["loop_bulks_not_answered"] = sum(s["loop_bulks_not_answered"] for s in stats)
    return out


if __name__ == "__main__":
    sys.exit(run_in_own_deployment(PREFIX, main))
