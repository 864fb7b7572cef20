"""raylane's HTTP API: a FastAPI application served by Ray Serve.

Every ``/api/v1`` route needs a bearer token from the token file (``raylane token create``);
the token's tenant is stamped on each task it submits and filters everything it reads,
counts, waits on or cancels. Errors are JSON of one shape::

    {"error": {"status": 404, "code": "task_not_found", "message": "no task with id '…'"}}

``raylane serve`` (or ``raylane stack up --http``) deploys it; ``deploy_http`` does the same
from Python. The web page (``raylane.web``) is served by the same application.
"""
from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylane.errors import (InvalidTaskInput, PayloadTooLarge, RaylaneError, ServiceUnavailable, TaskAlreadyFinished,
                            TaskNotFound, UnknownTaskName)
from raylane.limits import MAX_TAG_CHARS, MAX_TAGS, MAX_TIMEOUT_S
from raylane.models import NAME_PATTERN, QUEUE_PATTERN, SubmitRequest, TaskRecord
from raylane.ratelimit import ConcurrencyLimiter, OverLimit, RateLimiter
from raylane.states import TaskState
from raylane.store import TaskQuery
from raylane.tokens import Principal, TokenFile

API_PREFIX = "/api/v1"
# Over HTTP a tag starts with a letter, so that no tag can be mistaken for a number in a query string.
TAG_PATTERN = rf"^[A-Za-z][A-Za-z0-9_.:/=@+-]{{0,{MAX_TAG_CHARS - 1}}}$"
MAX_BATCH = 1000
MAX_WAIT_S = 60.0
# date_nanos, the type of the record's timestamps, spans these years; outside them OpenSearch refuses the query.
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(2262, 1, 1, tzinfo=timezone.utc)


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
    queue: Optional[str] = Field(None, pattern=QUEUE_PATTERN, description="an existing queue (default: the task's)")
    timeout_s: Optional[float] = Field(None, gt=0, le=MAX_TIMEOUT_S, description="seconds before the task is killed")
    tags: Optional[list[Annotated[str, Field(pattern=TAG_PATTERN)]]] = Field(None, max_length=MAX_TAGS)
    max_retries: Optional[int] = Field(None, ge=0, le=100, description="retries after a failed attempt")


class BatchSubmission(BaseModel):
    """Several tasks, accepted all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSubmission] = Field(min_length=1, max_length=MAX_BATCH)


class Submitted(BaseModel):
    """The id of a task just accepted (it is PENDING)."""

    id: str


class SubmittedBatch(BaseModel):
    """Ids of the accepted tasks, in the order submitted."""

    ids: list[str]


TaskView = create_model(
    "TaskView", __doc__="A task's record, plus whether it is over (terminal, and no retry follows).",
    **{name: (f.annotation, f) for name, f in TaskRecord.model_fields.items()}, finished=(bool, ...))


def view_of(record: TaskRecord) -> BaseModel:
    """The API's view of ``record``."""
    return TaskView(**dict(record), finished=record.finished)


class TaskPage(BaseModel):
    """One page of a search, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    tasks: list[TaskView]  # type: ignore[valid-type]
    next_cursor: Optional[str] = None


class Counts(BaseModel):
    """Number of tasks per state (states with none are left out) and their total."""

    counts: dict[str, int]
    total: int


class Health(BaseModel):
    """The API answers and reaches raylane's RequestHandler."""

    status: str


# ---------------------------------------------------------------- errors

class ApiProblem(Exception):
    """An error answered with its status and code."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def problem_response(status: int, code: str, message: str, headers: Optional[dict] = None) -> JSONResponse:
    """A JSON error response of the API's one shape."""
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status,
                        headers=headers)


def problem_of(e: RaylaneError) -> ApiProblem:
    """The HTTP answer to a raylane error."""
    for cls, status, code in ((TaskNotFound, 404, "task_not_found"), (TaskAlreadyFinished, 409, "already_finished"),
                              (PayloadTooLarge, 413, "payload_too_large"), (UnknownTaskName, 400, "unknown_task"),
                              (InvalidTaskInput, 400, "invalid_input"), (ServiceUnavailable, 503, "unavailable")):
        if isinstance(e, cls):
            return ApiProblem(status, code, str(e))
    return ApiProblem(500, "internal", str(e))


