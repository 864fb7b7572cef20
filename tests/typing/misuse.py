"""Calls a type checker refuses; each line that must be refused says which error it expects
(checked by mypy in tests/unit/test_typing_unit.py)."""

from __future__ import annotations

from datetime import datetime

import raylane


@raylane.task(name="example.add")
def add(a: int, b: int) -> int:
    return a + b


def misuse() -> None:
    add.submit(1, "two")  # E: arg-type
    add.submit(1)  # E: call-arg
    add.options(queue="q").submit(1, 2, 3)  # E: call-arg
    text: str = add.submit(1, 2).result()  # E: assignment
    when: datetime = add.submit(1, 2).result()  # E: assignment
    print(text, when)
