"""A randomized fault test: a seeded schedule of faults under a mixed workload, then a history check.

Faults: kill -9 of a worker running a task, a kill of each actor (Ray restarts it), SIGSTOP
and SIGCONT of the Executor, restarts of Kafka and of OpenSearch. Workload: successes,
failures that are retried, cancels and timeouts. Every run of a task logs a token of its
own with times to a file, and a watcher samples every task's ``_version``. The checker then
asks of the whole history:

- exactly one terminal state per task (its version is ``attempt × 10 + 3``, and it is over);
- at most one run per attempt, and no two runs of a task overlap in time;
- no run starts after an accepted cancel, and one running then stops within the lease period
  (a cancel is an interrupt, then a kill a second later; if the Executor is frozen meanwhile,
  the worker's fence ends the run before the lease can lapse);
- ``_version`` never decreases.

CI runs a short seed; ``make soak SEED=7 MINUTES=30`` runs it long (``CHAOS_SEED``, ``CHAOS_MINUTES``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray
from conftest import wait_until
from test_faults import VersionWatch

import raylane
from raylane.actors.fencing import LEASE_TTL_S
from raylane.errors import RaylaneError, TaskAlreadyFinished
from raylane.states import TaskState

SEED = int(os.environ.get("CHAOS_SEED", "1"))
MINUTES = float(os.environ.get("CHAOS_MINUTES", "0"))  # 0: the short CI schedule
FAULTS = ("kill_worker", "kill_actor", "freeze_executor", "restart_kafka", "restart_opensearch")
CANCEL_BOUND_S = LEASE_TTL_S  # the latest a run going at an accepted cancel may still write
WATCHED = 1000  # tasks whose _version is sampled all along (the newest)


@raylane.task(name="test.chaos.work", max_retries=3, retry_backoff=0.2, retry_backoff_max=1.0)
def work(log_dir: str, key: str, seconds: float, fail_runs: int) -> str:
    """Log this run (a token of its own, the pid, and times) while working ``seconds``; the first
    ``fail_runs`` runs of ``key`` fail."""
    token = uuid.uuid4().hex[:8]
    path = Path(log_dir, f"{key}.log")
    end = time.time() + seconds
    with open(path, "a") as f:
        f.write(f"{token} {os.getpid()} {time.time():.3f}\n")
        f.flush()
        while time.time() < end:
            time.sleep(0.1)
            f.write(f"{token} {os.getpid()} {time.time():.3f}\n")
            f.flush()
    runs = len({line.split()[0] for line in path.read_text().splitlines()})
    if runs <= fail_runs:
        raise ConnectionError(f"run {runs} of {key} fails on purpose")
    return key


@dataclass
class Workload:
    """Submits a mix of tasks until stopped; remembers what was accepted and which cancels won."""

    log_dir: Path
    rnd: random.Random
    ids: list = field(default_factory=list)  # accepted ids in order, watched while the run goes on
    handles: dict = field(default_factory=dict)  # task id -> (handle, kind, key)
    cancelled_at: dict = field(default_factory=dict)  # task id -> wall time the cancel was accepted
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.rnd.uniform(0.1, 0.4)):
            kind = self.rnd.choice(("ok", "ok", "retry", "cancel", "timeout"))
            key = uuid.uuid4().hex[:12]
            try:
                if kind == "ok":
                    h = work.submit(str(self.log_dir), key, self.rnd.uniform(0.1, 1.5), 0)
                elif kind == "retry":
                    h = work.submit(str(self.log_dir), key, 0.2, 1)
                elif kind == "timeout":
                    h = work.options(timeout=1.5).submit(str(self.log_dir), key, 5.0, 0)
                else:
                    h = work.submit(str(self.log_dir), key, 4.0, 0)
            except RaylaneError:  # a service is down: the submit is refused, nothing was accepted
                self.refused += 1
                continue
            self.handles[h.id] = (h, kind, key)
            self.ids.append(h.id)
            del self.ids[:-WATCHED]  # the watcher samples the newest; older ones have long finished
            if kind == "cancel":
                time.sleep(self.rnd.uniform(0.0, 2.0))
                try:
                    h.cancel()
                    self.cancelled_at[h.id] = time.time()
                except (TaskAlreadyFinished, RaylaneError):
                    pass


def _executor_pid() -> int | None:
    from ray.util.state import list_actors

    found = list_actors(filters=[("name", "=", "Executor"), ("state", "=", "ALIVE")], limit=5)
    return found[0].pid if found else None


def _busy_worker_pids(log_dir: Path) -> list[int]:
    now = time.time()
    pids = []
    for path in log_dir.glob("*.log"):
        lines = path.read_text().splitlines()
        if lines and now - float(lines[-1].split()[2]) < 0.5:
            pids.append(int(lines[-1].split()[1]))
    return pids


def inject(fault: str, rnd: random.Random, stack, log_dir: Path) -> str:
    """Apply one fault and return what was done."""
    if fault == "kill_worker":
        pids = _busy_worker_pids(log_dir)
        if not pids:
            return "kill_worker: no task running"
        pid = rnd.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return f"kill -9 worker {pid}"
    if fault == "kill_actor":
        name = rnd.choice(("Executor", "StatusKeeper", "QueueConsumer-0", "RequestHandler"))
        ray.kill(ray.get_actor(name, namespace="raylane"), no_restart=False)
        return f"kill actor {name}"
    if fault == "freeze_executor":
        pid = _executor_pid()
        if pid is None:
            return "freeze: no executor"
        seconds = rnd.uniform(3, 15)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(pid, signal.SIGCONT)
        return f"SIGSTOP executor {pid} for {seconds:.1f}s"
    service = {"restart_kafka": stack.kafka, "restart_opensearch": stack.opensearch}[fault]
    service.stop(grace_s=10)
    time.sleep(rnd.uniform(1, 5))
    stack.up(only=[service.name])
    return f"restart {service.name}"


def schedule(rnd: random.Random, minutes: float) -> Iterator[str]:
    """The faults to inject, in order: every kind once (shuffled) for the short run, or kinds
    drawn at random until ``minutes`` minutes have passed."""
    if minutes <= 0:
        faults = list(FAULTS)
        rnd.shuffle(faults)
        yield from faults
        return
    end = time.monotonic() + minutes * 60
    while time.monotonic() < end:
        yield rnd.choice(FAULTS)


def _runs(path: Path) -> dict[str, list[float]]:
    """The times each run of a task wrote to its log, by run (its token and worker's pid)."""
    runs: dict[str, list[float]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        token, pid, t = line.split()
        runs.setdefault(f"{token} in pid {pid}", []).append(float(t))
    return runs


def _described(runs: dict[str, list[float]]) -> str:
    """The runs of a task with their times (epoch seconds), to match with Ray's worker logs."""
    return ", ".join(f"{run} {min(ts):.2f}-{max(ts):.2f}" for run, ts in sorted(runs.items(), key=lambda r: r[1]))


def check(store, handles: dict, cancelled_at: dict, log_dir: Path, watch: VersionWatch) -> dict:
    """The history checker; returns a summary, failing on any violation."""
    records = {}
    for task_id, (h, _kind, _key) in handles.items():
        records[task_id] = h.wait(timeout=300)
    watch.stop()
    docs = {d["_id"]: d for d in store.client.mget(index=store.alias, body={"ids": list(records)})["docs"]}
    violations = []
    stop_lags: list[float] = []  # how long runs going at an accepted cancel still wrote
    for task_id, rec in records.items():
        _h, _kind, key = handles[task_id]
        if not rec.finished or docs[task_id]["_version"] != rec.version or rec.version != rec.attempt * 10 + 3:
            violations.append(f"{task_id}: not one terminal state ({rec.state}, version {rec.version})")
        runs = _runs(log_dir / f"{key}.log")
        if len(runs) > rec.attempt + 1:
            violations.append(f"{task_id}: {len(runs)} runs for {rec.attempt + 1} attempt(s): {_described(runs)}")
        spans = sorted((min(ts), max(ts)) for ts in runs.values())
        for (s1, e1), (s2, _e2) in itertools.pairwise(spans):
            if s2 <= e1:
                violations.append(f"{task_id}: runs overlap ({s1:.2f}-{e1:.2f} and one from {s2:.2f})")
        if task_id in cancelled_at and rec.state is TaskState.CANCELLED:
            tc = cancelled_at[task_id]
            if any(s > tc for s, _ in spans):
                violations.append(f"{task_id}: a run started after the accepted cancel")
            lag = max((e - tc for _, e in spans), default=0.0)
            stop_lags.append(max(0.0, lag))
            if lag > CANCEL_BOUND_S:
                violations.append(f"{task_id}: a run went on {lag:.1f}s after the cancel")
    if watch.backwards:
        violations.append(f"_version went backwards: {watch.backwards[:5]}")
    states: dict[str, int] = {}
    for rec in records.values():
        states[rec.state.value] = states.get(rec.state.value, 0) + 1
    lags = sorted(stop_lags)
    summary = {
        "tasks": len(records),
        "states": states,
        "retries": sum(r.attempt for r in records.values()),
        "cancels": len(lags),
        "cancel_stop_p50_s": round(lags[len(lags) // 2], 2) if lags else None,
        "cancel_stop_max_s": round(lags[-1], 2) if lags else None,
        "violations": violations,
    }
    print(f"\nchaos history: {summary}")
    assert not violations, violations
    return summary


@pytest.mark.timeout(1800 + int(MINUTES * 60 * 2))
def test_randomized_faults_keep_every_promise(rl, store, stack, tmp_path):
    from raylane.bench.soak import rss_by_process

    memory_before = rss_by_process()
    rnd = random.Random(SEED)
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    load = Workload(log_dir, random.Random(SEED + 1))
    watch = VersionWatch(store, load.ids)  # samples the ids accepted so far, all along
    load.start()
    done = []
    try:
        wait_until(lambda: len(load.handles) >= 10, timeout=60, what="the workload to start")
        for fault in schedule(rnd, MINUTES):
            time.sleep(rnd.uniform(2, 6))
            done.append(inject(fault, rnd, stack, log_dir))
            print(f"chaos: {done[-1]}", flush=True)
        time.sleep(5)
    finally:
        load.stop()
        stack.up()  # whatever the schedule did, every service is back
    summary = check(store, load.handles, load.cancelled_at, log_dir, watch)
    print(f"chaos: seed {SEED}, faults {done}, refused submits {load.refused}")
    print(f"chaos: memory (RSS, MiB) at start {memory_before}")
    print(f"chaos: memory (RSS, MiB) at end {rss_by_process()}")
    assert summary["tasks"] >= 10
    # The service answers normally afterwards.
    assert work.submit(str(log_dir), "after", 0.1, 0).result(timeout=120) == "after"
