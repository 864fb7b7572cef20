"""The operator's views and the charts without services: SVG drawn from binned ends, the attempt
timeline, who may see the cluster's queues, executors and dead letters, and what they show."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from raylane import charts
from raylane.api import build_app
from raylane.apicore import ApiContext, set_context
from raylane.models import AttemptSummary, TaskMessage, TaskRecord
from raylane.ratelimit import ConcurrencyLimiter, RateLimiter
from raylane.states import TaskState
from raylane.store import TaskEnd
from raylane.tokens import TokenFile
from raylane.web import timeline

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>'


def _end(state: str, ended_s_ago: float, wait_s: float, run_s: float) -> TaskEnd:
    finished = NOW - timedelta(seconds=ended_s_ago)
    started = finished - timedelta(seconds=run_s)
    return TaskEnd(state, started - timedelta(seconds=wait_s), started, finished)


def test_ends_are_binned_by_time_with_their_waits_and_runs():
    ends = [_end("SUCCEEDED", 30, 0.1, 1.0), _end("FAILED", 40, 0.3, 2.0), _end("SUCCEEDED", 1800, 5, 5)]
    ends.append(_end("SUCCEEDED", 7200, 0, 0))  # before the range: left out
    buckets = charts.activity(ends, NOW, 3600)
    assert charts.bucket_seconds(3600) == 60 and len(buckets) == 60
    last = buckets[-1]
    assert last.ended == {"SUCCEEDED": 1, "FAILED": 1}
    assert sorted(last.waits) == pytest.approx([0.1, 0.3]) and sorted(last.runs) == pytest.approx([1.0, 2.0])
    assert sum(sum(b.ended.values()) for b in buckets) == 3
    assert charts.percentile([1, 2, 3, 4], 50) == 2 and charts.percentile([1, 2, 3, 4], 95) == 4
    assert charts.percentile([], 50) is None


def test_charts_are_valid_svg_that_say_what_they_show():
    buckets = charts.activity([_end("SUCCEEDED", 30, 0.1, 1.0), _end("FAILED", 90, 0.2, 0.5)], NOW, 3600)
    bars = charts.stacked_bars("Ended", buckets)
    root = ET.fromstring(bars)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}desc").text == "2 tasks ended: 1 SUCCEEDED, 1 FAILED"
    filled = [r.get("fill") for r in root.iter(f"{ns}rect")]
    assert filled.count(charts.STATE_COLOURS["SUCCEEDED"]) == 1 and filled.count(charts.STATE_COLOURS["FAILED"]) == 1
    series = {"wait p50": [charts.percentile(b.waits, 50) for b in buckets]}
    line = ET.fromstring(charts.lines("Latency", [b.start for b in buckets], series))
    assert "wait p50: latest 100 ms" in line.find(f"{ns}desc").text
    empty = ET.fromstring(charts.stacked_bars("Ended", charts.activity([], NOW, 900)))
    assert empty.find(f"{ns}desc").text == "no task ended in this range"
    hostile = charts.bars(HOSTILE, {HOSTILE: {"PENDING": 3}}, ["PENDING"], charts.LINE_COLOURS)
    assert HOSTILE not in hostile and ET.fromstring(hostile) is not None


def test_the_timeline_shows_every_attempt_on_one_scale():
    msg = TaskMessage(id="cd" * 16, name="demo.add", queue="default", created_at=NOW)
    first = AttemptSummary(
        attempt=0,
        state="FAILED",
        started_at=NOW + timedelta(seconds=1),
        finished_at=NOW + timedelta(seconds=3),
    )
    rec = TaskRecord.pending(msg).model_copy(
        update={
            "attempt": 1,
            "attempts": [first],
            "state": TaskState.SUCCEEDED,
            "started_at": NOW + timedelta(seconds=4),
            "finished_at": NOW + timedelta(seconds=8),
        }
    )
    rows = timeline(rec, NOW + timedelta(seconds=10))
    assert [(r["attempt"], r["state"], r["wait_s"], r["run_s"]) for r in rows] == [
        (0, "FAILED", 1.0, 2.0),
        (1, "SUCCEEDED", 1.0, 4.0),
    ]
    assert rows[1]["wait_pct"] + rows[1]["run_pct"] == 100.0 and rows[0]["run_pct"] == 40.0
    assert all(type(r["state"]) is str for r in rows)  # shown as "SUCCEEDED", not "TaskState.SUCCEEDED"


class OperatorContext(ApiContext):
    """Answers the operator views' calls."""

    def __init__(self, tokens: TokenFile):
        super().__init__(None, tokens, RateLimiter(1000, 1000), ConcurrencyLimiter(4))
        self.calls: list[tuple] = []

    async def call(self, method: str, *args):
        self.calls.append((method, *args))
        if method == "queue_overview":
            return [{"queue": HOSTILE, "lag": 7, "pending": 3, "scheduled": 1, "running": 2, "paused": True}]
        if method == "executor_overview":
            return [
                {"name": "Executor", "alive": True, "node": "n" * 40, "running": 4, "ray_tasks": 2,
                 "max_running": 32, "lease_left_s": 9.5, "lease_age_s": 0.5, "incarnation": "abc", "started": 10},
                {"name": "Executor-1", "alive": False, "node": None},
            ]  # fmt: skip
        if method == "dead_letters":
            return [{"reason": HOSTILE, "topic": "raylane.tasks.default", "partition": 0, "offset": 5,
                     "dlq_partition": 0, "dlq_offset": 1, "task_id": None, "state": None}]  # fmt: skip
        if method == "ends":
            ended = datetime.now(UTC) - timedelta(seconds=5)
            return [TaskEnd("SUCCEEDED", ended - timedelta(seconds=1), ended - timedelta(seconds=0.5), ended)]
        if method == "set_paused":
            return None
        raise AssertionError(method)


