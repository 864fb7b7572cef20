"""The bench's CPU-by-process meter: the arithmetic of its figures, and reading /proc."""

from __future__ import annotations

import os
import time

from raylane.bench.processes import keeper_shares, per_task, process_cpu_ms, role_of


def test_own_cpu_time_grows_with_work():
    before = process_cpu_ms(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    after = process_cpu_ms(os.getpid())
    assert before is not None and after is not None
    assert after - before >= 100  # 200 ms of work, counted in clock ticks


def test_a_process_gone_has_no_cpu_time():
    assert process_cpu_ms(2**22 + 7) is None  # above the kernel's largest pid


def test_roles_by_actor_pid_and_the_driver():
    assert role_of(os.getpid(), {}) == "driver"
    assert role_of(os.getpid(), {os.getpid(): "StatusKeeper-1"}) == "StatusKeeper-1"


def test_per_task_adds_what_no_named_process_used_and_sorts():
    rows = per_task({"StatusKeeper": 100.0, "Executor": 300.0}, machine_ms=1000.0, n=100)
    assert rows == {"other": 6.0, "Executor": 3.0, "StatusKeeper": 1.0}
    assert list(rows) == ["other", "Executor", "StatusKeeper"]


def test_keeper_shares_in_keeper_order():
    by_role = {"StatusKeeper-10": 10.0, "StatusKeeper": 30.0, "StatusKeeper-1": 60.0, "Executor": 500.0}
    assert keeper_shares(by_role) == [0.3, 0.6, 0.1]
    assert keeper_shares({"Executor": 1.0}) == []


def test_the_scale_estimate_merges_numbered_actors_and_sizes_by_cpu():
    from raylane.bench.report import scale_estimate

    rows = scale_estimate({"StatusKeeper": 0.1, "StatusKeeper-1": 0.1, "QueueConsumer-0": 0.06}, target=100_000)
    assert rows == [("StatusKeeper", 20.0, 33.3), ("QueueConsumer", 6.0, 10.0)]
