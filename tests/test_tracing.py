"""OpenTelemetry: each finished task's trace reaches the OTLP endpoint, its trace id the task id,
with a span per step of its way (queue, hand-off, slot, claim, launch, run, reply)."""

from __future__ import annotations

import pytest
from conftest import own_deployment, run_driver, wait_until

import raylane
from raylane.tracing import STEPS, sampled


@raylane.task(name="test.tracing.add")
def add(a: int, b: int) -> int:
    return a + b


def test_a_finished_task_exports_its_trace(rl, otlp):
    handle = add.submit(2, 3)
    assert handle.result(timeout=60) == 5
    # Exported in the background, in batches (every 5 s at the most).
    spans = wait_until(
        lambda: len(otlp.trace(handle.id)) == 1 + len(STEPS) and otlp.trace(handle.id),
        30,
        0.2,
        lambda: (
            f"the trace of {handle.id}; received {len(otlp.spans)} traces (was the session's deployment "
            "made before RAYLANE_OTLP_ENDPOINT was set?)"
        ),
    )
    by_name = {s.name: s for s in spans}
    root = by_name.pop("raylane.task")
    assert set(by_name) == set(STEPS)
    assert all(s.parent_span_id == root.span_id for s in by_name.values())
    attributes = {a.key: a.value.string_value or a.value.int_value for a in root.attributes}
    assert attributes["raylane.task.id"] == handle.id and attributes["raylane.task.state"] == "SUCCEEDED"
    record = handle.record()
    assert root.start_time_unix_nano == int(record.created_at.timestamp() * 1e9)
    assert root.end_time_unix_nano == int(record.finished_at.timestamp() * 1e9)
    assert by_name["run"].start_time_unix_nano <= by_name["run"].end_time_unix_nano


@pytest.mark.timeout(300)
def test_a_deployment_with_a_sample_ratio_traces_the_tasks_it_picks_by_id(rl, unique):
    env = {"RAYLANE_OTLP_SAMPLE_RATIO": "0.5", **own_deployment(f"raylane-sampled-{unique}")}
    result = run_driver("sampled_driver.py", env, timeout=280)
    assert result["states"] == ["SUCCEEDED"] and result["ratio"] == 0.5
    picked = sum(sampled(i, 0.5) for i in result["ids"])
    assert 0 < picked < len(result["ids"])  # 60 ids: all or none at one half would be a 2^-59 chance
    assert result["traced"] == picked
