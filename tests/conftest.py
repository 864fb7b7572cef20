"""Fixtures: the real local stack, brought up once per session (or reused if already running)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import raylane
from raylane.config import Settings
from raylane.stack import LocalStack
from raylane.store import OpenSearchStore

# The tests of lost messages and claims left behind wait for an executor's next look: every 5 s
# in the session's deployment (and the drivers it starts) rather than the default 30 s, which
# would spend minutes of the run's time budget waiting.
os.environ.setdefault("RAYLANE_RECOVERY_CHECK_S", "5")

# Fixtures that need the real stack; a test using none of them belongs to the unit tier.
_SERVICE_FIXTURES = {"stack", "rl", "store", "http_api"}
_UNIT_DIR = Path(__file__).parent / "unit"


def _needs_stack(item) -> bool:
    return bool(_SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    """Tests that need the services are marked ``stack``; tests/unit may hold none of them. Tests
    without services run first, so that a failure there shows in seconds, before the stack starts."""
    for item in items:
        if _needs_stack(item):
            if _UNIT_DIR in Path(item.path).parents:
                raise pytest.UsageError(f"{item.nodeid} is in the unit tier but needs the services")
            item.add_marker(pytest.mark.stack)
    items.sort(key=_needs_stack)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


def _topics_and_indices(st: LocalStack) -> tuple[set[str], set[str]]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=st.kafka.address)
    try:
        topics = set(admin.list_topics())
    finally:
        admin.close()
    store = OpenSearchStore(st.endpoints().opensearch, st.settings.index_alias)
    try:
        indices = set(store.client.indices.get(index="*", expand_wildcards="open,closed"))
    finally:
        store.close()
    return topics, indices


def _remove_new(st: LocalStack, before: tuple[set[str], set[str]]) -> None:
    """Delete the topics and indices this session made (its unique queues, the namespaces of the
    multi-node and sharding tests): the stack outlives the session, and every consumer reads every
    queue topic it finds, so a hundred leftover queues per run would slow each later run down."""
    from kafka import KafkaAdminClient

    from raylane.queue import topic_of

    # The session's own deployment outlives it, with the stack: its actors would make its index
    # and control index again on their next write, without their mappings, so those stay.
    s = st.settings
    keep_topics = {topic_of(s.topic_prefix, s.default_queue), s.dlq_topic}
    topics, indices = _topics_and_indices(st)
    new_topics = sorted(topics - before[0] - keep_topics)
    new_indices = sorted(i for i in indices - before[1] if not i.startswith(".") and not i.startswith(s.index_alias))
    admin = KafkaAdminClient(bootstrap_servers=st.kafka.address, request_timeout_ms=60_000)
    try:
        for i in range(0, len(new_topics), 100):
            admin.delete_topics(new_topics[i : i + 100], timeout_ms=60_000)
    finally:
        admin.close()
    store = OpenSearchStore(st.endpoints().opensearch, st.settings.index_alias)
    try:
        for index in new_indices:
            store.client.indices.delete(index=index, ignore_unavailable=True)
    finally:
        store.close()


@pytest.fixture(scope="session")
def stack(settings: Settings):
    """The local stack; services this session started are stopped at its end, and the topics and
    indices it made are deleted."""
    st = LocalStack(settings)
    already = {svc.name for svc in st.services if svc.pid()}
    st.up()
    before = _topics_and_indices(st)
    yield st
    raylane.shutdown()
    _remove_new(st, before)
    started = [svc.name for svc in st.services if svc.name not in already]
    if started:
        st.down(only=started)


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on loopback: the spans the session's executors export, by trace id."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: dict[str, list] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                receiver.spans.setdefault(span.trace_id.hex(), []).append(span)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str) -> list:
        """The spans received of one trace."""
        with self._lock:
            return list(self.spans.get(trace_id, []))

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture(scope="session")
def otlp():
    """The session's OTLP receiver; the session's deployment exports a trace per task to it."""
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def rl(stack, otlp):
    """raylane connected to the local stack, actors deployed (exporting their traces to ``otlp``)."""
    import os

    os.environ["RAYLANE_OTLP_ENDPOINT"] = otlp.url
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


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``raylane ARGS`` in a process of its own, as a user runs it; ``env`` adds to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "raylane.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, **env),
    )


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
):
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

    def token(self, tenant: str, scope: str = "write", max_open: int | None = None) -> str:
        """A new token of ``tenant`` (whose quota of unfinished tasks is ``max_open``, if given)."""
        return self.tokens.create(tenant, scope, max_open=max_open)[1]

    def client(self, token: str | None):
        """A requests session that sends ``token`` as bearer token (none if None)."""
        import requests

        s = requests.Session()
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        return s


@pytest.fixture(scope="session")
def _http_deployment(rl, settings, tmp_path_factory):
    from raylane.api import remove_http
    from raylane.tokens import TokenFile

    token_file = tmp_path_factory.mktemp("http") / "tokens.json"
    deployment = {"settings": settings.model_copy(update={"token_file": token_file}), "tokens": TokenFile(token_file)}
    yield deployment
    if deployment.get("url"):
        remove_http()


@pytest.fixture
def http_api(rl, _http_deployment) -> HttpApi:
    """raylane's HTTP API on Ray Serve with a token file of its own: deployed once for the session,
    and again after a test restarted Ray (the fault tests restart the whole stack)."""
    import requests

    from raylane.api import deploy_http

    d = _http_deployment
    try:
        alive = d.get("url") is not None and requests.get(f"{d['url']}/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        alive = False
    if not alive:
        d["url"] = deploy_http(d["settings"])
    return HttpApi(d["url"], d["tokens"])


def running_anywhere(task_ids, namespace: str = "raylane") -> list[str]:
    """Those of ``task_ids`` that some executor runs now. A test waits on its own tasks with
    this, not on an idle executor: another task in the store (recovered from an earlier run)
    may run meanwhile."""
    import ray

    from raylane.protocol import EXECUTOR, live_members

    ids = [getattr(t, "id", t) for t in task_ids]
    names = live_members(namespace, EXECUTOR)
    found = ray.get([ray.get_actor(n, namespace=namespace).running_of.remote(ids) for n in names])
    return sorted({t for part in found for t in part})


def sealed(order):
    """``order`` (a message or a record) bearing the cluster's seal, as a submit seals what it
    accepts: a record planted in the store to stand for one raylane wrote must bear it, or no
    sweep carries it on."""
    return Settings.from_env().signer().sealed(order)


def dead_letter_reasons(
    stack,
    settings,
    values: list[bytes],
    timeout: float = 60,
    signed: bool = True,
    topic: str | None = None,
    then: Callable[[], object] | None = None,
) -> dict[bytes, str]:
    """Produce ``values`` to ``topic`` (the default queue's), signed as raylane signs its messages
    unless ``signed`` is false, and call ``then`` (if given) once they are sent; return the DLQ's
    reason for each, as they arrive."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition

    from raylane.signing import SIGNATURE_HEADER

    topic = topic or f"{settings.topic_prefix}{settings.default_queue}"
    dlq = KafkaConsumer(bootstrap_servers=stack.kafka.address, enable_auto_commit=False, consumer_timeout_ms=1000)
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)
    if settings.dlq_topic in admin.list_topics():
        parts = [TopicPartition(settings.dlq_topic, p) for p in dlq.partitions_for_topic(settings.dlq_topic)]
        dlq.assign(parts)
        dlq.seek_to_end()
        start = {tp: dlq.position(tp) for tp in parts}
    else:
        start = {}
    admin.close()
    producer = KafkaProducer(bootstrap_servers=stack.kafka.address, acks="all")
    signer = settings.signer()
    for value in values:
        # Signed as raylane signs its own messages: what is tested is what comes after the signature.
        headers = [(SIGNATURE_HEADER, signer.sign_message(value).encode())] if signed else []
        producer.send(topic, key=b"bad", value=value, headers=headers)
    producer.flush()
    producer.close()
    if then is not None:
        then()

    found: dict[bytes, str] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(values) and time.monotonic() < deadline:
        parts = dlq.partitions_for_topic(settings.dlq_topic)
        if not parts:
            time.sleep(0.2)
            continue
        tps = [TopicPartition(settings.dlq_topic, p) for p in parts]
        dlq.assign(tps)
        for tp in tps:
            dlq.seek(tp, start.get(tp, 0))
        for record in dlq:
            body = json.loads(record.value)
            if body["value"].encode() in values:
                found[body["value"].encode()] = body["reason"]
    dlq.close()
    return found


