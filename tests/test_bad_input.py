"""Bad input gets a typed error and leaves nothing behind; malformed queue messages go to the DLQ."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import cli, dead_letter_reasons
from kafka import KafkaAdminClient

import raylane
from raylane import registry
from raylane.actors.deploy import actor_stats
from raylane.client import submit_requests
from raylane.errors import (
    InvalidTaskInput,
    PayloadTooLarge,
    TaskAlreadyFinished,
    TaskFailed,
    TaskNotFound,
    UnknownTaskName,
)
from raylane.models import Resources, SubmitRequest


@raylane.task(name="test.typed")
def typed(count: int, label: str, weights: list[float] | None = None) -> str:
    return f"{label}:{count}"


@raylane.task(name="test.blob")
def blob(data: str) -> int:
    return len(data)


def _nothing_written(rl, stack, queue: str) -> None:
    rl.refresh()
    assert rl.counts(queue=queue) == {}
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)
    try:
        assert f"raylane.tasks.{queue}" not in admin.list_topics()
    finally:
        admin.close()


@pytest.mark.parametrize(
    "call, error, words",
    [
        (
            lambda q: submit_requests([SubmitRequest(name="no.such.task", queue=q)]),
            UnknownTaskName,
            "no task named 'no.such.task'",
        ),
        (lambda q: typed.options(queue=q).submit(1, object()), InvalidTaskInput, "must be JSON"),
        (lambda q: typed.options(queue=q).submit(1, float("nan")), InvalidTaskInput, "must be JSON"),
        (lambda q: typed.options(queue=q).submit(1), InvalidTaskInput, "missing a required argument: 'label'"),
        (
            lambda q: typed.options(queue=q).submit(1, "x", nope=1),
            InvalidTaskInput,
            "unexpected keyword argument 'nope'",
        ),
        (lambda q: typed.options(queue=q).submit("1", "x"), InvalidTaskInput, "argument 'count'"),
        (lambda q: typed.options(queue=q).submit(1, "x", ["a"]), InvalidTaskInput, "argument 'weights'"),
        (lambda q: blob.options(queue=q).submit("x" * (1 << 20)), PayloadTooLarge, "over the limit of 1048576 bytes"),
        (lambda q: typed.options(queue=q).submit_many([(1, "ok"), (2, 3)]), InvalidTaskInput, "task #1"),
        (
            lambda q: submit_requests(
                [SubmitRequest(name="test.typed", args=[1, "x"], queue=q, resources=Resources(num_gpus=1))]
            ),
            InvalidTaskInput,
            "no node of the cluster can run this task: it asks for 1 CPU, 1 GPU",
        ),
        (
            lambda q: typed.options(queue=q, num_cpus=1000).submit(1, "x"),
            InvalidTaskInput,
            "no node of the cluster can run this task: it asks for 1000 CPU",
        ),
        # Times no record can hold: the store refused the record after the message was queued.
        (
            lambda q: typed.options(queue=q, eta=datetime(2300, 1, 1, tzinfo=UTC)).submit(1, "x"),
            InvalidTaskInput,
            "outside the times a record can hold",
        ),
        (
            lambda q: typed.options(queue=q, expires=datetime(1900, 1, 1, tzinfo=UTC)).submit(1, "x"),
            InvalidTaskInput,
            "outside the times a record can hold",
        ),
        (lambda q: typed.options(queue=q, expires=1e12).submit(1, "x"), InvalidTaskInput, "no time at all"),
        (
            lambda q: typed.options(queue=q, eta=datetime.now(UTC) + timedelta(days=800)).submit(1, "x"),
            InvalidTaskInput,
            "the most a task may be delayed",
        ),
        # JSON the store cannot hold: a lone surrogate, an integer longer than 1,000 characters.
        (lambda q: typed.options(queue=q).submit(1, "bad \ud800"), InvalidTaskInput, "lone surrogate"),
        (lambda q: typed.options(queue=q).submit(10**1000, "x"), InvalidTaskInput, "999 digits"),
        # Options given by name are checked in the RequestHandler, as the other options are.
        (lambda q: raylane.submit("test.typed", 1, "x", queue=q, priority=99), InvalidTaskInput, "priority"),
    ],
    ids=[
        "unknown-name",
        "not-json",
        "nan",
        "missing-arg",
        "extra-kwarg",
        "wrong-type",
        "wrong-item-type",
        "too-large",
        "one-bad-in-batch",
        "no-node-has-a-gpu",
        "no-node-has-the-cpus",
        "eta-past-2262",
        "expires-before-1970",
        "expires-past-the-calendar",
        "eta-over-a-year-ahead",
        "lone-surrogate",
        "integer-of-1001-digits",
        "option-by-name-out-of-range",
    ],
)
def test_bad_submit_is_refused_and_writes_nothing(rl, stack, unique, call, error, words):
    queue = f"bad-{unique}"
    with pytest.raises(error) as exc:
        call(queue)
    assert words in str(exc.value)
    _nothing_written(rl, stack, queue)


def test_valid_typed_call_runs(rl):
    assert typed.submit(3, "n", [0.5, 1]).result(timeout=60) == "n:3"


def test_unknown_ids(rl):
    for bad in ("0" * 32, "not-an-id", ""):
        with pytest.raises(TaskNotFound):
            rl.get(bad)
        with pytest.raises(TaskNotFound):
            rl.cancel(bad)


def test_cancel_of_finished_task_says_so(rl):
    h = typed.submit(1, "done")
    h.result(timeout=60)
    with pytest.raises(TaskAlreadyFinished) as exc:
        h.cancel()
    assert "already finished as SUCCEEDED" in str(exc.value) and exc.value.state == "SUCCEEDED"


def _message(**fields) -> bytes:
    body = {
        "id": uuid.uuid4().hex,
        "name": "test.typed",
        "queue": "default",
        "args": [1, "x"],
        "created_at": "2026-01-01T00:00:00Z",
    }
    body.update(fields)
    return json.dumps(body).encode()


def test_malformed_messages_go_to_the_dlq(rl, stack, settings):
    bad = {
        b"this is not json": "not a valid task message",
        _message(name="no.such.task"): "no task named 'no.such.task'",
        json.dumps({"name": "test.typed"}).encode(): "id: Field required",
        _message(created_at="2026-01-01T00:00:00"): "created_at: Input should have timezone info",
        _message(attempt=10**18): "attempt: Input should be less than or equal to 100",
    }
    found = dead_letter_reasons(stack, settings, list(bad))
    assert set(found) == set(bad)
    for value, reason in found.items():
        assert bad[value] in reason
    # The consumer kept running.
    assert typed.submit(2, "still alive").result(timeout=60) == "still alive:2"


def test_record_the_store_refuses_goes_to_the_dlq(rl, stack, settings, store):
    """A message whose record OpenSearch refuses (a date past what it can store) is not retried
    forever nor silently dropped: it is dead-lettered with the store's reason, and nothing is written."""
    value = _message(created_at="2300-01-01T00:00:00Z")
    found = dead_letter_reasons(stack, settings, [value])
    assert "the store refused the record" in found.get(value, "") and "date" in found[value]
    task_id = json.loads(value)["id"]
    assert store.get(task_id) is None
    assert typed.submit(3, "still alive").result(timeout=60) == "still alive:3"


