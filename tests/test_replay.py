"""Retry and replay: a new attempt of a finished task, one at a time or in bulk, through the SDK,
the CLI and HTTP; versions only move forward and earlier attempts are kept."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path

import pytest
from conftest import cli

import raylane
from raylane.states import TaskState, version_of


@raylane.task(name="test.replay.needs_file", max_retries=0)
def needs_file(folder: str, key: int) -> int:
    """Fails until ``folder/ready`` exists; every run leaves a file behind."""
    Path(folder, f"{key}.{uuid.uuid4().hex}").touch()
    if not Path(folder, "ready").exists():
        raise FileNotFoundError("not ready yet")
    return key


@raylane.task(name="test.replay.slow_once_ready", max_retries=0)
def slow_once_ready(folder: str) -> str:
    """Fails until ``folder/ready`` exists; then takes a second and a half."""
    if not Path(folder, "ready").exists():
        raise FileNotFoundError("not ready yet")
    time.sleep(1.5)
    return "done"


def _runs(folder: Path, key: int) -> int:
    return len(list(folder.glob(f"{key}.*")))


def _failed(folder: Path, keys: range, queue: str) -> list[raylane.TaskHandle]:
    handles = needs_file.options(queue=queue).submit_many([(str(folder), k) for k in keys])
    for h in handles:
        assert h.wait(timeout=60).state is TaskState.FAILED
    return handles


def test_retry_starts_a_new_attempt_and_keeps_the_failed_one(rl, tmp_path, unique):
    [h] = _failed(tmp_path, range(1), f"rp-{unique}")
    failed = h.record()
    (tmp_path / "ready").touch()
    assert h.retry().result(timeout=60) == 0
    rec = h.record()
    assert rec.state is TaskState.SUCCEEDED and rec.attempt == 1
    assert rec.version == version_of(TaskState.SUCCEEDED, 1) > failed.version
    assert [a.state for a in rec.attempts] == ["FAILED"] and rec.attempts[0].error_type == "FileNotFoundError"
    assert _runs(tmp_path, 0) == 2
    # A succeeded task may be run again too.
    assert raylane.retry(h.id).result(timeout=60) == 0
    assert h.record().attempt == 2 and _runs(tmp_path, 0) == 3


def test_a_wait_after_a_retry_waits_for_the_new_attempts_end(rl, tmp_path):
    from raylane.client import _connection

    h = slow_once_ready.submit(str(tmp_path))
    assert h.wait(timeout=60).state is TaskState.FAILED
    (tmp_path / "ready").touch()
    raylane.retry(h.id)
    # One server-side wait (as HTTP's): it must not take the first attempt's end for this one's.
    rec = _connection().call("wait", h.id, 30.0)
    assert rec.state is TaskState.SUCCEEDED and rec.attempt == 1, (rec.state, rec.attempt)


def test_a_task_not_finished_is_not_retried_and_nothing_is_written(rl, tmp_path, unique):
    queue = f"rpu-{unique}"
    rl.pause(queue)
    try:
        h = needs_file.options(queue=queue).submit(str(tmp_path), 0)
        before = h.record()
        with pytest.raises(raylane.TaskNotFinished):
            h.retry()
        assert h.record().version == before.version and h.record().attempt == 0
        with pytest.raises(raylane.TaskNotFound):
            raylane.retry("0" * 32)
    finally:
        h.cancel()
        rl.resume(queue)


def test_retries_racing_start_one_attempt_that_runs_once(rl, tmp_path, unique):
    queue = f"rpr-{unique}"
    [h] = _failed(tmp_path, range(1), queue)
    (tmp_path / "ready").touch()
    # The new attempt waits in its paused queue while the retries race: one that came after it
    # had ended could rightly start yet another attempt.
    rl.pause(queue)

    def retry() -> str:
        try:
            raylane.retry(h.id)
            return "started"
        except raylane.TaskNotFinished:
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(lambda _: retry(), range(10)))
    assert outcomes.count("started") == 1, outcomes
    rl.resume(queue)
    assert raylane.wait(h.id, timeout=60).state is TaskState.SUCCEEDED
    assert h.record().attempt == 1 and _runs(tmp_path, 0) == 2


def test_replay_starts_again_the_failed_tasks_matching_its_filters(rl, tmp_path, unique):
    queue = f"rpb-{unique}"
    handles = _failed(tmp_path, range(6), queue)
    (tmp_path / "other").mkdir()
    other = _failed(tmp_path / "other", range(1), f"rpo-{unique}")
    (tmp_path / "ready").touch()
    rl.refresh()
    replayed = rl.replay("FAILED", queue=queue, limit=4)
    assert len(replayed) == 4 and {h.id for h in replayed} <= {h.id for h in handles}
    rest = rl.replay(queue=queue)  # FAILED by default: the two left
    assert {h.id for h in replayed + rest} == {h.id for h in handles}
    assert sorted(h.result(timeout=60) for h in replayed + rest) == list(range(6))
    assert other[0].record().state is TaskState.FAILED  # another queue's task was left alone
    with pytest.raises(raylane.InvalidTaskInput, match="RUNNING"):
        rl.replay("RUNNING", queue=queue)


def test_retry_and_replay_from_the_command_line(rl, tmp_path, unique):
    import json

    queue = f"rpc-{unique}"
    handles = _failed(tmp_path, range(3), queue)
    rl.refresh()
    dry = cli("replay", "--queue", queue, "--since", "1h", "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout) == {"would_replay": 3}, dry.stderr
    assert handles[0].record().attempt == 0  # a dry run starts nothing
    (tmp_path / "ready").touch()
    one = cli("retry", handles[0].id, "--json")
    assert one.returncode == 0 and json.loads(one.stdout)["attempt"] == 1, one.stderr
    assert raylane.wait(handles[0].id, timeout=60).state is TaskState.SUCCEEDED
    rl.refresh()
    bulk = cli("replay", "--queue", queue, "--state", "FAILED", "--json")
    assert bulk.returncode == 0 and set(json.loads(bulk.stdout)["replayed"]) == {h.id for h in handles[1:]}
    assert cli("retry", "0" * 32).returncode == 3
    assert cli("replay", "--since", "yesterday").returncode == 2


def test_retry_and_replay_over_http(http_api, rl, tmp_path, unique):
    tenant = f"t-{unique}"
    api = http_api.client(http_api.token(tenant))
    base = f"{http_api.url}/api/v1"
    resp = api.post(f"{base}/tasks", json={"name": "test.replay.needs_file", "args": [str(tmp_path), 7]})
    assert resp.status_code == 201, resp.text
    task_id = resp.json()["id"]
    first = api.get(f"{base}/tasks/{task_id}/wait", params={"timeout": 60}).json()
    assert first["state"] == "FAILED", first
    (tmp_path / "ready").touch()
    retried = api.post(f"{base}/tasks/{task_id}/retry")
    assert retried.status_code == 200 and retried.json()["attempt"] == 1, retried.text
    second = api.get(f"{base}/tasks/{task_id}/wait", params={"timeout": 60}).json()
    assert second["state"] == "SUCCEEDED", second
    # Another tenant sees no such task, and replays none of this tenant's.
    stranger = http_api.client(http_api.token(f"s-{unique}"))
    assert stranger.post(f"{base}/tasks/{task_id}/retry").status_code == 404
    none = stranger.post(f"{base}/replay", params={"state": "SUCCEEDED"})
    assert none.json() == {"replayed": [], "count": 0}, none.text
    rl.refresh()
    replayed = api.post(f"{base}/replay", params={"state": "SUCCEEDED", "name": "test.replay.needs_file"})
    assert replayed.status_code == 200 and replayed.json() == {"replayed": [task_id], "count": 1}, replayed.text
    third = api.get(f"{base}/tasks/{task_id}/wait", params={"timeout": 60}).json()
    assert third["attempt"] == 2, third
    # A task that has not finished is a conflict, with nothing written.
    queue = f"rph-{unique}"
    rl.pause(queue)
    try:
        needs_file.options(queue=queue).submit(str(tmp_path), 8).cancel()  # makes the queue
        body = {"name": "test.replay.needs_file", "args": [str(tmp_path), 9], "queue": queue}
        resp = api.post(f"{base}/tasks", json=body)
        waiting = resp.json()["id"]
        conflict = api.post(f"{base}/tasks/{waiting}/retry")
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "not_finished", conflict.text
        assert rl.get(waiting).version == version_of(TaskState.PENDING, 0)
    finally:
        rl.resume(queue)


def _unpicklable_name(name: str, unique: str):
    """Point ``name`` at a definition that cannot be loaded; returns how to point it back."""
    from ray.experimental import internal_kv as kv

    from raylane import registry

    ns = registry._KV_NAMESPACE
    good = kv._internal_kv_get(registry._NAME_KEY + name, namespace=ns)
    digest = f"corrupt-{unique}"
    kv._internal_kv_put(registry._BLOB_KEY + digest, b"\x80\x05 not a pickle", namespace=ns)
    kv._internal_kv_put(registry._NAME_KEY + name, digest.encode(), namespace=ns)

    def restore() -> None:
        kv._internal_kv_put(registry._NAME_KEY + name, good, namespace=ns)
        kv._internal_kv_del(registry._BLOB_KEY + digest, namespace=ns)

    return restore


def test_a_dead_lettered_task_is_replayed_from_its_record(rl, tmp_path, unique):
    import json

    # A task of a name no consumer has loaded yet, whose definition cannot be loaded when its
    # message is read: the message is dead-lettered and the task recorded FAILED.
    task = raylane.task(name=f"test.replay.dl_{unique}", max_retries=0)(needs_file.definition.fn)
    queue = f"rpd-{unique}"
    rl.pause(queue)
    h = task.options(queue=queue).submit(str(tmp_path), 5)
    restore = _unpicklable_name(task.name, unique)
    try:
        rl.resume(queue)
        failed = h.wait(timeout=120)
        assert failed.state is TaskState.FAILED and failed.error_type == "DeadLettered", failed
    finally:
        restore()
    [letter] = [d for d in rl.dead_letters(20) if d["task_id"] == h.id]
    assert letter["replayable"] and letter["state"] == "FAILED" and "failed 5 times" in letter["reason"]
    listed = cli("dlq", "ls", "--limit", "20", "--json")
    assert listed.returncode == 0 and h.id in {d["task_id"] for d in json.loads(listed.stdout)}
    (tmp_path / "ready").touch()
    replayed = cli("dlq", "replay", "--limit", "1", "--json")  # the newest: this one
    assert replayed.returncode == 0 and json.loads(replayed.stdout) == {"replayed": [h.id]}, replayed.stderr
    assert raylane.TaskHandle(h.id).result(timeout=60) == 5 and h.record().attempt == 1
