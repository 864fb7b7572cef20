"""raylane's HTTP API: a FastAPI application served by Ray Serve.

Every ``/api/v1`` route needs a bearer token from the token file (``raylane token create``);
the token's tenant is stamped on each task it submits and filters everything it reads,
counts, waits on or cancels. Errors are JSON of one shape::

    {"error": {"status": 404, "code": "task_not_found", "message": "no task with id '…'"}}

``raylane serve`` (or ``raylane stack up --http``) deploys it; ``deploy_http`` does the same
from Python. The web page (``raylane.web``) is served by the same application.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylane.apicore import (
    API_PREFIX,
    TAG_PATTERN,
    ApiContext,
    ApiProblem,
    Ctx,
    Filters,
    Reader,
    TaskId,
    Writer,
    decode_cursor,
    problem_of,
    problem_response,
    set_context,
    single_valued,
    tenant_query,
)
from raylane.errors import (
    RaylaneError,
    ServiceUnavailable,
)
from raylane.limits import MAX_TAGS, MAX_TIMEOUT_S
from raylane.models import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_DELAY_S,
    MAX_WORKFLOW_NODES,
    NAME_PATTERN,
    QUEUE_PATTERN,
    SCHEDULE_ID_PATTERN,
    SubmitRequest,
    TaskRecord,
    validated,
)
from raylane.ratelimit import ConcurrencyLimiter, OverLimit, RateLimiter
from raylane.schedules import Schedule
from raylane.store import encode_cursor
from raylane.tokens import Principal, TokenFile

MAX_BATCH = 1000
MAX_WAIT_S = 60.0


# ---------------------------------------------------------------- models


class ErrorBody(BaseModel):
    """What went wrong: the HTTP status, a stable machine-readable code, and a message for people."""

    status: int
    code: str
    message: str


class ApiError(BaseModel):
    """Every error response."""

    error: ErrorBody


class TaskSubmission(BaseModel):
    """One task to run: a registered task name and its JSON arguments, with optional overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, examples=["raylane.echo"], description="registered task name")
    args: list[Any] = Field(default_factory=list, max_length=10_000, description="positional arguments (JSON)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments (JSON)")
    queue: str | None = Field(None, pattern=QUEUE_PATTERN, description="an existing queue (default: the task's)")
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S, description="seconds before the task is killed")
    tags: list[Annotated[str, Field(pattern=TAG_PATTERN)]] | None = Field(None, max_length=MAX_TAGS)
    max_retries: int | None = Field(None, ge=0, le=100, description="retries after a failed attempt")
    delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S, description="start no earlier than this from now")
    eta: AwareDatetime | None = Field(None, description="start no earlier than this time (with a zone)")
    expires_at: AwareDatetime | None = Field(None, description="not started by then: CANCELLED as expired")
    soft_timeout_s: float | None = Field(
        None, gt=0, le=MAX_DELAY_S, description="SoftTimeLimitExceeded is raised in the task after this"
    )
    idempotency_key: str | None = Field(
        None, pattern=IDEMPOTENCY_KEY_PATTERN, description="the same key gives the first task's id, not a new task"
    )
    priority: Annotated[int | None, SubmitRequest.model_fields["priority"]] = None
    concurrency_key: Annotated[str | None, SubmitRequest.model_fields["concurrency_key"]] = None
    max_concurrency: Annotated[int | None, SubmitRequest.model_fields["max_concurrency"]] = None
    rate_limit: Annotated[str | None, SubmitRequest.model_fields["rate_limit"]] = None


