"""Sharded StatusKeepers: with RAYLANE_KEEPERS=3 each keeper owns about a third of the tasks,
and timeouts, cancels and waits still work across them; with two executors, a kill goes only to
the one that holds the task's lease."""

from __future__ import annotations

import pytest
from conftest import own_deployment, run_driver, wait_until


@pytest.mark.timeout(900)
def test_three_keepers_share_the_work_and_keep_every_promise(stack, rl, unique):
    env = {"RAYLANE_KEEPERS": "3", "RAYLANE_EXECUTORS": "2", **own_deployment(f"raylane-shard-{unique}")}
    result = run_driver("sharded_driver.py", env, timeout=840)
    assert result["states"] == {
        "quick": ["SUCCEEDED"] * 300,
        "stalled": ["TIMED_OUT"] * 4,
        "doomed": ["CANCELLED"] * 4,
    }, result["odd"]
    assert result["results_ok"]
    keepers = result["keepers"]
    assert sorted(keepers) == ["StatusKeeper", "StatusKeeper-1", "StatusKeeper-2"]
    accepted = {name: s["accepted"] for name, s in keepers.items()}
    total = sum(accepted.values())
    # 308 tasks, each with at least three accepted writes, split by task id: none idle, none with most.
    # A task whose claim made its record before its PENDING write came has two in the store; the
    # keeper counts its PENDING write as overtaken instead.
    overtaken = sum(s["overtaken"] for s in keepers.values())
    assert total + overtaken >= 3 * 308, (accepted, overtaken)
    assert all(0.2 * total < n < 0.5 * total for n in accepted.values()), accepted
    assert sum(s["timeouts"] for s in keepers.values()) == 4
    # Each kill (4 timeouts, 4 cancels) went to the one executor holding the task's lease, not to both.
    executors = result["executors"]
    assert sorted(executors) == ["Executor", "Executor-1"]
    kills = sum(s["kills"] for s in keepers.values())
    assert kills >= 8 and sum(s["kill_requests"] for s in executors.values()) == kills, (keepers, executors)
    # Both executors run on this one node, whose worker pool they share: one of them warmed it.
    assert [s["workers_warmed"] > 0 for _, s in sorted(executors.items())].count(True) == 1, executors
    # The driver removed its deployment: none of its actors stays behind to load the cluster.
    import ray

    def left() -> list[str]:
        return [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == env["RAYLANE_NAMESPACE"]
        ]

    wait_until(lambda: not left(), timeout=60, what="the sharded deployment's actors to go")