def _responses(*codes: int) -> dict:
    text = {400: "invalid input", 401: "missing or invalid token", 403: "the token may not do this",
            404: "no such task (for this tenant)", 409: "the task already finished", 413: "request too large",
            422: "the request does not match the schema", 429: "over this token's rate or wait limit (see Retry-After)",
            503: "a service raylane needs is unavailable"}
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


# ---------------------------------------------------------------- context

class ApiContext:
    """What the routes use: the RequestHandler, the token file, and each token's limits."""

    def __init__(self, handler, tokens: TokenFile, rate: RateLimiter, waits: ConcurrencyLimiter):
        self.handler = handler
        self.tokens = tokens
        self.rate = rate
        self.waits = waits

    async def call(self, method: str, *args: Any) -> Any:
        """Call the RequestHandler; its raylane errors are raised as they are."""
        from ray.exceptions import RayActorError
        from raylane.actors.common import unwrap
        try:
            return unwrap(await getattr(self.handler, method).remote(*args))
        except RayActorError as e:
            raise ServiceUnavailable(f"raylane's RequestHandler is not reachable: {e}") from e


# Set by the Serve replica when it starts. A module global, not app.state: Serve ships the
# application to the replica by value, so the replica's app is not the one its class sees.
_context: Optional[ApiContext] = None


def context(request: Request) -> ApiContext:
    """The replica's context: the RequestHandler and the token file."""
    if _context is None:
        raise ApiProblem(503, "unavailable", "the API is starting")
    return _context


def set_context(ctx: Optional[ApiContext]) -> None:
    """Install the context the routes use (done once per replica)."""
    global _context
    _context = ctx


_bearer = HTTPBearer(auto_error=False, description="a token made with `raylane token create --tenant NAME`")


def principal(request: Request,
              credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(_bearer)]) -> Principal:
    """The tenant behind the request's bearer token; 401 without a valid one."""
    challenge = {"WWW-Authenticate": 'Bearer realm="raylane"'}
    if credentials is None:
        raise ApiProblem(401, "unauthorized", "a bearer token is required (Authorization: Bearer <token>)", challenge)
    ctx = context(request)
    found = ctx.tokens.verify(credentials.credentials)
    if found is None:
        raise ApiProblem(401, "unauthorized", "the token is not valid or was revoked", challenge)
    ctx.rate.take(found.token_id)  # OverLimit: 429
    return found


def writer(who: Annotated[Principal, Depends(principal)]) -> Principal:
    """A principal allowed to submit and cancel; 403 for a read-only token."""
    if not who.can_write:
        raise ApiProblem(403, "forbidden", f"token {who.token_id} is read-only; submitting and cancelling need a write token")
    return who


def encode_cursor(cursor: Optional[list]) -> Optional[str]:
    """A search cursor as an opaque URL-safe string."""
    return None if cursor is None else base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")


def decode_cursor(text: Optional[str]) -> Optional[list]:
    """The search cursor a page handed out; 400 for anything else."""
    if not text:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        value = None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
            and not isinstance(value[0], bool) and isinstance(value[1], str)):
        raise ApiProblem(400, "invalid_cursor", "cursor is not one this API handed out")
    return value