class BatchSubmission(BaseModel):
    """Several tasks, accepted all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSubmission] = Field(min_length=1, max_length=MAX_BATCH)


class WorkflowStep(BaseModel):
    """One task of a workflow: the task, the earlier steps it waits for (their positions in
    ``steps``, in the order their results are passed), and how it takes their results."""

    model_config = ConfigDict(extra="forbid")

    task: TaskSubmission
    after: list[int] = Field(default_factory=list, max_length=MAX_WORKFLOW_NODES)
    takes: Literal["result", "results"] | None = Field(
        None,
        description='"result": the one parent\'s result comes first among its arguments; "results": the list '
        "of its parents' results; null: nothing",
    )


class WorkflowSubmission(BaseModel):
    """A workflow: tasks that start when the ones they wait for have ended, taking their results."""

    model_config = ConfigDict(extra="forbid")

    steps: list[WorkflowStep] = Field(min_length=1, max_length=MAX_WORKFLOW_NODES)
    on_failure: Literal["cancel", "skip", "continue"] = Field(
        "cancel",
        description="what a task that does not succeed does to the rest: cancel the whole workflow, skip what "
        "depends on it, or continue with null for its result",
    )


class SubmittedWorkflow(BaseModel):
    """The id of a workflow just accepted, and its tasks' ids in the order of its steps."""

    workflow_id: str
    ids: list[str]


class Submitted(BaseModel):
    """The id of a task just accepted (it is PENDING)."""

    id: str


class SubmittedBatch(BaseModel):
    """Ids of the accepted tasks, in the order submitted."""

    ids: list[str]


# Built from TaskRecord's fields, so the two cannot drift apart (too dynamic for mypy to follow).
TaskView: Any = create_model(  # type: ignore[call-overload]
    "TaskView",
    __doc__="A task's record, plus whether it is over (terminal, and no retry follows).",
    **{
        **{name: (f.annotation, f) for name, f in TaskRecord.model_fields.items()},
        # Shown, though never written with the record (see raylane.progress).
        "progress": (float | None, Field(None, description="how far a running task has got, 0.0 to 1.0")),
        "progress_message": (str | None, Field(None, description="what a running task last said of its progress")),
    },
    finished=(bool, ...),
)


def view_of(record: TaskRecord) -> Any:
    """The API's view of ``record``."""
    return TaskView(**dict(record), finished=record.finished)


class TaskPage(BaseModel):
    """One page of a search, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    tasks: list[TaskView]
    next_cursor: str | None = None


class Replayed(BaseModel):
    """The tasks a replay started again."""

    replayed: list[str]
    count: int


class Counts(BaseModel):
    """Number of tasks per state (states with none are left out) and their total."""

    counts: dict[str, int]
    total: int


class Health(BaseModel):
    """The API answers and reaches raylane's RequestHandler."""

    status: str


# ---------------------------------------------------------------- errors


def _responses(*codes: int) -> dict:
    """The documented error answers of an operation. One that takes a token (401) is held to its
    token's request rate, so it may answer 429 too, whatever else it does."""
    if 401 in codes and 429 not in codes:
        codes = (*codes, 429)
    text = {
        400: "invalid input",
        401: "missing or invalid token",
        403: "the token may not do this",
        404: "no such task or schedule (for this tenant)",
        409: "the task already finished (a cancel), or has not finished (a retry)",
        413: "request too large",
        422: "the request does not match the schema",
        429: "over this token's rate or wait limit, or its tenant's quota of unfinished tasks (see Retry-After)",
        503: "a service raylane needs is unavailable",
    }
    return {c: {"model": ApiError, "description": text[c]} for c in codes}


class BodyLimit:
    """ASGI middleware: answers 413 to a request body over ``limit`` bytes, declared or streamed."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await problem_response(413, "body_too_large", self._message())(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except self._TooLarge:
            if not started:
                await problem_response(413, "body_too_large", self._message())(scope, receive, send)

    def _message(self) -> str:
        return f"request body over {self.limit} bytes (RAYLANE_HTTP_MAX_BODY_BYTES)"


def _flat(routes: list) -> Iterator:
    """Every route, those of included routers too (FastAPI keeps an included router as one entry)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


