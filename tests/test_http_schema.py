"""Schemathesis against the HTTP API's OpenAPI document: generated valid and invalid requests
for every operation, stateful sequences along the document's links, and every check."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_schemathesis_finds_no_failure(http_api, unique):
    token = http_api.token(f"st-{unique}")
    report = HERE / "artifacts" / "schemathesis-junit.xml"
    report.parent.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{http_api.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--seed",
        "20261127",
        "--workers",
        "1",
        # Under the token's request rate (RAYLANE_HTTP_RATE_PER_TOKEN, 50/s): the run checks the
        # answers to what it generates, and a 429 would answer the rate instead.
        "--rate-limit",
        "40/s",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    summary = [line for line in out.splitlines() if re.search(r"\d+ generated|Selected:|Tested:|API Links|✅|❌", line)]
    print("\n".join(summary))
    (HERE / "artifacts" / "schemathesis-summary.txt").write_text(out)
    assert run.returncode == 0, out[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated and generated.group(1) == generated.group(2) and int(generated.group(1)) > 300, summary
    assert "Tested: 18" in out  # every operation of the document
