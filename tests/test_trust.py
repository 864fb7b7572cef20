"""Trust boundaries: Kafka and OpenSearch are storage, not sources of code or of orders.

Whoever can write to them (the local ones have no authentication) must not be able to run
code in the cluster, start a task, or run a finished task again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import dead_letter_reasons, restart_keeper, sealed, wait_until

import raylane
from raylane.errors import TaskFailed


@raylane.task(name="test.trust.mark")
def mark(path: str, word: str) -> str:
    """Append ``word`` to the file at ``path``: every run leaves a line."""
    with open(path, "a") as f:
        f.write(word + "\n")
    return word


class _Planted:
    """Unpickling this runs a shell command: what a planted 'definition' would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _forget_in_ray(name: str) -> None:
    from ray.experimental import internal_kv as kv

    from raylane import registry

    kv._internal_kv_del(registry._NAME_KEY + name, namespace=registry._KV_NAMESPACE)


@pytest.mark.parametrize("signature", [None, "0" * 64], ids=["unsigned", "forged-signature"])
def test_planted_definition_is_never_unpickled(rl, store, unique, tmp_path, signature):
    """A pickle planted as a task's kept definition in the control index (with the right digest,
    so only the signature can tell) is not loaded: no code runs, and the task ends FAILED with
    a signature error instead."""
    name = f"test.planted_{unique}"

    @raylane.task(name=name)
    def victim() -> int:
        return 1

    marker = tmp_path / "planted-code-ran"
    queue = f"q-{unique}"
    rl.pause(queue)
    h = victim.options(queue=queue).submit()
    # Given: Ray forgot the definition (as after a restart) and someone replaced the kept copy.
    _forget_in_ray(name)
    blob = pickle.dumps(_Planted(f"touch {marker}"))
    doc = {
        "kind": "definition",
        "name": name,
        "digest": hashlib.sha256(blob).hexdigest(),
        "blob": base64.b64encode(blob).decode(),
    }
    if signature is not None:
        doc["signature"] = signature
    store.client.index(index=f"{store.alias}_control", id=f"definition:{name}", body=doc, refresh="true")
    # When: the task is consumed.
    rl.resume(queue)
    # Then: it fails with a signature error, and the planted code never ran.
    with pytest.raises(TaskFailed):
        h.result(timeout=60)
    rec = h.record()
    assert rec.error_type == "InvalidSignature", rec
    assert "signed" in rec.error and "raylane.dlq" in rec.error
    assert not marker.exists()


def _forged(task_id: str, attempt: int, path: Path, word: str, created_at: str = "2026-01-01T00:00:00Z") -> bytes:
    return json.dumps(
        {
            "id": task_id,
            "name": "test.trust.mark",
            "queue": "default",
            "attempt": attempt,
            "args": [str(path), word],
            "created_at": created_at,
        }
    ).encode()


def test_unsigned_message_is_dead_lettered_and_never_runs(rl, stack, settings, tmp_path):
    """A well-formed message that raylane did not produce (no signature, or a wrong one) starts
    nothing: it goes to the DLQ with the reason, and no record appears for its id."""
    path = tmp_path / "runs.txt"
    unsigned = _forged(uuid.uuid4().hex, 0, path, "unsigned")
    found = dead_letter_reasons(stack, settings, [unsigned], signed=False)
    assert "not signed with this cluster's secret" in found.get(unsigned, ""), found
    assert not path.exists()
    with pytest.raises(raylane.TaskNotFound):
        rl.get(json.loads(unsigned)["id"])


def _nameless(task_name: str) -> bytes:
    """A well-formed message of a task named ``task_name``, which nothing defines."""
    return json.dumps(
        {"id": uuid.uuid4().hex, "name": task_name, "queue": "default", "created_at": "2026-01-01T00:00:00Z"}
    ).encode()


def _runs_meanwhile(path: Path) -> Callable[[], None]:
    """A check that a task submitted now runs within 10 s, far less than the 20 s grace a
    message of an unknown task name may wait."""

    def check() -> None:
        assert mark.submit(str(path), "meanwhile").result(timeout=10) == "meanwhile"

    return check


def test_a_flood_of_unsigned_messages_does_not_hold_back_other_tasks(rl, stack, settings, tmp_path):
    """Unsigned messages naming tasks that nothing defines used to wait out the grace for a
    definition (20 s) before they were found unsigned, each holding a place in its consumer's
    window and reading the store meanwhile: a window's worth of them kept every other task
    unread that long. They are dead-lettered at once now."""
    forged = [_nameless(f"test.trust.nowhere_{i}") for i in range(settings.max_in_flight + 50)]
    found = dead_letter_reasons(stack, settings, forged, signed=False, then=_runs_meanwhile(tmp_path / "runs.txt"))
    assert len(found) == len(forged)
    assert all("not signed with this cluster's secret" in reason for reason in found.values()), set(found.values())


