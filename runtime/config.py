"""Typed settings for raylane, read from ``RAYLANE_*`` environment variables once.

With no addresses configured, raylane uses the local stack (``raylane stack up``);
with ``RAYLANE_KAFKA_BOOTSTRAP`` / ``RAYLANE_OPENSEARCH_URL`` / ``RAYLANE_RAY_ADDRESS``
set it uses those clusters and starts nothing of its own.
"""

from __future__ import annotations

import importlib
import os
import pwd
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    field_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from raylane.errors import ConfigError
from raylane.signing import Signer, load_or_create_secret

MAX_CONSUMERS = 64  # QueueConsumers of one deployment at most

_PREFIX = "RAYLANE_"


def _default_home() -> Path:
    return Path.home() / ".cache" / "raylane"


REVEAL = {"reveal_secrets": True}
"""Serialization context under which secrets are written out in clear (only for Ray's own channel)."""


def reveal_secret(value: SecretStr | None, info: SerializationInfo) -> str | None:
    """A secret as serialized: masked, unless the dump was made with ``context=REVEAL``."""
    if value is None:
        return None
    if info.context and info.context.get("reveal_secrets"):
        return value.get_secret_value()
    return str(value)


KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class KafkaConnection(BaseModel):
    """How to reach a Kafka cluster: bootstrap servers, and TLS and SASL as the cluster asks.
    Every Kafka client raylane makes (producer, consumers, admin) takes ``client_options()``.
    Secrets are ``SecretStr``: masked in every dump, log and repr."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap: str
    security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    sasl_mechanism: KafkaSaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # OAUTHBEARER: "module:name" of what makes a kafka-python token provider when called with no
    # arguments (an AbstractTokenProvider subclass, or a function), imported from this
    # installation's own modules, never from anything read off Kafka, OpenSearch or HTTP.
    sasl_oauth_token_provider: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None  # of the client key, if it is encrypted
    ssl_check_hostname: bool = True

    @field_serializer("sasl_password", "ssl_password")
    def _dump_secret(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        return reveal_secret(value, info)

    @model_validator(mode="after")
    def _coherent(self) -> KafkaConnection:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security protocol {self.security_protocol} needs a SASL mechanism")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(
                f"a SASL mechanism needs protocol SASL_SSL or SASL_PLAINTEXT, not {self.security_protocol}"
            )
        if self.sasl_mechanism == "OAUTHBEARER":
            if self.sasl_oauth_token_provider is None:
                raise ValueError("SASL OAUTHBEARER needs a token provider (module:name)")
        elif self.sasl_mechanism is not None and (self.sasl_username is None or self.sasl_password is None):
            raise ValueError(f"SASL {self.sasl_mechanism} needs a user name and a password")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if not tls and (self.ssl_cafile or self.ssl_certfile):
            raise ValueError(f"TLS files are given, but security protocol {self.security_protocol} does not use TLS")
        return self

    @property
    def tls(self) -> bool:
        """Whether connections use TLS."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's clients for this connection."""
        opts: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.tls:
            opts["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    opts[name] = getattr(self, name)
            if self.ssl_password is not None:
                opts["ssl_password"] = self.ssl_password.get_secret_value()
        if self.sasl_mechanism is not None:
            opts["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                opts["sasl_oauth_token_provider"] = self._token_provider()
            else:
                opts["sasl_plain_username"] = self.sasl_username
                opts["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return opts

    def _token_provider(self) -> Any:
        module, _, name = (self.sasl_oauth_token_provider or "").partition(":")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"the Kafka OAUTHBEARER token provider {self.sasl_oauth_token_provider!r}: {e}") from e
        return found()


class OpenSearchConnection(BaseModel):
    """How to reach an OpenSearch cluster: URL plus optional TLS (a CA, a client certificate),
    and basic auth or AWS SigV4 (Amazon OpenSearch Service, with the ``aws`` extra). Secrets
    are ``SecretStr``: masked in every dump, log and repr."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    username: str | None = None
    password: SecretStr | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    auth: Literal["basic", "aws"] = "basic"
    aws_region: str | None = None
    aws_service: Literal["es", "aoss"] = "es"  # "aoss": OpenSearch Serverless

    @field_serializer("password")
    def _dump_password(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        return reveal_secret(value, info)

    @model_validator(mode="after")
    def _coherent(self) -> OpenSearchConnection:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("an OpenSearch client certificate needs its key, and a key its certificate")
        if self.auth == "aws" and not self.aws_region:
            raise ValueError("OpenSearch auth 'aws' (SigV4) needs the region (RAYLANE_OPENSEARCH_AWS_REGION)")
        if self.auth == "aws" and self.username:
            raise ValueError("OpenSearch auth 'aws' signs requests; a basic-auth user is not used with it")
        if (self.username is None) != (self.password is None):
            raise ValueError("OpenSearch basic auth needs both a user name and a password")
        return self

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of opensearch-py's client for this connection."""
        opts: dict[str, Any] = {"hosts": [self.url], "verify_certs": self.verify_certs, "ca_certs": self.ca_certs}
        if self.client_cert:
            opts["client_cert"], opts["client_key"] = self.client_cert, self.client_key
        if self.auth == "aws":
            opts["http_auth"] = self._aws_signer()
        elif self.username:
            opts["http_auth"] = (self.username, self.password.get_secret_value() if self.password else "")
        return opts

    def _aws_signer(self) -> Any:
        try:
            import boto3
            from opensearchpy import Urllib3AWSV4SignerAuth
        except ImportError as e:
            raise ConfigError("OpenSearch auth 'aws' needs boto3: pip install 'raylane[aws]'") from e
        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise ConfigError("OpenSearch auth 'aws': boto3 found no AWS credentials on this machine")
        return Urllib3AWSV4SignerAuth(credentials, self.aws_region, self.aws_service)


OpenSearchAuth = OpenSearchConnection  # the earlier name, kept as an alias


class Settings(BaseSettings):
    """All of raylane's options; each maps to the environment variable ``RAYLANE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=_PREFIX, extra="forbid", frozen=True)

    home: Path = Field(
        default_factory=_default_home,
        description="Cache and state folder of the local stack (downloads, pid files, logs).",
    )
    # --- existing clusters; None means "use the local stack"
    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers, host:port[,host:port].")
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (with a SASL_* protocol)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (PLAIN, SCRAM).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (PLAIN, SCRAM).")
    kafka_sasl_oauth_token_provider: str | None = Field(
        None, description="OAUTHBEARER: module:name of a kafka-python token provider, importable on every node."
    )
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle that signs the brokers' certificates.")
    kafka_ssl_certfile: str | None = Field(None, description="Client certificate (PEM), for brokers that ask for one.")
    kafka_ssl_keyfile: str | None = Field(None, description="Key of the client certificate (PEM).")
    kafka_ssl_password: SecretStr | None = Field(None, description="Password of the client key, if encrypted.")
    kafka_ssl_check_hostname: bool = Field(True, description="Check that a broker's certificate names its host.")
    opensearch_url: str | None = Field(None, description="OpenSearch URL, e.g. https://search:9200.")
    opensearch_username: str | None = Field(None, description="OpenSearch basic-auth user.")
    opensearch_password: SecretStr | None = Field(None, description="OpenSearch basic-auth password.")
    opensearch_verify_certs: bool = Field(True, description="Verify OpenSearch TLS certificates.")
    opensearch_ca_certs: str | None = Field(None, description="CA bundle for OpenSearch TLS.")
    opensearch_client_cert: str | None = Field(None, description="Client certificate (PEM) for OpenSearch mTLS.")
    opensearch_client_key: str | None = Field(None, description="Key of the OpenSearch client certificate (PEM).")
    opensearch_auth: Literal["basic", "aws"] = Field(
        "basic", description="basic (user and password, if given) or aws (SigV4; needs the aws extra)."
    )
    opensearch_aws_region: str | None = Field(None, description="AWS region of the domain (auth aws).")
    opensearch_aws_service: Literal["es", "aoss"] = Field(
        "es", description="es (OpenSearch Service) or aoss (OpenSearch Serverless), for auth aws."
    )
    ray_address: str | None = Field(None, description="Ray cluster address (host:port or 'auto').")
    ray_dashboard_url: str | None = Field(None, description="Ray dashboard / job API URL, if Ray does not report it.")
    # --- local stack
    kafka_port: int = Field(29092, ge=1, le=65535, description="Local Kafka broker port.")
    kafka_controller_port: int = Field(29093, ge=1, le=65535, description="Local Kafka KRaft controller port.")
    kafka_version: str = Field("4.3.1", description="Kafka release fetched from Maven Central.")
    kafka_heap_mb: int = Field(384, ge=128, le=512, description="Local Kafka JVM heap (MiB).")
    opensearch_port: int = Field(29200, ge=1, le=65535, description="Local OpenSearch HTTP port.")
    opensearch_transport_port: int = Field(29300, ge=1, le=65535, description="Local OpenSearch transport port.")
    opensearch_version: str = Field("2.19.6", description="OpenSearch release fetched from Maven Central.")
    opensearch_secure_version: str = Field(
        "2.19.4",
        description="OpenSearch release of the secure local stack: the newest 2.19 for which Maven Central "
        "serves the opensearch-security plugin (whose release must match OpenSearch's).",
    )
    opensearch_heap_mb: int = Field(512, ge=256, le=1024, description="Local OpenSearch JVM heap (MiB).")
    # The JIT's second tier (C2) keeps compiling OpenSearch's code paths long after a start (at
    # rest, 20 minutes in, still about 90 compilations every 10 s); on a small machine its CPU is
    # taken from the tasks. Measured on 2 cores over the main job's first three runs after a
    # start: OpenSearch 4.0-6.2 CPU ms per task with C2, 1.4-2.8 without; Kafka 0.7-1.1 against 0.3-0.5.
    stack_jvm_options: str = Field(
        "-XX:TieredStopAtLevel=1",
        description="Extra JVM options of the local Kafka and OpenSearch, separated by spaces (default: "
        "compile with C1 only, which costs a small machine far less CPU; empty for the JVM's defaults).",
    )
    opensearch_user: str = Field(
        "raylane", description="Unprivileged user that runs OpenSearch when raylane runs as root."
    )
    opensearch_root_dir: Path = Field(
        Path("/var/lib/raylane"), description="Where OpenSearch lives when raylane runs as root (not under /root)."
    )
    ray_port: int = Field(26379, ge=1, le=65535, description="Local Ray GCS port.")
    ray_dashboard_port: int = Field(
        28265, ge=1, le=65532, description="Local Ray dashboard port; the node's agents use the next three."
    )
    ray_metrics_port: int = Field(
        28080, ge=1, le=65535, description="Local Ray node's Prometheus endpoint, where raylane's metrics appear."
    )
    ray_num_cpus: int = Field(4, ge=1, description="Logical CPUs the local Ray node offers.")
    ray_object_store_mb: int = Field(512, ge=75, description="Local Ray object store size (MiB).")
    start_timeout_s: float = Field(180.0, gt=0, description="Deadline for each local service to become ready.")
    secure_stack: bool = Field(
        False,
        description="The local stack's Kafka on SASL_SSL (SCRAM-SHA-512) and OpenSearch on TLS with basic auth "
        "(`raylane stack up --secure`); certificates and credentials are made at its first start, "
        "under <home>/secure, and every raylane client of the local stack uses them.",
    )
    # --- task system
    default_queue: str = Field(
        "default", pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="Queue used when none is given."
    )
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of a newly created queue topic.")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP endpoint (e.g. http://collector:4318) to which executors export one "
        "OpenTelemetry trace per finished task, its trace id the task id (needs the otel extra).",
    )
    otlp_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of finished tasks whose trace is made and exported (0 to 1), chosen by a hash "
        "of the task id, so every process picks the same tasks.",
    )
    retention: str | None = Field(
        None,
        pattern=r"^[1-9][0-9]{0,5}[smhdw]$",
        description="Keep finished tasks' records this long (e.g. 7d), then delete them: daily, and by "
        "`raylane purge`. Default: kept for good.",
    )
    replication: int | None = Field(
        None,
        ge=1,
        le=7,
        description="Copies of each Kafka partition (its replication factor; min.insync.replicas is one "
        "fewer, at least 1) and of each OpenSearch shard (replicas: one fewer). Default: 3, or as many "
        "brokers or data nodes as the cluster has if fewer.",
    )
    max_payload_bytes: int = Field(
        1 << 20, ge=1024, le=64 << 20, description="Largest accepted JSON payload (args+kwargs)."
    )
    max_result_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest result (JSON bytes) a task may return; above it the task fails with ResultTooLarge.",
    )
    max_depth: int = Field(
        16,
        ge=1,
        le=18,
        description="Deepest nesting of lists and dicts in arguments and results "
        "(the status store refuses arrays nested past 20).",
    )
    max_in_flight: int = Field(256, ge=1, description="Tasks a queue consumer holds between poll and RUNNING.")
    max_running: int | None = Field(
        None, ge=1, description="Tasks an executor runs at once (default: 16 per CPU of the executor's node)."
    )
    autoscaling: bool = Field(
        False,
        description="The Ray cluster adds nodes on demand: accept tasks that ask for more resources than any "
        "node has now (they wait for one). Otherwise such a task is refused at submit.",
    )
    consumers: int | None = Field(
        None,
        ge=1,
        le=MAX_CONSUMERS,
        description="QueueConsumer actors per deployment (default: one beside each executor, at most one per "
        "partition of a new queue topic).",
    )
    keepers: int = Field(
        1, ge=1, le=64, description="StatusKeeper actors per deployment; each owns the tasks whose id hashes to it."
    )
    executors: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Executor actors per deployment (default: one on each Ray node with CPUs when raylane "
        "deploys, each with the QueueConsumers of its node beside it).",
    )
    recovery_check_s: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description="How often each executor searches for tasks to carry on: PENDING tasks that may have lost "
        "their queue message, retries overdue, claims of its own that nothing runs. Each look is a few searches.",
    )
    index_alias: str = Field("raylane-tasks", description="OpenSearch alias of the status index.")
    topic_prefix: str = Field("raylane.tasks.", description="Prefix of the per-queue Kafka topics.")
    dlq_topic: str = Field("raylane.dlq", description="Kafka topic for malformed task messages.")
    namespace: str = Field("raylane", description="Ray namespace of raylane's actors.")
    # --- HTTP API
    http_host: str = Field("127.0.0.1", description="Address the HTTP API (Ray Serve's proxy) listens on.")
    http_port: int = Field(28000, ge=1, le=65535, description="Port of the HTTP API.")
    http_max_body_bytes: int = Field(4 << 20, ge=1024, description="Largest accepted HTTP request body (413 above).")
    token_file: Path | None = Field(None, description="Hashed API tokens (default: <home>/tokens.json).")
    http_rate_per_token: float = Field(
        50.0, gt=0, description="Requests a second each API token may make on average (429 with Retry-After above)."
    )
    http_burst_per_token: int = Field(
        200, ge=1, description="Requests an API token may make at once before its rate applies."
    )
    http_waits_per_token: int = Field(
        4, ge=1, description="Waits (GET .../wait) an API token may hold at once (429 above)."
    )
    http_max_open_per_tenant: int = Field(
        100_000,
        ge=1,
        description="Unfinished tasks (PENDING, SCHEDULED, RUNNING) a tenant may have before its submits "
        "are answered 429; `raylane token create --max-open N` sets a tenant's own.",
    )
    secret_file: Path | None = Field(
        None,
        description="The cluster secret that signs queue messages and kept task definitions "
        "(default: <home>/cluster.key, created on first use; share it between deployers).",
    )

    @property
    def tokens_path(self) -> Path:
        """Where the HTTP API's hashed tokens are kept."""
        return self.token_file or self.home / "tokens.json"

    @property
    def secret_path(self) -> Path:
        """Where the cluster secret is kept."""
        return self.secret_file or self.home / "cluster.key"

    def cluster_secret(self) -> SecretStr:
        """The cluster secret, created on first use."""
        return SecretStr(load_or_create_secret(self.secret_path).decode())

    def signer(self):
        """Signs and checks queue messages and task definitions under the cluster secret."""
        return Signer.of(self.cluster_secret())

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Read settings from the environment, rejecting unknown ``RAYLANE_*`` names; settings not
        in the environment may come from the secrets folder (see ``secrets_from``)."""
        known = {_PREFIX + name.upper() for name in cls.model_fields} | {SECRETS_DIR_VAR}
        unknown = sorted(k for k in os.environ if k.startswith(_PREFIX) and k not in known)
        if unknown:
            raise ConfigError(
                f"unknown raylane setting(s) in the environment: {', '.join(unknown)}; "
                f"known ones are {', '.join(sorted(known))}"
            )
        folder = Path(os.environ.get(SECRETS_DIR_VAR) or DEFAULT_SECRETS_DIR).expanduser()
        kept = {k: v for k, v in secrets_from(folder).items() if _PREFIX + k.upper() not in os.environ}
        try:
            return cls(**{**kept, **overrides})
        except ValidationError as e:
            raise ConfigError(f"invalid raylane settings: {e}") from e

    @property
    def uses_local_stack(self) -> bool:
        """True when no external Kafka or OpenSearch is configured."""
        return self.kafka_bootstrap is None and self.opensearch_url is None

    @property
    def state_dir(self) -> Path:
        """Pid files and logs of the local stack."""
        return self.home / "run"

    def opensearch(self, url: str | None = None) -> OpenSearchConnection:
        """Connection options for OpenSearch (the configured one, or ``url``)."""
        try:
            return OpenSearchConnection(
                url=url or self.opensearch_url or f"http://127.0.0.1:{self.opensearch_port}",
                username=self.opensearch_username,
                password=self.opensearch_password,
                verify_certs=self.opensearch_verify_certs,
                ca_certs=self.opensearch_ca_certs,
                client_cert=self.opensearch_client_cert,
                client_key=self.opensearch_client_key,
                auth=self.opensearch_auth,
                aws_region=self.opensearch_aws_region,
                aws_service=self.opensearch_aws_service,
            )
        except ValidationError as e:
            raise ConfigError(f"invalid OpenSearch settings: {e}") from e

    def kafka(self, bootstrap: str | None = None) -> KafkaConnection:
        """Connection options for Kafka (the configured cluster, or ``bootstrap``)."""
        try:
            return KafkaConnection(
                bootstrap=bootstrap or self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}",
                security_protocol=self.kafka_security_protocol,
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_username=self.kafka_sasl_username,
                sasl_password=self.kafka_sasl_password,
                sasl_oauth_token_provider=self.kafka_sasl_oauth_token_provider,
                ssl_cafile=self.kafka_ssl_cafile,
                ssl_certfile=self.kafka_ssl_certfile,
                ssl_keyfile=self.kafka_ssl_keyfile,
                ssl_password=self.kafka_ssl_password,
                ssl_check_hostname=self.kafka_ssl_check_hostname,
            )
        except ValidationError as e:
            raise ConfigError(f"invalid Kafka settings: {e}") from e


SECRETS_DIR_VAR = "RAYLANE_SECRETS_DIR"
DEFAULT_SECRETS_DIR = "~/.raylane/secrets"


def secrets_from(folder: Path) -> dict[str, str]:
    """Settings kept one per file in ``folder`` (``RAYLANE_SECRETS_DIR``, default
    ``~/.raylane/secrets``), each file named like its setting (``kafka_sasl_password``, or
    ``RAYLANE_KAFKA_SASL_PASSWORD``) and holding its value. This is how secrets reach every node
    of a cluster without being written into its config or the environment of every shell:
    cluster.yaml mounts the folder. A file others may read, or one that names no setting, is
    refused. A missing folder holds nothing."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        name = path.name.lower().removeprefix(_PREFIX.lower())
        if name not in Settings.model_fields:
            raise ConfigError(f"{path} names no raylane setting (e.g. kafka_sasl_password)")
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} may be read by others; make it readable by its owner only (chmod 600)")
        out[name] = path.read_text().strip()
    return out


class Endpoints(BaseModel):
    """Resolved addresses of the three services raylane talks to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka: KafkaConnection
    opensearch: OpenSearchConnection
    ray_address: str | None

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka's bootstrap servers."""
        return self.kafka.bootstrap


def running_as_root() -> bool:
    """Whether this process runs as uid 0 (OpenSearch then runs as an unprivileged user)."""
    return os.geteuid() == 0


def user_exists(name: str) -> bool:
    """Whether a local user account exists."""
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
