"""Workflows: tasks that start when others end, and take their results.

A workflow is built from signatures (``add.s(1, 2)``: a task with some of its arguments) and
three ways to combine them, which nest freely:

- ``raylane.chain(a.s(1), b.s(), c.s())``: one after another; each takes the result of the one
  before as its first argument;
- ``raylane.group([a.s(1), a.s(2)])``: side by side; a task after a group takes the list of
  their results;
- ``raylane.chord(group, callback)``: the group, then the callback with the list of its results.

``.si()`` instead of ``.s()`` makes a signature that takes no result from before it. Nothing
runs until the workflow is submitted (``.submit()``); then every task of it is created at
once, each an ordinary task with its own record, carrying ``workflow_id`` and ``parent_id``,
and the cluster starts each when its parents have ended (see ``raylane.actors.workflows``).
``raylane.search(workflow=...)`` finds a workflow's tasks.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from raylane.errors import InvalidTaskInput, TaskCancelled, TaskFailed
from raylane.models import MAX_WORKFLOW_NODES, TaskRecord, WorkflowNode, WorkflowRequest
from raylane.states import TaskState

if TYPE_CHECKING:
    from raylane.client import TaskHandle
    from raylane.tasks import TaskFunction

FailurePolicy = Literal["cancel", "skip", "continue"]

# What a part of a workflow gives the part after it: the tasks whose results it passes, and
# whether it passes them as a list (a group) or the one result of one task.
_Out = tuple[list[int], bool]


class Plan(NamedTuple):
    """A workflow ready to submit (see ``Canvas.plan``)."""

    request: WorkflowRequest
    outputs: list[int]  # the tasks whose results make the workflow's result
    many: bool  # whether that result is their list (a group), or the one task's result
    definitions: list  # each task's definition, in order


class Canvas:
    """A part of a workflow not submitted yet: a signature, a chain, a group or a chord.

    ``submit()`` submits it, ``| other`` chains it with another part."""

    def _build(self, nodes: list[WorkflowNode], defs: list, incoming: _Out | None) -> _Out:
        raise NotImplementedError

    def __or__(self, other: Canvas) -> Chain:
        return chain(self, other)

    def submit(self, on_failure: FailurePolicy = "cancel") -> WorkflowHandle:
        """Create every task of this workflow at once and start the first ones; returns a
        ``WorkflowHandle`` at once. Everything is checked before anything is written.

        ``on_failure`` says what a task that does not succeed (fails, times out or is
        cancelled) does to the rest: ``"cancel"`` (default) cancels every unfinished task of
        the workflow; ``"skip"`` cancels only the tasks that depend on it, directly or not,
        and lets other branches finish; ``"continue"`` runs them anyway, passing None for
        its result."""
        from raylane.client import _connection, published_if_connected

        plan = self.plan(on_failure)
        for defn in {id(d): d for d in plan.definitions}.values():
            published_if_connected(defn)
        answer = _connection().call("submit_workflow", plan.request.model_dump(mode="json", exclude_none=True))
        return WorkflowHandle(answer["workflow_id"], answer["task_ids"], plan.outputs, plan.many, plan.definitions)

    def plan(self, on_failure: FailurePolicy = "cancel") -> Plan:
        """What ``submit`` sends: the workflow's tasks in order, each with the earlier tasks it
        waits for; ``InvalidTaskInput`` if it is not a valid workflow."""
        nodes: list[WorkflowNode] = []
        defs: list = []
        outputs, many = self._build(nodes, defs, None)
        if len(nodes) > MAX_WORKFLOW_NODES:
            raise InvalidTaskInput(f"a workflow has at most {MAX_WORKFLOW_NODES} tasks, this one {len(nodes)}")
        try:
            request = WorkflowRequest(nodes=nodes, on_failure=on_failure)
        except ValueError as e:
            raise InvalidTaskInput(f"invalid workflow: {e}") from e
        return Plan(request, outputs, many, defs)

    # Used as a handle, a canvas submits itself once and answers for that submission, so that
    # ``raylane.chain(a.s(1), b.s()).result()`` does what it reads as.
    _handle: WorkflowHandle | None = None

    def _submitted(self) -> WorkflowHandle:
        if self._handle is None:
            self._handle = self.submit()
        return self._handle

    def result(self, timeout: float | None = None) -> Any:
        """Submit this workflow (the first time a handle's method is used), and give its result
        (``WorkflowHandle.result``)."""
        return self._submitted().result(timeout)

    def wait(self, timeout: float | None = None) -> list[TaskRecord]:
        """``WorkflowHandle.wait`` of this workflow's submission (see ``result``)."""
        return self._submitted().wait(timeout)

    def status(self) -> TaskState:
        """``WorkflowHandle.status`` of this workflow's submission (see ``result``)."""
        return self._submitted().status()

    def cancel(self) -> list[str]:
        """``WorkflowHandle.cancel`` of this workflow's submission (see ``result``)."""
        return self._submitted().cancel()

    # The canvas of Celery users: apply_async() and delay() submit too.
    def apply_async(self, on_failure: FailurePolicy = "cancel") -> WorkflowHandle:
        """``submit``, by the name Celery users know."""
        return self.submit(on_failure)

    def delay(self) -> WorkflowHandle:
        """``submit()`` with the default failure policy."""
        return self.submit()


class Signature(Canvas):
    """A task with (some of) its arguments, to run as a step of a workflow: ``add.s(1, 2)``.

    A signature after another part of a workflow takes that part's result (a group's: the
    list of them) as its first argument, unless it is immutable (``add.si(1, 2)``)."""

    def __init__(self, task: TaskFunction, args: Sequence[Any], kwargs: dict[str, Any], immutable: bool = False):
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs)
        self.immutable = immutable

    def __repr__(self) -> str:
        return f"{self.task.name}.{'si' if self.immutable else 's'}{self.args!r}"

    def _build(self, nodes: list[WorkflowNode], defs: list, incoming: _Out | None) -> _Out:
        after, many = incoming if incoming is not None else ([], False)
        takes = None if self.immutable or not after else ("results" if many else "result")
        nodes.append(WorkflowNode(request=self.task.request(self.args, self.kwargs), after=after, takes=takes))
        defs.append(self.task.definition)
        return [len(nodes) - 1], False