def test_tasks_waiting_for_their_definition_do_not_hold_back_other_tasks(rl, stack, settings, unique, tmp_path):
    """Signed messages of a task whose definition is not published yet wait for it (20 s at
    most), all on one look for the name and outside the consumer's window: a window's worth
    of them used to keep every other task unread while they waited."""
    waiting = [_nameless(f"test.trust.unpublished_{unique}") for _ in range(settings.max_in_flight + 50)]
    found = dead_letter_reasons(stack, settings, waiting, then=_runs_meanwhile(tmp_path / "runs.txt"))
    assert len(found) == len(waiting)
    assert all(f"no task named 'test.trust.unpublished_{unique}'" in r for r in found.values()), set(found.values())


def test_forged_retry_of_a_finished_task_does_not_run_it_again(rl, stack, settings, tmp_path):
    """A hand-made message carrying a higher attempt of a finished task would out-version its
    record; it must not claim it: the task keeps its one run and its terminal record."""
    path = tmp_path / "runs.txt"
    h = mark.submit(str(path), "first")
    assert h.result(timeout=60) == "first"
    before = h.record()
    forged = _forged(h.id, 1, path, "again")
    found = dead_letter_reasons(stack, settings, [forged], signed=False)
    assert "not signed" in found.get(forged, ""), found
    after = h.record()
    assert (after.state, after.attempt, after.version) == (before.state, before.attempt, before.version)
    assert path.read_text() == "first\n"


def test_an_old_signed_message_of_a_task_without_a_record_never_runs(rl, store, stack, settings, tmp_path):
    """A claim needs no record before it, so a message whose task has none (its record purged
    after the retention, the message read again once its offsets expired) would make the task
    anew and run it. An old message is run only if its task has a record."""
    path = tmp_path / "runs.txt"
    task_id = uuid.uuid4().hex
    old = _forged(task_id, 0, path, "purged")  # made on 2026-01-01: older than any retention here
    found = dead_letter_reasons(stack, settings, [old], signed=True)
    assert "has no record" in found.get(old, ""), found
    assert not path.exists()
    assert store.get(task_id) is None


def test_a_new_signed_message_of_a_task_without_a_record_never_runs(rl, store, stack, settings, tmp_path):
    """A request handler sends a task's message beside its PENDING write; should the write fail,
    the message is in Kafka for a task with no record. Its claim would make the record and run
    the task, though the submitter was told the submit failed: the keeper refuses a claim that
    made its record, closes the record, and the message is dead-lettered."""
    from raylane.models import utcnow

    path = tmp_path / "runs.txt"
    task_ids = [uuid.uuid4().hex for _ in range(3)]  # claimed together, as a batch's messages are
    fresh = [_forged(task_id, 0, path, "unrecorded", created_at=utcnow().isoformat()) for task_id in task_ids]
    found = dead_letter_reasons(stack, settings, fresh, signed=True)
    assert all("had no record when it was claimed" in found.get(m, "") for m in fresh), found
    assert not path.exists()
    for task_id in task_ids:
        record = store.get(task_id)
        assert record is not None and record.state.value == "FAILED" and record.error_type == "NotEnqueued", record


