"""raylane's web page: live counts, a searchable task table, a task's detail, cancel and retry.

Server-rendered from Jinja2 templates (runtime/templates, autoescaped) by a router of the
HTTP API's application, with its style sheet and a few lines of script served by the app
itself (no CDN). Signing in stores the API token in an HttpOnly, SameSite=Strict cookie, so
the page works with the same tokens and tenants as the API; form posts must also come from
the page's own origin.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from raylane.apicore import ApiProblem, context, decode_cursor, problem_of, task_filters, tenant_query
from raylane.errors import RaylaneError
from raylane.states import TaskState
from raylane.store import encode_cursor
from raylane.tokens import Principal

COOKIE = "raylane_token"
PAGE_SIZE = 25
_HERE = Path(__file__).resolve().parent
_STATIC = {"raylane.css": "text/css", "live.js": "text/javascript"}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
}


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else "–"


_templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["when"] = _when
_templates.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2)

router = APIRouter(include_in_schema=False)
"""The web page's routes; ``raylane.api.build_app`` serves them beside the API's."""


def _page(template: str, title: str, who: Principal | None = None, **values) -> HTMLResponse:
    html = _templates.get_template(template).render(title=title, who=who, **values)
    return HTMLResponse(html, headers=_HEADERS)


def _who(request: Request) -> Principal | None:
    return context(request).tokens.verify(request.cookies.get(COOKIE))


def _same_origin(request: Request) -> bool:
    """Whether a form post comes from this page (the Origin header, when the browser sends one, names this host)."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


async def _form(request: Request) -> dict[str, str]:
    fields = parse_qs((await request.body()).decode(errors="replace"))
    return {k: v[0] for k, v in fields.items()}


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


def _filters(request: Request) -> tuple[dict, str | None]:
    """The search form's filters, and what was wrong with it if something was (that field is left out)."""
    q = request.query_params
    states = [TaskState(s) for s in q.getlist("state") if s in TaskState.__members__]
    fields: dict[str, Any] = dict(
        state=states or None,
        name=q.get("name"),
        queue=q.get("queue"),
        tag=[t for t in q.getlist("tag") if t] or None,
        since=q.get("since") or None,
        until=None,
        text=q.get("text"),
        workflow=q.get("workflow") or None,
    )
    try:
        return task_filters(**fields), None
    except ApiProblem as e:
        return task_filters(**{**fields, "since": None}), f"{e.message}; searched without it"


@router.get("/")
async def root():
    """The web page."""
    return RedirectResponse("/ui", status_code=303)


@router.get("/ui/static/{name}")
async def static(name: str):
    """The page's style sheet and script."""
    if name not in _STATIC:
        return Response("not found", status_code=404)
    return FileResponse(
        _HERE / "templates" / "static" / name, media_type=_STATIC[name], headers={"Cache-Control": "max-age=300"}
    )


@router.get("/login")
async def login_form(request: Request, failed: int = 0):
    """The sign-in form."""
    return _page("login.html", "Sign in", failed=bool(failed))