class Chain(Canvas):
    """Parts run one after another, each taking the result of the one before."""

    def __init__(self, steps: Sequence[Canvas]):
        if not steps:
            raise InvalidTaskInput("a chain needs at least one step")
        self.steps = [_canvas(s) for s in steps]

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.steps))})"

    def _build(self, nodes: list[WorkflowNode], defs: list, incoming: _Out | None) -> _Out:
        out = incoming
        for step in self.steps:
            out = step._build(nodes, defs, out)
        assert out is not None
        return out


class Group(Canvas):
    """Parts run side by side; what follows a group takes the list of their results, in order
    (a member that is itself a group adds its results to the list one by one)."""

    def __init__(self, members: Iterable[Canvas]):
        self.members = [_canvas(m) for m in members]
        if not self.members:
            raise InvalidTaskInput("a group needs at least one member")

    def __repr__(self) -> str:
        return f"group([{', '.join(map(repr, self.members))}])"

    def _build(self, nodes: list[WorkflowNode], defs: list, incoming: _Out | None) -> _Out:
        out: list[int] = []
        for m in self.members:
            out += m._build(nodes, defs, incoming)[0]
        return out, True


class Chord(Canvas):
    """A group, then a callback that takes the list of the group's results."""

    def __init__(self, header: Group | Iterable[Canvas], body: Canvas):
        self.header = header if isinstance(header, Group) else Group(header)
        self.body = _canvas(body)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def _build(self, nodes: list[WorkflowNode], defs: list, incoming: _Out | None) -> _Out:
        return self.body._build(nodes, defs, self.header._build(nodes, defs, incoming))


def _canvas(part: Any) -> Canvas:
    if isinstance(part, Canvas):
        return part
    if isinstance(part, list | tuple):
        return Group(part)
    raise InvalidTaskInput(f"{part!r} is not a part of a workflow; make one with task.s(...)")


def chain(*steps: Canvas) -> Chain:
    """Steps one after another: ``raylane.chain(add.s(1, 2), double.s())`` runs ``double(3)``
    once ``add(1, 2)`` gave 3. A list among the steps is a group."""
    return Chain(steps)


