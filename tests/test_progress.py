"""raylane.progress: a running task says how far it has got; it shows in get(), the CLI and
HTTP within about a second, and the record's version does not move for it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import wait_until

import raylane
from raylane.states import TaskState, version_of


@raylane.task(name="test.progress.halfway", timeout=120)
def halfway(folder: str) -> str:
    for i in range(1, 6):
        raylane.progress(i / 10, f"step {i} of 10")  # said quickly: the last one is what shows
    while not Path(folder, "go").exists():
        time.sleep(0.05)
    raylane.progress(1.0)
    return "done"


def test_progress_shows_while_the_task_runs_and_moves_no_version(rl, http_api, tmp_path, unique):
    h = halfway.submit(str(tmp_path))
    try:
        wait_until(lambda: h.record().progress == 0.5, timeout=30, what="the progress to show")
        rec = h.record()
        assert rec.state is TaskState.RUNNING and rec.progress_message == "step 5 of 10"
        assert rec.version == version_of(TaskState.RUNNING, 0)
        shown = subprocess.run(
            [sys.executable, "-m", "raylane.cli", "status", h.id], capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0 and "50%" in shown.stdout and "step 5 of 10" in shown.stdout, shown.stdout
    finally:
        (tmp_path / "go").touch()
    done = h.wait(timeout=60)
    assert done.state is TaskState.SUCCEEDED and done.progress is None  # a finished task shows its end


def test_progress_over_http(http_api, rl, tmp_path, unique):
    api = http_api.client(http_api.token(f"t-{unique}"))
    base = f"{http_api.url}/api/v1"
    resp = api.post(f"{base}/tasks", json={"name": "test.progress.halfway", "args": [str(tmp_path)]})
    assert resp.status_code == 201, resp.text
    task_id = resp.json()["id"]
    try:
        wait_until(
            lambda: api.get(f"{base}/tasks/{task_id}").json().get("progress") == 0.5,
            timeout=30,
            what="the progress over HTTP",
        )
        assert api.get(f"{base}/tasks/{task_id}").json()["progress_message"] == "step 5 of 10"
    finally:
        (tmp_path / "go").touch()
