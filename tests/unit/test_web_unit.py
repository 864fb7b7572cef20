"""The web page rendered without services: a fake RequestHandler answers, the templates escape."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from raylane.api import build_app
from raylane.apicore import ApiContext, set_context
from raylane.errors import TaskNotFound
from raylane.models import TaskMessage, TaskRecord
from raylane.ratelimit import ConcurrencyLimiter, RateLimiter
from raylane.states import TaskState
from raylane.tokens import TokenFile

HOSTILE = '<script>alert("x")</script>'


def _record(**changes) -> TaskRecord:
    msg = TaskMessage(
        id="ab" * 16, name="demo.add", queue="default", args=[HOSTILE], created_at=datetime.now(UTC), tags=["t1"]
    )
    return TaskRecord.pending(msg).moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED, **changes)


class FakeContext(ApiContext):
    """Answers the web page's calls from fixed records."""

    def __init__(self, tokens: TokenFile, records: list[TaskRecord]):
        super().__init__(None, tokens, RateLimiter(1000, 1000), ConcurrencyLimiter(4))
        self.records = {r.id: r for r in records}
        self.calls: list[str] = []

    async def call(self, method: str, *args):
        self.calls.append(method)
        if method == "counts":
            return {"FAILED": len(self.records)}
        if method == "search":
            return list(self.records.values()), None
        if method == "get":
            if args[0] not in self.records:
                raise TaskNotFound(args[0])
            return self.records[args[0]]
        raise AssertionError(method)


@pytest.fixture
def page(tmp_path):
    tokens = TokenFile(tmp_path / "tokens.json")
    _, token = tokens.create("acme", "read")
    ctx = FakeContext(tokens, [_record(error=HOSTILE, error_type="ValueError")])
    set_context(ctx)
    client = TestClient(build_app())
    client.cookies.set("raylane_token", token)
    yield client, ctx
    set_context(None)


def test_task_list_escapes_what_tasks_carry(page):
    client, ctx = page
    resp = client.get("/ui")
    assert resp.status_code == 200
    assert HOSTILE not in resp.text and "&lt;script&gt;" in resp.text
    assert 'id="count-FAILED">1<' in resp.text and 'id="count-total">1<' in resp.text
    assert ctx.calls == ["counts", "search"]
    assert "script-src" not in resp.headers["content-security-policy"]  # no inline script is allowed


def test_task_detail_and_missing_task(page):
    client, _ = page
    resp = client.get("/ui/tasks/" + "ab" * 16)
    assert resp.status_code == 200 and 'id="state">FAILED<' in resp.text
    assert HOSTILE not in resp.text and 'id="cancel"' not in resp.text  # finished, and a read-only token
    missing = client.get("/ui/tasks/<i>nope<i>")
    assert missing.status_code == 200 and "no task" in missing.text
    assert "<i>nope" not in missing.text and "&lt;i&gt;nope&lt;i&gt;" in missing.text


def test_static_files_are_served_and_nothing_else(page):
    client, _ = page
    assert client.get("/ui/static/raylane.css").headers["content-type"].startswith("text/css")
    assert "setInterval" in client.get("/ui/static/live.js").text
    assert client.get("/ui/static/..%2Fweb.py").status_code == 404


def test_a_wrong_method_names_the_allowed_ones(page):
    client, _ = page
    resp = client.delete("/api/v1/tasks")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert set(resp.headers["allow"].split(", ")) == {"GET", "POST"}


def test_signed_out_goes_to_the_login_form(page):
    client, _ = page
    client.cookies.clear()
    resp = client.get("/ui", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/login"
    form = client.get("/login?failed=1")
    assert 'id="login-failed"' in form.text and '<label for="token">' in form.text


class BulkContext(FakeContext):
    """Also counts by state and cancels by filter, as the RequestHandler would."""

    async def call(self, method: str, *args):
        if method == "counts":
            states = {s.value if hasattr(s, "value") else s for s in args[0].get("state") or []}
            found: dict[str, int] = {}
            for r in self.records.values():
                if not states or r.state.value in states:
                    found[r.state.value] = found.get(r.state.value, 0) + 1
            return found
        if method == "cancel_matching":
            self.calls.append(method)
            self.cancel_query = args[0]
            gone = [i for i, r in self.records.items() if not r.finished]
            for i in gone:
                self.records[i] = self.records[i].moved_to(TaskState.CANCELLED)
            return gone
        return await super().call(method, *args)


def test_a_cancel_by_search_says_how_many_and_cancels_only_once_confirmed(tmp_path):
    tokens = TokenFile(tmp_path / "tokens.json")
    _, token = tokens.create("acme", "write")
    waiting = [
        TaskRecord.pending(TaskMessage(id=f"{i:032x}", name="demo.add", queue="default", created_at=datetime.now(UTC)))
        for i in range(3)
    ]
    ctx = BulkContext(tokens, [*waiting, _record(error="done")])
    set_context(ctx)
    try:
        client = TestClient(build_app())
        client.cookies.set("raylane_token", token)
        listed = client.get("/ui?name=demo.add")
        assert "Cancel the 3 unfinished task(s) matching this search" in listed.text
        asked = client.post("/ui/cancel?name=demo.add", headers={"origin": "http://testserver"})
        assert asked.status_code == 200 and "This cancels <b>3</b> unfinished task(s)" in asked.text
        assert "cancel_matching" not in ctx.calls  # asking cancels nothing
        done = client.post(
            "/ui/cancel?name=demo.add",
            data={"confirm": "yes"},
            headers={"origin": "http://testserver"},
            follow_redirects=False,
        )
        assert done.status_code == 303 and done.headers["location"] == "/ui?name=demo.add&msg=bulk-cancelled"
        assert ctx.cancel_query["name"] == "demo.add" and ctx.cancel_query["tenant"] == "acme"
        assert {s.value for s in ctx.cancel_query["state"]} == {"PENDING", "SCHEDULED", "RUNNING"}
        assert all(r.state is TaskState.CANCELLED for r in list(ctx.records.values())[:3])
        other_site = client.post("/ui/cancel?name=demo.add", data={"confirm": "yes"}, headers={"origin": "http://evil"})
        assert other_site.status_code == 403
    finally:
        set_context(None)


def test_a_read_only_token_cannot_cancel_by_search(page):
    client, ctx = page
    assert 'id="bulk-cancel"' not in client.get("/ui").text
    refused = client.post("/ui/cancel", data={"confirm": "yes"}, headers={"origin": "http://testserver"})
    assert refused.status_code == 403
    assert "cancel_matching" not in ctx.calls


def test_a_query_parameter_given_twice_is_refused_unless_it_takes_a_list(tmp_path):
    tokens = TokenFile(tmp_path / "tokens.json")
    _, token = tokens.create("acme", "read")
    ctx = FakeContext(tokens, [_record(error="e")])
    set_context(ctx)
    try:
        client = TestClient(build_app())
        auth = {"Authorization": f"Bearer {token}"}
        twice = client.get("/api/v1/counts?text=a&text=&tag=e", headers=auth)
        assert twice.status_code == 422 and "'text' is given more than once" in twice.json()["error"]["message"]
        assert ctx.calls == []  # refused before anything is asked
        listed = client.get("/api/v1/counts?tag=a&tag=b&state=FAILED&state=RUNNING&text=x", headers=auth)
        assert listed.status_code == 200 and ctx.calls == ["counts"]
    finally:
        set_context(None)
