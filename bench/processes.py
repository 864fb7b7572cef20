"""CPU time by process over a window, named by role: each raylane actor, the Ray workers that run
the tasks, Ray's own processes, OpenSearch, Kafka and the bench's driver.

Read from /proc, so it sees the processes of this machine only (on the local stack, all of
them). A process that ends inside the window takes its CPU with it; ``other`` is what the
machine used beyond the processes named, so the parts add up to the machine's total.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def process_cpu_ms(pid: int) -> float | None:
    """User and system CPU time of process ``pid`` (all its threads) so far; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it are split.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_MS


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def role_of(pid: int, actors: dict[int, str]) -> str | None:
    """The role of process ``pid``: an actor's name (``actors``: pid to name), or one of
    ``ray workers``, ``ray system``, ``opensearch``, ``kafka``, ``driver``; None for the rest."""
    if pid in actors:
        return actors[pid]
    if pid == os.getpid():
        return "driver"
    cmd = _cmdline(pid)
    if not cmd:
        return None
    if cmd.startswith("ray::"):
        return "ray workers"
    if "org.opensearch.bootstrap.OpenSearch" in cmd:
        return "opensearch"
    if "kafka.Kafka" in cmd:
        return "kafka"
    if any(p in cmd for p in ("/raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "ray/_private")):
        return "ray system"
    return None


def actor_pids(namespace: str) -> dict[int, str]:
    """The process of each live actor of ``namespace``, by pid."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        limit=1000,
        detail=True,
        filters=[("ray_namespace", "=", namespace), ("state", "=", "ALIVE")],
    )
    return {a.pid: a.name for a in actors if a.pid and a.name}


def snapshot(actors: dict[int, str]) -> dict[int, tuple[str, float]]:
    """CPU so far of every process with a role, by pid."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        role = role_of(pid, actors)
        cpu = process_cpu_ms(pid) if role else None
        if role and cpu is not None:
            out[pid] = (role, cpu)
    return out


class RoleMeter:
    """CPU milliseconds by role over a ``with`` block; ``by_role`` after it. Processes that start
    inside the window count from zero."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.by_role: dict[str, float] = {}
        self.workers_started = 0  # Ray worker processes that started inside the window

    def __enter__(self) -> RoleMeter:
        self._actors = actor_pids(self.namespace)
        self._before = snapshot(self._actors)
        return self

    def __exit__(self, *exc) -> None:
        actors = {**self._actors, **actor_pids(self.namespace)}
        after = snapshot(actors)
        by_role: dict[str, float] = {}
        for pid, (role, cpu) in after.items():
            _, before = self._before.get(pid, (role, 0.0))
            by_role[role] = by_role.get(role, 0.0) + max(0.0, cpu - before)
        self.by_role = by_role
        new = set(after) - set(self._before)
        self.workers_started = sum(after[pid][0] == "ray workers" for pid in new)


def per_task(by_role: dict[str, float], machine_ms: float, n: int) -> dict[str, float]:
    """``by_role`` as CPU ms per task, with ``other`` (the machine's CPU no named process used),
    largest first."""
    named = sum(by_role.values())
    rows = dict(by_role, other=max(0.0, machine_ms - named))
    return {k: round(v / n, 4) for k, v in sorted(rows.items(), key=lambda kv: -kv[1])}


def keeper_cpu_ms(by_role: dict[str, float]) -> list[float]:
    """Each StatusKeeper's CPU milliseconds, in keeper order (empty without keepers)."""
    keepers = sorted((k for k in by_role if k.startswith("StatusKeeper")), key=lambda k: (len(k), k))
    return [by_role[k] for k in keepers]


def shares(values: list[float]) -> list[float]:
    """Each value's share of their sum (empty when the sum is 0)."""
    total = sum(values)
    return [round(v / total, 3) for v in values] if total else []


def keeper_shares(by_role: dict[str, float]) -> list[float]:
    """Each StatusKeeper's share of all keepers' CPU, in keeper order (empty without keepers)."""
    return shares(keeper_cpu_ms(by_role))
