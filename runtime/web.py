"""raylane's web page: live counts, a searchable task table, a task's detail, cancel and retry.

Server-rendered from Jinja2 templates (runtime/templates, autoescaped) by a router of the
HTTP API's application, with its style sheet and a few lines of script served by the app
itself (no CDN). Signing in stores the API token in an HttpOnly, SameSite=Strict cookie, so
the page works with the same tokens and tenants as the API; form posts must also come from
the page's own origin.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from raylane import charts
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


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min"


_templates.filters["seconds"] = _seconds


def timeline(r: Any, now: datetime | None = None) -> list[dict]:
    """Every attempt of a task's record, oldest first: when it was queued (its task's creation,
    or the end of the attempt before), started and ended, its wait and run in seconds, and the
    bar that draws them on one scale (percent of the longest attempt)."""
    now = now or datetime.now(UTC)
    rows: list[dict] = []
    queued = r.created_at
    ends = [*r.attempts, r]
    for a in ends:
        state = a.state.value if isinstance(a.state, TaskState) else a.state
        ended = a.finished_at if a.finished_at is not None else (None if state in ("PENDING", "SCHEDULED") else now)
        start = a.started_at
        rows.append(
            {
                "attempt": a.attempt,
                "state": state,
                "queued_at": queued,
                "started_at": start,
                "finished_at": a.finished_at,
                "wait_s": ((start or ended or now) - queued).total_seconds(),
                "run_s": (ended - start).total_seconds() if start and ended else None,
            }
        )
        queued = a.finished_at or queued
    longest = max((row["wait_s"] + (row["run_s"] or 0.0) for row in rows), default=0.0) or 1.0
    for row in rows:
        row["wait_pct"] = round(100 * row["wait_s"] / longest, 2)
        row["run_pct"] = round(100 * (row["run_s"] or 0.0) / longest, 2)
    return rows


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
    "paused": "The queue is paused: no task of it starts until it is resumed.",
    "resumed": "The queue is resumed.",
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
        timeline=timeline(r),
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


# ---------------------------------------------------------------- activity: charts


def _chart(svg: str) -> Response:
    return Response(svg, media_type="image/svg+xml", headers=_HEADERS)


@router.get("/ui/activity")
async def activity_page(request: Request):
    """Charts of the tenant's tasks over a range: ends per bucket by state, queue wait and run
    time percentiles, and the backlog per queue; they refresh every ten seconds."""
    who = _who(request)
    if who is None:
        return _to_login()
    chosen = request.query_params.get("range", "1h")
    chosen = chosen if chosen in charts.RANGES else "1h"
    now = datetime.now(UTC)
    since, seconds = charts.window(now, chosen)
    ctx = context(request)
    ends = await ctx.call("ends", tenant_query(task_filters(), who).model_dump(), since)
    buckets = charts.activity(ends, now, seconds)
    done = [e for e in ends if e.started_at is not None]
    summary = {
        "ended": len(ends),
        "succeeded": sum(e.state == "SUCCEEDED" for e in ends),
        "wait_p50": charts.percentile([(e.started_at - e.created_at).total_seconds() for e in done], 50),
        "run_p50": charts.percentile([(e.finished_at - e.started_at).total_seconds() for e in done], 50),
        "run_p95": charts.percentile([(e.finished_at - e.started_at).total_seconds() for e in done], 95),
        "per_minute": len(ends) / (seconds / 60),
        "sampled": len(ends) >= 10_000,
    }
    return _page(
        "activity.html",
        "Activity",
        who,
        ranges=list(charts.RANGES),
        chosen=chosen,
        summary=summary,
        width=charts.bucket_seconds(seconds),
        buckets=len(buckets),
    )


@router.get("/ui/charts/{name}.svg")
async def chart(request: Request, name: str):
    """One chart of the activity page, as SVG: ``ended``, ``latency`` or ``backlog``."""
    who = _who(request)
    if who is None:
        return Response("sign in", status_code=401)
    chosen = request.query_params.get("range", "1h")
    now = datetime.now(UTC)
    since, seconds = charts.window(now, chosen)
    ctx = context(request)
    query = tenant_query(task_filters(), who).model_dump()
    if name == "backlog":
        queues = await ctx.call("queue_overview", who.tenant)
        values = {
            q["queue"]: {"PENDING": q["pending"], "SCHEDULED": q["scheduled"], "RUNNING": q["running"]} for q in queues
        }
        return _chart(
            charts.bars("Backlog per queue, now", values, ["PENDING", "SCHEDULED", "RUNNING"], charts.LINE_COLOURS)
        )
    if name not in ("ended", "latency"):
        return Response("no such chart", status_code=404)
    buckets = charts.activity(await ctx.call("ends", query, since), now, seconds)
    width = charts.bucket_seconds(seconds)
    if name == "ended":
        return _chart(charts.stacked_bars(f"Tasks ended per {_span(width)}, by state", buckets))
    series = {
        "queue wait p50": [charts.percentile(b.waits, 50) for b in buckets],
        "queue wait p95": [charts.percentile(b.waits, 95) for b in buckets],
        "run time p50": [charts.percentile(b.runs, 50) for b in buckets],
        "run time p95": [charts.percentile(b.runs, 95) for b in buckets],
    }
    return _chart(charts.lines(f"Queue wait and run time per {_span(width)}", [b.start for b in buckets], series))


def _span(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


# ---------------------------------------------------------------- the operator's views


def _operator(request: Request) -> tuple[Principal | None, Response | None]:
    """The signed-in operator, or the answer for anyone else (sign in, or a page that says why)."""
    who = _who(request)
    if who is None:
        return None, _to_login()
    if not who.is_operator:
        page = _page("operator.html", "Operators only", who)
        page.status_code = 403
        return None, page
    return who, None


@router.get("/ui/queues")
async def queues_page(request: Request):
    """Every queue: Kafka lag, PENDING, SCHEDULED and RUNNING tasks, and whether it is paused,
    with pause and resume buttons (operator tokens only)."""
    who, refused = _operator(request)
    if refused is not None:
        return refused
    queues = await context(request).call("queue_overview", None)
    message = _MESSAGES.get(request.query_params.get("msg", ""), "")
    return _page("queues.html", "Queues", who, queues=queues, message=message)


@router.get("/ui/queues.json")
async def queues_live(request: Request):
    """The queue table's numbers, for its live refresh."""
    who = _who(request)
    if who is None or not who.is_operator:
        return JSONResponse({"error": "an operator token is needed"}, status_code=403)
    return {"queues": await context(request).call("queue_overview", None)}


@router.post("/ui/queues/{queue}/{action}")
async def queue_switch(request: Request, queue: str, action: str):
    """Pause or resume a queue from the queue view."""
    _, refused = _operator(request)
    if refused is not None:
        return refused
    if not _same_origin(request) or action not in ("pause", "resume"):
        return Response("not allowed", status_code=403)
    await context(request).call("set_paused", queue, action == "pause")
    return RedirectResponse(f"/ui/queues?msg={action}d", status_code=303)


@router.get("/ui/executors")
async def executors_page(request: Request):
    """Every Executor: its node, tasks running, Ray tasks and lease (operator tokens only)."""
    who, refused = _operator(request)
    if refused is not None:
        return refused
    executors = await context(request).call("executor_overview")
    return _page("executors.html", "Executors", who, executors=executors)


@router.get("/ui/dlq")
async def dead_letters_page(request: Request):
    """The newest dead letters, with the reason each was set aside (operator tokens only)."""
    who, refused = _operator(request)
    if refused is not None:
        return refused
    letters = await context(request).call("dead_letters", 100)
    return _page("dlq.html", "Dead letters", who, letters=letters)
