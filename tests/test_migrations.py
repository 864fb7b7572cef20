"""Migrations: an index made with an earlier mapping that cannot become the current one in place is
moved to a new index with the current mapping at start (and by `raylane migrate`), every record
kept with its version, and no write lost while writes go on."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from conftest import sealed

from raylane.models import PackedRecord, TaskMessage, TaskRecord, new_task_id, utcnow
from raylane.states import TaskState
from raylane.store import MAPPING_VERSION, OpenSearchStore, _mappings

from contracts import message, schedule


def _previous_mapping() -> dict:
    """The mapping as a raylane before versioned mappings made it, where this test's earlier
    release mapped ``priority`` as a keyword (a type no mapping update can change) and had no
    ``hops``."""
    old = json.loads(json.dumps(_mappings()))
    del old["_meta"]
    del old["properties"]["hops"]
    old["properties"]["priority"] = {"type": "keyword"}
    return old


def _doc(rec: TaskRecord) -> bytes:
    """The record as the earlier release wrote it."""
    doc = rec.to_doc()
    doc.pop("hops")
    return json.dumps(doc).encode()


def _packed(rec: TaskRecord) -> PackedRecord:
    return PackedRecord(
        rec.id, rec.version, rec.state, rec.attempt, rec.will_retry, rec.name, rec.queue, rec.timeout_s, _doc(rec)
    )


def test_an_index_of_a_previous_mapping_is_migrated_without_losing_a_write(stack, unique):
    alias = f"test-migrate-{unique}"
    conn = stack.endpoints().opensearch
    store = OpenSearchStore(conn, alias)
    c = store.client
    try:
        c.indices.put_index_template(
            name=f"{alias}-template",
            body={
                "index_patterns": [f"{alias}-*"],
                "template": {
                    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                    "mappings": _previous_mapping(),
                },
            },
        )
        c.indices.create(index=f"{alias}-000001", body={"aliases": {alias: {"is_write_index": True}}})
        assert store.mapping_version() == 1
        records = [
            TaskRecord.pending(TaskMessage(id=new_task_id(), name="t.migrate", queue="q", created_at=utcnow()))
            for _ in range(300)
        ]
        assert all(o.accepted for o in store.write_many([_packed(r) for r in records]))

        # A writer carries on through the migration: each record moves to RUNNING, then SUCCEEDED.
        latest = {r.id: r for r in records}
        refused: list = []
        stop = threading.Event()

        def writer() -> None:
            writer_store = OpenSearchStore(conn, alias)
            for state in (TaskState.RUNNING, TaskState.SUCCEEDED):
                for k in range(0, len(records), 25):
                    batch = [latest[r.id].moved_to(state) for r in records[k : k + 25]]
                    for rec, outcome in zip(batch, writer_store.write_many([_packed(b) for b in batch]), strict=True):
                        if outcome.accepted:
                            latest[rec.id] = rec
                        else:
                            refused.append(outcome)
                    if stop.is_set():
                        return
                    time.sleep(0.02)
            writer_store.close()

        thread = threading.Thread(target=writer)
        thread.start()
        out = subprocess.run(
            [sys.executable, "-m", "raylane.cli", "migrate", "--alias", alias, "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        thread.join(timeout=120)
        stop.set()
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads(out.stdout) == {
            "alias": alias,
            "from": f"{alias}-000001",
            "to": f"{alias}-000002",
            "mapping_version": MAPPING_VERSION,
        }
        assert not refused, refused[:3]

        # The alias now writes to the new index, of the current mapping; the old one is gone.
        assert set(c.indices.get_alias(name=alias)) == {f"{alias}-000002"}
        assert store.mapping_version() == MAPPING_VERSION
        # Every record is there, at the last version written to it.
        got = store.get_many([r.id for r in records])
        assert {i: (r.state, r.version) for i, r in got.items()} == {i: (r.state, r.version) for i, r in latest.items()}
        # And the current release writes what the previous mapping could not hold.
        newer = (
            records[0]
            .moved_to(TaskState.RUNNING)
            .model_copy(update={"attempt": 1, "version": 10, "hops": {"read": 0.1}})
        )
        assert store.write_many([newer])[0].accepted
        # Nothing left to do: a second run says so.
        again = subprocess.run(
            [sys.executable, "-m", "raylane.cli", "migrate", "--alias", alias, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0 and json.loads(again.stdout)["to"] is None, again.stderr[-2000:]
    finally:
        c.indices.delete(index=f"{alias}-*", ignore_unavailable=True)
        c.indices.delete_index_template(name=f"{alias}-template", ignore=404)
        store.close()


def test_migrate_seals_the_schedules_saved_before_seals_and_only_those(stack, settings, unique):
    """A scheduler fires only a schedule whose message bears the cluster's seal, so schedules saved
    by a release without seals stop firing on upgrade. `raylane migrate --seal-schedules` seals
    those (the operator vouches for them); one whose seal does not hold was changed in the store,
    and stays as it is."""
    alias = f"raylane-test-{unique}"
    store = OpenSearchStore(stack.endpoints().opensearch, alias)
    store.ensure_schema()
    try:
        unsealed = message().model_copy(update={"seal": None})
        old = schedule("old").model_copy(update={"message": unsealed})
        made = schedule("made").model_copy(update={"message": sealed(unsealed)})
        changed = schedule("changed").model_copy(update={"message": made.message.model_copy(update={"args": [9]})})
        for s in (old, made, changed):
            store.save_schedule(s)
        out = subprocess.run(
            [sys.executable, "-m", "raylane.cli", "migrate", "--alias", alias, "--seal-schedules", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads(out.stdout)["sealed_schedules"] == [old.key]
        signer = settings.signer()
        got = {s.key: s for s in store.list_schedules()}
        assert signer.seal_ok(got[old.key].message) and got[old.key].message.args == unsealed.args
        assert signer.seal_ok(got[made.key].message) and not signer.seal_ok(got[changed.key].message)
    finally:
        store.drop()
        store.close()
