"""Workflows against the real stack: chains, groups and chords pass results as JSON, every task
has its own record with ``workflow_id`` and ``parent_id``, failures follow the workflow's
policy, a workflow is cancelled as a whole, and bad workflows are refused with nothing written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import cli

import raylane
from raylane.states import TaskState


@raylane.task(name="test.wf.add")
def add(a: int, b: int) -> int:
    """a + b."""
    return a + b


@raylane.task(name="test.wf.double")
def double(x: int) -> int:
    """2x."""
    return 2 * x


@raylane.task(name="test.wf.total")
def total(xs: list[int], plus: int = 0) -> int:
    """The sum of ``xs``, plus ``plus``."""
    return sum(xs) + plus


@raylane.task(name="test.wf.boom")
def boom(x: int) -> int:
    """Always fails."""
    raise ValueError(f"boom on {x}")


@raylane.task(name="test.wf.nap")
def nap(seconds: float, mark: str = "") -> float:
    """Sleeps, then leaves ``mark`` behind (a file) if given."""
    time.sleep(seconds)
    if mark:
        Path(mark).touch()
    return seconds


@raylane.task(name="test.wf.echo_none")
def echo_none(x: object = None) -> object:
    """Returns what it was given."""
    return x


def test_a_chain_passes_each_result_to_the_next(rl, settings):
    wf = raylane.chain(add.s(1, 2), double.s(), double.s()).submit()
    assert wf.result(timeout=60) == 12
    records = wf.records()
    # Each bears the seal of what it ran, its parent's result included: a sweep could carry it on.
    assert all(settings.signer().seal_ok(r) for r in records)
    assert [r.name for r in records] == ["test.wf.add", "test.wf.double", "test.wf.double"]
    assert all(r.state is TaskState.SUCCEEDED and r.workflow_id == wf.id for r in records)
    first, second, third = records
    assert first.parent_id is None and second.parent_id == first.id and third.parent_id == second.id
    # Each task ran with its parent's result as its first argument.
    assert second.args == [3] and third.args == [6]
    assert wf.status() is TaskState.SUCCEEDED
    raylane.refresh()
    assert {r.id for r in raylane.search(workflow=wf.id)} == {r.id for r in records}
    assert raylane.counts(workflow=wf.id) == {"SUCCEEDED": 3}
    listed = cli("ls", "--workflow", wf.id, "--json")
    assert listed.returncode == 0 and {t["id"] for t in json.loads(listed.stdout)} == {r.id for r in records}
    counted = cli("counts", "--workflow", wf.id, "--json")
    assert json.loads(counted.stdout) == {"SUCCEEDED": 3}


def test_a_group_gives_the_list_of_its_results_and_a_chord_sums_them(rl):
    g = raylane.group([add.s(1, 1), add.s(2, 2), add.s(3, 3)]).submit()
    assert g.result(timeout=60) == [2, 4, 6]
    c = raylane.chord([add.s(i, i) for i in range(10)], total.s(plus=1)).submit()
    assert c.result(timeout=60) == sum(2 * i for i in range(10)) + 1
    callback = c.records()[-1]
    assert callback.args[0] == [2 * i for i in range(10)]
    assert callback.flow is not None and len(callback.flow.waiting_on) == 10
    # A chain through a group: each member takes the first result; the last step the list.
    wf = raylane.chain(add.s(2, 3), raylane.group([double.s(), double.s()]), total.s()).submit()
    assert wf.result(timeout=60) == 20
    # An immutable signature takes nothing from before it; `|` chains too.
    wf = (add.s(1, 1) | add.si(10, 20)).submit()
    assert wf.result(timeout=60) == 30


def test_a_failed_task_cancels_the_rest_of_its_workflow(rl, tmp_path):
    mark = tmp_path / "slow-finished"
    wf = raylane.chord([boom.s(1), nap.s(30, str(mark))], total.s()).submit()
    with pytest.raises(raylane.TaskFailed) as err:
        wf.result(timeout=60)
    assert err.value.matches(ValueError) and "boom on 1" in str(err.value)
    failed, slow, callback = wf.records()
    assert failed.state is TaskState.FAILED
    # The sibling was cancelled (killed while it ran), the callback never started.
    assert slow.state is TaskState.CANCELLED and slow.error_type == "WorkflowFailed"
    assert callback.state is TaskState.CANCELLED and callback.started_at is None
    assert not mark.exists()
    assert wf.status() is TaskState.FAILED


def test_skip_cancels_only_what_depends_on_the_failure(rl):
    wf = raylane.group([raylane.chain(boom.s(1), double.s()), raylane.chain(add.s(1, 1), double.s())]).submit(
        on_failure="skip"
    )
    failed, after_failed, ok, after_ok = [h.wait(timeout=60) for h in wf.tasks]
    assert failed.state is TaskState.FAILED
    assert after_failed.state is TaskState.CANCELLED and after_failed.error_type == "ParentFailed"
    assert failed.id in (after_failed.error or "")
    assert ok.state is TaskState.SUCCEEDED and after_ok.result == 4
    with pytest.raises(raylane.TaskFailed):
        wf.result(timeout=5)


def test_continue_runs_dependents_with_none_for_a_failed_parent(rl):
    wf = raylane.chain(boom.s(1), echo_none.s()).submit(on_failure="continue")
    assert wf.result(timeout=60) is None
    assert wf.records()[1].state is TaskState.SUCCEEDED


def test_cancelling_a_workflow_cancels_its_running_and_waiting_tasks(rl, tmp_path):
    mark = tmp_path / "ran"
    wf = raylane.chain(nap.s(30), nap.si(0, str(mark))).submit()
    deadline = time.monotonic() + 60
    while wf.tasks[0].status() is not TaskState.RUNNING:
        assert time.monotonic() < deadline, "the first task never started"
        time.sleep(0.1)
    cancelled = wf.cancel()
    assert set(cancelled) == {h.id for h in wf.tasks}
    assert [h.wait(timeout=30).state for h in wf.tasks] == [TaskState.CANCELLED, TaskState.CANCELLED]
    with pytest.raises(raylane.TaskCancelled):
        wf.result(timeout=5)
    assert wf.status() is TaskState.CANCELLED and not mark.exists()


def test_a_bad_workflow_is_refused_with_nothing_written(rl, unique):
    tag = f"bad-flow-{unique}"
    with pytest.raises(raylane.InvalidTaskInput, match="task #1"):
        # double takes one argument: the result of add, and nothing more.
        raylane.chain(add.options(tags=[tag]).s(1, 2), double.options(tags=[tag]).s(5)).submit()
    with pytest.raises(raylane.InvalidTaskInput, match="cannot have delay_s"):
        raylane.chain(add.options(tags=[tag]).s(1, 2), double.options(delay=5, tags=[tag]).s()).submit()
    with pytest.raises(raylane.InvalidTaskInput, match="task #0"):
        raylane.chain(add.options(tags=[tag]).s("one", 2), double.s()).submit()
    with pytest.raises(raylane.InvalidTaskInput):
        raylane.chain(add.s(1, 2), double.s()).submit(on_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(raylane.InvalidTaskInput):
        raylane.group([])
    raylane.refresh()
    assert raylane.counts(tag=tag) == {}


def test_a_canvas_used_as_a_handle_submits_itself_once(rl):
    wf = raylane.chain(add.s(2, 2), double.s())
    assert wf.result(timeout=60) == 8
    assert wf.status() is TaskState.SUCCEEDED  # the same submission, not a second one
    again = wf.submit()  # an explicit submit always runs it anew
    assert again.result(timeout=60) == 8 and again.id != wf._submitted().id
