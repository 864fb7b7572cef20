"""The soak: steady work for a long while, and the memory (RSS) of every process of the stack.

Timed no-op tasks (the main job's kind) are submitted at a steady rate, in chunks, and every
``sample_every`` tasks the resident memory of each process is read from ``/proc``: raylane's
actors, Ray's own processes (GCS, raylet, dashboard, its agents), Kafka and OpenSearch. The
report is each process's RSS at the start and the end, and its growth per 100,000 tasks.
Nothing is asserted: a process that keeps growing is the finding.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import raylane

# What a process is, from its command line: the first pattern found names it.
_KINDS = (
    ("ray::RequestHandler", "RequestHandler"),
    ("ray::StatusKeeper", "StatusKeeper"),
    ("ray::Executor", "Executor"),
    ("ray::QueueConsumer", "QueueConsumer"),
    ("gcs_server", "gcs_server"),
    ("raylet", "raylet"),
    ("ray::DashboardAgent", "DashboardAgent"),
    ("dashboard/dashboard.py", "dashboard"),
    ("ray::RuntimeEnvAgent", "RuntimeEnvAgent"),
    ("ray::JobSupervisor", "JobSupervisor"),
    ("ray::IDLE", "Ray task workers"),
    ("ray::raylane:", "Ray task workers"),
    ("ray/_private/log_monitor.py", "log_monitor"),
    ("ray.util.client.server", "ray_client_server"),
    ("kafka.Kafka", "kafka"),
    ("org.opensearch.bootstrap.OpenSearch", "opensearch"),
    ("raylane.actors.service", "service job"),
)


@raylane.task(name="bench.soak_noop", timeout=60)
def soak_noop(i: int) -> int:
    """Return the argument; a timeout, so each runs as one Ray task like the main job's."""
    return i


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _rss_mb(pid: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_by_process() -> dict[str, float]:
    """RSS in MiB of each process of the stack, by kind (``Executor``, ``gcs_server``, ...); where
    several processes share a kind (QueueConsumers, Ray's task workers) they are summed, and
    ``<kind> processes`` says how many there were."""
    out: dict[str, float] = {}
    count: dict[str, int] = {}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        cmd = _cmdline(pid)
        kind = next((name for pattern, name in _KINDS if pattern in cmd), None)
        rss = _rss_mb(pid) if kind is not None else None
        if kind is not None and rss is not None:
            out[kind] = round(out.get(kind, 0.0) + rss, 1)
            count[kind] = count.get(kind, 0) + 1
    out.update({f"{k} processes": n for k, n in count.items() if n > 1 or k in ("Ray task workers", "QueueConsumer")})
    return out


def bench_soak(
    tasks: int, rate_per_s: float = 250.0, chunk: int = 200, sample_every: int = 10_000, progress: bool = True
) -> dict:
    """Run ``tasks`` timed no-op tasks at ``rate_per_s``, sampling every process's RSS every
    ``sample_every`` tasks; returns the samples and each process's growth per 100,000 tasks.
    Its records and topic are removed at the end, as a burst's are."""
    from raylane.bench.suite import _bar, _os_client, _remove_burst, say
    from raylane.client import _connection

    queue = f"soak-{uuid.uuid4().hex[:8]}"
    fn = soak_noop.options(queue=queue)
    warm = fn.submit_many([(-j,) for j in range(1, 201)])  # the topic and the worker pool, warm
    for h in warm:
        h.result(timeout=120)
    ids = [h.id for h in warm]
    samples: list[dict[str, Any]] = [{"tasks": 0, "rss_mb": rss_by_process()}]
    bar = _bar(tasks, "soak", progress)
    began = time.monotonic()
    last: list = []
    sent = 0
    while sent < tasks:
        n = min(chunk, tasks - sent)
        last = fn.submit_many([(sent + j,) for j in range(n)])
        ids += [h.id for h in last]
        sent += n
        bar.update(n)
        if sent % sample_every < chunk or sent == tasks:
            samples.append({"tasks": sent, "rss_mb": rss_by_process()})
        pause = began + sent / rate_per_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    bar.close()
    for h in last:
        h.wait(timeout=300)
    elapsed = time.monotonic() - began
    time.sleep(10)  # idle a moment: what is still held after the work is what grew
    samples.append({"tasks": sent, "idle_s": 10, "rss_mb": rss_by_process()})
    start, end = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    growth = {
        k: round((end[k] - start.get(k, 0.0)) * 100_000 / tasks, 1) for k in sorted(end) if not k.endswith(" processes")
    }
    say(f"soak: {tasks} tasks in {elapsed:.0f}s; growth per 100k tasks (MiB): {growth}")
    _remove_burst(_os_client(), _connection().settings, queue, ids)
    return {
        "queue": queue,
        "tasks": tasks,
        "rate_per_s": rate_per_s,
        "seconds": round(elapsed, 1),
        "samples": samples,
        "start_mb": start,
        "end_mb": end,
        "growth_mb_per_100k": growth,
    }
