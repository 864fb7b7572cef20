"""The HTTP API on Ray Serve: every endpoint and error code, tokens, and tenant isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import wait_until

import raylane

API = "/api/v1"


@raylane.task(name="test.http.fail")
def fail_with(message: str) -> None:
    raise ValueError(message)


@raylane.task(name="test.http.sleep")
def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def error_of(resp, status: int, code: str) -> str:
    """Check the stable error shape and return the message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "code", "message"}, body
    assert body["error"]["status"] == status and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["message"]


@pytest.fixture
def tenant(unique) -> str:
    return f"t-{unique}"


@pytest.fixture
def api(http_api, tenant):
    """A client with a write token of a fresh tenant."""
    s = http_api.client(http_api.token(tenant))
    s.base = http_api.url
    return s


def submit(api, **task) -> str:
    resp = api.post(f"{api.base}{API}/tasks", json=task)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_openapi_document_and_health(http_api):
    doc = http_api.client(None).get(f"{http_api.url}/openapi.json").json()
    assert {
        "/api/v1/tasks",
        "/api/v1/batches",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/{task_id}/wait",
        "/api/v1/tasks/{task_id}/cancel",
        "/api/v1/counts",
    } <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert http_api.client(None).get(f"{http_api.url}/healthz").json() == {"status": "ok"}
    # No page that would load scripts from a CDN.
    error_of(http_api.client(None).get(f"{http_api.url}/docs"), 404, "not_found")


def test_submit_wait_and_result(api, tenant, rl):
    task_id = submit(api, name="raylane.echo", args=[1, "two"], kwargs={"x": [3]}, tags=["web"])
    resp = api.get(f"{api.base}{API}/tasks/{task_id}/wait", params={"timeout": 30})
    assert resp.status_code == 200
    view = resp.json()
    assert view["state"] == "SUCCEEDED" and view["finished"] is True
    assert view["result"] == {"args": [1, "two"], "kwargs": {"x": [3]}}
    assert view["tenant"] == tenant and view["tags"] == ["web"] and view["version"] == 3
    got = api.get(f"{api.base}{API}/tasks/{task_id}").json()
    assert got == view
    # The SDK inside the cluster needs no token and sees the same record.
    assert rl.get(task_id).tenant == tenant


