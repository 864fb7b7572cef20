"""A deployment of its own whose executors trace a sample of the tasks (RAYLANE_OTLP_SAMPLE_RATIO,
set by the environment): a batch of tasks through it, then their ids and the number of traces
its executors made, as one JSON line; the deployment is removed at the end. Run by
tests/test_tracing.py."""

from __future__ import annotations

import sys
import time

from drivers import run_in_own_deployment

import raylane
from raylane.actors.deploy import actor_stats
from raylane.config import Settings
from raylane.tracing import sampled

PREFIX = "sampled-result: "  # tests/conftest.py run_driver reads the line


@raylane.task(name="sampled.echo")
def echo(x: int) -> int:
    return x


def _traced(namespace: str) -> int:
    return sum(s["traced"] for name, s in actor_stats(namespace).items() if name.startswith("Executor"))


def main(settings: Settings) -> dict:
    """Run a batch, and count the traces the deployment's executors made of it."""
    handles = echo.submit_many([(i,) for i in range(60)])
    records = raylane.wait_all(handles, timeout=120)
    expected = sum(sampled(h.id, settings.otlp_sample_ratio) for h in handles)
    # An end is counted as traced just after its keeper accepted it, which the wait may beat.
    deadline = time.monotonic() + 30
    while (traced := _traced(settings.namespace)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return {
        "ids": [h.id for h in handles],
        "states": sorted({r.state.value for r in records}),
        "ratio": settings.otlp_sample_ratio,
        "traced": traced,
    }


if __name__ == "__main__":
    sys.exit(run_in_own_deployment(PREFIX, main))
