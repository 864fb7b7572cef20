"""The command line's exit codes, the same for every command: 0 ok; 1 the task failed, was
cancelled or timed out; 2 usage; 3 not found; 4 a service is unavailable; 5 a wait timed out."""

from __future__ import annotations

import time

from conftest import cli

import raylane


@raylane.task(name="test.cli.nap")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@raylane.task(name="test.cli.boom")
def boom() -> None:
    raise ValueError("boom")


def test_exit_codes(rl):
    done = nap.submit(0.0)
    done.wait(timeout=60)
    failed = boom.submit()
    failed.wait(timeout=60)
    slow = nap.submit(30.0)
    try:
        assert cli("wait", done.id, "--timeout", "30").returncode == 0
        assert cli("wait", failed.id, "--timeout", "30").returncode == 1
        assert cli("status", "0" * 32).returncode == 3
        assert cli("status").returncode == 2  # usage: the id is missing
        timed_out = cli("wait", slow.id, "--timeout", "0.5")
        assert timed_out.returncode == 5, timed_out.stderr
    finally:
        slow.cancel()
    # A stack that does not run: the secure one here, on ports nothing listens on.
    down = cli("stack", "status", "--secure", RAYLANE_KAFKA_PORT="27592", RAYLANE_OPENSEARCH_PORT="27593")
    assert down.returncode == 4, down.stderr
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("raylane ")


def test_ls_pages_with_a_cursor_and_commands_print_json(rl, unique):
    import json

    tag = f"page-{unique}"
    handles = nap.options(tags=[tag]).submit_many([(0.0,)] * 5)
    raylane.wait_all(handles, timeout=60)
    rl.refresh()
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = cli("ls", "--tag", tag, "--limit", "2", "--json", *(["--cursor", cursor] if cursor else []))
        assert page.returncode == 0, page.stderr
        seen += [r["id"] for r in json.loads(page.stdout)]
        more = [line for line in page.stderr.splitlines() if line.startswith("more: ")]
        if not more:
            break
        cursor = more[0].rsplit(" ", 1)[1]
    assert sorted(seen) == sorted(h.id for h in handles)  # every task once, over three pages
    assert cli("ls", "--cursor", "not-a-cursor").returncode == 2
    slow = nap.submit(30.0)
    cancelled = cli("cancel", slow.id, "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["state"] == "CANCELLED", cancelled.stderr


@raylane.task(name="test.cli.hostile")
def hostile() -> None:
    raise ValueError("\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m done")


def test_a_hostile_error_is_shown_on_the_terminal_not_acted_on(rl, unique):
    """A task's error reaches an operator's terminal through status, wait and ls; its escape
    sequences (a retitle, a screen clear, a colour) are printed as text, and kept whole in JSON."""
    import json

    h = hostile.options(tags=[f"hostile-{unique}"]).submit()
    h.wait(timeout=60)
    rl.refresh()
    for command in (("status", h.id), ("wait", h.id), ("ls", "--tag", f"hostile-{unique}")):
        shown = cli(*command)
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, (command, shown.stdout)
        assert "\\x1b]0;owned\\x07\\x1b[2J" in shown.stdout, (command, shown.stdout)
    doc = json.loads(cli("status", h.id, "--json").stdout)
    assert doc["error"] == "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m done"