def test_message_that_keeps_failing_is_dead_lettered_after_bounded_tries(rl, stack, settings, unique):
    """A task whose definition cannot be loaded (corrupted in Ray's KV store) fails every hand-off;
    after a bounded number of tries its message goes to the DLQ and the consumer carries on."""
    from ray.experimental import internal_kv as kv

    name = f"test.corrupt_{unique}"
    digest = f"corrupt-{unique}"
    kv._internal_kv_put(registry._BLOB_KEY + digest, b"\x80\x05 not a pickle", namespace=registry._KV_NAMESPACE)
    kv._internal_kv_put(registry._NAME_KEY + name, digest.encode(), namespace=registry._KV_NAMESPACE)
    try:
        value = _message(name=name)
        errors_before = actor_stats("raylane")["QueueConsumer-0"]["errors"]
        found = dead_letter_reasons(stack, settings, [value], timeout=90)
        assert "reading the message failed 5 times" in found.get(value, ""), found
        assert actor_stats("raylane")["QueueConsumer-0"]["errors"] - errors_before >= 5
    finally:
        kv._internal_kv_del(registry._NAME_KEY + name, namespace=registry._KV_NAMESPACE)
        kv._internal_kv_del(registry._BLOB_KEY + digest, namespace=registry._KV_NAMESPACE)
    assert typed.submit(4, "still alive").result(timeout=60) == "still alive:4"