def allowed_methods(app: FastAPI, path: str) -> set[str]:
    """The methods of every route that matches ``path``."""
    methods: set[str] = set()
    for route in _flat(app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return methods


def _links(id_expr: str) -> dict:
    """OpenAPI links from a response carrying task ids to the operations that take one."""
    ops = {"GetTask": "get_task", "WaitTask": "wait_task", "CancelTask": "cancel_task"}
    return {name: {"operationId": op, "parameters": {"task_id": id_expr}} for name, op in ops.items()}


def _request(sub: TaskSubmission, who: Principal) -> dict:
    # What fits the schema may still be refused on its meaning (a time no record can hold): a 400.
    request = validated(SubmitRequest, {**sub.model_dump(exclude_none=True), "tenant": who.tenant}, "task")
    return request.model_dump(exclude_none=True)


# ---------------------------------------------------------------- application


router = APIRouter(dependencies=[Depends(single_valued)])
"""The JSON API's routes (``build_app`` serves them beside the web page's)."""

# How many tasks one call that acts on a search (cancel, replay) acts on at most.
BulkLimit = Annotated[int, Query(ge=1, le=10_000, description="at most this many tasks")]


@router.get("/healthz", response_model=Health, operation_id="healthz", tags=["health"], responses=_responses(503))
async def healthz(ctx: Ctx) -> Health:
    """Whether the API reaches raylane (no token needed)."""
    await ctx.call("task_names")
    return Health(status="ok")


@router.post(
    f"{API_PREFIX}/tasks",
    status_code=201,
    response_model=Submitted,
    operation_id="submit_task",
    tags=["tasks"],
    responses={201: {"links": _links("$response.body#/id")}, **_responses(400, 401, 403, 413, 422, 429, 503)},
)
async def submit_task(body: TaskSubmission, who: Writer, ctx: Ctx) -> Submitted:
    """Submit one task; it is PENDING when this returns. 429 if the tenant's unfinished tasks
    are at its quota."""
    request = _request(body, who)
    await ctx.admit(who, 1)
    return Submitted(id=await ctx.call("submit", request))


@router.post(
    f"{API_PREFIX}/batches",
    status_code=201,
    response_model=SubmittedBatch,
    operation_id="submit_batch",
    tags=["tasks"],
    responses={201: {"links": _links("$response.body#/ids/0")}, **_responses(400, 401, 403, 413, 422, 429, 503)},
)
async def submit_batch(body: BatchSubmission, who: Writer, ctx: Ctx) -> SubmittedBatch:
    """Submit up to 1,000 tasks at once: all are validated first, and none is written if any is invalid."""
    requests = [_request(t, who) for t in body.tasks]
    await ctx.admit(who, len(requests))
    return SubmittedBatch(ids=await ctx.call("submit_many", requests))


@router.post(
    f"{API_PREFIX}/workflows",
    status_code=201,
    response_model=SubmittedWorkflow,
    operation_id="submit_workflow",
    tags=["tasks"],
    responses={201: {"links": _links("$response.body#/ids/0")}, **_responses(400, 401, 403, 413, 422, 429, 503)},
)
async def submit_workflow(body: WorkflowSubmission, who: Writer, ctx: Ctx) -> SubmittedWorkflow:
    """Submit a workflow of up to 1,000 tasks: all are created at once (none if any is invalid);
    a step starts when the steps it waits for have ended. ``GET /api/v1/tasks?workflow=<id>``
    lists its tasks, and ``POST /api/v1/cancel`` with the same filter cancels it."""
    request = {
        "nodes": [{"request": _request(s.task, who), "after": s.after, "takes": s.takes} for s in body.steps],
        "on_failure": body.on_failure,
    }
    await ctx.admit(who, len(body.steps))
    answer = await ctx.call("submit_workflow", request, who.tenant)
    return SubmittedWorkflow(workflow_id=answer["workflow_id"], ids=answer["task_ids"])


@router.get(
    f"{API_PREFIX}/tasks",
    response_model=TaskPage,
    operation_id="search_tasks",
    tags=["tasks"],
    responses=_responses(400, 401, 422, 503),
)
async def search_tasks(
    filters: Filters,
    who: Reader,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")] = None,
) -> TaskPage:
    """The tenant's tasks matching every filter, newest first, a page at a time."""
    records, after = await ctx.call("search", tenant_query(filters, who).model_dump(), limit, decode_cursor(cursor))
    return TaskPage(tasks=[view_of(r) for r in records], next_cursor=encode_cursor(after))


@router.get(
    f"{API_PREFIX}/counts",
    response_model=Counts,
    operation_id="count_tasks",
    tags=["tasks"],
    responses=_responses(401, 422, 503),
)
async def count_tasks(filters: Filters, who: Reader, ctx: Ctx) -> Counts:
    """Number of the tenant's tasks per state among those matching the filters."""
    counts = await ctx.call("counts", tenant_query(filters, who).model_dump())
    return Counts(counts=counts, total=sum(counts.values()))


@router.get(
    API_PREFIX + "/tasks/{task_id}",
    response_model=TaskView,
    operation_id="get_task",
    tags=["tasks"],
    responses=_responses(401, 404, 422, 503),
)
async def get_task(task_id: TaskId, who: Reader, ctx: Ctx) -> TaskView:
    """A task's current record."""
    return view_of(await ctx.call("get", task_id, who.tenant))


@router.get(
    API_PREFIX + "/tasks/{task_id}/wait",
    response_model=TaskView,
    operation_id="wait_task",
    tags=["tasks"],
    responses=_responses(401, 404, 422, 503),
)
async def wait_task(
    task_id: TaskId,
    who: Reader,
    ctx: Ctx,
    timeout: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait at most")] = 30.0,
) -> TaskView:
    """The task's record once it is finished, or its current record after ``timeout`` seconds
    (then ``finished`` is false). A token holds at most ``RAYLANE_HTTP_WAITS_PER_TOKEN`` waits
    at once; another is answered 429."""
    with ctx.waits.hold(who.token_id, "waits"):
        return view_of(await ctx.call("wait", task_id, timeout, who.tenant))


@router.post(
    API_PREFIX + "/tasks/{task_id}/cancel",
    response_model=TaskView,
    operation_id="cancel_task",
    tags=["tasks"],
    responses=_responses(401, 403, 404, 409, 422, 503),
)
async def cancel_task(task_id: TaskId, who: Writer, ctx: Ctx) -> TaskView:
    """Cancel a task that has not finished (a running one is killed); 409 if it had finished."""
    return view_of(await ctx.call("cancel", task_id, who.tenant))


@router.post(
    API_PREFIX + "/tasks/{task_id}/retry",
    response_model=TaskView,
    operation_id="retry_task",
    tags=["tasks"],
    responses=_responses(401, 403, 404, 409, 422, 503),
)
async def retry_task(task_id: TaskId, who: Writer, ctx: Ctx) -> TaskView:
    """Start a new attempt of a finished task, with the same arguments (the finished attempt is
    kept in ``attempts``); 409 if it has not finished."""
    return view_of(await ctx.call("retry", task_id, who.tenant))


@router.post(
    f"{API_PREFIX}/replay",
    response_model=Replayed,
    operation_id="replay_tasks",
    tags=["tasks"],
    responses=_responses(400, 401, 403, 422, 503),
)
async def replay_tasks(
    filters: Filters,
    who: Writer,
    ctx: Ctx,
    limit: BulkLimit = 1000,
) -> Replayed:
    """A new attempt of each of the tenant's finished tasks matching every filter (``state``
    FAILED unless given; only terminal states), newest first."""
    ids = await ctx.call("replay", tenant_query(filters, who).model_dump(), limit)
    return Replayed(replayed=ids, count=len(ids))


class Cancelled(BaseModel):
    """The tasks a cancel by filter ended."""

    cancelled: list[str]
    count: int


@router.post(
    f"{API_PREFIX}/cancel",
    response_model=Cancelled,
    operation_id="cancel_tasks",
    tags=["tasks"],
    responses=_responses(400, 401, 403, 422, 503),
)
async def cancel_tasks(
    filters: Filters,
    who: Writer,
    ctx: Ctx,
    limit: BulkLimit = 1000,
) -> Cancelled:
    """Cancel each of the tenant's unfinished tasks matching every filter (``state`` may name
    PENDING, SCHEDULED and RUNNING only); running ones are killed. ``GET /api/v1/counts`` with
    the same filters says beforehand how many there are."""
    ids = await ctx.call("cancel_matching", tenant_query(filters, who).model_dump(), limit)
    return Cancelled(cancelled=ids, count=len(ids))


# ---------------------------------------------------------------- schedules

_SPEC_FIELDS = ("task", "args", "kwargs", "cron", "every_s", "timezone", "catch_up", "queue", "timeout_s", "tags")
# A default, not an annotation: Serve ships these routes by value, and an alias named only in an
# annotation is not shipped with them.
SCHEDULE_ID = PathParam(pattern=SCHEDULE_ID_PATTERN, description="schedule id")
ScheduleSpec: Any = create_model(  # type: ignore[call-overload]
    "ScheduleSpec",
    __doc__="A schedule to create or replace: a task and its arguments, and one of cron and every_s.",
    __config__=ConfigDict(extra="forbid"),
    **{name: (Schedule.model_fields[name].annotation, Schedule.model_fields[name]) for name in _SPEC_FIELDS},
    paused=(bool, False),
)
ScheduleView: Any = create_model(  # type: ignore[call-overload]
    "ScheduleView",
    __doc__="A schedule, with the newest tick handled and when the next one falls (null while paused).",
    **{n: (f.annotation, f) for n, f in Schedule.model_fields.items() if n not in ("message", "tenant")},
    next_tick=(AwareDatetime | None, None),
)


def _schedule_view(s: Schedule) -> Any:
    return ScheduleView(**s.model_dump(exclude={"message", "tenant"}), next_tick=s.upcoming())


class ScheduleList(BaseModel):
    """The tenant's schedules, by id."""

    schedules: list[ScheduleView]


@router.put(
    API_PREFIX + "/schedules/{schedule_id}",
    response_model=ScheduleView,
    operation_id="save_schedule",
    tags=["schedules"],
    responses=_responses(400, 401, 403, 422, 503),
)
async def save_schedule(body: ScheduleSpec, who: Writer, ctx: Ctx, schedule_id: str = SCHEDULE_ID) -> Any:
    """Create a schedule, or replace the definition of the one with this id (ticks it already
    fired are not fired again). One task per tick, however many schedulers run."""
    return _schedule_view(await ctx.call("save_schedule", dict(body.model_dump(), id=schedule_id), who.tenant))


@router.get(
    API_PREFIX + "/schedules",
    response_model=ScheduleList,
    operation_id="list_schedules",
    tags=["schedules"],
    responses=_responses(401, 503),
)
async def list_schedules(who: Reader, ctx: Ctx) -> ScheduleList:
    """The tenant's schedules."""
    return ScheduleList(schedules=[_schedule_view(s) for s in await ctx.call("list_schedules", who.tenant)])


@router.get(
    API_PREFIX + "/schedules/{schedule_id}",
    response_model=ScheduleView,
    operation_id="get_schedule",
    tags=["schedules"],
    responses=_responses(401, 404, 422, 503),
)
async def get_schedule(who: Reader, ctx: Ctx, schedule_id: str = SCHEDULE_ID) -> Any:
    """One schedule of the tenant."""
    return _schedule_view(await ctx.call("get_schedule", schedule_id, who.tenant))


@router.delete(
    API_PREFIX + "/schedules/{schedule_id}",
    status_code=204,
    operation_id="delete_schedule",
    tags=["schedules"],
    responses=_responses(401, 403, 404, 422, 503),
)
async def delete_schedule(who: Writer, ctx: Ctx, schedule_id: str = SCHEDULE_ID) -> Response:
    """Remove a schedule; the tasks it fired stay."""
    await ctx.call("delete_schedule", schedule_id, who.tenant)
    return Response(status_code=204)


@router.post(
    API_PREFIX + "/schedules/{schedule_id}/pause",
    response_model=ScheduleView,
    operation_id="pause_schedule",
    tags=["schedules"],
    responses=_responses(401, 403, 404, 422, 503),
)
async def pause_schedule(who: Writer, ctx: Ctx, schedule_id: str = SCHEDULE_ID) -> Any:
    """Pause a schedule: ticks that fall while it is paused are skipped."""
    return _schedule_view(await ctx.call("set_schedule_paused", schedule_id, True, who.tenant))


@router.post(
    API_PREFIX + "/schedules/{schedule_id}/resume",
    response_model=ScheduleView,
    operation_id="resume_schedule",
    tags=["schedules"],
    responses=_responses(401, 403, 404, 422, 503),
)
async def resume_schedule(who: Writer, ctx: Ctx, schedule_id: str = SCHEDULE_ID) -> Any:
    """Resume a paused schedule from its next tick."""
    return _schedule_view(await ctx.call("set_schedule_paused", schedule_id, False, who.tenant))


def _add_error_handlers(app: FastAPI) -> None:
    """Answer every error in the API's one JSON shape."""

    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, e: ApiProblem):
        return problem_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(OverLimit)
    async def _over(_: Request, e: OverLimit):
        return problem_response(
            429,
            "too_many_requests",
            f"{e}; retry after {e.retry_after_header} s",
            {"Retry-After": e.retry_after_header},
        )

    @app.exception_handler(RaylaneError)
    async def _raylane(_: Request, e: RaylaneError):
        p = problem_of(e)
        return problem_response(p.status, p.code, p.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return problem_response(400, "invalid_json", "the request body is not valid JSON")
        text = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in errors[:5])
        return problem_response(422, "validation_error", text)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        headers = getattr(e, "headers", None)
        if e.status_code == 405:
            # Starlette names only the first route of the path; a path may have one per method.
            headers = {"Allow": ", ".join(sorted(allowed_methods(app, request.url.path)))}
        return problem_response(e.status_code, code, str(e.detail), headers)


