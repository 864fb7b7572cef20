"""Settings for secured clusters, without services: what every Kafka and OpenSearch client is
given, secrets kept out of dumps and reprs, and settings that cannot work refused up front."""

from __future__ import annotations

import pytest

from raylane.config import REVEAL, KafkaConnection, OpenSearchConnection, Settings
from raylane.errors import ConfigError
from raylane.models import duration_s
from raylane.protocol import ActorConfig
from raylane.queue import kafka_options
from tests.memory_actors import memory_config

SCRAM = {
    "kafka_bootstrap": "broker-1:9096,broker-2:9096",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "raylane",
    "kafka_sasl_password": "s3cret-kafka",
    "kafka_ssl_cafile": "/etc/raylane/kafka-ca.pem",
}


def test_sasl_ssl_scram_reaches_the_kafka_client_options():
    conn = Settings(**SCRAM).kafka()
    opts = kafka_options(conn)
    assert opts["bootstrap_servers"] == "broker-1:9096,broker-2:9096"
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "raylane" and opts["sasl_plain_password"] == "s3cret-kafka"
    assert opts["ssl_cafile"] == "/etc/raylane/kafka-ca.pem" and opts["ssl_check_hostname"] is True
    assert opts["reconnect_backoff_max_ms"] == 1000  # raylane's own options stay


def test_mutual_tls_to_kafka():
    conn = KafkaConnection(
        bootstrap="b:9093", security_protocol="SSL", ssl_certfile="/c.pem", ssl_keyfile="/k.pem", ssl_password="kp"
    )
    opts = conn.client_options()
    assert (opts["ssl_certfile"], opts["ssl_keyfile"], opts["ssl_password"]) == ("/c.pem", "/k.pem", "kp")
    assert "sasl_mechanism" not in opts


def test_a_bare_address_is_plaintext():
    assert kafka_options("127.0.0.1:29092")["security_protocol"] == "PLAINTEXT"
    assert Settings().kafka("h:1").client_options() == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}


class Provider:
    """A token provider as kafka-python takes one."""

    def token(self) -> str:
        return "a-token"


def test_oauthbearer_imports_its_token_provider_from_a_local_module():
    conn = KafkaConnection(
        bootstrap="b:9096",
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_provider=f"{__name__}:Provider",
    )
    assert conn.client_options()["sasl_oauth_token_provider"].token() == "a-token"
    missing = conn.model_copy(update={"sasl_oauth_token_provider": f"{__name__}:Nope"})
    with pytest.raises(ConfigError, match="token provider"):
        missing.client_options()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kafka_sasl_mechanism": None}, "needs a SASL mechanism"),
        ({"kafka_sasl_password": None}, "needs a user name and a password"),
        ({"kafka_security_protocol": "SSL"}, "needs protocol SASL_SSL or SASL_PLAINTEXT"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "does not use TLS"),
        ({"kafka_ssl_certfile": "/c.pem"}, "needs its key"),
        ({"kafka_sasl_mechanism": "OAUTHBEARER"}, "needs a token provider"),
    ],
)
def test_kafka_settings_that_cannot_work_are_refused_with_the_reason(change, message):
    with pytest.raises(ConfigError, match=message):
        Settings(**{**SCRAM, **change}).kafka()


def test_secrets_are_masked_in_dumps_and_reprs_and_revealed_only_for_ray():
    settings = Settings(**SCRAM, opensearch_username="admin", opensearch_password="s3cret-os")
    conn = settings.kafka()
    os_conn = settings.opensearch()
    for shown in (repr(conn), conn.model_dump_json(), repr(os_conn), os_conn.model_dump_json(), repr(settings)):
        assert "s3cret" not in shown
    # Actors get their config through Ray's own channel, with the secrets in it.
    config = memory_config("secure-settings", kafka=conn, opensearch=os_conn)
    assert "s3cret" not in config.model_dump_json()
    back = ActorConfig.model_validate_json(config.model_dump_json(context=REVEAL))
    assert back.kafka.client_options()["sasl_plain_password"] == "s3cret-kafka"
    assert back.opensearch.client_options()["http_auth"] == ("admin", "s3cret-os")


def test_settings_come_from_the_environment(monkeypatch):
    for name, value in SCRAM.items():
        monkeypatch.setenv(f"RAYLANE_{name.upper()}", value)
    assert Settings.from_env().kafka().client_options()["sasl_plain_password"] == "s3cret-kafka"


