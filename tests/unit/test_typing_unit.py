"""The SDK's types, as mypy reads them: a task keeps its function's signature, and its handles
give its result type (tests/typing/example.py); wrong calls are refused (tests/typing/misuse.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TYPING = ROOT / "tests" / "typing"


@pytest.fixture(scope="module")
def mypy_on(tmp_path_factory):
    """Run mypy (the project's settings) on files, with raylane laid out as imported; returns
    its output lines. The cache is the project's own, so after ``./dev lint`` this takes seconds."""
    tree = tmp_path_factory.mktemp("typecheck")
    subprocess.run([sys.executable, str(ROOT / "tools" / "link_tree.py"), str(tree)], check=True, capture_output=True)

    def run(*files: Path) -> list[str]:
        settings = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache")]
        out = subprocess.run(
            [sys.executable, "-m", "mypy", *settings, "--no-error-summary", *map(str, files)],
            capture_output=True,
            text=True,
            env=dict(os.environ, MYPYPATH=str(tree)),
            cwd=ROOT,
        )
        return [line for line in out.stdout.splitlines() if line.strip()]

    return run


def test_a_task_keeps_its_signature_and_its_result_type(mypy_on):
    assert mypy_on(TYPING / "example.py") == []


def test_calls_that_do_not_fit_are_refused(mypy_on):
    source = (TYPING / "misuse.py").read_text().splitlines()
    expected = {n: m.group(1) for n, line in enumerate(source, 1) if (m := re.search(r"# E: ([\w-]+)", line))}
    found: dict[int, set[str]] = {}
    for line in mypy_on(TYPING / "misuse.py"):
        m = re.match(r".*misuse\.py:(\d+): error: .*\[([\w-]+)\]$", line)
        assert m, f"an error on no expected line: {line}"
        found.setdefault(int(m.group(1)), set()).add(m.group(2))
    assert set(found) == set(expected), found
    for n, code in expected.items():
        assert code in found[n], (n, found[n])
