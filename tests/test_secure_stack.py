"""The secure local stack (`raylane stack up --secure`): Kafka on SASL_SSL with SCRAM-SHA-512 and
OpenSearch on HTTPS with basic auth refuse plaintext, unauthenticated and wrongly authenticated
clients; raylane's whole lifecycle runs on it, beside the session's plain stack."""

from __future__ import annotations

import pytest
import requests
from conftest import run_driver
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import SecretStr

from raylane.config import Settings
from raylane.stack import LocalStack

# Apart from the session stack (26xxx-29xxx) and test_stack's private one (270xx-273xx).
PORTS = {
    "kafka_port": 27192,
    "kafka_controller_port": 27193,
    "opensearch_port": 27210,
    "opensearch_transport_port": 27310,
}


@pytest.fixture(scope="module")
def secure_stack(stack, settings: Settings):
    """Kafka and OpenSearch of the secure stack (the session's Ray serves both); stopped at the end."""
    st = LocalStack(settings.model_copy(update={"secure_stack": True, **PORTS}), quiet=True)
    st.up(only=["kafka", "opensearch"])
    yield st
    st.down(grace_s=10, only=["kafka", "opensearch"])


def _kafka_lists_topics(timeout_ms: int = 5000, **options) -> bool:
    admin = KafkaAdminClient(**options, request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
    try:
        return isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def test_kafka_refuses_plaintext_and_wrong_credentials(secure_stack):
    conn = secure_stack.kafka.connection()
    assert conn.security_protocol == "SASL_SSL" and conn.sasl_mechanism == "SCRAM-SHA-512"
    assert _kafka_lists_topics(**conn.client_options())
    refused = {
        "plaintext": {"bootstrap_servers": conn.bootstrap},
        "TLS without SASL": conn.model_copy(
            update={"security_protocol": "SSL", "sasl_mechanism": None}
        ).client_options(),
        "wrong password": conn.model_copy(update={"sasl_password": SecretStr("not-the-password")}).client_options(),
        "unknown CA": {**conn.client_options(), "ssl_cafile": None},
    }
    for what, options in refused.items():
        with pytest.raises(KafkaError):
            # A refused client never gets through, however long it tries: 2 s of trying is enough.
            _kafka_lists_topics(timeout_ms=2000, **options)
            pytest.fail(f"Kafka accepted a client with {what}")


def test_opensearch_refuses_plain_http_and_wrong_credentials(secure_stack):
    conn = secure_stack.opensearch.connection()
    assert conn.url.startswith("https://") and conn.username and conn.password
    health = f"{conn.url}/_cluster/health"
    login = (conn.username, conn.password.get_secret_value())
    good = requests.get(health, auth=login, verify=conn.ca_certs, timeout=10)
    assert good.status_code == 200 and good.json()["status"] in ("green", "yellow")
    assert requests.get(health, verify=conn.ca_certs, timeout=10).status_code == 401
    assert requests.get(health, auth=(conn.username, "wrong"), verify=conn.ca_certs, timeout=10).status_code == 401
    with pytest.raises(requests.exceptions.SSLError):  # a certificate not signed by a CA the client trusts
        requests.get(health, auth=login, timeout=10)
    plain = health.replace("https://", "http://")
    try:
        answer = requests.get(plain, auth=login, timeout=10)
    except requests.exceptions.ConnectionError:
        return  # refused outright
    assert answer.status_code != 200, answer.text[:200]


@pytest.mark.timeout(600)
def test_the_lifecycle_runs_on_the_secure_stack(secure_stack, rl, unique):
    env = {
        "RAYLANE_SECURE_STACK": "1",
        "RAYLANE_NAMESPACE": f"secure-{unique}",
        **{f"RAYLANE_{name.upper()}": str(port) for name, port in PORTS.items()},
    }
    out = run_driver("secure_driver.py", env, timeout=540)
    assert out["kafka_protocol"] == "SASL_SSL" and out["opensearch_url"].startswith("https://")
    assert out["results"] == list(range(20))
    assert out["failed"] == ["FAILED", "ValueError"] and out["timed_out"] == "TIMED_OUT"
    assert out["cancelled"] == out["cancelled_after"] == "CANCELLED"
    assert out["found"] >= 20 and out["counts"] == {"FAILED": 1}
    assert out["loop_bulks"] > 0 and out["loop_bulks_not_answered"] == 0
    # The same figures on the plain stack, in the same run, for the comparison.
    from secure_driver import timings

    plain = timings()
    print(
        f"secure stack: round trip p50 {out['rtt_p50_ms']} ms, burst {out['burst_tasks_per_s']} tasks/s; "
        f"plain stack: {plain['rtt_p50_ms']} ms, {plain['burst_tasks_per_s']} tasks/s"
    )
