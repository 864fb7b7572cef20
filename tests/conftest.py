"""Fixtures: the real local stack, brought up once per session (or reused if already running)."""
from __future__ import annotations

import time
import uuid
from typing import Callable

import pytest

import raylane
from raylane.config import Settings
from raylane.stack import LocalStack
from raylane.store import OpenSearchStore


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def stack(settings: Settings):
    """The local stack; services this session started are stopped at its end."""
    st = LocalStack(settings)
    already = {svc.name for svc in st.services if svc.pid()}
    st.up()
    yield st
    raylane.shutdown()
    started = [svc.name for svc in st.services if svc.name not in already]
    if started:
        st.down(only=started)


@pytest.fixture(scope="session")
def rl(stack):
    """raylane connected to the local stack, actors deployed."""
    raylane.init()
    yield raylane


@pytest.fixture(scope="session")
def store(stack, settings) -> OpenSearchStore:
    s = OpenSearchStore(stack.endpoints().opensearch, settings.index_alias)
    yield s
    s.close()


@pytest.fixture
def unique() -> str:
    """A short unique token for names, tags and queues of one test."""
    return uuid.uuid4().hex[:10]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               what: str | Callable[[], str] = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds
    (``what`` may be a callable, to describe the state seen last)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


class HttpApi:
    """The HTTP API deployed for the session, with its token file."""

    def __init__(self, url: str, tokens):
        self.url = url
        self.tokens = tokens

    def token(self, tenant: str, scope: str = "write") -> str:
        """A new token of ``tenant``."""
        return self.tokens.create(tenant, scope)[1]

    def client(self, token: str | None):
        """A requests session that sends ``token`` as bearer token (none if None)."""
        import requests
        s = requests.Session()
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        return s


@pytest.fixture(scope="session")
def http_api(rl, settings, tmp_path_factory):
    """raylane's HTTP API on Ray Serve, deployed once for the session with a token file of its own."""
    from raylane.api import deploy_http, remove_http
    from raylane.tokens import TokenFile
    token_file = tmp_path_factory.mktemp("http") / "tokens.json"
    url = deploy_http(settings.model_copy(update={"token_file": token_file}))
    yield HttpApi(url, TokenFile(token_file))
    remove_http()
