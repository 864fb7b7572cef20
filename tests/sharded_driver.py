"""A deployment of its own with RAYLANE_KEEPERS keepers (configured by the environment): a mix of
tasks through it, then each task's final record and each keeper's counters as one JSON line;
the deployment is removed at the end. Run by tests/test_sharding.py."""

from __future__ import annotations

import json
import sys
import time

import raylane
from raylane.actors.deploy import actor_stats
from raylane.bench.scale import remove_deployment
from raylane.client import _connection

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


def main() -> int:
    raylane.init()
    settings = _connection().settings
    try:
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
        print(
            PREFIX
            + json.dumps(
                {
                    "states": by_kind,
                    "odd": odd[:5],
                    "results_ok": results_ok,
                    "keepers": keepers,
                    "executors": executors,
                }
            ),
            flush=True,
        )
    finally:
        remove_deployment(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
