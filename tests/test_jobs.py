"""Every job in jobs/ runs under ``ray job submit`` with Ray's token authentication, and its
exit status says whether its tasks ended as intended."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ray_job_submit(stack, *job_args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="token", **(env_extra or {}))
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "job",
        "submit",
        "--address",
        stack.ray.dashboard_url,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        *job_args,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)


def test_every_job_module_is_covered():
    jobs = {p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "__init__"}
    assert jobs == {"checksums"}, "a new job needs a ray job submit test here"


@pytest.mark.timeout(300)
def test_checksums_job_succeeds_under_ray_job_submit(rl, stack):
    out = _ray_job_submit(
        stack, "raylane.jobs.checksums", "--files", "80", "--cancel-every", "20", "--stalled", "2", "--timeout", "1"
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all tasks ended as intended" in out.stdout
    assert "0 mismatches" in out.stdout and "succeeded" in out.stdout.lower()


@pytest.mark.timeout(300)
def test_checksums_job_exit_status_reports_failed_tasks(rl, stack):
    out = _ray_job_submit(
        stack, "raylane.jobs.checksums", "--files", "20", "--cancel-every", "0", "--stalled", "0", "--missing", "2"
    )
    assert out.returncode != 0
    assert "unintended FAILED: 2 task(s)" in out.stdout, out.stdout[-3000:]


def test_ray_job_submit_needs_the_token(stack, tmp_path):
    wrong = tmp_path / "token"
    wrong.write_text("0" * 32)
    out = _ray_job_submit(
        stack, "raylane.jobs.checksums", "--files", "1", env_extra={"RAY_AUTH_TOKEN_PATH": str(wrong)}
    )
    assert out.returncode != 0
    assert "token authentication is enabled" in out.stderr, out.stderr[-2000:]
