"""A deployment of its own with RAYLANE_KEEPERS keepers (configured by the environment): a mix of
tasks through it, then each task's final record and each keeper's counters as one JSON line;
the deployment is removed at the end. Run by tests/test_sharding.py."""

from __future__ import annotations

import sys
import time

from drivers import run_in_own_deployment

import raylane
from raylane.actors.deploy import actor_stats
from raylane.config import Settings

PREFIX = "sharded-result: "  # tests/conftest.py run_driver reads the line


@raylane.task(name="shard.echo")
def echo(x: int) -> int:
    return x


@raylane.task(name="shard.stall", timeout=1.0)
def stall() -> None:
    time.sleep(60)


@raylane.task(name="shard.slow", timeout=120)
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def main(settings: Settings) -> dict:
    """Run a mix of tasks through the deployment; their final states, and each actor's counters."""
    quick = echo.submit_many([(i,) for i in range(300)])
    stalled = [stall.submit() for _ in range(4)]
    doomed = [slow.submit(60.0) for _ in range(4)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(h.status() is not raylane.TaskState.RUNNING for h in doomed):
        time.sleep(0.1)
    for h in doomed:
        h.cancel()
    records = raylane.wait_all(quick + stalled + doomed, timeout=180)
    by_kind = {
        "quick": [r.state.value for r in records[: len(quick)]],
        "stalled": [r.state.value for r in records[len(quick) : len(quick) + len(stalled)]],
        "doomed": [r.state.value for r in records[len(quick) + len(stalled) :]],
    }
    results_ok = [r.result for r in records[: len(quick)]] == list(range(len(quick)))
    # How the tasks that did not end as expected ended, for the test's message.
    expected = ["SUCCEEDED"] * len(quick) + ["TIMED_OUT"] * len(stalled) + ["CANCELLED"] * len(doomed)
    odd = [
        f"{r.id}: {r.state.value} after {r.attempt + 1} attempt(s), {r.error_type}: {(r.error or '')[:300]}"
        for r, want in zip(records, expected, strict=True)
        if r.state.value != want
    ]
    stats = actor_stats(settings.namespace)
    keepers = {n: s for n, s in stats.items() if n.startswith("StatusKeeper")}
    executors = {n: s for n, s in stats.items() if n.startswith("Executor")}
    return {
        "states": by_kind,
        "odd": odd[:5],
        "results_ok": results_ok,
        "keepers": keepers,
        "executors": executors,
    }


if __name__ == "__main__":
    sys.exit(run_in_own_deployment(PREFIX, main))
