"""Tasks that share a Ray task under load (no timeout, one CPU or less) keep their own record,
run exactly once, and can be cancelled one by one, whether waiting in the group or running."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from conftest import restart_keeper, running_anywhere, wait_until

import raylane
from raylane.actors.deploy import actor_stats


@raylane.task(name="test.group.mark")
def mark(runs_dir: str, key: int, seconds: float) -> int:
    Path(runs_dir, f"{key}.{uuid.uuid4().hex}").touch()
    time.sleep(seconds)
    return key * 2


@raylane.task(name="test.group.work")
def work(runs_dir: str, key: int, seconds: float) -> int:
    """``mark``, but at work on the CPU for ``seconds`` rather than asleep (a sleeping member
    lends its CPU to the siblings behind it, which then do not wait)."""
    Path(runs_dir, f"{key}.{uuid.uuid4().hex}").touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))
    return key * 2


@raylane.task(name="test.group.die_once", max_retries=1, retry_backoff=0.05)
def die_once(runs_dir: str, key: int, dying: int = 0) -> int:
    Path(runs_dir, f"{key}.{uuid.uuid4().hex}").touch()
    if key == dying and len(list(Path(runs_dir).glob(f"{key}.*"))) == 1:
        os._exit(1)  # the worker dies while this member of its group runs
    return key


def runs(runs_dir: Path) -> dict[int, int]:
    out: dict[int, int] = {}
    for f in runs_dir.iterdir():
        key = int(f.name.split(".")[0])
        out[key] = out.get(key, 0) + 1
    return out


def executor_stats() -> dict:
    return actor_stats("raylane")["Executor"]


def submit_held(rl, settings, fn, queue: str, items: list[tuple]):
    """Submit to a queue the consumer already holds paused, then resume: it hands them over in one batch.

    The queue's topic has one partition, so they come in one fetch; a probe task lets the test see
    the consumer hold it paused (it has seen the pause), so nothing submitted after is taken early."""
    import ray
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from raylane.client import submit_requests
    from raylane.models import SubmitRequest

    consumer = ray.get_actor("QueueConsumer-0", namespace=settings.namespace)
    topic = f"{settings.topic_prefix}{queue}"
    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{settings.kafka_port}")
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    rl.pause(queue)
    try:
        submit_requests([SubmitRequest(name="raylane.echo", queue=queue)])

        def holding() -> bool:
            parts = [p for p in ray.get(consumer.partitions.remote()) if p["topic"] == topic]
            return len(parts) == 1 and parts[0]["paused"]

        wait_until(holding, timeout=60, what=f"the consumer to hold {topic}")
        handles = fn.options(queue=queue).submit_many(items)
    finally:
        rl.resume(queue)
    return handles


def test_a_burst_runs_grouped_each_task_once(rl, settings, tmp_path, unique):
    before = executor_stats()
    items = [(str(tmp_path), i, 0.0) for i in range(60)]
    handles = submit_held(rl, settings, mark, f"g-{unique}", items)
    assert [h.result(timeout=120) for h in handles] == [i * 2 for i in range(60)]
    assert runs(tmp_path) == {i: 1 for i in range(60)}
    after = executor_stats()
    assert after["groups"] > before["groups"] and after["grouped"] - before["grouped"] >= 30, (before, after)
    assert {rl.get(h.id).version for h in handles} == {3}


@raylane.task(name="test.group.gated")
def gated(runs_dir: str, key: int, gate: str) -> int:
    """``mark``, but asleep until the file ``gate`` exists (a minute at most)."""
    Path(runs_dir, f"{key}.{uuid.uuid4().hex}").touch()
    end = time.monotonic() + 60
    while not Path(gate).exists() and time.monotonic() < end:
        time.sleep(0.02)
    return key * 2


def test_cancel_a_task_waiting_in_its_group(rl, settings, tmp_path, unique):
    # The members ahead of the target sleep until the test opens their gate. Asleep, each lends
    # its CPU to the siblings behind it, but an executor lends at most LOANS_PER_CPU per CPU of
    # its node: the chain of sleepers ahead of the target, in its group, is longer than the node
    # has CPUs and loans, so the target cannot start before the gate opens, however long its
    # cancel takes.
    import ray

    from raylane.actors.grouping import LOANS_PER_CPU

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n = cpus * (cpus * (1 + LOANS_PER_CPU) + 2)
    before = executor_stats()
    gate = tmp_path.parent / f"{tmp_path.name}.gate"
    items = [(str(tmp_path), i, str(gate)) for i in range(n)]
    assert _group_members(settings, n) > cpus * (1 + LOANS_PER_CPU) + 1
    handles = submit_held(rl, settings, gated, f"gw-{unique}", items)
    target = handles[-1]  # the last member of the last group: it waits behind the others
    wait_until(lambda: rl.get(target.id).state.value == "RUNNING", timeout=60, what="the claim of the target")
    try:
        assert target.cancel().state.value == "CANCELLED"
    finally:
        gate.touch()
    for h in handles[:-1]:
        assert h.wait(timeout=120).state.value == "SUCCEEDED"
    assert target.wait(timeout=10).state.value == "CANCELLED"
    seen = runs(tmp_path)
    assert n - 1 not in seen, "a task cancelled while waiting in its group ran"
    assert seen == {i: 1 for i in range(n - 1)}
    after = executor_stats()
    assert after["grouped"] - before["grouped"] >= 20
    assert after["restarted_unstarted"] > before["restarted_unstarted"]  # siblings not yet started ran elsewhere


def test_cancel_the_running_member_of_a_group(rl, settings, tmp_path, unique):
    items = [(str(tmp_path), 0, 60.0)] + [(str(tmp_path), i, 0.0) for i in range(1, 8)]
    handles = submit_held(rl, settings, mark, f"gr-{unique}", items)
    wait_until(lambda: runs(tmp_path).get(0) == 1, timeout=60, what="the long member to start")
    assert handles[0].cancel().state.value == "CANCELLED"
    for h in handles[1:]:
        assert h.wait(timeout=60).state.value == "SUCCEEDED"
    assert runs(tmp_path) == {i: 1 for i in range(8)}  # the sibling behind it ran once, elsewhere
    wait_until(lambda: not running_anywhere(handles), timeout=30, what="the killed group to end")


def test_a_long_member_no_longer_holds_back_the_siblings_waiting_behind_it(rl, settings, tmp_path, unique):
    # The first member of a group hangs for a minute, untimed, or timed with a longer timeout.
    # Its siblings do not wait for it: they move to another Ray task and end while it still runs.
    import ray

    n = 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    assert _group_members(settings, n) >= 4
    for kind, fn in (("untimed", mark), ("timed", mark.options(timeout=120))):
        runs_dir = tmp_path / kind
        runs_dir.mkdir()
        before = executor_stats()
        items = [(str(runs_dir), 0, 60.0)] + [(str(runs_dir), i, 0.0) for i in range(1, n)]
        handles = submit_held(rl, settings, fn, f"gl{kind[0]}-{unique}", items)
        for h in handles[1:]:
            assert h.wait(timeout=30).state.value == "SUCCEEDED", kind
        assert handles[0].record().state.value == "RUNNING", kind
        assert runs(runs_dir) == {i: 1 for i in range(n)}, kind
        assert executor_stats()["moved_waiting"] > before.get("moved_waiting", 0), kind
        assert handles[0].cancel().state.value == "CANCELLED"
        wait_until(lambda hs=handles: not running_anywhere(hs), timeout=30, what="the cancelled member's group to end")


def test_a_worker_dying_in_a_group_retries_only_its_task(rl, settings, tmp_path, unique):
    items = [(str(tmp_path), i) for i in range(8)]
    handles = submit_held(rl, settings, die_once, f"gd-{unique}", items)
    assert [h.result(timeout=120) for h in handles] == list(range(8))
    first = handles[0].record()
    assert first.attempt == 1 and first.attempts[0].state == "FAILED"
    seen = runs(tmp_path)
    assert seen[0] == 2 and all(seen[i] == 1 for i in range(1, 8)), seen
    assert all(h.record().attempt == 0 for h in handles[1:])


def test_a_worker_dying_under_a_wide_grant_fails_no_sibling_it_never_started(rl, settings, tmp_path, unique):
    # Once its executor knows the task name to be quick, a group's worker gets leave to start
    # several members at once. The first dies: the siblings it had leave for but never started
    # run again as the same attempt, not as a retry of one that failed.
    warm = tmp_path / "warm"
    warm.mkdir()
    for n in range(2):
        handles = submit_held(rl, settings, die_once, f"gw{n}-{unique}", [(str(warm), i, -1) for i in range(8)])
        assert [h.result(timeout=120) for h in handles] == list(range(8))
    dying = tmp_path / "dying"
    dying.mkdir()
    handles = submit_held(rl, settings, die_once, f"gx-{unique}", [(str(dying), i) for i in range(8)])
    assert [h.result(timeout=120) for h in handles] == list(range(8))
    assert handles[0].record().attempt == 1
    assert runs(dying) == {0: 2, **{i: 1 for i in range(1, 8)}}
    assert [h.record().attempt for h in handles[1:]] == [0] * 7


def test_a_worker_dying_just_after_its_siblings_ended_runs_no_attempt_twice(rl, settings, tmp_path, unique):
    # The last member of the first group kills its worker an instant after its siblings ended,
    # before a report of their ends would have been due. None of them may run again as the
    # attempt that ran; the one that died is tried again as a new attempt.
    size = _group_members(settings, 16)
    assert size >= 4
    items = [(str(tmp_path), i, size - 1) for i in range(16)]
    handles = submit_held(rl, settings, die_once, f"gs-{unique}", items)
    assert [h.result(timeout=120) for h in handles] == list(range(16))
    attempts = [h.record().attempt for h in handles]
    seen = runs(tmp_path)
    assert all(seen[i] <= attempts[i] + 1 for i in range(16)), (seen, attempts)
    assert attempts[size - 1] == 1 and seen[size - 1] == 2, (seen, attempts)


@raylane.task(name="test.group.stubborn")
def stubborn(runs_dir: str, key: int, seconds: float) -> int:
    """Like ``mark``, but it ignores an interrupt: stopping it takes the kill of its worker."""
    Path(runs_dir, f"{key}.{uuid.uuid4().hex}").touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(0.05)
    return key


@raylane.task(name="test.group.nap")
def nap(seconds: float) -> float:
    if seconds:
        time.sleep(seconds)
    return seconds


def test_members_blocked_on_every_cpu_lend_them_to_the_siblings_behind(rl, settings, tmp_path, unique):
    # As many groups as the cluster has CPUs, each led by a member that sleeps for a minute: every
    # CPU is held by a member that does not use it. The quick members behind them still run, on
    # the CPUs the sleeping ones lend, and end while those sleep on.
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = 8
    assert _group_members(settings, size * cpus) == size
    before = executor_stats()
    items = [(str(tmp_path), g * size + i, 60.0 if i == 0 else 0.0) for g in range(cpus) for i in range(size)]
    handles = submit_held(rl, settings, mark, f"gb-{unique}", items)
    sleepers = handles[::size]
    quick = [h for h in handles if h not in sleepers]
    for h in quick:
        assert h.wait(timeout=30).state.value == "SUCCEEDED"
    assert [h.record().state.value for h in sleepers] == ["RUNNING"] * cpus
    assert executor_stats()["lent"] >= before.get("lent", 0) + cpus
    assert runs(tmp_path) == {i: 1 for i in range(size * cpus)}
    raylane.cancel_many([h.id for h in sleepers])
    wait_until(lambda: not running_anywhere(handles), timeout=30, what="the cancelled sleepers' groups to end")


def test_a_group_waiting_for_a_cpu_that_sleepers_hold_runs_on_their_loan(rl, settings, tmp_path, unique):
    # A full group per CPU, each led by a member that sleeps for a minute, and one more group of
    # quick tasks, which Ray holds until a CPU is free. Once the sleepers' siblings are done on
    # the CPUs the sleepers lend, a lent CPU goes on to the waiting group: every quick task ends
    # while the sleepers sleep on.
    import ray

    from raylane.actors.grouping import GROUP_MAX

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n = GROUP_MAX * cpus + GROUP_MAX // 2  # one handover: a batch of the consumer's
    assert _group_members(settings, n) == GROUP_MAX
    before = executor_stats()
    items = [(str(tmp_path), i, 60.0 if i < GROUP_MAX * cpus and i % GROUP_MAX == 0 else 0.0) for i in range(n)]
    handles = submit_held(rl, settings, mark, f"gl-{unique}", items)
    sleepers = [h for h, item in zip(handles, items, strict=True) if item[2]]
    quick = [h for h in handles if h not in sleepers]
    try:
        for h in quick:
            assert h.wait(timeout=40).state.value == "SUCCEEDED"
        assert [h.record().state.value for h in sleepers] == ["RUNNING"] * cpus
        assert executor_stats()["loans_passed_on"] >= before.get("loans_passed_on", 0) + 1
        assert runs(tmp_path) == {i: 1 for i in range(n)}  # the sleepers too: they mark as they start
    finally:
        raylane.cancel_many([h.id for h in sleepers])
    wait_until(lambda: not running_anywhere(handles), timeout=30, what="the cancelled sleepers' groups to end")


def test_a_quick_task_ends_while_its_slow_sibling_runs(rl, settings, unique):
    # Two groups of eight; in the second, seven tasks that take microseconds, then a slow one.
    # The quick ones' ends are reported while the slow one still runs, not after it.
    handles = submit_held(rl, settings, nap, f"gq-{unique}", [(0.0,)] * 15 + [(30.0,)])
    slow = handles[-1]
    for h in handles[:-1]:
        assert h.wait(timeout=60).state.value == "SUCCEEDED"
    assert slow.record().state.value == "RUNNING", "the quick tasks' ends waited for their slow sibling"
    slow.cancel()
    wait_until(lambda: not running_anywhere(handles), timeout=30, what="the cancelled group to end")


def _group_members(settings, n: int) -> int:
    """How many of ``n`` tasks handed over at once share a Ray task on this cluster."""
    import ray

    from raylane.actors.grouping import group_size

    return group_size(n, max(1, int(ray.cluster_resources().get("CPU", 1))))


def test_timed_tasks_run_grouped_each_once(rl, settings, tmp_path, unique):
    before = executor_stats()
    items = [(str(tmp_path), i, 0.0) for i in range(40)]
    handles = submit_held(rl, settings, mark.options(timeout=30), f"gt-{unique}", items)
    assert [h.result(timeout=120) for h in handles] == [i * 2 for i in range(40)]
    assert runs(tmp_path) == {i: 1 for i in range(40)}
    after = executor_stats()
    assert after["groups"] > before["groups"] and after["grouped"] - before["grouped"] >= 20, (before, after)


def test_a_timed_member_waiting_behind_its_siblings_is_not_timed_out(rl, settings, tmp_path, unique):
    # Each task takes 1 s of its 4 s; the sixth of a group waits 5 s for its turn. Its clock
    # starts when it starts, so it succeeds as it would alone. (3 s to spare for its end to be
    # written: a loaded CI machine's writes have stalled 2.6 s.)
    import ray

    n = 6 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    assert _group_members(settings, n) >= 6
    items = [(str(tmp_path), i, 1.0) for i in range(n)]
    handles = submit_held(rl, settings, work.options(timeout=4), f"gtw-{unique}", items)
    records = [h.wait(timeout=120) for h in handles]
    # On failure, where each member's time went (seconds after its submit).
    assert [r.state.value for r in records] == ["SUCCEEDED"] * n, [(r.state.value, r.error, r.hops) for r in records]
    waited = max(r.hops["began"] - r.hops["claimed"] for r in records)
    assert waited > 4, f"no task waited longer than its timeout in its group (at most {waited:.2f} s)"
    assert runs(tmp_path) == {i: 1 for i in range(n)}


def test_a_timed_member_keeps_its_wait_through_a_keeper_restart(rl, settings, tmp_path, unique):
    # As above, but the StatusKeeper restarts while the members wait their turn: the new keeper
    # takes each member's allowance to wait from its record, so the last of a group, beginning
    # 6 s after its claim, is not timed out 3 s after it. (Each member runs 2 s, so the group
    # outlasts the restart.)
    import ray

    n = 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    assert _group_members(settings, n) >= 4
    items = [(str(tmp_path), i, 2.0) for i in range(n)]
    handles = submit_held(rl, settings, mark.options(timeout=3), f"gtr-{unique}", items)
    wait_until(
        lambda: all(r.state.value != "PENDING" for r in rl.get_many([h.id for h in handles]).values()),
        timeout=60,
        what="the claims of the group",
    )
    restart_keeper()
    records = [h.wait(timeout=120) for h in handles]
    assert [r.state.value for r in records] == ["SUCCEEDED"] * n, [(r.state.value, r.error) for r in records]
    assert runs(tmp_path) == {i: 1 for i in range(n)}


def test_a_timed_member_past_its_timeout_is_stopped_and_its_siblings_are_not(rl, settings, tmp_path, unique):
    # The second of a group hangs past its 3 s timeout: it is timed out 3 s after it began; the
    # first keeps its result, and those behind it run in another Ray task, each once.
    import ray

    n = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = _group_members(settings, n)
    assert size >= 2
    before = executor_stats()
    items = [(str(tmp_path), i, 60.0 if i == 1 else 0.2) for i in range(n)]
    handles = submit_held(rl, settings, mark.options(timeout=3), f"gtk-{unique}", items)
    hung = handles[1].wait(timeout=60)
    assert hung.state.value == "TIMED_OUT" and hung.error_type == "TimeoutError"
    [began] = [f.stat().st_mtime for f in tmp_path.iterdir() if f.name.startswith("1.")]
    assert 3.0 <= hung.finished_at.timestamp() - began < 8.0  # its own clock, not its group's
    for h in handles[:1] + handles[2:]:
        assert h.wait(timeout=60).state.value == "SUCCEEDED"
    assert runs(tmp_path) == {i: 1 for i in range(n)}
    wait_until(lambda: not running_anywhere(handles), timeout=30, what="the stopped group to end")
    if size > 2:  # members behind the hung one were started again elsewhere
        assert executor_stats()["restarted_unstarted"] > before["restarted_unstarted"]


@raylane.task(name="test.group.sleeper")
def sleeper(runs_dir: str, key: int, seconds: float) -> int:
    """Like ``mark``, in one blocking call; an interrupt that ends it is noted beside ``runs_dir``."""
    Path(runs_dir, f"{key}.{uuid.uuid4().hex}").touch()
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        Path(runs_dir).with_name(f"interrupted.{key}").touch()
        raise
    return key


def test_a_timed_member_blocked_in_a_call_is_interrupted_and_its_worker_spared(rl, settings, tmp_path, unique):
    # The second of a group sleeps past its 3 s timeout in one call. The interrupt ends the
    # sleep, so the group's worker is not killed, and the siblings all run once.
    import ray

    n = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    assert _group_members(settings, n) >= 2
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    before = executor_stats()["workers_killed"]
    items = [(str(runs_dir), i, 60.0 if i == 1 else 0.2) for i in range(n)]
    handles = submit_held(rl, settings, sleeper.options(timeout=3), f"gti-{unique}", items)
    assert handles[1].wait(timeout=60).state.value == "TIMED_OUT"
    wait_until(lambda: (tmp_path / "interrupted.1").exists(), timeout=20, what="the member to hear the interrupt")
    for h in handles[:1] + handles[2:]:
        assert h.wait(timeout=60).state.value == "SUCCEEDED"
    assert runs(runs_dir) == {i: 1 for i in range(n)}
    # A worker is killed before its group ends, never after: once none runs, none was.
    wait_until(lambda: not running_anywhere(handles), timeout=30, what="the group to end")
    assert executor_stats()["workers_killed"] == before


def test_a_member_killed_with_its_worker_leaves_its_unstarted_siblings_to_run_again(rl, settings, tmp_path, unique):
    # Quick members get leave to start several at a time; the fourth hangs past its timeout and
    # ignores the interrupt, so it is killed with its worker. The siblings granted behind it
    # never started: they run again elsewhere and succeed, and none runs twice.
    import ray

    n = 8 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    assert _group_members(settings, n) >= 8
    items = [(str(tmp_path), i, 60.0 if i == 3 else 0.0) for i in range(n)]
    handles = submit_held(rl, settings, stubborn.options(timeout=3), f"gk-{unique}", items)
    records = [h.wait(timeout=90) for h in handles]
    assert records[3].state.value == "TIMED_OUT"
    others = [(i, r.state.value, r.error_type) for i, r in enumerate(records) if i != 3]
    assert all(state == "SUCCEEDED" for _, state, _ in others), others
    assert runs(tmp_path) == {i: 1 for i in range(n)}
    wait_until(lambda: not running_anywhere(handles), timeout=30, what="the killed group to end")