def group(*members: Canvas | Iterable[Canvas]) -> Group:
    """Parts side by side: ``raylane.group([add.s(1, 1), add.s(2, 2)])`` (or the parts as
    arguments). The workflow's result, or the next step's argument, is the list of their results."""
    if len(members) == 1 and not isinstance(members[0], Canvas):
        return Group(members[0])
    return Group(members)  # type: ignore[arg-type]


def chord(header: Group | Iterable[Canvas], body: Canvas) -> Chord:
    """A group, then ``body`` with the list of its results: ``raylane.chord([add.s(1, 1),
    add.s(2, 2)], total.s())`` runs ``total([2, 4])``."""
    return Chord(header, body)


class WorkflowHandle:
    """A submitted workflow: its id, its tasks' handles in the order they were built, and its
    result (the last step's result; of a group, the list of its members' results)."""

    def __init__(self, workflow_id: str, task_ids: list[str], outputs: list[int], many: bool, defs: list):
        from raylane.client import TaskHandle
        from raylane.registry import result_hint

        self.id = workflow_id
        self.tasks: list[TaskHandle] = [TaskHandle(i) for i in task_ids]
        for h, defn in zip(self.tasks, defs, strict=True):
            h._returns = result_hint(defn.fn)
        self._outputs = outputs
        self._many = many

    @property
    def workflow_id(self) -> str:
        """The workflow's id (as ``id``): its tasks' ``workflow_id``."""
        return self.id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r}, tasks={len(self.tasks)})"

    @property
    def outputs(self) -> list[TaskHandle]:
        """The tasks whose results make the workflow's result."""
        return [self.tasks[i] for i in self._outputs]

    def records(self) -> list[TaskRecord]:
        """The current records of every task of the workflow, in order."""
        from raylane.client import _connection

        found = _connection().call("get_many", [h.id for h in self.tasks])
        return [found[h.id] for h in self.tasks if h.id in found]

    def wait(self, timeout: float | None = None) -> list[TaskRecord]:
        """Block until the tasks whose results make the workflow's result have ended, and
        return their records; ``WaitTimeout`` after ``timeout`` seconds."""
        from raylane.client import wait_all

        return wait_all(self.outputs, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The workflow's result: its last step's (a list, when that is a group). If a task did
        not succeed, raises the error of the first one that failed or timed out (``TaskFailed``,
        ``TaskTimedOut``), or ``TaskCancelled`` if the workflow was cancelled."""
        self.wait(timeout)
        results = []
        for h in self.outputs:
            try:
                results.append(h.result(0))
            except (TaskFailed, TaskCancelled):
                cause = self._first_failure()
                if cause is not None:
                    cause.result(0)  # raises its error
                raise
        return results if self._many else results[0]

    def _first_failure(self) -> TaskHandle | None:
        failed = [
            r
            for r in self.records()
            if r.finished and r.state in (TaskState.FAILED, TaskState.TIMED_OUT) and r.finished_at is not None
        ]
        if not failed:
            return None
        first = min(failed, key=lambda r: r.finished_at)  # type: ignore[arg-type,return-value]
        return next(h for h in self.tasks if h.id == first.id)

    def status(self) -> TaskState:
        """The workflow's state: PENDING before any task started, RUNNING while a task has not
        ended; then SUCCEEDED if its result is there, FAILED (or TIMED_OUT) if a task failed
        (or timed out), CANCELLED otherwise."""
        records = self.records()
        if any(not r.finished for r in records):
            started = any(r.state is not TaskState.PENDING and r.state is not TaskState.SCHEDULED for r in records)
            return TaskState.RUNNING if started else TaskState.PENDING
        by_id = {r.id: r for r in records}
        if all(by_id[h.id].state is TaskState.SUCCEEDED for h in self.outputs if h.id in by_id):
            return TaskState.SUCCEEDED
        for bad in (TaskState.FAILED, TaskState.TIMED_OUT):
            if any(r.state is bad for r in records):
                return bad
        return TaskState.CANCELLED

    def cancel(self) -> list[str]:
        """Cancel every unfinished task of the workflow (running ones are killed); returns the
        ids cancelled."""
        from raylane.client import cancel_workflow

        return cancel_workflow(self.id)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await workflow``: its result, without blocking the event loop."""
        import asyncio

        return asyncio.to_thread(self.result).__await__()