def restart_keeper() -> None:
    """Kill the StatusKeeper and return once its restart has taken up the deadlines of running tasks."""
    import ray

    keeper = ray.get_actor("StatusKeeper", namespace="raylane")
    ray.kill(keeper, no_restart=False)

    def resumed() -> bool:
        try:
            ray.get(keeper.ensure_running.remote(), timeout=30)
            return True
        except ray.exceptions.ActorUnavailableError:  # still restarting
            return False

    wait_until(resumed, timeout=60, what="the restarted StatusKeeper to take up running tasks")


def own_deployment(name: str) -> dict[str, str]:
    """The RAYLANE_* settings of a deployment of its own called ``name``: its namespace, queue
    topics, status index and dead letter topic."""
    return {
        "RAYLANE_NAMESPACE": name,
        "RAYLANE_TOPIC_PREFIX": f"{name}.",
        "RAYLANE_INDEX_ALIAS": name,
        "RAYLANE_DLQ_TOPIC": f"{name}.dlq",
    }


def run_driver(script: str, env: dict[str, str], timeout: float) -> dict:
    """Run ``tests/<script>`` in a process of its own with ``env`` added to this one's; return the
    JSON it printed last on a line starting with ``<stem>-result: `` (the test fails with the
    driver's output if it printed none or failed)."""
    import os
    import subprocess
    import sys

    path = Path(__file__).with_name(script)
    prefix = f"{path.stem.removesuffix('_driver')}-result: "
    run = subprocess.run(
        [sys.executable, str(path)], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith(prefix)]
    if run.returncode != 0 or not lines:
        pytest.fail(f"{script} printed no result:\n{(run.stdout + run.stderr)[-4000:]}")
    return json.loads(lines[-1][len(prefix) :])