@pytest.fixture
def views(tmp_path):
    tokens = TokenFile(tmp_path / "tokens.json")
    ctx = OperatorContext(tokens)
    set_context(ctx)
    client = TestClient(build_app())
    yield client, ctx, tokens
    set_context(None)


def test_only_operator_tokens_see_the_cluster(views):
    client, ctx, tokens = views
    _, writer = tokens.create("acme", "write")
    client.cookies.set("raylane_token", writer)
    for path in ("/ui/queues", "/ui/executors", "/ui/dlq"):
        resp = client.get(path)
        assert resp.status_code == 403 and 'id="operators-only"' in resp.text
    assert client.post("/ui/queues/default/pause").status_code == 403
    assert client.get("/ui/queues.json").status_code == 403
    assert ctx.calls == []
    assert 'href="/ui/queues"' not in client.get("/ui/activity").text


def test_the_operator_views_show_queues_executors_and_dead_letters(views):
    client, ctx, tokens = views
    _, op = tokens.create("ops", "operator")
    client.cookies.set("raylane_token", op)
    queues = client.get("/ui/queues")
    assert queues.status_code == 200 and HOSTILE not in queues.text
    assert '<td class="lag">7</td>' in queues.text and '<td class="paused">paused</td>' in queues.text
    assert ">Resume</button>" in queues.text
    assert client.get("/ui/queues.json").json()["queues"][0]["lag"] == 7
    moved = client.post("/ui/queues/default/resume", follow_redirects=False)
    assert moved.status_code == 303 and ("set_paused", "default", False) in ctx.calls
    executors = client.get("/ui/executors").text
    assert '<td class="running">4</td>' in executors and "9.5 s" in executors and "0.5 s ago" in executors
    assert "not answering" in executors
    dlq = client.get("/ui/dlq").text
    assert HOSTILE not in dlq and "raylane.tasks.default/0@5" in dlq
    activity = client.get("/ui/activity?range=15m")
    assert activity.status_code == 200 and 'id="s-ended">1<' in activity.text
    svg = client.get("/ui/charts/ended.svg?range=15m")
    assert svg.headers["content-type"].startswith("image/svg+xml") and "1 SUCCEEDED" in svg.text
    assert client.get("/ui/charts/nope.svg").status_code == 404
    # An operator's own tasks are still only its tenant's.
    ends = [c for c in ctx.calls if c[0] == "ends"]
    assert ends and all(c[1]["tenant"] == "ops" for c in ends)