def build_app(max_body_bytes: int = 4 << 20) -> FastAPI:
    """The FastAPI application: the JSON API under /api/v1 and the web page."""
    from raylane.web import router as pages

    # No /docs or /redoc: their pages load scripts from a CDN; /openapi.json serves the document.
    app = FastAPI(
        title="raylane",
        version="1",
        docs_url=None,
        redoc_url=None,
        description="Submit, look up, search, count, wait for and cancel raylane tasks. "
        "Every /api/v1 call needs `Authorization: Bearer <token>`; a token sees its tenant's tasks only.",
    )
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    _add_error_handlers(app)
    app.include_router(router)
    app.include_router(pages)
    return app


# ---------------------------------------------------------------- Ray Serve

APP_NAME = "raylane-http"


def _deployment(max_body_bytes: int):
    from ray import serve

    app = build_app(max_body_bytes)

    # Waits are held open for up to a minute: the replica takes many requests at once (Serve's
    # default of 5 let a few waits queue every other request, /healthz included, behind them);
    # what one token may hold is limited per token instead.
    @serve.deployment(name="HttpApi", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    @serve.ingress(app)
    class HttpApi:
        """The Serve replica: finds raylane's RequestHandler and serves the FastAPI application."""

        def __init__(self, namespace: str, token_file: str, rate: float, burst: int, waits: int, max_open: int):
            from raylane.protocol import find_request_handler

            handler = find_request_handler(namespace)
            if handler is None:
                raise ServiceUnavailable(f"raylane is not deployed in Ray namespace {namespace!r}")
            set_context(
                ApiContext(
                    handler, TokenFile(Path(token_file)), RateLimiter(rate, burst), ConcurrencyLimiter(waits), max_open
                )
            )

    return HttpApi


def deploy_http(settings) -> str:
    """Deploy the HTTP API on the connected Ray cluster (raylane's actors must be running);
    returns its URL. Redeploying replaces the running application."""
    from ray import serve

    serve.start(http_options={"host": settings.http_host, "port": settings.http_port}, proxy_location="HeadOnly")
    api = _deployment(settings.http_max_body_bytes).bind(
        settings.namespace,
        str(settings.tokens_path.resolve()),
        settings.http_rate_per_token,
        settings.http_burst_per_token,
        settings.http_waits_per_token,
        settings.http_max_open_per_tenant,
    )
    serve.run(api, name=APP_NAME, route_prefix="/")
    return f"http://{settings.http_host}:{settings.http_port}"


def remove_http() -> None:
    """Remove the HTTP API application (Ray Serve itself keeps running)."""
    from ray import serve

    serve.delete(APP_NAME)
