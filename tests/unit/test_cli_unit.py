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
