"""Where a task's time went: the marks of its way, from the hops its record keeps, and an
OpenTelemetry trace of them, exported over OTLP/HTTP when ``RAYLANE_OTLP_ENDPOINT`` is set.

A trace is made once the task's end is recorded, from its record alone: nothing is timed twice,
and no span is kept open across processes. The trace id is the task id (both are 128 bits), so
a task's trace is found by its id. Exporting needs the ``otel`` extra
(``opentelemetry-exporter-otlp-proto-http``); without it, or without an endpoint, nothing is made.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from typing import Any

from raylane.models import HOPS, TaskRecord

log = logging.getLogger("raylane.tracing")

# The marks of a task's way, in order, each when the task passed it (epoch seconds):
# submitted (created_at), the hops of its record, slot (started_at: it took a run slot), and
# replied (finished_at: its executor had the reply).
MARKS = ("submitted", "read", "handed", "slot", "claimed", "began", "returned", "replied")
# The spans of a trace: each from one mark to the next.
STEPS = {
    "queue": ("submitted", "read"),
    "hand-off": ("read", "handed"),
    "wait for a run slot": ("handed", "slot"),
    "claim": ("slot", "claimed"),
    "launch": ("claimed", "began"),
    "run": ("began", "returned"),
    "reply": ("returned", "replied"),
}


def marks(rec: TaskRecord) -> dict[str, float]:
    """When ``rec``'s attempt passed each mark it has a time for (epoch seconds, by ``MARKS``)."""
    created = rec.created_at.timestamp()
    out = {"submitted": created}
    hops = rec.hops or {}
    out.update({hop: created + hops[hop] for hop in HOPS if hop in hops})
    if rec.started_at is not None:
        out["slot"] = rec.started_at.timestamp()
    if rec.finished_at is not None:
        out["replied"] = rec.finished_at.timestamp()
    return {m: out[m] for m in MARKS if m in out}


def _ns(t: float) -> int:
    return int(t * 1e9)


# Spans made and not yet through the exporter, at most: a trace that would go beyond is not
# made. The OTLP exporter retries a collector that is down for a while, and the processor
# beside it would drop each span that finds its queue full, logging a warning for each. A
# thousand traces: about half a second of a burst, some megabytes. With the SDK's 2,048, a
# burst sent to a collector on the same machine lost a third of its traces.
MAX_SPANS_WAITING = 8192
SPANS_PER_TRACE = 1 + len(STEPS)
NOT_MADE_REPORT_S = 60.0  # how often traces not made are reported, at most


def sampled(task_id: str, ratio: float) -> bool:
    """Whether the task ``task_id`` is traced at ``ratio``: by a hash of its id, so that every
    process picks the same tasks. (Not by the id's low 64 bits, as OpenTelemetry's trace id
    ratio sampler does: in a UUID4 the top two of those are fixed, so that rule picks none of
    raylane's ids below one half and all of them from three quarters.)"""
    if ratio >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(task_id.encode(), digest_size=8).digest(), "big")
    return h < round(ratio * (1 << 64))


