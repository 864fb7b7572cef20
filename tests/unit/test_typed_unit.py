"""Arguments and results of types JSON has no word for (datetimes, UUIDs, enums, pydantic
models) travel as pydantic's JSON form and come back as their types."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from raylane.errors import InvalidTaskInput
from raylane.registry import _is_rich, check_arguments, jsonable, result_hint, typed_arguments, typed_result


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: int


def plot(at: datetime, p: Point, color: Color, ids: list[uuid.UUID], n: int = 1, *rest: date) -> Point:
    return p


def plain(a: int, b: str, c: list[int], d: dict[str, Any] | None = None) -> int:
    return a


WHEN = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_values_become_pydantics_json_and_plain_values_stay_as_they_are():
    assert jsonable(WHEN) == "2026-12-01T10:30:00Z"
    assert jsonable(ID) == str(ID)
    assert jsonable(Color.RED) == "red"
    assert jsonable(Point(x=1, y=2)) == {"x": 1, "y": 2}
    assert jsonable([WHEN, {"k": ID}]) == ["2026-12-01T10:30:00Z", {"k": str(ID)}]
    assert jsonable(3) == 3 and jsonable("s") == "s" and jsonable(None) is None
    odd = object()
    assert jsonable(odd) is odd  # left for the checks to refuse


def test_json_forms_pass_the_check_of_their_hints_and_bad_ones_do_not():
    args = [jsonable(WHEN), jsonable(Point(x=1, y=2)), "red", [str(ID)], 2, "2026-01-02"]
    check_arguments("t.plot", plot, args, {})
    with pytest.raises(InvalidTaskInput, match="'at'"):
        check_arguments("t.plot", plot, ["not a time", {"x": 1, "y": 2}, "red", []], {})
    with pytest.raises(InvalidTaskInput, match="'p'"):
        check_arguments("t.plot", plot, [jsonable(WHEN), {"x": "one"}, "red", []], {})
    with pytest.raises(InvalidTaskInput, match="'color'"):
        check_arguments("t.plot", plot, [jsonable(WHEN), {"x": 1, "y": 2}, "green", []], {})
    with pytest.raises(InvalidTaskInput, match="'a'"):
        check_arguments("t.plain", plain, ["1", "b", []], {})  # plain hints stay strict: no "1" for 1


def test_the_worker_gets_the_types_back():
    args = [jsonable(WHEN), jsonable(Point(x=1, y=2)), "blue", [str(ID)], 2, "2026-01-02"]
    got, kwargs = typed_arguments(plot, args, {})
    assert got == [WHEN, Point(x=1, y=2), Color.BLUE, [ID], 2, date(2026, 1, 2)] and kwargs == {}
    same_args, same_kwargs = [1, "b", [1]], {"d": {"k": 1}}
    assert typed_arguments(plain, same_args, same_kwargs) == (same_args, same_kwargs)  # nothing to convert


def test_results_come_back_as_the_functions_result_type():
    hint = result_hint(plot)
    assert hint is Point and typed_result(hint, {"x": 1, "y": 2}) == Point(x=1, y=2)
    assert result_hint(plain) is None and typed_result(None, 5) == 5


@pytest.mark.parametrize(
    ("hint", "rich"),
    [
        (int, False),
        (list[int], False),
        (dict[str, list[float]], False),
        (int | None, False),
        (Any, False),
        (datetime, True),
        (list[uuid.UUID], True),
        (dict[str, Point], True),
        (datetime | None, True),
    ],
)
def test_which_hints_are_converted(hint, rich):
    assert _is_rich(hint) is rich