@router.post("/login")
async def login(request: Request):
    """Sign in with an API token (kept in an HttpOnly cookie)."""
    if not _same_origin(request):
        return Response("cross-site form post refused", status_code=403)
    token = (await _form(request)).get("token", "").strip()
    if context(request).tokens.verify(token) is None:
        return RedirectResponse("/login?failed=1", status_code=303)
    resp = RedirectResponse("/ui", status_code=303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return resp


@router.post("/logout")
async def logout():
    """Sign out."""
    resp = _to_login()
    resp.delete_cookie(COOKIE)
    return resp


@router.get("/ui/counts")
async def live_counts(request: Request):
    """The counts of the task list, for its live refresh."""
    who = _who(request)
    if who is None:
        return JSONResponse({"error": "sign in"}, status_code=401)
    counts = await context(request).call("counts", tenant_query(_filters(request)[0], who).model_dump())
    return {"counts": counts, "total": sum(counts.values())}


@router.get("/ui")
async def task_list(request: Request):
    """The tenant's tasks: counts per state, a search form and a page of the table."""
    who = _who(request)
    if who is None:
        return _to_login()
    ctx = context(request)
    q = request.query_params
    filters, problem = _filters(request)
    query = tenant_query(filters, who).model_dump()
    try:
        after = decode_cursor(q.get("cursor"))
    except ApiProblem:
        after = None
    counts = await ctx.call("counts", query)
    records, nxt = await ctx.call("search", query, PAGE_SIZE, after)
    keep = [(k, v) for k, v in q.multi_items() if k not in ("cursor", "msg")]
    return _page(
        "tasks.html",
        "Tasks",
        who,
        unfinished=sum(n for s, n in counts.items() if not TaskState(s).terminal) if who.can_write else 0,
        search=urlencode(keep),
        message=_MESSAGES.get(q.get("msg", ""), ""),
        states=[s.value for s in TaskState],
        counts=counts,
        total=sum(counts.values()),
        chosen=set(q.getlist("state")),
        q=q,
        problem=problem,
        records=records,
        first_page=urlencode(keep) if after is not None else None,
        next_page=urlencode([*keep, ("cursor", encode_cursor(nxt))]) if nxt is not None else None,
    )


_MESSAGES = {
    "cancelled": "The task was cancelled.",
    "finished": "The task had already finished; nothing to cancel.",
    "retried": "A new attempt of the task was started.",
    "unfinished": "The task has not finished; only a finished task can be retried.",
    "bulk-cancelled": "The unfinished tasks that matched were cancelled.",
}
MAX_BULK_CANCEL = 10_000  # tasks one cancel from the page ends at most


@router.post("/ui/cancel")
async def cancel_matching(request: Request):
    """Cancel the tenant's unfinished tasks that match the list's search. Without ``confirm``,
    a page says how many that is and asks; with it, they are cancelled."""
    who = _who(request)
    if who is None:
        return _to_login()
    if not _same_origin(request) or not who.can_write:
        return Response("not allowed", status_code=403)
    filters, _ = _filters(request)
    unfinished = [s for s in TaskState if not s.terminal]
    filters["state"] = [s for s in filters["state"] or unfinished if not s.terminal]
    keep = urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in ("cursor", "msg")])
    if not filters["state"]:
        return RedirectResponse(f"/ui?{keep}", status_code=303)
    query = tenant_query(filters, who).model_dump()
    ctx = context(request)
    if (await _form(request)).get("confirm") != "yes":
        n = sum((await ctx.call("counts", query)).values())
        shown = [(k, v) for k, v in request.query_params.multi_items() if v and k not in ("cursor", "msg")]
        return _page("cancel.html", "Cancel tasks", who, n=n, filters=shown, search=keep)
    await ctx.call("cancel_matching", query, MAX_BULK_CANCEL)
    return RedirectResponse(f"/ui?{keep}&msg=bulk-cancelled" if keep else "/ui?msg=bulk-cancelled", status_code=303)


@router.get("/ui/tasks/{task_id}")
async def task_detail(request: Request, task_id: str):
    """One task: its facts, arguments, result or error, and earlier attempts."""
    who = _who(request)
    if who is None:
        return _to_login()
    try:
        r = await context(request).call("get", task_id, who.tenant)
    except RaylaneError as e:
        return _page("task.html", "Not found", who, task_id=task_id, problem=problem_of(e).message)
    facts = [
        ("id", r.id),
        ("name", r.name),
        ("queue", r.queue),
        ("tags", ", ".join(r.tags)),
        ("attempt", r.attempt),
        ("version", r.version),
        ("timeout", f"{r.timeout_s:g} s" if r.timeout_s else "none"),
        ("created", _when(r.created_at)),
        ("started", _when(r.started_at)),
        ("finished", _when(r.finished_at)),
        ("updated", _when(r.updated_at)),
        ("worker", r.worker or "–"),
    ]
    if r.progress is not None:
        facts.append(("progress", f"{r.progress:.0%}" + (f" – {r.progress_message}" if r.progress_message else "")))
    return _page(
        "task.html",
        r.name,
        who,
        r=r,
        facts=facts,
        can_cancel=not r.finished and who.can_write,
        can_retry=r.finished and who.can_write,
        message=_MESSAGES.get(request.query_params.get("msg", ""), ""),
    )


@router.post("/ui/tasks/{task_id}/cancel")
async def task_cancel(request: Request, task_id: str):
    """Cancel a task from its page."""
    return await _act(request, task_id, "cancel", done="cancelled", refused="finished")


@router.post("/ui/tasks/{task_id}/retry")
async def task_retry(request: Request, task_id: str):
    """Start a new attempt of a finished task from its page."""
    return await _act(request, task_id, "retry", done="retried", refused="unfinished")


async def _act(request: Request, task_id: str, method: str, done: str, refused: str) -> Response:
    """Call ``method`` on the task for a writer of this origin, and show its page again with
    the message ``done``, or ``refused`` if the task's state did not allow it (409)."""
    who = _who(request)
    if who is None:
        return _to_login()
    if not _same_origin(request) or not who.can_write:
        return Response("not allowed", status_code=403)
    try:
        await context(request).call(method, task_id, who.tenant)
        msg = done
    except RaylaneError as e:
        if problem_of(e).status != 409:
            raise
        msg = refused
    return RedirectResponse(f"/ui/tasks/{task_id}?msg={msg}", status_code=303)
