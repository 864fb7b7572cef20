"""Sharded StatusKeepers: with RAYLANE_KEEPERS=3 each keeper owns about a third of the tasks,
and timeouts, cancels and waits still work across them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(900)
def test_three_keepers_share_the_work_and_keep_every_promise(stack, unique):
    env = {
        **os.environ,
        "RAYLANE_KEEPERS": "3",
        "RAYLANE_NAMESPACE": f"raylane-shard-{unique}",
        "RAYLANE_TOPIC_PREFIX": f"raylane-shard-{unique}.",
        "RAYLANE_INDEX_ALIAS": f"raylane-shard-{unique}",
        "RAYLANE_DLQ_TOPIC": f"raylane-shard-{unique}.dlq",
    }
    driver = Path(__file__).with_name("sharded_driver.py")
    run = subprocess.run([sys.executable, str(driver)], env=env, capture_output=True, text=True, timeout=840)
    lines = [line for line in run.stdout.splitlines() if line.startswith("sharded-result: ")]
    assert run.returncode == 0 and lines, (run.stdout + run.stderr)[-4000:]
    result = json.loads(lines[-1][len("sharded-result: ") :])
    assert result["states"] == {
        "quick": ["SUCCEEDED"] * 300,
        "stalled": ["TIMED_OUT"] * 4,
        "doomed": ["CANCELLED"] * 4,
    }
    assert result["results_ok"]
    keepers = result["keepers"]
    assert sorted(keepers) == ["StatusKeeper", "StatusKeeper-1", "StatusKeeper-2"]
    accepted = {name: s["accepted"] for name, s in keepers.items()}
    total = sum(accepted.values())
    # 308 tasks, each with at least three accepted writes, split by task id: none idle, none with most.
    assert total >= 3 * 308
    assert all(0.2 * total < n < 0.5 * total for n in accepted.values()), accepted
    assert sum(s["timeouts"] for s in keepers.values()) == 4