def _instant(text: Optional[str], what: str) -> Optional[datetime]:
    """An ISO 8601 time (UTC when it names no zone), clamped to the span records can have."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ApiProblem(422, "validation_error", f"{what}: {text!r} is not an ISO 8601 date-time") from None
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return min(max(value, _EARLIEST), _LATEST)


def task_filters(state: Annotated[Optional[list[TaskState]], Query(description="any of these states")] = None,
                 name: Annotated[Optional[str], Query(pattern=NAME_PATTERN, description="task name")] = None,
                 queue: Annotated[Optional[str], Query(pattern=QUEUE_PATTERN, description="queue")] = None,
                 tag: Annotated[Optional[list[Annotated[str, Field(pattern=TAG_PATTERN)]]],
                                Query(description="tags; all must match")] = None,
                 since: Annotated[Optional[str], Query(json_schema_extra={"format": "date-time"}, max_length=64,
                                                       description="created at or after (ISO 8601, UTC if no zone)")] = None,
                 until: Annotated[Optional[str], Query(json_schema_extra={"format": "date-time"}, max_length=64,
                                                       description="created before (ISO 8601)")] = None,
                 text: Annotated[Optional[str], Query(max_length=500, description="words of the error message")] = None,
                 ) -> dict:
    """The search filters of a request, without the tenant (the token decides that)."""
    return dict(state=state or None, name=name or None, queue=queue or None, tags=list(tag or []),
                since=_instant(since, "since"), until=_instant(until, "until"), text=(text or "").strip() or None)


def tenant_query(filters: dict, who: Principal) -> TaskQuery:
    """The filters, confined to the principal's tenant. The tenant is set last, from the token only."""
    return TaskQuery(**{**filters, "tenant": who.tenant})


Ctx = Annotated[ApiContext, Depends(context)]
Reader = Annotated[Principal, Depends(principal)]
Writer = Annotated[Principal, Depends(writer)]
Filters = Annotated[dict, Depends(task_filters)]
TaskId = Annotated[str, Field(max_length=64)]


def allowed_methods(app: FastAPI, path: str) -> set[str]:
    """The methods of every route that matches ``path``."""
    methods: set[str] = set()
    for route in app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return methods


def _links(id_expr: str) -> dict:
    """OpenAPI links from a response carrying task ids to the operations that take one."""
    ops = {"GetTask": "get_task", "WaitTask": "wait_task", "CancelTask": "cancel_task"}
    return {name: {"operationId": op, "parameters": {"task_id": id_expr}} for name, op in ops.items()}


def _request(sub: TaskSubmission, who: Principal) -> dict:
    return SubmitRequest(**sub.model_dump(exclude_none=True), tenant=who.tenant).model_dump(exclude_none=True)


# ---------------------------------------------------------------- application

