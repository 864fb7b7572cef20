"""Values that json.dumps takes but no record can hold: a lone surrogate (Python strings may
hold one, UTF-8 cannot) and an integer longer than the 1,000 characters OpenSearch reads.
Input holding one is refused; text a task made is written with the surrogate escaped."""

from __future__ import annotations

import pytest

from raylane.errors import InvalidTaskInput, ResultNotSerializable
from raylane.limits import Limits, check_arguments_shape, check_tags, clip_text, encode_result, writable
from raylane.progress_reports import progress

LIMITS = Limits()


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        (["\ud800"], {}, "lone surrogate"),
        ([{"k\udfff": 1}], {}, "lone surrogate"),
        ([], {"x": ["ok", "a\udc80b"]}, "lone surrogate"),
        ([10**999], {}, "999 digits"),
        ([[-(10**1200)]], {}, "999 digits"),
    ],
)
def test_arguments_no_record_can_hold_are_refused(args, kwargs, words):
    with pytest.raises(InvalidTaskInput, match=words):
        check_arguments_shape(args, kwargs, LIMITS)


def test_arguments_at_the_edges_are_taken():
    check_arguments_shape([10**999 - 1, -(10**999 - 1), 2**64, "é 中 🙂", "a\x00b"], {"ключ": 1}, LIMITS)


def test_results_no_record_can_hold_fail_as_not_serializable():
    for result in (10**1000, {"k": "\ud800"}):
        with pytest.raises(ResultNotSerializable, match="a record can hold"):
            encode_result(result, LIMITS)
    encode_result(10**998, LIMITS)


def test_tags_and_progress_messages_must_be_text():
    with pytest.raises(InvalidTaskInput, match="lone surrogate"):
        check_tags(["\ud800"])
    with pytest.raises(InvalidTaskInput, match="lone surrogate"):
        progress(0.5, "half \ud800")


def test_text_a_task_made_is_written_with_its_surrogates_escaped():
    assert writable("bad \ud800 text") == "bad \\ud800 text"
    assert writable("é 中 plain") == "é 中 plain"
    assert clip_text("\udfff" + "x" * 10, limit=5) == "[6 characters cut] xxxxx"
    assert clip_text("x" * 3 + "\udfff", limit=2) == "[2 characters cut] x\\udfff"
    writable("any \ud800 text").encode()  # UTF-8 takes it
