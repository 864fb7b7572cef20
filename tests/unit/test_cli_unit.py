"""The command line's shape: every command has help text and prints JSON with --json."""

from __future__ import annotations

import argparse

from raylane.cli import _when, build_parser


def _leaves(parser: argparse.ArgumentParser, path: list[str]):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    helps = {c.dest: c.help for c in subs[0]._choices_actions}
    for name, child in subs[0].choices.items():
        assert helps.get(name), f"raylane {' '.join([*path, name])} has no help text"
        yield from _leaves(child, [*path, name])


def test_every_command_has_help_and_json():
    commands = list(_leaves(build_parser(), []))
    assert len(commands) > 20
    for path, parser in commands:
        flags = {s for a in parser._actions for s in a.option_strings}
        assert "--json" in flags, f"raylane {' '.join(path)} has no --json"


def test_times_are_iso_or_a_duration_ago():
    from datetime import UTC, datetime, timedelta

    assert _when("2026-12-01T10:00:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert abs(_when("2h") - (datetime.now(UTC) - timedelta(hours=2))) < timedelta(seconds=5)
    try:
        _when("yesterday")
    except argparse.ArgumentTypeError:
        pass
    else:
        raise AssertionError("'yesterday' was taken as a time")


# What a hostile task can put in its record: a retitle (OSC ... BEL), a screen clear, a colour,
# an 8-bit CSI, a DEL and a right-to-left override.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m \x9b2J \x7f \u202eevil"


def _acted_on(text: str) -> list[str]:
    """The characters of ``text`` a terminal would act on rather than show."""
    return [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]


def test_text_from_tasks_is_shown_never_acted_on():
    from raylane.text import printable

    shown = printable(HOSTILE)
    assert not _acted_on(shown)
    assert shown.startswith("\\x1b]0;owned\\x07\\x1b[2J") and "\\x9b2J" in shown and "\\u202eevil" in shown
    assert printable("é 中 🙂\tcol\nnext") == "é 中 🙂\tcol\nnext"  # text, tabs and lines stay as they are
    assert printable("a\nb", one_line=True) == "a\\nb"


def test_records_print_with_their_control_characters_escaped(capsys):
    """``raylane status``, ``wait`` and ``ls`` print a record's error, error type and progress
    message as escapes; ``--json`` keeps them exact."""
    import json

    from raylane.cli import _print_record
    from raylane.models import TaskMessage, TaskRecord, utcnow
    from raylane.states import TaskState

    rec = TaskRecord.pending(TaskMessage(id="a" * 32, name="t", queue="q", args=[], created_at=utcnow()))
    rec = rec.moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED, error_type="Bad\x1b[8m", error=HOSTILE)
    rec.progress, rec.progress_message = 0.5, HOSTILE
    _print_record(rec, as_json=False)
    out = capsys.readouterr().out
    assert not _acted_on(out), out
    assert "Bad\\x1b[8m: \\x1b]0;owned" in out and "\\u202eevil" in out
    _print_record(rec, as_json=True)
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == HOSTILE and doc["progress_message"] == HOSTILE


def test_a_task_failure_says_what_the_task_said_as_escapes():
    from raylane.errors import TaskFailed

    err = TaskFailed("a" * 32, "Bad\x1b[8m", HOSTILE, None)
    assert not _acted_on(str(err)) and "\\x1b]0;owned" in str(err)
    assert err.message == HOSTILE and err.error_type == "Bad\x1b[8m"  # kept as the task said it


def test_bench_with_json_prints_json_alone(monkeypatch, capsys, tmp_path):
    import json

    import raylane.bench.suite as suite
    from raylane.bench.report import write

    def run(quick, parts, out_dir, rounds):
        print("(raylet) WARNING: what Ray forwards from its workers")
        machine = {"cpus": 2, "python": "3.11", "ray": "2"}
        results = {"mode": "quick", "started_at": "2026-12-06T05:53:41", "machine": machine, "rtt": {"p50_ms": 20.8}}
        results.update(suite.headline(results))
        write(results, tmp_path)
        return results

    monkeypatch.setattr(suite, "run", run)
    from raylane.cli import _bench

    args = build_parser().parse_args(["bench", "--quick", "--only", "rtt", "--json"])
    assert _bench(args) == 0
    assert json.loads(capsys.readouterr().out)["rtt_p50_ms"] == 20.8
    args = build_parser().parse_args(["bench", "--quick", "--only", "rtt"])
    assert _bench(args) == 0
    assert "| `rtt_p50_ms` | 20.8 |" in capsys.readouterr().out