def test_task_defined_in_main_runs(rl, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent("""
        import raylane

        @raylane.task(name="test.main_square")
        def square(x: int) -> int:
            return x * x

        if __name__ == "__main__":
            raylane.init()
            print("RESULT", square.submit(12).result(timeout=60))
            raylane.shutdown()
    """)
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RESULT 144" in out.stdout


def test_resources_ray_would_refuse_are_rejected_at_submit(rl, stack, unique):
    queue = f"bad-{unique}"
    with pytest.raises(InvalidTaskInput) as exc:
        typed.options(queue=queue, num_cpus=0.00001).submit(1, "x")
    assert "4 decimal places" in str(exc.value)
    _nothing_written(rl, stack, queue)


def _forget_in_ray(name: str) -> None:
    from ray.experimental import internal_kv as kv

    kv._internal_kv_del(registry._NAME_KEY + name, namespace=registry._KV_NAMESPACE)


def test_definition_lost_by_ray_is_restored_from_the_store(rl, unique):
    """Ray forgets task definitions when it restarts; the consumer restores a queued task's
    definition from the copy kept in OpenSearch, and the task runs."""
    name = f"test.restored_{unique}"

    @raylane.task(name=name)
    def restored(x: int) -> int:
        return x * 2

    queue = f"q-{unique}"
    rl.pause(queue)
    h = restored.options(queue=queue).submit(21)
    _forget_in_ray(name)
    rl.resume(queue)
    assert h.result(timeout=60) == 42


def test_task_whose_definition_vanished_fails_via_the_dlq(rl, store, unique):
    """A submitted task whose definition is gone from Ray and from the store when it is consumed
    is dead-lettered after a grace period, and its record ends FAILED, not PENDING."""
    name = f"test.vanishing_{unique}"

    @raylane.task(name=name)
    def vanishing() -> int:
        return 1

    queue = f"q-{unique}"
    rl.pause(queue)
    h = vanishing.options(queue=queue).submit()
    _forget_in_ray(name)
    store.client.delete(index=f"{store.alias}_control", id=f"definition:{name}", refresh="true")
    rl.resume(queue)
    with pytest.raises(TaskFailed):
        h.result(timeout=90)
    rec = h.record()
    assert rec.error_type == "DeadLettered" and "raylane.dlq" in rec.error and "test.vanishing_" in rec.error


def test_a_search_past_what_the_store_takes_is_bad_input(rl):
    """A search whose text holds more words than one query may (OpenSearch's 1,024 clauses), or
    that asks for more tags than a task can have, is refused as bad input from the SDK and the
    CLI alike; the store answered it with an error that came back as an outage."""
    words = " ".join(f"w{i}" for i in range(2000))
    with pytest.raises(InvalidTaskInput, match="text"):
        raylane.search(text=words)
    with pytest.raises(InvalidTaskInput, match="tags"):
        raylane.counts(tags=[f"t{i}" for i in range(2000)])
    refused = cli("ls", "--text", words)
    assert refused.returncode == 2, refused.stderr  # usage, not "a service is unavailable" (4)
    assert "at most 500 characters" in refused.stderr
    # At the limits, the store takes the query.
    assert raylane.search(text=" ".join("一丁丂七丄"[i % 5] + "x" for i in range(166))) == []
    assert raylane.counts(tags=[f"t{i}" for i in range(50)]) == {}


def test_numbers_that_are_no_time_are_bad_input(rl, unique):
    """A purge older than the calendar reaches, or of NaN seconds; a wait of NaN seconds,
    asked of the RequestHandler itself; a schedule whose cron matches no date: each was an
    OverflowError or ValueError inside the RequestHandler, or a schedule that could never
    fire, saved. Now each is InvalidTaskInput, or (the purge past 1970) simply nothing to delete."""
    assert raylane.purge(older_than=1e300) == 0
    assert raylane.purge(older_than=timedelta(days=10**6)) == 0
    with pytest.raises(InvalidTaskInput, match="older_than"):
        raylane.purge(older_than=float("nan"))
    handle = typed.submit(1, "x")
    handle.wait(timeout=60)
    with pytest.raises(InvalidTaskInput, match="timeout"):
        raylane.wait_all([handle.id], timeout=float("nan"))
    conn = raylane.client._connection()
    with pytest.raises(InvalidTaskInput, match="timeout"):
        conn.call("wait_many", [handle.id], float("nan"), True)
    with pytest.raises(InvalidTaskInput, match="matches no date"):
        raylane.schedule(f"feb30-{unique}", "test.typed", [1, "x"], cron="0 0 30 2 *")
    assert f"feb30-{unique}" not in {s.id for s in raylane.schedules()}
