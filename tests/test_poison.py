"""Poison isolation and input limits: a hostile argument or result fails its own task, with a
typed error, and never stalls or fails the tasks around it."""

from __future__ import annotations

import concurrent.futures
import sys
import time
import uuid

import pytest
from conftest import wait_until

import raylane
from raylane.client import TaskHandle, _connection
from raylane.errors import ArgumentsTooDeep, InvalidTaskInput, TaskFailed
from raylane.limits import depth_of
from raylane.models import TaskMessage, TaskRecord, utcnow
from raylane.store import OpenSearchStore

API = "/api/v1"


def nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words for it")


@raylane.task(name="test.poison.make")
def make(kind: str) -> object:
    """Return or raise something that a store or a serializer would choke on."""
    if kind == "huge":
        return "x" * (150 << 20)  # 150 MiB: past the result limit and OpenSearch's request limit alike
    if kind == "deep":
        return nested(300)
    if kind == "object":
        return object()  # neither JSON nor anything pydantic can make JSON of
    if kind == "nan":
        return float("nan")
    if kind == "loud":
        raise ValueError("e" * (8 << 20))
    if kind == "unprintable":
        raise _Unprintable()
    if kind == "long-integer":
        return 10**1000  # JSON, but longer than the 1,000 characters OpenSearch reads in a number
    if kind == "surrogate":
        raise ValueError("half of a pair: \ud800")
    if kind == "interrupt":
        raise KeyboardInterrupt("the task's own")  # not a cancel: nobody cancelled it
    if kind == "exit":
        sys.exit(3)  # ends the task, not the worker's process
    return kind


@raylane.task(name="test.poison.depth")
def depth(value: list) -> int:
    """How deeply ``value`` nests."""
    return depth_of(value, 1000)


def by_name(name: str, *args, **options):
    """Submit a task known only by its name, with options, as the request the CLI and HTTP send
    (unchecked on this side: the RequestHandler is the one gate)."""
    return TaskHandle(_connection().call("submit", dict(name=name, args=list(args), **options)))


@pytest.mark.parametrize("levels", [17, 60, 300])
def test_deeply_nested_arguments_are_a_typed_error(rl, unique, levels):
    """Arguments nested past RAYLANE_MAX_DEPTH are refused before anything is written, from a
    task function exactly as from a task known only by its name."""
    queue = f"deep-{unique}"
    for submit in (
        lambda: depth.options(queue=queue).submit(nested(levels)),
        lambda: by_name("raylane.echo", nested(levels), queue=queue),
    ):
        with pytest.raises(ArgumentsTooDeep) as exc:
            submit()
        assert "RAYLANE_MAX_DEPTH" in str(exc.value)
    rl.refresh()
    assert rl.counts(queue=queue) == {}


def test_arguments_at_the_depth_limit_are_stored_and_run(rl):
    """The limit leaves room for the record around the arguments: the deepest value allowed is stored and runs."""
    assert depth.submit(nested(16)).result(timeout=60) == 16


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 0, -1, 8 * 86400])
def test_timeouts_outside_the_range_are_refused(rl, timeout):
    with pytest.raises(InvalidTaskInput, match="timeout"):
        by_name("raylane.echo", 1, timeout_s=timeout)


def test_too_many_or_too_long_tags_are_refused(rl):
    with pytest.raises(InvalidTaskInput, match="at most 50 tags"):
        by_name("raylane.echo", 1, tags=[f"t{i}" for i in range(51)])
    with pytest.raises(InvalidTaskInput, match="1 to 100 characters"):
        by_name("raylane.echo", 1, tags=["x" * 101])


def test_poison_results_fail_alone_and_ordinary_tasks_go_on(rl):
    """Each poison task sits among 50 ordinary ones: it fails at once with its own error type,
    and every ordinary task finishes within 30 s, then and afterwards."""
    poison = {
        "huge": "ResultTooLarge",
        "deep": "ResultNotSerializable",
        "object": "ResultNotSerializable",
        "nan": "ResultNotSerializable",
        "loud": "ValueError",
        "unprintable": "_Unprintable",
        "long-integer": "ResultNotSerializable",
        "surrogate": "ValueError",  # its own error, the surrogate written as \ud800
        "interrupt": "KeyboardInterrupt",
        "exit": "SystemExit",
    }
    handles = {}
    ordinary = []
    for kind in poison:
        handles[kind] = make.submit(kind)
        ordinary += make.submit_many([(f"ok-{kind}-{i}",) for i in range(50)])
    began = time.monotonic()
    for h in ordinary:
        h.wait(timeout=max(1.0, 30 - (time.monotonic() - began)))
    assert [h.record().state.value for h in ordinary] == ["SUCCEEDED"] * len(ordinary)
    for kind, error_type in poison.items():
        with pytest.raises(TaskFailed):
            handles[kind].result(timeout=60)
        rec = handles[kind].record()
        assert rec.error_type == error_type, (kind, rec.error_type, (rec.error or "")[:200])
        assert len(rec.error or "") < 64 * 1024 and len(rec.traceback or "") < 64 * 1024
    assert "RAYLANE_MAX_RESULT_BYTES" in handles["huge"].record().error
    assert handles["surrogate"].record().error == "half of a pair: \\ud800"
    assert handles["interrupt"].record().state.value == "FAILED"  # not CANCELLED, nor retried as lost
    # Afterwards, nothing is left poisoned: plain submits and writes go through.
    later = make.submit_many([(f"later-{i}",) for i in range(100)])
    assert [h.result(timeout=30) for h in later] == [f"later-{i}" for i in range(100)]


