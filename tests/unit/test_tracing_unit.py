"""A task's trace, without services: made from its record's hops once it ended, its trace id the
task id, one span per step of its way, in order and inside the task's span."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from raylane.models import TaskRecord
from raylane.states import TaskState
from raylane.tracing import MARKS, STEPS, TaskTracer, marks, sampled, tracer_for

from contracts import message


def _finished() -> TaskRecord:
    msg = message()
    created = msg.created_at.timestamp()
    running = TaskRecord.pending(msg).moved_to(TaskState.RUNNING, started_at=msg.created_at + timedelta(seconds=0.3))
    running = running.with_hops(read=created + 0.1, handed=created + 0.2, claimed=created + 0.4)
    ended = running.with_hops(began=created + 0.5, returned=created + 1.5)
    return ended.moved_to(TaskState.SUCCEEDED, result=3, finished_at=msg.created_at + timedelta(seconds=1.6))


def test_marks_are_in_the_order_of_the_way():
    at = marks(_finished())
    assert list(at) == list(MARKS)
    assert list(at.values()) == sorted(at.values())


def test_a_finished_task_makes_one_trace_with_a_span_per_step():
    exporter = InMemorySpanExporter()
    tracer = TaskTracer(exporter=exporter)
    rec = _finished()
    tracer.record(rec)
    assert tracer.flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"raylane.task", *STEPS}
    root = spans.pop("raylane.task")
    assert root.context.trace_id == int(rec.id, 16)
    assert root.attributes["raylane.task.name"] == rec.name and root.attributes["raylane.task.state"] == "SUCCEEDED"
    for s in spans.values():
        assert s.parent.span_id == root.context.span_id and s.context.trace_id == root.context.trace_id
    assert abs((spans["run"].end_time - spans["run"].start_time) / 1e9 - 1.0) < 1e-6
    assert abs((root.end_time - root.start_time) / 1e9 - 1.6) < 1e-6
    # The next trace has an id of its own.
    other = _finished()
    tracer.record(other)
    tracer.flush()
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {int(rec.id, 16), int(other.id, 16)}
    tracer.close()


def test_a_task_ended_before_it_ran_has_only_the_steps_it_passed():
    exporter = InMemorySpanExporter()
    tracer = TaskTracer(exporter=exporter)
    cancelled = TaskRecord.pending(message()).moved_to(TaskState.CANCELLED)
    tracer.record(cancelled)
    tracer.flush()
    assert [s.name for s in exporter.get_finished_spans()] == ["raylane.task"]


def test_no_endpoint_no_tracer():
    assert tracer_for(None) is None and tracer_for("") is None
    assert tracer_for("http://collector:4318", 0.0) is None  # nothing would be sampled


def test_the_sample_ratio_picks_that_share_of_tasks_the_same_way_every_time():
    import uuid

    ids = [uuid.uuid4().hex for _ in range(20_000)]
    odd = [f"job-{n}" for n in range(20_000)]  # ids need not be hex
    for ratio in (0.0, 0.01, 0.1, 0.5, 0.9, 1.0):
        for some in (ids, odd):
            picked = [sampled(i, ratio) for i in some]
            # Within five standard deviations of a fair pick: exact at 0 and 1, about 0.0035 at 0.01.
            assert abs(sum(picked) / len(some) - ratio) <= 5 * math.sqrt(ratio * (1 - ratio) / len(some)), ratio
    assert [sampled(i, 0.5) for i in ids[:1000]] == [sampled(i, 0.5) for i in ids[:1000]]


def test_a_tracer_with_a_sample_ratio_traces_the_sampled_tasks_only():
    exporter = InMemorySpanExporter()
    tracer = TaskTracer(exporter=exporter, sample_ratio=0.5)
    records = [_finished() for _ in range(40)]
    made = [tracer.record(rec) for rec in records]
    assert made == [sampled(rec.id, 0.5) for rec in records] and 0 < sum(made) < 40
    assert tracer.flush()
    traced = {s.context.trace_id for s in exporter.get_finished_spans()}
    assert traced == {int(rec.id, 16) for rec, m in zip(records, made, strict=True) if m}
    assert tracer.not_sampled == 40 - sum(made)
    tracer.close()


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "half"])
def test_a_sample_ratio_outside_0_to_1_is_refused(monkeypatch, ratio):
    from pydantic import ValidationError

    from raylane.config import Settings

    monkeypatch.setenv("RAYLANE_OTLP_SAMPLE_RATIO", ratio)
    with pytest.raises(ValidationError, match="otlp_sample_ratio"):
        Settings()
    with pytest.raises(ValueError, match="between 0 and 1"):
        TaskTracer(exporter=InMemorySpanExporter(), sample_ratio=float(ratio) if ratio != "half" else 2.0)


def test_while_the_exporter_is_behind_traces_are_not_made_and_that_is_said_once(caplog):
    import logging
    import threading

    from raylane import tracing

    class _Stuck(InMemorySpanExporter):
        """A collector that does not answer until ``answer`` is set."""

        def __init__(self) -> None:
            super().__init__()
            self.answer = threading.Event()

        def export(self, spans):
            self.answer.wait(30)
            return super().export(spans)

    exporter = _Stuck()
    tracer = TaskTracer(exporter=exporter)
    caplog.set_level(logging.WARNING)
    for _ in range(3000):  # 24,000 spans: about three times what may wait
        tracer.record(_finished())
    made = tracing.MAX_SPANS_WAITING // tracing.SPANS_PER_TRACE
    assert tracer.not_made == 3000 - made
    # Nothing was dropped by the processor, and one line says what was not made.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"traces of 1 task(s) not made: the OTLP exporter (given) is {made * 8} spans behind"]
    exporter.answer.set()
    assert tracer.flush()
    assert len(exporter.get_finished_spans()) == made * tracing.SPANS_PER_TRACE
    # Once the exporter has caught up, traces are made again.
    tracer.record(_finished())
    assert tracer.flush() and len(exporter.get_finished_spans()) == (made + 1) * tracing.SPANS_PER_TRACE
    assert tracer.not_made == 3000 - made
    tracer.close()