class _CountedExporter:
    """An exporter that counts the spans it has been handed, whatever became of them."""

    def __init__(self, exporter: Any) -> None:
        self._exporter = exporter
        self.handled = 0

    def export(self, spans: Any) -> Any:
        try:
            return self._exporter.export(spans)
        finally:
            self.handled += len(spans)

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class TaskTracer:
    """Makes one trace per finished task and exports it in the background. While the exporter
    is behind (a collector down or slow) by ``MAX_SPANS_WAITING`` spans, traces are not made,
    and how many were not is logged once a minute.

    The spans are made whole, from the record's marks, and handed to the batch processor as
    finished spans: every span of a trace is known at once, so none is opened and ended
    through a tracer (its sampler, context and locks cost about six times as much)."""

    def __init__(self, endpoint: str | None = None, exporter: Any = None, sample_ratio: float = 1.0):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import TraceFlags

        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be between 0 and 1, got {sample_ratio}")
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=f"{(endpoint or '').rstrip('/')}/v1/traces")
        self._endpoint = endpoint
        self._sample_ratio = sample_ratio
        self.not_sampled = 0  # finished tasks left out by the sample ratio
        self._resource = Resource.create({"service.name": "raylane"})
        self._scope = InstrumentationScope("raylane")
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._exporter = _CountedExporter(exporter)
        # Its queue holds what may wait, so that it never drops a span of a trace that was made.
        self._processor = BatchSpanProcessor(self._exporter, max_queue_size=MAX_SPANS_WAITING + SPANS_PER_TRACE)  # type: ignore[arg-type]
        self._made = 0  # spans made
        self.not_made = 0  # traces not made while the exporter was behind
        self._untold = 0  # of those, not yet reported
        self._told_at = -NOT_MADE_REPORT_S

    def _behind(self) -> bool:
        """Whether a trace made now could find the exporter's queue full; reports, at most once
        a minute, the traces not made so."""
        if self._made - self._exporter.handled + SPANS_PER_TRACE <= MAX_SPANS_WAITING:
            return False
        self.not_made += 1
        self._untold += 1
        now = time.monotonic()
        if now - self._told_at >= NOT_MADE_REPORT_S:
            log.warning(
                "traces of %d task(s) not made: the OTLP exporter (%s) is %d spans behind",
                self._untold,
                self._endpoint or "given",
                self._made - self._exporter.handled,
            )
            self._told_at, self._untold = now, 0
        return True

    def record(self, rec: TaskRecord) -> bool:
        """Make the trace of ``rec``'s attempt: a span ``raylane.task`` from submit to the reply,
        and one child span per step it has both marks of; its trace id is the task's id. Whether
        it was made: not for a task the sample ratio leaves out, nor while the exporter is behind."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext

        if not sampled(rec.id, self._sample_ratio):
            self.not_sampled += 1
            return False
        if self._behind():
            return False
        at = marks(rec)
        steps = [(name, at[a], at[b]) for name, (a, b) in STEPS.items() if a in at and b in at]
        self._made += 1 + len(steps)
        trace_id = int(rec.id, 16) if len(rec.id) == 32 else random.getrandbits(128) or 1
        root = SpanContext(trace_id, random.getrandbits(64) or 1, False, self._sampled)
        attributes: dict[str, str | int] = {
            "raylane.task.id": rec.id,
            "raylane.task.name": rec.name,
            "raylane.task.queue": rec.queue,
            "raylane.task.state": rec.state.value,
            "raylane.task.attempt": rec.attempt,
        }
        if rec.error_type:
            attributes["raylane.task.error_type"] = rec.error_type
        for name, began, ended in steps:
            step = SpanContext(trace_id, random.getrandbits(64) or 1, False, self._sampled)
            self._processor.on_end(
                ReadableSpan(
                    name,
                    step,
                    root,
                    self._resource,
                    start_time=_ns(began),
                    end_time=_ns(max(began, ended)),
                    instrumentation_scope=self._scope,
                )
            )
        self._processor.on_end(
            ReadableSpan(
                "raylane.task",
                root,
                None,
                self._resource,
                attributes,
                start_time=_ns(at["submitted"]),
                end_time=_ns(at.get("replied", max(at.values()))),
                instrumentation_scope=self._scope,
            )
        )
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export what is made so far; True if it all went."""
        return self._processor.force_flush(int(timeout_s * 1000))

    def close(self) -> None:
        """Export what is left and stop."""
        self._processor.shutdown()


def tracer_for(endpoint: str | None, sample_ratio: float = 1.0) -> TaskTracer | None:
    """A tracer exporting to ``endpoint`` the traces of ``sample_ratio`` of the tasks, or None
    when there is no endpoint, the ratio is 0, or the exporter is not installed."""
    if not endpoint or sample_ratio <= 0.0:
        return None
    try:
        return TaskTracer(endpoint, sample_ratio=sample_ratio)
    except ImportError as e:
        log.warning("RAYLANE_OTLP_ENDPOINT is set, but OTLP export needs raylane[otel]: %s; no traces", e)
        return None
