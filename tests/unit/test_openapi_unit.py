"""Unit tier (no services): the HTTP API's OpenAPI document names every answer an operation may give."""

from __future__ import annotations

from raylane.api import build_app


def _operations() -> list[tuple[str, str, dict]]:
    doc = build_app().openapi()
    return [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()]


def test_every_operation_that_takes_a_token_documents_the_rate_limits_429():
    # Each request with a token spends its token's rate (50 requests/s by default), whatever the
    # operation; a client generated from the document must expect the 429.
    ops = _operations()
    with_token = [(m, p) for m, p, op in ops if "401" in op["responses"]]
    assert len(with_token) >= 17, with_token  # every operation but /healthz
    assert [(m, p) for m, p, op in ops if "401" in op["responses"] and "429" not in op["responses"]] == []
    assert [(m, p) for m, p, op in ops if "401" not in op["responses"]] == [("get", "/healthz")]