def test_records_planted_in_the_store_are_never_carried_on(rl, store, tmp_path):
    """The sweeps take up records (a PENDING task whose message may be lost, a retry whose
    executor stopped, a claim of a lapsed executor, an overdue SCHEDULED attempt), and would
    run what they ask. Records written into the store by anyone but raylane, or changed there,
    do not bear the cluster's seal: each ends FAILED as forged, and none runs. A sealed record
    beside them is carried on as ever, so the sweeps did pass over them."""
    from datetime import timedelta

    from raylane.errors import InvalidTaskInput
    from raylane.models import RetryPolicy, TaskMessage, TaskRecord, new_task_id, utcnow
    from raylane.signing import FORGED_RECORD
    from raylane.states import TaskState, version_of

    path = tmp_path / "runs.txt"
    long_ago = utcnow() - timedelta(minutes=10)

    def order(word: str) -> TaskRecord:
        msg = TaskMessage(
            id=new_task_id(),
            name="test.trust.mark",
            queue="default",
            args=[str(path), word],
            retry=RetryPolicy(max_retries=3, backoff_s=0.1),
            created_at=long_ago,
        )
        return TaskRecord.pending(msg)

    borrowed = sealed(order("borrowed")).seal  # a true seal, of another task
    planted = {
        "stale": order("stale"),
        "retry": order("retry")
        .moved_to(TaskState.RUNNING)
        .moved_to(TaskState.FAILED, error_type="E", will_retry=True)
        .model_copy(update={"seal": borrowed}),
        "lapsed": sealed(order("lapsed"))
        .moved_to(TaskState.RUNNING, worker="gone/1", lease_owner="an-executor-gone")
        .model_copy(update={"args": [str(path), "changed"]}),
        "due": order("due").model_copy(
            update={"state": TaskState.SCHEDULED, "not_before": long_ago, "version": version_of(TaskState.SCHEDULED, 0)}
        ),
    }
    control = sealed(order("control"))
    records = [r.model_copy(update={"updated_at": long_ago}) for r in [*planted.values(), control]]
    assert all(o.accepted for o in store.write_many(records))
    store.refresh()

    assert rl.wait(control.id, timeout=120).state is TaskState.SUCCEEDED

    def ends() -> dict[str, tuple]:
        got = store.get_many([r.id for r in planted.values()])
        return {k: (got[r.id].state, got[r.id].error_type) for k, r in planted.items()}

    wait_until(
        lambda: set(ends().values()) == {(TaskState.FAILED, FORGED_RECORD)}, timeout=120, what=lambda: str(ends())
    )
    assert path.read_text() == "control\n"
    # Nor does asking to run one again: its record is not one raylane made.
    with pytest.raises(InvalidTaskInput, match="seal"):
        rl.retry(planted["stale"].id)
    assert path.read_text() == "control\n"


def test_scheduled_records_planted_in_the_store_are_ended_when_their_keeper_starts(rl, store, settings, tmp_path):
    """A keeper takes up the SCHEDULED records it owns when it starts, and would send each when
    due: a limited one when its turn comes (no sweep sends those), another at its time. Planted
    ones (no seal) are ended at that start, and neither runs."""
    from datetime import timedelta

    from raylane.models import TaskMessage, TaskRecord, new_task_id, utcnow
    from raylane.protocol import keeper_of
    from raylane.signing import FORGED_RECORD
    from raylane.states import TaskState, version_of

    path = tmp_path / "runs.txt"

    def planted(word: str, **options) -> TaskRecord:
        task_id = next(i for i in iter(new_task_id, None) if keeper_of(i, settings.keepers) == 0)
        msg = TaskMessage(
            id=task_id, name="test.trust.mark", queue="default", args=[str(path), word], created_at=utcnow(), **options
        )
        rec = TaskRecord.pending(msg)
        return rec.model_copy(update={"state": TaskState.SCHEDULED, "version": version_of(TaskState.SCHEDULED, 0)})

    records = [
        planted("limited", max_concurrency=1, not_before=utcnow() - timedelta(minutes=1)),
        planted("later", not_before=utcnow() + timedelta(seconds=20)),
    ]
    assert all(o.accepted for o in store.write_many(records))
    store.refresh()
    restart_keeper()

    def ends() -> list[tuple]:
        return [(r.state, r.error_type) for r in (store.get(rec.id) for rec in records) if r is not None]

    # Ended at the keeper's start, though the later one is not due for another 20 s.
    wait_until(lambda: ends() == [(TaskState.FAILED, FORGED_RECORD)] * 2, timeout=15, what=lambda: str(ends()))
    assert not path.exists()


def test_secrets_are_not_on_any_command_line(rl, settings):
    """The service job gets its configuration (the cluster secret, the OpenSearch password)
    through Ray's KV store: neither its entrypoint nor any process's command line holds it."""
    from ray.job_submission import JobSubmissionClient

    secret = settings.cluster_secret().get_secret_value()
    jobs = JobSubmissionClient(f"http://127.0.0.1:{settings.ray_dashboard_port}").list_jobs()
    service = [j for j in jobs if (j.submission_id or "").startswith("raylane-service-") and j.status == "RUNNING"]
    assert service, "the raylane service job should be running"
    for job in service:
        text = json.dumps([job.entrypoint, job.metadata, job.runtime_env])
        assert secret not in text and '"opensearch"' not in text, job.entrypoint
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = cmdline.read_bytes()
        except OSError:
            continue  # the process ended meanwhile
        assert secret.encode() not in raw, cmdline


def test_cluster_secret_file_is_private(settings):
    """The secret is kept where only its owner can read it."""
    settings.cluster_secret()
    assert settings.secret_path.stat().st_mode & 0o077 == 0
