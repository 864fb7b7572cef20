"""raylane's web page: live counts, a searchable task table, a task's detail, and cancel.

Plain server-rendered HTML from the HTTP API's application, with a few lines of script
for the live counts. Signing in stores the API token in an HttpOnly, SameSite=Strict
cookie, so the page works with the same tokens and tenants as the API; form posts must
also come from the page's own origin.
"""
from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from raylane.errors import RaylaneError
from raylane.states import TaskState
from raylane.tokens import Principal

COOKIE = "raylane_token"
PAGE_SIZE = 25

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600} header form{margin-left:auto}
main{padding:16px 24px;max-width:1200px}
.counts{display:flex;gap:10px;flex-wrap:wrap;margin-bottom:16px}
.count{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 14px;min-width:90px}
.count b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e7}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{background:#eef0f4} td.mono,code,pre{font-family:ui-monospace,monospace;font-size:12px}
pre{background:#fff;border:1px solid #dde1e7;padding:8px;overflow:auto;max-height:320px}
form.search{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:12px} input,select,button{font:inherit;padding:4px 8px}
.state{font-weight:600} .SUCCEEDED{color:#17803d} .FAILED,.TIMED_OUT{color:#b42318} .CANCELLED{color:#6b7280}
.RUNNING{color:#1d4ed8} .PENDING{color:#a16207} .note{padding:8px 12px;background:#fff7d6;border:1px solid #f0d98c}
.pager{margin-top:10px;display:flex;gap:16px} button.danger{background:#b42318;color:#fff;border:0;border-radius:4px}
"""

_LIVE = """
const STATES = %s;
async function tick() {
  try {
    const r = await fetch('/ui/counts' + location.search, {credentials: 'same-origin'});
    if (!r.ok) return;
    const c = await r.json();
    for (const s of STATES) document.getElementById('count-' + s).textContent = c.counts[s] || 0;
    document.getElementById('count-total').textContent = c.total;
  } catch (e) {}
}
setInterval(tick, 2000);
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _when(value: Optional[datetime]) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else "–"


def _page(title: str, body: str, who: Optional[Principal] = None, script: str = "") -> HTMLResponse:
    nav = ""
    if who is not None:
        nav = (f'<span>tenant <b id="tenant">{_e(who.tenant)}</b>{" (read-only)" if not who.can_write else ""}</span>'
               '<form method="post" action="/logout"><button>Sign out</button></form>')
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)} · raylane</title>'
           f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
           f'<body><header><a href="/ui">raylane</a>{nav}</header><main>{body}</main>'
           f'{f"<script>{script}</script>" if script else ""}</body></html>')
    return HTMLResponse(doc, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                      "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                 "script-src 'unsafe-inline'; frame-ancestors 'none'"})


def _who(request: Request) -> Optional[Principal]:
    from raylane.api import context
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


def _filters(request: Request) -> tuple[dict, Optional[str]]:
    """The search form's filters, and what was wrong with it if something was (that field is left out)."""
    from raylane.api import ApiProblem, task_filters
    q = request.query_params
    states = [TaskState(s) for s in q.getlist("state") if s in TaskState.__members__]
    fields = dict(state=states or None, name=q.get("name"), queue=q.get("queue"),
                  tag=[t for t in q.getlist("tag") if t] or None, since=q.get("since") or None, until=None,
                  text=q.get("text"))
    try:
        return task_filters(**fields), None
    except ApiProblem as e:
        return task_filters(**{**fields, "since": None}), f"{e.message}; searched without it"


def add_pages(app: FastAPI) -> None:
    """Add the web page's routes to the API's application (they are left out of the OpenAPI document)."""
    from raylane.api import ApiProblem, context, decode_cursor, encode_cursor, problem_of, tenant_query

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui", status_code=303)

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request, failed: int = 0):
        note = '<p class="note" id="login-failed">That token is not valid.</p>' if failed else ""
        return _page("Sign in", f"""<h1>Sign in</h1>{note}
<form method="post" action="/login"><p><label>API token<br>
<input type="password" name="token" id="token" size="70" autocomplete="off" required></label></p>
<p><button id="sign-in">Sign in</button></p>
<p>Make a token with <code>raylane token create --tenant NAME</code>.</p></form>""")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        if not _same_origin(request):
            return Response("cross-site form post refused", status_code=403)
        token = (await _form(request)).get("token", "").strip()
        if context(request).tokens.verify(token) is None:
            return RedirectResponse("/login?failed=1", status_code=303)
        resp = RedirectResponse("/ui", status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout():
        resp = _to_login()
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/ui/counts", include_in_schema=False)
    async def live_counts(request: Request):
        who = _who(request)
        if who is None:
            return JSONResponse({"error": "sign in"}, status_code=401)
        counts = await context(request).call("counts", tenant_query(_filters(request)[0], who).model_dump())
        return {"counts": counts, "total": sum(counts.values())}

    @app.get("/ui", include_in_schema=False)
    async def task_list(request: Request):
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
        boxes = "".join(f'<div class="count"><span class="{s.value}">{s.value}</span><b id="count-{s.value}">'
                        f'{counts.get(s.value, 0)}</b></div>' for s in TaskState)
        boxes += f'<div class="count">total<b id="count-total">{sum(counts.values())}</b></div>'
        chosen = set(q.getlist("state"))
        options = "".join(f'<option value="{s.value}"{" selected" if s.value in chosen else ""}>{s.value}</option>'
                          for s in TaskState)
        form = f"""<form class="search" method="get" action="/ui" id="search">
<select name="state" id="f-state"><option value="">any state</option>{options}</select>
<input name="name" id="f-name" placeholder="task name" value="{_e(q.get('name'))}">
<input name="tag" id="f-tag" placeholder="tag" value="{_e(q.get('tag'))}">
<input name="text" id="f-text" placeholder="words in the error" value="{_e(q.get('text'))}" size="30">
<input name="since" id="f-since" placeholder="since (ISO 8601)" value="{_e(q.get('since'))}">
<button id="f-go">Search</button> <a href="/ui">clear</a></form>"""
        rows = "".join(
            f'<tr class="task"><td class="mono"><a href="/ui/tasks/{r.id}">{r.id}</a></td><td>{_e(r.name)}</td>'
            f'<td class="state {r.state.value}">{r.state.value}</td><td>{r.attempt}</td><td>{_when(r.created_at)}</td>'
            f'<td>{_e(", ".join(r.tags))}</td><td>{_e((r.error or "")[:80])}</td></tr>' for r in records)
        table = (f'<table id="tasks"><tr><th>id</th><th>name</th><th>state</th><th>attempt</th><th>created (UTC)</th>'
                 f'<th>tags</th><th>error</th></tr>{rows}</table>' if records else '<p id="no-tasks">No tasks match.</p>')
        keep = [(k, v) for k, v in q.multi_items() if k != "cursor"]
        pager = '<div class="pager">'
        if after is not None:
            pager += f'<a href="/ui?{_e(urlencode(keep))}">first page</a>'
        if nxt is not None:
            pager += f'<a id="next-page" href="/ui?{_e(urlencode(keep + [("cursor", encode_cursor(nxt))]))}">next page</a>'
        pager += "</div>"
        live = _LIVE % json.dumps([s.value for s in TaskState])
        note = f'<p class="note" id="search-problem">{_e(problem)}</p>' if problem else ""
        return _page("Tasks", f'<h1>Tasks</h1><div class="counts" id="counts">{boxes}</div>{form}{note}{table}{pager}',
                     who, live)

    @app.get("/ui/tasks/{task_id}", include_in_schema=False)
    async def task_detail(request: Request, task_id: str):
        who = _who(request)
        if who is None:
            return _to_login()
        try:
            r = await context(request).call("get", task_id, who.tenant)
        except RaylaneError as e:
            p = problem_of(e)
            return _page("Not found", f'<h1>Task {_e(task_id)}</h1><p class="note">{_e(p.message)}</p>', who)
        note = {"cancelled": "The task was cancelled.", "finished": "The task had already finished; nothing to cancel."}
        msg = note.get(request.query_params.get("msg", ""), "")
        rows = [("id", r.id), ("name", r.name), ("queue", r.queue), ("tags", ", ".join(r.tags)), ("attempt", r.attempt),
                ("version", r.version), ("timeout", f"{r.timeout_s:g} s" if r.timeout_s else "none"),
                ("created", _when(r.created_at)), ("started", _when(r.started_at)),
                ("finished", _when(r.finished_at)), ("updated", _when(r.updated_at)), ("worker", r.worker or "–")]
        facts = "".join(f"<tr><th>{k}</th><td id=\"d-{k}\">{_e(v)}</td></tr>" for k, v in rows)
        cancel = ""
        if not r.finished and who.can_write:
            cancel = (f'<form method="post" action="/ui/tasks/{r.id}/cancel">'
                      f'<button class="danger" id="cancel">Cancel task</button></form>')
        parts = [f'<h1>{_e(r.name)}</h1>', f'<p class="note" id="message">{msg}</p>' if msg else "",
                 f'<p>State: <span class="state {r.state.value}" id="state">{r.state.value}</span></p>', cancel,
                 f"<table>{facts}</table>",
                 "<h2>Arguments</h2>", f'<pre id="args">{_e(json.dumps({"args": r.args, "kwargs": r.kwargs}, indent=2))}</pre>']
        if r.state is TaskState.SUCCEEDED:
            parts += ["<h2>Result</h2>", f'<pre id="result">{_e(json.dumps(r.result, indent=2))}</pre>']
        if r.error:
            parts += ["<h2>Error</h2>", f'<p id="error"><b>{_e(r.error_type)}</b>: {_e(r.error)}</p>']
        if r.traceback:
            parts += [f'<pre id="traceback">{_e(r.traceback)}</pre>']
        if r.attempts:
            arows = "".join(f"<tr><td>{a.attempt}</td><td>{_e(a.state)}</td><td>{_e(a.error_type)}: {_e(a.error)}</td>"
                            f"<td>{_when(a.started_at)}</td><td>{_when(a.finished_at)}</td></tr>" for a in r.attempts)
            parts += ["<h2>Earlier attempts</h2>", f'<table id="attempts"><tr><th>attempt</th><th>state</th><th>error</th>'
                      f'<th>started</th><th>finished</th></tr>{arows}</table>']
        return _page(r.name, "".join(parts), who)

    @app.post("/ui/tasks/{task_id}/cancel", include_in_schema=False)
    async def task_cancel(request: Request, task_id: str):
        who = _who(request)
        if who is None:
            return _to_login()
        if not _same_origin(request) or not who.can_write:
            return Response("not allowed", status_code=403)
        try:
            await context(request).call("cancel", task_id, who.tenant)
            msg = "cancelled"
        except RaylaneError as e:
            if problem_of(e).status != 409:
                raise
            msg = "finished"
        return RedirectResponse(f"/ui/tasks/{task_id}?msg={msg}", status_code=303)
