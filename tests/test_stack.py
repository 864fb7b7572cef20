"""``raylane stack up|down|status`` on a second, private stack (own ports and folders), and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raylane.config import Settings
from raylane.stack import LocalStack, proc


@pytest.fixture(scope="module")
def private_stack(settings: Settings, tmp_path_factory):
    """A second stack that shares only the download cache with the session's stack."""
    home = tmp_path_factory.mktemp("stack-home")
    # Reuse fetched distributions; everything else (data, pid files, logs) is private.
    (home / "dist").symlink_to(settings.home / "dist")
    (home / "m2").symlink_to(settings.home / "m2")
    # Below Linux's ephemeral range (32768-60999), where any outgoing connection may hold a
    # port; and apart from the session stack's 26xxx-29xxx ports.
    private = settings.model_copy(
        update=dict(
            home=home,
            kafka_port=27092,
            kafka_controller_port=27093,
            opensearch_port=27200,
            opensearch_transport_port=27300,
            ray_port=27379,
            ray_dashboard_port=27265,
            ray_metrics_port=27080,
            opensearch_root_dir=settings.opensearch_root_dir.parent / f"{settings.opensearch_root_dir.name}-test",
            # The smallest heap the settings accept must start: Kafka sizes buffers from it.
            kafka_heap_mb=_least("kafka_heap_mb"),
        )
    )
    st = LocalStack(private, quiet=True)
    yield st
    st.down(grace_s=10)


def _least(field: str) -> int:
    """The lower bound the settings put on a numeric field."""
    (bound,) = [m.ge for m in Settings.model_fields[field].metadata if hasattr(m, "ge")]
    return bound


def _stack_processes(st: LocalStack) -> dict[str, list[int]]:
    return {svc.name: svc.pids() for svc in st.services}


def test_up_status_idempotent_restart_down(stack, private_stack):
    st = private_stack
    # Given a stopped private stack
    assert not any(s.running for s in st.status())

    # When it is brought up, every service answers and reports its address
    statuses = {s.name: s for s in st.up()}
    assert all(s.running and s.pid for s in statuses.values())
    assert statuses["kafka"].address == "127.0.0.1:27092"
    assert statuses["opensearch"].address == "http://127.0.0.1:27200"
    assert statuses["ray"].address == "127.0.0.1:27379"
    pids = {name: s.pid for name, s in statuses.items()}
    if os.geteuid() == 0:
        # OpenSearch runs as the unprivileged user, holding none of root's groups.
        ids = {
            line.split(":")[0]: line.split()[1:]
            for line in Path(f"/proc/{pids['opensearch']}/status").read_text().splitlines()
            if line.startswith(("Uid:", "Gid:", "Groups:"))
        }
        assert "0" not in ids["Uid"] and "0" not in ids["Gid"] and "0" not in ids["Groups"], ids

    # A second `up` leaves what runs alone
    again = {s.name: s for s in st.up()}
    assert {n: s.pid for n, s in again.items()} == pids
    assert all(s.started_in_s is None for s in again.values())

    # Restarting one service touches only that one
    assert st.down(only=["kafka"]) == ["kafka"]
    assert not proc.pid_alive(pids["kafka"])
    restarted = {s.name: s for s in st.up()}
    assert restarted["kafka"].running and restarted["kafka"].pid != pids["kafka"]
    assert restarted["opensearch"].pid == pids["opensearch"] and restarted["ray"].pid == pids["ray"]

    # `down` stops everything it started and leaves no process behind
    everything = [p for ps in _stack_processes(st).values() for p in ps]
    assert len(everything) >= 3
    assert sorted(st.down(grace_s=10)) == ["kafka", "opensearch", "ray"]
    assert [p for p in everything if proc.pid_alive(p)] == []
    assert not any(s.running for s in st.status())


def test_cli_status_json_reports_the_session_stack(stack):
    out = subprocess.run(
        [sys.executable, "-m", "raylane.cli", "stack", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert set(status) == {"kafka", "opensearch", "ray"}
    assert status["kafka"]["address"] == stack.kafka.address
    assert status["opensearch"]["address"] == stack.opensearch.address
    assert status["ray"]["address"] == stack.ray.address
    assert all(s["running"] and s["pid"] for s in status.values())


def test_cli_rejects_unknown_settings():
    out = subprocess.run(
        [sys.executable, "-m", "raylane.cli", "stack", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, RAYLANE_KAFKA_PORTT="1"),
    )
    assert out.returncode == 2
    assert "RAYLANE_KAFKA_PORTT" in out.stderr
