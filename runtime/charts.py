"""Charts of the web page, drawn here as SVG: no chart library, no script, nothing fetched.

``activity`` bins the ends of tasks (``StatusStore.ends``) by time; ``stacked_bars`` and
``lines`` draw them. Every chart has a ``<title>`` and a ``<desc>`` that says in words what it
shows, and colours are picked for contrast on white and told apart by more than hue alone
(every series is also named in the legend, in order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from xml.sax.saxutils import escape

from raylane.store import TaskEnd

# Per state: dark enough for 4.5:1 on white (WCAG AA).
STATE_COLOURS = {
    "SUCCEEDED": "#1a7f37",
    "FAILED": "#b42318",
    "TIMED_OUT": "#9a3412",
    "CANCELLED": "#57606a",
}
LINE_COLOURS = ("#0550ae", "#8250df", "#1a7f37", "#9a3412")
RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400}  # range -> seconds
_BUCKETS = 60  # bars per chart


@dataclass
class Bucket:
    """The tasks that ended within one stretch of time."""

    start: datetime
    ended: dict[str, int] = field(default_factory=dict)  # state -> count
    waits: list[float] = field(default_factory=list)  # seconds from created to started
    runs: list[float] = field(default_factory=list)  # seconds from started to ended


def bucket_seconds(range_s: float) -> int:
    """The width of a bar for a range: about 60 bars, on a round number of seconds."""
    for width in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if range_s / width <= _BUCKETS:
            return width
    return 3600


def activity(ends: Sequence[TaskEnd], now: datetime, range_s: float) -> list[Bucket]:
    """The ends of the last ``range_s`` seconds before ``now``, binned (oldest bucket first)."""
    width = bucket_seconds(range_s)
    first = now.timestamp() - range_s
    first -= first % width
    count = math.ceil((now.timestamp() - first) / width)
    buckets = [Bucket(datetime.fromtimestamp(first + i * width, now.tzinfo)) for i in range(count)]
    for e in ends:
        i = int((e.finished_at.timestamp() - first) // width)
        if not 0 <= i < count:
            continue
        b = buckets[i]
        b.ended[e.state] = b.ended.get(e.state, 0) + 1
        if e.started_at is not None:
            b.waits.append(max(0.0, (e.started_at - e.created_at).total_seconds()))
            b.runs.append(max(0.0, (e.finished_at - e.started_at).total_seconds()))
    return buckets


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ----------------------------------------------------------------- drawing

_W, _H = 720, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 36, 44


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def _label(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:g} s"
    return f"{value:g}"


def _frame(title: str, desc: str, y_max: float, unit: str, times: Sequence[datetime], legend: list[tuple]) -> list:
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-labelledby="t d" font-family="sans-serif" font-size="11">',
        f'<title id="t">{escape(title)}</title><desc id="d">{escape(desc)}</desc>',
        f'<rect width="{_W}" height="{_H}" fill="#ffffff"/>',
        f'<text x="{_LEFT}" y="16" font-size="13" font-weight="bold" fill="#1f2328">{escape(title)}</text>',
    ]
    for i in range(5):
        v = y_max * i / 4
        y = _TOP + plot_h - plot_h * i / 4
        out.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d7de"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#1f2328">{_label(v, unit)}</text>')
    if times:
        step = max(1, len(times) // 6)
        for i in range(0, len(times), step):
            x = _LEFT + plot_w * i / len(times)
            out.append(f'<text x="{x:.1f}" y="{_H - _BOTTOM + 16}" fill="#1f2328">{times[i].strftime("%H:%M")}</text>')
    x = _LEFT
    for name, colour, dashed in legend:
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        out.append(
            f'<line x1="{x}" x2="{x + 18}" y1="{_H - 10}" y2="{_H - 10}" stroke="{colour}" stroke-width="4"{dash}/>'
        )
        out.append(f'<text x="{x + 22}" y="{_H - 6}" fill="#1f2328">{escape(name)}</text>')
        x += 36 + 7.5 * len(name)
    return out


def stacked_bars(title: str, buckets: Sequence[Bucket], states: Sequence[str] = tuple(STATE_COLOURS)) -> str:
    """Tasks ended per bucket, stacked by state."""
    totals = [sum(b.ended.get(s, 0) for s in states) for b in buckets]
    y_max = _nice_max(max(totals, default=0))
    sums = {s: sum(b.ended.get(s, 0) for b in buckets) for s in states}
    desc = f"{sum(totals)} tasks ended: " + ", ".join(f"{n} {s}" for s, n in sums.items() if n) if any(totals) else ""
    legend = [(s, STATE_COLOURS.get(s, "#57606a"), False) for s in states]
    out = _frame(title, desc or "no task ended in this range", y_max, "", [b.start for b in buckets], legend)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    bar_w = plot_w / max(1, len(buckets))
    for i, b in enumerate(buckets):
        y = float(_TOP + plot_h)
        for s in states:
            n = b.ended.get(s, 0)
            if not n:
                continue
            h = plot_h * n / y_max
            y -= h
            out.append(
                f'<rect x="{_LEFT + i * bar_w + 1:.1f}" y="{y:.1f}" width="{max(1.0, bar_w - 2):.1f}" '
                f'height="{h:.1f}" fill="{STATE_COLOURS.get(s, "#57606a")}"><title>{b.start:%H:%M:%S} '
                f"{n} {s}</title></rect>"
            )
    out.append("</svg>")
    return "\n".join(out)


def lines(title: str, times: Sequence[datetime], series: Mapping[str, Sequence[float | None]], unit: str = "s") -> str:
    """One line per series over the buckets' times; a bucket without a value breaks the line."""
    values = [v for vs in series.values() for v in vs if v is not None]
    y_max = _nice_max(max(values, default=0.0))
    legend = [(name, LINE_COLOURS[i % len(LINE_COLOURS)], i % 2 == 1) for i, name in enumerate(series)]
    desc = (
        "; ".join(
            f"{name}: latest {_label(next((v for v in reversed(vs) if v is not None), 0.0), unit)}"
            for name, vs in series.items()
        )
        if values
        else "no task ended in this range"
    )
    out = _frame(title, desc, y_max, unit, times, legend)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    step = plot_w / max(1, len(times))
    for i, (_name, vs) in enumerate(series.items()):
        colour, dashed = legend[i][1], legend[i][2]
        runs: list[list[str]] = [[]]
        for j, v in enumerate(vs):
            if v is None:
                runs.append([])
                continue
            runs[-1].append(f"{_LEFT + step * (j + 0.5):.1f},{_TOP + plot_h - plot_h * v / y_max:.1f}")
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        for points in runs:
            if len(points) == 1:
                x, y = points[0].split(",")
                out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
            elif points:
                out.append(
                    f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
                )
    out.append("</svg>")
    return "\n".join(out)


