"""Arguments and results of types JSON has no word for, through the real stack: they travel in
pydantic's JSON form, are checked against the function's hints on submit, and reach the
function, and the caller, as their types."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

import raylane


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


class Box(BaseModel):
    size: Size
    made: datetime
    serial: uuid.UUID


@raylane.task(name="test.typed.pack")
def pack(made: datetime, serial: uuid.UUID, size: Size = Size.SMALL, later: timedelta | None = None) -> Box:
    assert isinstance(made, datetime) and isinstance(serial, uuid.UUID) and isinstance(size, Size)
    return Box(size=size, made=made + (later or timedelta()), serial=serial)


@raylane.task(name="test.typed.unpack")
async def unpack(box: Box) -> list[datetime]:
    assert isinstance(box, Box)
    return [box.made, box.made + timedelta(days=1)]


WHEN = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SERIAL = uuid.UUID("0f0e0d0c-0b0a-0908-0706-050403020100")


def test_rich_arguments_and_results_round_trip(rl):
    h = pack.submit(WHEN, SERIAL, Size.LARGE, later=timedelta(hours=1))
    box = h.result(timeout=60)
    assert box == Box(size=Size.LARGE, made=WHEN + timedelta(hours=1), serial=SERIAL)
    rec = h.record()
    assert rec.args == ["2026-12-01T09:00:00Z", str(SERIAL), "l"] and rec.kwargs == {"later": "PT1H"}
    assert rec.result == {"size": "l", "made": "2026-12-01T10:00:00Z", "serial": str(SERIAL)}
    # A model as an argument, to an async task whose result is a list of datetimes.
    assert unpack.submit(box).result(timeout=60) == [box.made, box.made + timedelta(days=1)]


def test_by_name_the_json_form_is_accepted_and_given_back(rl):
    h = raylane.submit("test.typed.pack", "2026-12-01T09:00:00+00:00", str(SERIAL))
    assert h.result(timeout=60) == {"size": "s", "made": "2026-12-01T09:00:00Z", "serial": str(SERIAL)}


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["yesterday", str(SERIAL)], "'made'"),
        ([WHEN, "not-a-uuid"], "'serial'"),
        ([WHEN, SERIAL, "medium"], "'size'"),
    ],
)
def test_values_that_do_not_fit_are_refused_with_nothing_written(rl, unique, args, where):
    tag = f"typed-{unique}"
    with pytest.raises(raylane.InvalidTaskInput, match=where):
        pack.options(tags=[tag]).submit(*args)
    rl.refresh()
    assert rl.counts(tag=tag) == {}
