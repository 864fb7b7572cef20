"""The parts of raylane's HTTP application that the JSON API (``raylane.api``) and the web page
(``raylane.web``) share: errors as answered, the per-replica context, who is asking, search
filters and cursors. Neither of the two imports the other for these.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from raylane.errors import (
    InvalidTaskInput,
    PayloadTooLarge,
    RaylaneError,
    ScheduleNotFound,
    ServiceUnavailable,
    TaskAlreadyFinished,
    TaskNotFinished,
    TaskNotFound,
    UnknownTaskName,
)
from raylane.limits import MAX_SEARCH_TEXT_CHARS, MAX_TAG_CHARS, MAX_TAGS
from raylane.models import NAME_PATTERN, QUEUE_PATTERN
from raylane.protocol import unwrap
from raylane.ratelimit import ConcurrencyLimiter, OpenTaskQuota, RateLimiter
from raylane.states import TaskState
from raylane.store import TaskQuery
from raylane.store import decode_cursor as store_cursor
from raylane.tokens import Principal, TokenFile

API_PREFIX = "/api/v1"
# Over HTTP a tag starts with a letter, so that no tag can be mistaken for a number in a query string.
TAG_PATTERN = rf"^[A-Za-z][A-Za-z0-9_.:/=@+-]{{0,{MAX_TAG_CHARS - 1}}}$"
# date_nanos, the type of the record's timestamps, spans these years; outside them OpenSearch refuses the query.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2262, 1, 1, tzinfo=UTC)


class ApiProblem(Exception):
    """An error answered with its status and code."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def problem_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    """A JSON error response of the API's one shape."""
    return JSONResponse(
        {"error": {"status": status, "code": code, "message": message}}, status_code=status, headers=headers
    )


def problem_of(e: RaylaneError) -> ApiProblem:
    """The HTTP answer to a raylane error."""
    for cls, status, code in (
        (TaskNotFound, 404, "task_not_found"),
        (ScheduleNotFound, 404, "schedule_not_found"),
        (TaskAlreadyFinished, 409, "already_finished"),
        (TaskNotFinished, 409, "not_finished"),
        (PayloadTooLarge, 413, "payload_too_large"),
        (UnknownTaskName, 400, "unknown_task"),
        (InvalidTaskInput, 400, "invalid_input"),
        (ServiceUnavailable, 503, "unavailable"),
    ):
        if isinstance(e, cls):
            return ApiProblem(status, code, str(e))
    return ApiProblem(500, "internal", str(e))


# ---------------------------------------------------------------- context


class ApiContext:
    """What the routes use: the RequestHandler, the token file, and each token's limits."""

    def __init__(
        self,
        handler,
        tokens: TokenFile,
        rate: RateLimiter,
        waits: ConcurrencyLimiter,
        max_open_per_tenant: int = 1_000_000,
    ):
        self.handler = handler
        self.tokens = tokens
        self.rate = rate
        self.waits = waits
        self.quota = OpenTaskQuota(max_open_per_tenant, self._open_tasks)

    async def _open_tasks(self, tenant: str) -> int:
        counts = await self.call("counts", {"tenant": tenant, "state": ["PENDING", "SCHEDULED", "RUNNING"]})
        return sum(counts.values())

    async def admit(self, who: Principal, n: int) -> None:
        """Count ``n`` new tasks of ``who``'s tenant against its quota; ``OverLimit`` (429) if over."""
        await self.quota.admit(who.tenant, n, who.max_open)

    async def call(self, method: str, *args: Any) -> Any:
        """Call the RequestHandler; its raylane errors are raised as they are."""
        from ray.exceptions import RayActorError

        try:
            return unwrap(await getattr(self.handler, method).remote(*args))
        except RayActorError as e:
            raise ServiceUnavailable(f"raylane's RequestHandler is not reachable: {e}") from e


# Set by the Serve replica when it starts. A module global, not app.state: Serve ships the
# application to the replica by value, so the replica's app is not the one its class sees.
_context: ApiContext | None = None


def context(request: Request) -> ApiContext:
    """The replica's context: the RequestHandler and the token file."""
    if _context is None:
        raise ApiProblem(503, "unavailable", "the API is starting")
    return _context


def set_context(ctx: ApiContext | None) -> None:
    """Install the context the routes use (done once per replica)."""
    global _context
    _context = ctx


_bearer = HTTPBearer(auto_error=False, description="a token made with `raylane token create --tenant NAME`")


def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
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
        raise ApiProblem(
            403, "forbidden", f"token {who.token_id} is read-only; submitting and cancelling need a write token"
        )
    return who


def decode_cursor(text: str | None) -> list | None:
    """The search cursor a page handed out; 400 for anything else."""
    try:
        return store_cursor(text)
    except InvalidTaskInput as e:
        raise ApiProblem(400, "invalid_cursor", "cursor is not one this API handed out") from e


def _instant(text: str | None, what: str) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone), clamped to the span records can have."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ApiProblem(422, "validation_error", f"{what}: {text!r} is not an ISO 8601 date-time") from None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return min(max(value, _EARLIEST), _LATEST)


_LIST_PARAMS = frozenset({"state", "tag"})  # the query parameters that take a list (given once per value)


def single_valued(request: Request) -> None:
    """Refuse a query parameter given more than once, unless it takes a list: FastAPI would keep
    one of the values and drop the rest, and the caller would not learn which."""
    repeated = sorted(
        {k for k in request.query_params if k not in _LIST_PARAMS and len(request.query_params.getlist(k)) > 1}
    )
    if repeated:
        raise ApiProblem(
            422, "validation_error", f"query parameter {repeated[0]!r} is given more than once; it takes one value"
        )


def task_filters(
    state: Annotated[list[TaskState] | None, Query(description="any of these states")] = None,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN, description="task name")] = None,
    queue: Annotated[str | None, Query(pattern=QUEUE_PATTERN, description="queue")] = None,
    tag: Annotated[
        list[Annotated[str, Field(pattern=TAG_PATTERN)]] | None,
        Query(max_length=MAX_TAGS, description=f"tags; all must match (at most {MAX_TAGS})"),
    ] = None,
    since: Annotated[
        str | None,
        Query(
            json_schema_extra={"format": "date-time"},
            max_length=64,
            description="created at or after (ISO 8601, UTC if no zone)",
        ),
    ] = None,
    until: Annotated[
        str | None,
        Query(json_schema_extra={"format": "date-time"}, max_length=64, description="created before (ISO 8601)"),
    ] = None,
    text: Annotated[
        str | None, Query(max_length=MAX_SEARCH_TEXT_CHARS, description="words of the error message")
    ] = None,
    workflow: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$", description="only this workflow's tasks")] = None,
) -> dict:
    """The search filters of a request, without the tenant (the token decides that)."""
    return dict(
        state=state or None,
        name=name or None,
        queue=queue or None,
        tags=list(tag or []),
        since=_instant(since, "since"),
        until=_instant(until, "until"),
        text=(text or "").strip() or None,
        workflow_id=workflow or None,
    )


def tenant_query(filters: dict, who: Principal) -> TaskQuery:
    """The filters, confined to the principal's tenant. The tenant is set last, from the token only."""
    return TaskQuery(**{**filters, "tenant": who.tenant})


Ctx = Annotated[ApiContext, Depends(context)]
Reader = Annotated[Principal, Depends(principal)]
Writer = Annotated[Principal, Depends(writer)]
Filters = Annotated[dict, Depends(task_filters)]
TaskId = Annotated[str, Field(max_length=64)]