def build_app(max_body_bytes: int = 4 << 20) -> FastAPI:
    """The FastAPI application: the JSON API under /api/v1 and the web page."""
    # No /docs or /redoc: their pages load scripts from a CDN; /openapi.json serves the document.
    app = FastAPI(title="raylane", version="1", docs_url=None, redoc_url=None,
                  description="Submit, look up, search, count, wait for and cancel raylane tasks. "
                              "Every /api/v1 call needs `Authorization: Bearer <token>`; a token sees its tenant's tasks only.")
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, e: ApiProblem):
        return problem_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(OverLimit)
    async def _over(_: Request, e: OverLimit):
        return problem_response(429, "too_many_requests", f"{e}; retry after {e.retry_after_header} s",
                                {"Retry-After": e.retry_after_header})

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

    @app.get("/healthz", response_model=Health, operation_id="healthz", tags=["health"], responses=_responses(503))
    async def healthz(ctx: Ctx) -> Health:
        """Whether the API reaches raylane (no token needed)."""
        await ctx.call("task_names")
        return Health(status="ok")

    @app.post(f"{API_PREFIX}/tasks", status_code=201, response_model=Submitted, operation_id="submit_task", tags=["tasks"],
              responses={201: {"links": _links("$response.body#/id")}, **_responses(400, 401, 403, 413, 422, 503)})
    async def submit_task(body: TaskSubmission, who: Writer, ctx: Ctx) -> Submitted:
        """Submit one task; it is PENDING when this returns."""
        return Submitted(id=await ctx.call("submit", _request(body, who)))

    @app.post(f"{API_PREFIX}/batches", status_code=201, response_model=SubmittedBatch, operation_id="submit_batch", tags=["tasks"],
              responses={201: {"links": _links("$response.body#/ids/0")}, **_responses(400, 401, 403, 413, 422, 503)})
    async def submit_batch(body: BatchSubmission, who: Writer, ctx: Ctx) -> SubmittedBatch:
        """Submit up to 1,000 tasks at once: all are validated first, and none is written if any is invalid."""
        return SubmittedBatch(ids=await ctx.call("submit_many", [_request(t, who) for t in body.tasks]))

    @app.get(f"{API_PREFIX}/tasks", response_model=TaskPage, operation_id="search_tasks", tags=["tasks"],
             responses=_responses(400, 401, 422, 503))
    async def search_tasks(filters: Filters, who: Reader, ctx: Ctx,
                           limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 50,
                           cursor: Annotated[Optional[str], Query(max_length=500, description="next_cursor of the previous page")] = None,
                           ) -> TaskPage:
        """The tenant's tasks matching every filter, newest first, a page at a time."""
        records, after = await ctx.call("search", tenant_query(filters, who).model_dump(), limit, decode_cursor(cursor))
        return TaskPage(tasks=[view_of(r) for r in records], next_cursor=encode_cursor(after))

    @app.get(f"{API_PREFIX}/counts", response_model=Counts, operation_id="count_tasks", tags=["tasks"], responses=_responses(401, 422, 503))
    async def count_tasks(filters: Filters, who: Reader, ctx: Ctx) -> Counts:
        """Number of the tenant's tasks per state among those matching the filters."""
        counts = await ctx.call("counts", tenant_query(filters, who).model_dump())
        return Counts(counts=counts, total=sum(counts.values()))

    @app.get(API_PREFIX + "/tasks/{task_id}", response_model=TaskView, operation_id="get_task", tags=["tasks"],
             responses=_responses(401, 404, 422, 503))
    async def get_task(task_id: TaskId, who: Reader, ctx: Ctx) -> TaskView:
        """A task's current record."""
        return view_of(await ctx.call("get", task_id, who.tenant))

    @app.get(API_PREFIX + "/tasks/{task_id}/wait", response_model=TaskView, operation_id="wait_task", tags=["tasks"],
             responses=_responses(401, 404, 422, 503))
    async def wait_task(task_id: TaskId, who: Reader, ctx: Ctx,
                        timeout: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait at most")] = 30.0,
                        ) -> TaskView:
        """The task's record once it is finished, or its current record after ``timeout`` seconds
        (then ``finished`` is false). A token holds at most ``RAYLANE_HTTP_WAITS_PER_TOKEN`` waits
        at once; another is answered 429."""
        with ctx.waits.hold(who.token_id, "waits"):
            return view_of(await ctx.call("wait", task_id, timeout, who.tenant))

    @app.post(API_PREFIX + "/tasks/{task_id}/cancel", response_model=TaskView, operation_id="cancel_task", tags=["tasks"],
              responses=_responses(401, 403, 404, 409, 422, 503))
    async def cancel_task(task_id: TaskId, who: Writer, ctx: Ctx) -> TaskView:
        """Cancel a task that has not finished (a running one is killed); 409 if it had finished."""
        return view_of(await ctx.call("cancel", task_id, who.tenant))

    from raylane.web import add_pages
    add_pages(app)
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

        def __init__(self, namespace: str, token_file: str, rate: float, burst: int, waits: int):
            from raylane.actors.deploy import find_request_handler
            handler = find_request_handler(namespace)
            if handler is None:
                raise ServiceUnavailable(f"raylane is not deployed in Ray namespace {namespace!r}")
            set_context(ApiContext(handler, TokenFile(Path(token_file)), RateLimiter(rate, burst),
                                   ConcurrencyLimiter(waits)))

    return HttpApi


def deploy_http(settings) -> str:
    """Deploy the HTTP API on the connected Ray cluster (raylane's actors must be running);
    returns its URL. Redeploying replaces the running application."""
    from ray import serve
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port}, proxy_location="HeadOnly")
    api = _deployment(settings.http_max_body_bytes).bind(settings.namespace, str(settings.tokens_path.resolve()),
                                                         settings.http_rate_per_token, settings.http_burst_per_token,
                                                         settings.http_waits_per_token)
    serve.run(api, name=APP_NAME, route_prefix="/")
    return f"http://{settings.http_host}:{settings.http_port}"


def remove_http() -> None:
    """Remove the HTTP API application (Ray Serve itself keeps running)."""
    from ray import serve
    serve.delete(APP_NAME)