def test_bulk_write_with_a_record_the_store_cannot_take(stack, unique):
    """A record over OpenSearch's request limit is refused on its own (413); the records batched
    with it are written, and the store stays usable."""
    alias = f"raylane-test-{unique}"
    store = OpenSearchStore(stack.endpoints().opensearch, alias)
    store.ensure_schema()
    try:

        def record(size: int) -> TaskRecord:
            msg = TaskMessage(
                id=uuid.uuid4().hex, name="raylane.echo", queue="default", args=["x" * size], created_at=utcnow()
            )
            return TaskRecord.pending(msg)

        records = [record(10) for _ in range(5)] + [record(101 << 20)] + [record(10) for _ in range(5)]
        outcomes = store.write_many(records)
        assert [o.accepted for o in outcomes] == [True] * 5 + [False] + [True] * 5
        assert outcomes[5].status == 413 and outcomes[5].refused_for_content
        assert store.get(records[0].id) is not None and store.get(records[5].id) is None
    finally:
        store.client.indices.delete(index=f"{alias}-*", ignore_unavailable=True)
        store.client.indices.delete_index_template(name=f"{alias}-template", ignore=[404])
        store.close()


# ---------------------------------------------------------------- over HTTP


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]


def test_http_deep_arguments_are_a_4xx_not_an_outage(http_api, unique, rl):
    api = http_api.client(http_api.token(f"t-{unique}"))
    for levels in (20, 60, 300):
        resp = api.post(f"{http_api.url}{API}/tasks", json={"name": "raylane.echo", "args": [nested(levels)]})
        err = _error(resp, 400)
        assert err["code"] == "invalid_input" and "RAYLANE_MAX_DEPTH" in err["message"]
    rl.refresh()
    assert api.get(f"{http_api.url}{API}/counts").json()["total"] == 0


def test_http_waits_are_limited_per_token_and_health_stays_fast(http_api, unique, rl, settings):
    """One token holding waits gets 429 past its share; /healthz and other tenants still answer at once."""
    import requests

    greedy = http_api.client(http_api.token(f"greedy-{unique}", "read"))
    other_token = http_api.token(f"other-{unique}")
    other = http_api.client(other_token)
    task_id = other.post(f"{http_api.url}{API}/tasks", json={"name": "raylane.echo", "args": [1]}).json()["id"]
    raylane.get(task_id)
    # A task of the greedy tenant's own that will not finish while the waits are held: on a paused
    # queue, whose topic the SDK makes (tenants use existing queues only).
    hold = f"hold-{unique}"
    rl.pause(hold)
    by_name("raylane.echo", 1, queue=hold)
    writer = http_api.client(http_api.token(f"greedy-{unique}"))
    resp = writer.post(f"{http_api.url}{API}/tasks", json={"name": "raylane.echo", "args": [1], "queue": hold})
    assert resp.status_code == 201, resp.text
    held = resp.json()["id"]
    n = settings.http_waits_per_token + 4

    def wait_once(_):
        return requests.get(f"{http_api.url}{API}/tasks/{held}/wait?timeout=8", headers=greedy.headers, timeout=30)

    try:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(wait_once, i) for i in range(n)]
            # The four over the limit are refused at once, which means the other four are held now.
            wait_until(lambda: sum(f.done() for f in futures) >= 4, timeout=10, what="the waits over the limit")
            began = time.monotonic()
            health = requests.get(f"{http_api.url}/healthz", timeout=10)
            health_s = time.monotonic() - began
            began = time.monotonic()
            other_wait = other.get(f"{http_api.url}{API}/tasks/{task_id}/wait?timeout=5")
            other_s = time.monotonic() - began
            answers = [f.result() for f in futures]
    finally:
        rl.resume(hold)
    # Generous bounds, well under the 8 s the greedy tenant's waits are held: neither answer waited
    # behind them (on this loaded two-core machine an answer has taken up to 1.4 s).
    assert health.status_code == 200 and health_s < 4.0, health_s
    assert other_wait.status_code == 200 and other_wait.json()["finished"] and other_s < 4.0, other_s
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * settings.http_waits_per_token + [429] * 4, codes
    for a in answers:
        if a.status_code == 429:
            assert int(a.headers["Retry-After"]) >= 1 and a.json()["error"]["code"] == "too_many_requests"


def test_http_request_rate_is_limited_per_token(http_api, unique, settings):
    """A token sending faster than its rate gets 429 with Retry-After once its burst is spent;
    no more requests get through than the rate and the burst allow."""
    import requests

    token = http_api.token(f"fast-{unique}", "read")
    headers = {"Authorization": f"Bearer {token}"}
    sent = settings.http_burst_per_token + 400

    def one(_):
        return requests.get(f"{http_api.url}{API}/tasks/{'0' * 32}", headers=headers, timeout=30)

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(sent)))
    elapsed = time.monotonic() - began
    codes = [a.status_code for a in answers]
    assert set(codes) <= {404, 429}, set(codes)
    allowed = settings.http_burst_per_token + settings.http_rate_per_token * elapsed
    assert codes.count(404) <= allowed + 1, (codes.count(404), allowed)
    assert codes.count(429) >= sent - allowed - 1, (codes.count(429), sent, allowed)
    limited = next(a for a in answers if a.status_code == 429) if 429 in codes else None
    if limited is not None:
        assert int(limited.headers["Retry-After"]) >= 1
    # Another token is not affected.
    other = requests.get(
        f"{http_api.url}{API}/tasks/{'0' * 32}",
        headers={"Authorization": f"Bearer {http_api.token(f'calm-{unique}', 'read')}"},
        timeout=30,
    )
    assert other.status_code == 404
