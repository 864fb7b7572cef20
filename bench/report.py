"""Writes a run's results: ``latest.json``, a markdown table (``latest.md``) and a plot (``latest.png``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


SCALE_TARGET = 100_000  # tasks a second that the estimate sizes the cluster for
BUSY = 0.6  # the share of a core a process is planned to use, leaving room for bursts


def scale_estimate(cpu_ms_per_task: dict[str, float], target: int = SCALE_TARGET) -> list[tuple[str, float, float]]:
    """For each process (merging the numbered actors of one kind): the cores ``target`` tasks a
    second need at the measured CPU per task, and how many processes that is at ``BUSY`` of a
    core each (a Python actor uses one core at most)."""
    merged: dict[str, float] = {}
    for name, ms in cpu_ms_per_task.items():
        kind = name.split("-")[0] if name[-1:].isdigit() else name
        merged[kind] = merged.get(kind, 0.0) + ms
    out = []
    for kind, ms in sorted(merged.items(), key=lambda kv: -kv[1]):
        cores = target * ms / 1000
        out.append((kind, round(cores, 1), round(cores / BUSY, 1)))
    return out


def _rounds(rounds: dict | None) -> list[str]:
    """The ratios of a run in rounds, each round's beside the median (none without rounds)."""
    if not rounds:
        return []
    lines = [
        "",
        f"## rounds ({rounds['n']}, each ratio taken within one round)",
        "",
        "| ratio | median | min | max | per round |",
        "|---|---|---|---|---|",
    ]
    for key, within in rounds["ratios"].items():
        per = ", ".join(_fmt(v) for v in within["per_round"])
        lines.append(f"| `{key}` | {_fmt(within['median'])} | {_fmt(within['min'])} | {_fmt(within['max'])} | {per} |")
    return lines


def markdown(r: dict) -> str:
    """The results as markdown: headline against targets, then every part."""
    from raylane.bench.suite import TARGETS

    lines = [
        f"# raylane benchmarks ({r['mode']} run, {r['started_at'][:19]} UTC)",
        "",
        f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, Ray {r['machine']['ray']}.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in (
        "raylane_tasks_per_s",
        "raylane_results_per_s",
        "raylane_timed_tasks_per_s",
        "timed_ratio",
        "ray_tasks_per_s",
        "celery_tasks_per_s",
        "dramatiq_tasks_per_s",
        "cpu_ms_per_task",
        "cpu_ms_per_task_above_rest",
        "os_requests_per_transition",
        "rtt_p50_ms",
        "rtt_p99_ms",
        "rtt_floor_ms",
        "kafka_bytes_per_task",
        "lookup_growth",
        "search_growth",
        "busiest_keeper_share",
        "main_job_tasks_per_s",
    ):
        lines.append(f"| `{key}` | {_fmt(r.get(key))} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for key, label, target, op in TARGETS:
        v = r.get(key)
        t = target(r)
        met = "–" if v is None else ("yes" if (v >= t if op == ">=" else v <= t) else "no")
        lines.append(f"| {label} | {_fmt(v)} | {met} |")
    lines += _rounds(r.get("rounds"))
    for part in ("ray", "celery", "dramatiq", "rtt", "floor", "burst", "timed_burst", "job", "keepers"):
        if part in r:
            lines += ["", f"## {part}", "", "| | |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v) if not isinstance(v, dict) else json.dumps(v)} |" for k, v in r[part].items()]
    measured = ("burst", "timed_burst", "job", "keepers")
    bursts = [p for p in measured if (r.get(p) or {}).get("cpu_ms_per_task_by_process")]
    if bursts:
        by = {p: r[p]["cpu_ms_per_task_by_process"] for p in bursts}
        names = list(dict.fromkeys(k for p in bursts for k in by[p]))
        lines += [
            "",
            "## CPU per task by process (ms)",
            "",
            "| process | " + " | ".join(bursts) + " |",
            "|---|" + "---|" * len(bursts),
        ]
        lines += [f"| {n} | " + " | ".join(_fmt(by[p].get(n)) for p in bursts) + " |" for n in names]
    burst = r.get("burst") or {}
    if burst.get("cpu_ms_per_task_by_process"):
        lines += ["", f"## What {SCALE_TARGET:,} tasks/s would take, from the burst's CPU per task", ""]
        lines += [
            "| process | CPU ms per task | cores | processes at 60 % of a core |",
            "|---|---|---|---|",
        ]
        for name, cores, processes in scale_estimate(burst["cpu_ms_per_task_by_process"]):
            lines.append(f"| {name} | {_fmt(cores * 1000 / SCALE_TARGET)} | {_fmt(cores)} | {_fmt(processes)} |")
    soak = r.get("soak")
    if soak:
        lines += [
            "",
            f"## Soak: memory over {soak['tasks']:,} timed tasks at {soak['rate_per_s']:g}/s (RSS, MiB)",
            "",
            "| process | start | end (after 10 s idle) | growth per 100,000 tasks |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {_fmt(soak['start_mb'].get(k))} | {_fmt(v)} | {_fmt(soak['growth_mb_per_100k'].get(k))} |"
            for k, v in soak["end_mb"].items()
            if not k.endswith(" processes")
        ]
    for part, title in (
        ("lookup", "Lookup latency as the index grows (ms)"),
        ("scale", "Throughput by consumers and partitions"),
    ):
        rows = r.get(part) or []
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row if not isinstance(row[k], dict)))
            lines += ["", f"## {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> bool:
    """Throughput of the three systems, lookup latency by index size, and consumer scaling; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = ["raw Ray", "Celery + Redis", "raylane"]
    values = [r.get("ray_tasks_per_s") or 0, r.get("celery_tasks_per_s") or 0, r.get("raylane_tasks_per_s") or 0]
    bars = axes[0].bar(names, values, color=["#8c8c8c", "#4e79a7", "#e15759"])
    axes[0].bar_label(bars, fmt="%.0f")
    axes[0].set_title("no-op tasks per second, end to end")
    lookup = r.get("lookup") or []
    if lookup:
        xs = [row["records"] for row in lookup]
        for key, label in (
            ("get_p50_ms", "get p50"),
            ("get_p99_ms", "get p99"),
            ("search_p50_ms", "search p50"),
            ("search_p99_ms", "search p99"),
            ("text_search_p50_ms", "text search p50"),
        ):
            axes[1].plot(xs, [row[key] for row in lookup], marker="o", label=label)
        axes[1].set_xscale("log")
        axes[1].set_xlabel("records in the index")
        axes[1].set_ylabel("ms")
        axes[1].legend()
    axes[1].set_title("lookup latency")
    scale = [row for row in (r.get("scale") or []) if "tasks_per_s" in row]
    if scale:
        axes[2].plot([row["consumers"] for row in scale], [row["tasks_per_s"] for row in scale], marker="o")
        axes[2].set_xticks([row["consumers"] for row in scale])
        axes[2].set_xlabel("consumers = partitions")
        axes[2].set_ylim(bottom=0)  # from zero, so that run-to-run noise does not look like a trend
    axes[2].set_title("raylane tasks/s by consumers")
    fig.suptitle(f"raylane benchmarks, {r['mode']} run, {r['started_at'][:16]} UTC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(r: dict, out_dir: Path) -> None:
    """Write latest.json, latest.md and latest.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(r, indent=2) + "\n")
    (out_dir / "latest.md").write_text(markdown(r))
    plot(r, out_dir / "latest.png")