def test_wait_returns_current_record_after_timeout(api):
    task_id = submit(api, name="test.http.sleep", args=[30])
    view = api.get(f"{api.base}{API}/tasks/{task_id}/wait", params={"timeout": 0.5}).json()
    assert view["finished"] is False and view["state"] in ("PENDING", "RUNNING")
    cancelled = api.post(f"{api.base}{API}/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    error_of(api.post(f"{api.base}{API}/tasks/{task_id}/cancel"), 409, "already_finished")


def test_batch_is_all_or_nothing(api, unique, rl):
    tag = f"b{unique}"
    good = [{"name": "raylane.echo", "args": [i], "tags": [tag]} for i in range(3)]
    resp = api.post(f"{api.base}{API}/batches", json={"tasks": good})
    assert resp.status_code == 201
    ids = resp.json()["ids"]
    assert len(set(ids)) == 3
    bad = [*good, {"name": "no.such.task", "tags": [tag]}]
    assert "task #3" in error_of(api.post(f"{api.base}{API}/batches", json={"tasks": bad}), 400, "unknown_task")
    for i in ids:
        assert api.get(f"{api.base}{API}/tasks/{i}/wait").json()["state"] == "SUCCEEDED"
    rl.refresh()
    assert api.get(f"{api.base}{API}/counts", params={"tag": tag}).json() == {"counts": {"SUCCEEDED": 3}, "total": 3}
    error_of(api.post(f"{api.base}{API}/batches", json={"tasks": []}), 422, "validation_error")


def test_search_filters_and_pages(api, unique, rl):
    tag = f"s{unique}"
    before = datetime.now(UTC)
    ok = [submit(api, name="raylane.echo", args=[i], tags=[tag]) for i in range(5)]
    bad = [
        submit(api, name="test.http.fail", args=[f"disk quota exceeded {unique}"], tags=[tag]),
        submit(api, name="test.http.fail", args=["network unreachable"], tags=[tag]),
    ]
    for i in ok + bad:
        api.get(f"{api.base}{API}/tasks/{i}/wait")
    rl.refresh()

    def ids(**params):
        resp = api.get(f"{api.base}{API}/tasks", params={"tag": tag, **params})
        assert resp.status_code == 200, resp.text
        return [t["id"] for t in resp.json()["tasks"]]

    assert set(ids()) == set(ok + bad)
    assert set(ids(state="FAILED")) == set(bad)
    assert set(ids(state=["SUCCEEDED", "FAILED"])) == set(ok + bad)
    assert set(ids(name="raylane.echo")) == set(ok)
    assert ids(text=f"quota {unique}") == [bad[0]]
    assert ids(since=before.isoformat()) and ids(until=before.isoformat()) == []
    assert ids(since=(before + timedelta(hours=1)).isoformat()) == []
    # Pages of 3, chained by cursor: every task once, newest first.
    seen, cursor = [], None
    while True:
        page = api.get(
            f"{api.base}{API}/tasks", params={"tag": tag, "limit": 3, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ok + bad) and len(seen) == 7
    created = [rl.get(i).created_at for i in seen]
    assert created == sorted(created, reverse=True)
    counts = api.get(f"{api.base}{API}/counts", params={"tag": tag}).json()
    assert counts == {"counts": {"SUCCEEDED": 5, "FAILED": 2}, "total": 7}
    assert api.get(f"{api.base}{API}/counts", params={"tag": tag, "state": "FAILED"}).json()["total"] == 2


def test_authentication_and_scopes(http_api, unique):
    url = http_api.url
    anonymous = http_api.client(None)
    resp = anonymous.get(f"{url}{API}/counts")
    error_of(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"].startswith("Bearer")
    error_of(http_api.client("rl_000000000000_" + "x" * 43).get(f"{url}{API}/counts"), 401, "unauthorized")
    error_of(
        http_api.client("not-a-token").post(f"{url}{API}/tasks", json={"name": "raylane.echo"}), 401, "unauthorized"
    )

    writer = http_api.client(http_api.token(f"a-{unique}"))
    task_id = writer.post(f"{url}{API}/tasks", json={"name": "test.http.sleep", "args": [30]}).json()["id"]
    reader = http_api.client(http_api.token(f"a-{unique}", scope="read"))
    assert reader.get(f"{url}{API}/tasks/{task_id}").status_code == 200
    error_of(reader.post(f"{url}{API}/tasks", json={"name": "raylane.echo"}), 403, "forbidden")
    error_of(reader.post(f"{url}{API}/tasks/{task_id}/cancel"), 403, "forbidden")
    assert writer.post(f"{url}{API}/tasks/{task_id}/cancel").json()["state"] == "CANCELLED"

    # A revoked token stops working at once.
    entry, token = http_api.tokens.create(f"a-{unique}")
    client = http_api.client(token)
    assert client.get(f"{url}{API}/counts").status_code == 200
    assert http_api.tokens.revoke(entry.id)
    error_of(client.get(f"{url}{API}/counts"), 401, "unauthorized")


def test_error_codes(api, settings):
    base = f"{api.base}{API}"
    error_of(api.get(f"{base}/tasks/{'0' * 32}"), 404, "task_not_found")
    error_of(api.get(f"{base}/tasks/not-an-id/wait"), 404, "task_not_found")
    error_of(api.post(f"{base}/tasks/{'0' * 32}/cancel"), 404, "task_not_found")
    error_of(api.get(f"{api.base}/api/v1/nothing"), 404, "not_found")
    resp = api.delete(f"{base}/tasks")
    error_of(resp, 405, "method_not_allowed")
    assert set(resp.headers["allow"].split(", ")) == {"GET", "POST"}
    # 400: not JSON, a task nobody registered, a queue that does not exist, a cursor not handed out.
    error_of(
        api.post(f"{base}/tasks", data=b'{"name": "raylane.echo"', headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    error_of(api.post(f"{base}/tasks", json={"name": "no.such.task"}), 400, "unknown_task")
    assert "does not exist" in error_of(
        api.post(f"{base}/tasks", json={"name": "raylane.echo", "queue": "nope-queue-x"}), 400, "invalid_input"
    )
    error_of(api.get(f"{base}/tasks", params={"cursor": "bm90IGEgY3Vyc29y"}), 400, "invalid_cursor")
    # 422: the request does not fit the schema; a tenant cannot be chosen in the body.
    error_of(api.post(f"{base}/tasks", json={"args": []}), 422, "validation_error")
    error_of(
        api.post(f"{base}/tasks", json={"name": "raylane.echo", "tenant": "someone-else"}), 422, "validation_error"
    )
    error_of(api.post(f"{base}/tasks", json={"name": "raylane.echo", "timeout_s": -1}), 422, "validation_error")
    error_of(api.get(f"{base}/tasks", params={"limit": 0}), 422, "validation_error")
    error_of(api.get(f"{base}/tasks", params={"state": "DONE"}), 422, "validation_error")
    error_of(api.get(f"{base}/tasks", params={"since": "yesterday"}), 422, "validation_error")
    error_of(api.get(f"{base}/counts", params={"tag": [f"t{i}" for i in range(51)]}), 422, "validation_error")
    # 400: it fits the schema, but no record can hold the time.
    late = {"name": "raylane.echo", "eta": "2300-01-01T00:00:00Z"}
    error_of(api.post(f"{base}/tasks", json=late), 400, "invalid_input")
    error_of(api.post(f"{base}/batches", json={"tasks": [late]}), 400, "invalid_input")
    error_of(api.get(f"{base}/tasks/{'0' * 32}/wait", params={"timeout": 61}), 422, "validation_error")
    # 413: arguments over the payload limit, and a body over the HTTP limit (refused before it is read).
    big = "x" * (settings.max_payload_bytes + 10)
    error_of(api.post(f"{base}/tasks", json={"name": "raylane.echo", "args": [big]}), 413, "payload_too_large")
    huge = b'{"name": "raylane.echo", "args": ["' + b"y" * settings.http_max_body_bytes + b'"]}'
    error_of(api.post(f"{base}/tasks", data=huge, headers={"content-type": "application/json"}), 413, "body_too_large")


def test_tenants_are_isolated(http_api, unique, rl):
    url = http_api.url
    a_name, b_name = f"a-{unique}", f"b-{unique}"
    a = http_api.client(http_api.token(a_name))
    b = http_api.client(http_api.token(b_name))
    tag = f"iso{unique}"
    done = a.post(f"{url}{API}/tasks", json={"name": "raylane.echo", "args": [1], "tags": [tag]}).json()["id"]
    running = a.post(f"{url}{API}/tasks", json={"name": "test.http.sleep", "args": [30], "tags": [tag]}).json()["id"]
    mine = b.post(f"{url}{API}/tasks", json={"name": "raylane.echo", "args": [2], "tags": [tag]}).json()["id"]
    a.get(f"{url}{API}/tasks/{done}/wait")
    b.get(f"{url}{API}/tasks/{mine}/wait")
    rl.refresh()

    for task_id in (done, running):
        error_of(b.get(f"{url}{API}/tasks/{task_id}"), 404, "task_not_found")
        error_of(b.get(f"{url}{API}/tasks/{task_id}/wait", params={"timeout": 0}), 404, "task_not_found")
        error_of(b.post(f"{url}{API}/tasks/{task_id}/cancel"), 404, "task_not_found")
    assert rl.get(running).state.value in ("PENDING", "RUNNING")  # B's cancel did nothing

    def b_ids(**params):
        return {t["id"] for t in b.get(f"{url}{API}/tasks", params=params).json()["tasks"]}

    assert b_ids(tag=tag) == {mine}
    assert b.get(f"{url}{API}/counts", params={"tag": tag}).json() == {"counts": {"SUCCEEDED": 1}, "total": 1}
    # Attempts to steer the filter: a tenant parameter is not one of the API's, and text is matched as words.
    assert b_ids(tag=tag, tenant=a_name) == {mine}
    assert b_ids(text=f"* OR tenant:{a_name}") == set()
    assert b.get(f"{url}{API}/counts", params={"tenant": a_name, "tag": tag}).json()["total"] == 1
    # A sees its own two, and the SDK (inside the cluster, no token) sees all three.
    assert {t["id"] for t in a.get(f"{url}{API}/tasks", params={"tag": tag}).json()["tasks"]} == {done, running}
    assert {r.id for r in rl.search(tag=tag)} == {done, running, mine}
    assert rl.counts(tag=tag)  # the SDK counts across tenants
    assert a.post(f"{url}{API}/tasks/{running}/cancel").json()["state"] == "CANCELLED"


def test_token_command(tmp_path, http_api):
    env = {**os.environ, "RAYLANE_TOKEN_FILE": str(tmp_path / "tokens.json")}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "raylane.cli", "token", *args], env=env, capture_output=True, text=True, timeout=60
        )

    made = run("create", "--tenant", "acme", "--note", "ci")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("rl_") and "shown only now" in made.stderr
    kept = (tmp_path / "tokens.json").read_text()
    assert token not in kept and token.split("_", 2)[2] not in kept  # the secret may hold "_" itself
    entry = json.loads(kept)["tokens"][0]
    assert entry["tenant"] == "acme" and len(entry["sha256"]) == 64
    assert oct((tmp_path / "tokens.json").stat().st_mode & 0o777) == "0o600"
    listed = run("list")
    assert entry["id"] in listed.stdout and "acme" in listed.stdout and token not in listed.stdout
    bad = run("create", "--tenant", "Not A Tenant")
    assert bad.returncode == 2 and "must match" in bad.stderr
    assert run("revoke", entry["id"]).returncode == 0
    assert run("revoke", entry["id"]).returncode == 3  # no such token
    assert json.loads((tmp_path / "tokens.json").read_text())["tokens"] == []


def test_cancel_a_running_task_over_http(api, rl):
    task_id = submit(api, name="test.http.sleep", args=[30])
    wait_until(lambda: rl.get(task_id).state.value == "RUNNING", timeout=60, what="the task to run")
    view = api.post(f"{api.base}{API}/tasks/{task_id}/cancel").json()
    assert view["state"] == "CANCELLED" and view["finished"] is True
    final = api.get(f"{api.base}{API}/tasks/{task_id}/wait", params={"timeout": 5}).json()
    assert final["state"] == "CANCELLED"


def test_serve_command_prints_the_url(http_api, settings):
    env = {**os.environ, "RAYLANE_TOKEN_FILE": str(http_api.tokens.path)}
    run = subprocess.run(
        [sys.executable, "-m", "raylane.cli", "serve"], env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-3000:]
    url = run.stdout.strip().splitlines()[-1]
    assert url == f"http://{settings.http_host}:{settings.http_port}" == http_api.url
    token = http_api.token("served")
    wait_until(
        lambda: http_api.client(token).get(f"{url}{API}/counts").status_code == 200,
        timeout=60,
        what="the redeployed API to answer",
    )


def test_a_workflow_over_http(api, tenant, rl):
    echo = {"name": "raylane.echo"}
    body = {
        "steps": [
            {"task": {**echo, "args": [1]}},
            {"task": {**echo, "args": [2]}},
            {"task": {**echo, "kwargs": {"k": 3}}, "after": [0, 1], "takes": "results"},
        ]
    }
    resp = api.post(f"{api.base}{API}/workflows", json=body)
    assert resp.status_code == 201, resp.text
    flow = resp.json()
    assert len(flow["ids"]) == 3
    last = api.get(f"{api.base}{API}/tasks/{flow['ids'][2]}/wait").json()
    assert last["state"] == "SUCCEEDED" and last["tenant"] == tenant
    assert last["result"] == {"args": [[{"args": [1], "kwargs": {}}, {"args": [2], "kwargs": {}}]], "kwargs": {"k": 3}}
    assert last["workflow_id"] == flow["workflow_id"] and last["parent_id"] == flow["ids"][0]
    rl.refresh()
    listed = api.get(f"{api.base}{API}/tasks", params={"workflow": flow["workflow_id"]}).json()["tasks"]
    assert sorted(t["id"] for t in listed) == sorted(flow["ids"])
    # A step may wait only for steps before it; nothing is written then.
    bad = {"steps": [{"task": echo, "after": [1]}, {"task": echo}]}
    error_of(api.post(f"{api.base}{API}/workflows", json=bad), 400, "invalid_input")
