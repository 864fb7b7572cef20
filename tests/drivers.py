"""What every driver of a deployment of its own does (tests/*_driver.py, run by
``conftest.run_driver``): connect to the deployment the environment's RAYLANE_* settings name,
do its work, print what it found as one JSON line after its prefix, and remove the
deployment, whatever happened."""

from __future__ import annotations

import json
from collections.abc import Callable

import raylane
from raylane.bench.scale import remove_deployment
from raylane.client import _connection
from raylane.config import Settings


def run_in_own_deployment(prefix: str, body: Callable[[Settings], dict]) -> int:
    """Run ``body`` with the deployment's settings and print its result after ``prefix``; 0."""
    raylane.init()
    settings = _connection().settings
    try:
        print(prefix + json.dumps(body(settings)), flush=True)
    finally:
        remove_deployment(settings)
    return 0
