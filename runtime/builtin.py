"""Tasks every raylane deployment has."""

from __future__ import annotations

from typing import Any

from raylane.tasks import task


@task(name="raylane.echo")
def echo(*args: Any, **kwargs: Any) -> dict:
    """Return the arguments as given; for health checks and smoke tests."""
    return {"args": list(args), "kwargs": kwargs}