def bars(title: str, values: dict[str, dict[str, int]], series: Sequence[str], colours: Sequence[str]) -> str:
    """Grouped bars: per key (a queue), one bar per series, side by side."""
    keys = list(values)
    y_max = _nice_max(max((values[k].get(s, 0) for k in keys for s in series), default=0))
    legend = [(s, colours[i % len(colours)], False) for i, s in enumerate(series)]
    desc = "; ".join(f"{k}: " + ", ".join(f"{values[k].get(s, 0)} {s}" for s in series) for k in keys)
    out = _frame(title, desc or "no queue has a backlog", y_max, "", [], legend)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    group_w = plot_w / max(1, len(keys))
    bar_w = group_w * 0.8 / max(1, len(series))
    for i, k in enumerate(keys):
        x0 = _LEFT + i * group_w + group_w * 0.1
        for j, s in enumerate(series):
            n = values[k].get(s, 0)
            h = plot_h * n / y_max
            out.append(
                f'<rect x="{x0 + j * bar_w:.1f}" y="{_TOP + plot_h - h:.1f}" width="{max(1.0, bar_w - 1):.1f}" '
                f'height="{h:.1f}" fill="{colours[j % len(colours)]}"><title>{escape(k)}: {n} {s}</title></rect>'
            )
        out.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle" '
            f'fill="#1f2328">{escape(k[:24])}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def window(now: datetime, range_name: str) -> tuple[datetime, float]:
    """The start of a named range (``RANGES``; 1h if unknown) before ``now``, and its seconds."""
    seconds = RANGES.get(range_name, RANGES["1h"])
    return now - timedelta(seconds=seconds), seconds
