"""Workflows without services: what a canvas becomes, what a workflow request accepts, and how
``Flows`` moves a workflow on over the in-memory store."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import raylane
from raylane.actors.workflows import Flows
from raylane.memory import InMemoryStore
from raylane.models import FlowLinks, SubmitRequest, TaskMessage, TaskRecord, WorkflowRequest
from raylane.signing import FORGED_RECORD
from raylane.states import TaskState

from contracts import SIGNER, T0


@raylane.task(name="unit.flow.add")
def add(a: int, b: int) -> int:
    return a + b


@raylane.task(name="unit.flow.total")
def total(xs: list[int]) -> int:
    return sum(xs)


def _shape(canvas: raylane.Canvas) -> list[tuple[str, list[int], str | None]]:
    return [(n.request.name, n.after, n.takes) for n in canvas.plan().request.nodes]


def test_a_chain_of_groups_and_a_chord_become_tasks_after_their_parents():
    c = raylane.chain(add.s(1, 2), raylane.group([add.s(1), add.s(2)]), total.s(), add.si(0, 0))
    assert _shape(c) == [
        ("unit.flow.add", [], None),
        ("unit.flow.add", [0], "result"),
        ("unit.flow.add", [0], "result"),
        ("unit.flow.total", [1, 2], "results"),
        ("unit.flow.add", [3], None),
    ]
    plan = c.plan()
    assert plan.outputs == [4] and not plan.many
    chord = raylane.chord(raylane.group(add.s(1, 1), add.s(2, 2)), total.s())
    assert _shape(chord) == [
        ("unit.flow.add", [], None),
        ("unit.flow.add", [], None),
        ("unit.flow.total", [0, 1], "results"),
    ]
    # A group of chains gives the last step of each; a nested group adds its members one by one.
    g = raylane.group([raylane.chain(add.s(1, 1), add.s(1)), raylane.group([add.s(3, 3), add.s(4, 4)])])
    plan = g.plan()
    assert plan.outputs == [1, 2, 3] and plan.many
    assert _shape(add.s(1, 1) | add.s(2)) == [("unit.flow.add", [], None), ("unit.flow.add", [0], "result")]


def test_bad_workflows_are_typed_errors():
    with pytest.raises(raylane.InvalidTaskInput):
        raylane.group([])
    with pytest.raises(raylane.InvalidTaskInput):
        raylane.chain()
    with pytest.raises(raylane.InvalidTaskInput, match="not a part of a workflow"):
        raylane.chain(add.s(1, 2), "add")  # type: ignore[arg-type]
    with pytest.raises(raylane.InvalidTaskInput, match="cannot have delay_s, idempotency_key"):
        raylane.chain(add.s(1, 2), add.options(delay=5, idempotency_key="k").s(1)).plan()
    with pytest.raises(raylane.InvalidTaskInput, match="at most 1000 tasks"):
        raylane.group([add.s(i, i) for i in range(1001)]).plan()
    req = SubmitRequest(name="unit.flow.add", args=[1, 2])
    for nodes in (
        [{"request": req, "after": [0]}],  # waits for itself
        [{"request": req}, {"request": req, "after": [0, 0]}],  # a parent twice
        [{"request": req}, {"request": req}, {"request": req, "after": [0, 1], "takes": "result"}],
        [{"request": req, "takes": "results"}],
    ):
        with pytest.raises(ValueError):
            WorkflowRequest(nodes=nodes)


class _Sent:
    def __init__(self) -> None:
        self.messages: list[TaskMessage] = []

    async def __call__(self, messages: list[TaskMessage]) -> None:
        self.messages += messages


def _flow(store: InMemoryStore, parents: int, takes: str, on_failure: str = "cancel"):
    """``parents`` first tasks and one child waiting for them all, written to ``store``."""
    flow_id = uuid.uuid4().hex
    ids = [uuid.uuid4().hex for _ in range(parents + 1)]
    child_id = ids[-1]

    def msg(i: int, **kw) -> TaskMessage:
        return TaskMessage(
            id=ids[i], name="unit.flow.add", queue="default", args=[1], created_at=T0, workflow_id=flow_id, **kw
        )

    firsts = [msg(i, flow=FlowLinks(children=[child_id], on_failure=on_failure)) for i in range(parents)]
    child = msg(parents, parent_id=ids[0], flow=FlowLinks(waiting_on=ids[:-1], takes=takes, on_failure=on_failure))
    records = [TaskRecord.pending(SIGNER.sealed(m)) for m in [*firsts, child]]
    assert all(o.accepted for o in store.write_many(records))
    return records[:-1], records[-1]


def _end(store: InMemoryStore, rec: TaskRecord, state: TaskState, result=None) -> TaskRecord:
    done = rec.moved_to(TaskState.RUNNING).moved_to(state, result=result)
    assert store.write_many([done])[0].accepted
    return done


def test_a_child_starts_once_every_parent_ended_with_their_results_in_order():
    store, sent = InMemoryStore(), _Sent()
    flows = Flows(store, lambda rs: asyncio.sleep(0, store.write_many(rs)), sent, SIGNER)
    parents, child = _flow(store, 3, "results")
    assert child.state is TaskState.SCHEDULED and child.waits_for_parents
    for i, p in enumerate(parents[:2]):
        asyncio.run(flows.ended(_end(store, p, TaskState.SUCCEEDED, result=i)))
    assert sent.messages == []  # one parent still runs
    asyncio.run(flows.ended(_end(store, parents[2], TaskState.SUCCEEDED, result=2)))
    [started] = sent.messages
    assert started.id == child.id and started.args == [[0, 1, 2], 1] and started.attempt == 0
    # The sweep leaves a child it started alone (its record stays SCHEDULED until claimed).
    assert asyncio.run(flows.sweep(older_than_s=-1)) == 0 and len(sent.messages) == 1


def test_a_failed_parent_cancels_its_child_unless_the_policy_is_continue():
    store, sent = InMemoryStore(), _Sent()
    flows = Flows(store, lambda rs: asyncio.sleep(0, store.write_many(rs)), sent, SIGNER)
    [parent], child = _flow(store, 1, "result", on_failure="skip")
    asyncio.run(flows.ended(_end(store, parent, TaskState.FAILED)))
    assert sent.messages == []
    cancelled = store.get(child.id)
    assert cancelled.state is TaskState.CANCELLED and cancelled.error_type == "ParentFailed"
    assert parent.id in cancelled.error
    [parent], child = _flow(store, 1, "result", on_failure="continue")
    asyncio.run(flows.ended(_end(store, parent, TaskState.TIMED_OUT)))
    assert [m.args for m in sent.messages] == [[None, 1]]


def test_cancel_policy_cancels_every_unfinished_task_of_the_workflow():
    store, sent = InMemoryStore(), _Sent()
    flows = Flows(store, lambda rs: asyncio.sleep(0, store.write_many(rs)), sent, SIGNER)
    parents, child = _flow(store, 2, "results")
    running = parents[1].moved_to(TaskState.RUNNING)
    store.write_many([running])
    asyncio.run(flows.ended(_end(store, parents[0], TaskState.FAILED)))
    for rec in (running, child):
        got = store.get(rec.id)
        assert got.state is TaskState.CANCELLED and got.error_type == "WorkflowFailed", got
    assert sent.messages == []


def test_the_sweep_moves_on_children_whose_parents_ended_unseen():
    store, sent = InMemoryStore(), _Sent()
    flows = Flows(store, lambda rs: asyncio.sleep(0, store.write_many(rs)), sent, SIGNER, shard=(0, 1))
    [parent], child = _flow(store, 1, "result")
    assert asyncio.run(flows.sweep(older_than_s=-1)) == 0  # its parent has not ended
    _end(store, parent, TaskState.SUCCEEDED, result=7)  # ended, but no one moved it on
    assert asyncio.run(flows.sweep(older_than_s=-1)) == 1
    assert [(m.id, m.args) for m in sent.messages] == [(child.id, [7, 1])]
    # Its parent's result is among its arguments now, and the message bears a seal of that.
    assert SIGNER.seal_ok(sent.messages[0]) and not SIGNER.seal_ok(child.with_parents_results([8]))


def test_a_waiting_child_planted_or_changed_in_the_store_is_ended_not_started():
    store, sent = InMemoryStore(), _Sent()
    flows = Flows(store, lambda rs: asyncio.sleep(0, store.write_many(rs)), sent, SIGNER)
    [parent], child = _flow(store, 1, "result")
    changed = child.model_copy(update={"kwargs": {"b": 2}, "version": child.version + 1})
    assert store.write_many([changed])[0].accepted
    asyncio.run(flows.ended(_end(store, parent, TaskState.SUCCEEDED, result=7)))
    assert sent.messages == []
    got = store.get(child.id)
    assert (got.state, got.error_type) == (TaskState.FAILED, FORGED_RECORD)
    assert (flows.stats["forged"], flows.stats["cancelled"]) == (1, 0)


def test_a_chord_callback_is_checked_a_chunk_of_parents_at_a_time():
    store, sent = InMemoryStore(), _Sent()
    read: list[int] = []
    get_many = store.get_many

    def counted(ids):
        read.append(len(ids))
        return get_many(ids)

    store.get_many = counted  # type: ignore[method-assign]
    flows = Flows(store, lambda rs: asyncio.sleep(0, store.write_many(rs)), sent, SIGNER)
    parents, child = _flow(store, 250, "results")
    asyncio.run(flows.ended(_end(store, parents[0], TaskState.SUCCEEDED, result=0)))
    assert read == [1, 100] and sent.messages == []  # the child, then one chunk with unfinished parents
    for i, p in enumerate(parents[1:], start=1):
        _end(store, p, TaskState.SUCCEEDED, result=i)
    read.clear()
    asyncio.run(flows.ended(store.get(parents[-1].id)))
    assert read == [1, 100, 100, 50]
    [started] = sent.messages
    assert started.id == child.id and started.args[0] == list(range(250))
