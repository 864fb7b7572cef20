"""How raylane's types read to a type checker: checked by mypy in tests/unit/test_typing_unit.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any, assert_type

from pydantic import BaseModel

import raylane


class Report(BaseModel):
    rows: int
    at: datetime


@raylane.task(name="example.report", timeout=30)
def report(day: datetime, limit: int = 10) -> Report:
    return Report(rows=limit, at=day)


@raylane.task
async def fetch(url: str) -> bytes:
    return url.encode()


def use() -> None:
    h = report.submit(datetime.now(), limit=5)
    assert_type(h, raylane.TaskHandle[Report])
    assert_type(h.result(timeout=30), Report)
    assert_type(report.options(queue="reports").submit(datetime.now()), raylane.TaskHandle[Report])
    assert_type(report.submit_many([(datetime.now(),)]), list[raylane.TaskHandle[Report]])
    assert_type(fetch.submit("https://example.org").result(), bytes)
    assert_type(raylane.submit("example.report", "2026-01-01"), raylane.TaskHandle[Any])
    assert_type(h.retry(), raylane.TaskHandle[Report])


async def use_async() -> None:
    h = await fetch.asubmit("https://example.org")
    assert_type(await h, bytes)
    assert_type(await h.aresult(timeout=5), bytes)
    assert_type(await raylane.aget(h.id), raylane.TaskRecord)
    async for done in raylane.aas_completed([h]):
        assert_type(done, raylane.TaskHandle[Any])