def test_opensearch_mutual_tls_and_basic_auth():
    conn = OpenSearchConnection(
        url="https://search:9200",
        ca_certs="/ca.pem",
        client_cert="/c.pem",
        client_key="/k.pem",
        username="u",
        password="p",
    )
    opts = conn.client_options()
    assert opts["hosts"] == ["https://search:9200"] and opts["ca_certs"] == "/ca.pem"
    assert (opts["client_cert"], opts["client_key"], opts["http_auth"]) == ("/c.pem", "/k.pem", ("u", "p"))


def test_opensearch_sigv4_signs_with_the_region_and_service(monkeypatch):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    url = "https://domain.eu-west-1.es.amazonaws.com"
    conn = Settings(opensearch_url=url, opensearch_auth="aws", opensearch_aws_region="eu-west-1").opensearch()
    signer = conn.client_options()["http_auth"]
    headers = signer("GET", "https://domain.eu-west-1.es.amazonaws.com/_cluster/health", None)
    assert "eu-west-1/es/aws4_request" in headers["Authorization"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"opensearch_auth": "aws"}, "needs the region"),
        ({"opensearch_client_cert": "/c.pem"}, "needs its key"),
        ({"opensearch_username": "u"}, "needs both a user name and a password"),
    ],
)
def test_opensearch_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        Settings(**settings).opensearch()


def test_secrets_come_from_a_folder_of_files_readable_by_their_owner_only(tmp_path, monkeypatch):
    folder = tmp_path / "secrets"
    folder.mkdir()
    for name, value in {"kafka_sasl_password": "from-a-file\n", "RAYLANE_OPENSEARCH_PASSWORD": "os-file"}.items():
        (folder / name).write_text(value)
        (folder / name).chmod(0o600)
    monkeypatch.setenv("RAYLANE_SECRETS_DIR", str(folder))
    settings = Settings.from_env(**{k: v for k, v in SCRAM.items() if k != "kafka_sasl_password"})
    assert settings.kafka().client_options()["sasl_plain_password"] == "from-a-file"
    assert settings.opensearch_password is not None and settings.opensearch_password.get_secret_value() == "os-file"
    # The environment still wins over a file.
    monkeypatch.setenv("RAYLANE_OPENSEARCH_PASSWORD", "from-env")
    assert Settings.from_env().opensearch_password.get_secret_value() == "from-env"


@pytest.mark.parametrize(
    ("name", "mode", "message"),
    [("kafka_sasl_password", 0o644, "read by others"), ("not_a_setting", 0o600, "names no raylane setting")],
)
def test_a_secrets_file_others_may_read_or_of_no_setting_is_refused(tmp_path, monkeypatch, name, mode, message):
    (tmp_path / name).write_text("x")
    (tmp_path / name).chmod(mode)
    monkeypatch.setenv("RAYLANE_SECRETS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        Settings.from_env()


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600)]
)
def test_durations(text, seconds):
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["7", "0d", "7x", "1.5h", "-1d", "d", ""])
def test_durations_that_are_not(text):
    with pytest.raises(ValueError):
        duration_s(text)
    with pytest.raises(ConfigError):
        Settings.from_env(retention=text)


def test_each_error_has_its_exit_code():
    from raylane.cli import exit_code_of
    from raylane.errors import (
        InvalidTaskInput,
        QueueUnavailable,
        ScheduleNotFound,
        StackError,
        TaskCancelled,
        TaskFailed,
        TaskNotFound,
        TaskTimedOut,
        WaitTimeout,
    )

    assert exit_code_of(TaskFailed("t", "ValueError", "x", None)) == 1
    assert exit_code_of(TaskCancelled("t")) == exit_code_of(TaskTimedOut("t")) == 1
    assert exit_code_of(InvalidTaskInput("bad")) == exit_code_of(ConfigError("bad")) == 2
    assert exit_code_of(TaskNotFound("t")) == exit_code_of(ScheduleNotFound("s")) == 3
    assert exit_code_of(QueueUnavailable("down")) == exit_code_of(StackError("down")) == 4
    assert exit_code_of(WaitTimeout("t", 1.0, "RUNNING")) == 5


@pytest.mark.parametrize(("copies", "seconds"), [(1, 10.0), (3, 30.0)])
def test_a_produce_waits_out_a_leader_fail_over_only_where_there_are_copies(copies, seconds):
    from raylane.queue import KafkaTaskQueue
    from raylane.signing import Signer

    queue = KafkaTaskQueue(
        "127.0.0.1:1",
        prefix="p.",
        dlq_topic="p.dlq",
        partitions=1,
        max_payload_bytes=1024,
        signer=Signer(b"k" * 32),
        copies=copies,
    )
    assert queue.produce_timeout_s == seconds
