"""Typed settings for raylane, read from ``RAYLANE_*`` environment variables once.

With no addresses configured, raylane uses the local stack (``raylane stack up``);
with ``RAYLANE_KAFKA_BOOTSTRAP`` / ``RAYLANE_OPENSEARCH_URL`` / ``RAYLANE_RAY_ADDRESS``
set it uses those clusters and starts nothing of its own.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SerializationInfo, ValidationError, field_serializer
from pydantic_settings import BaseSettings, SettingsConfigDict

from raylane.errors import ConfigError
from raylane.signing import Signer, load_or_create_secret

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


class OpenSearchConnection(BaseModel):
    """How to reach an OpenSearch cluster: URL plus optional basic auth and TLS. The password is
    a ``SecretStr``: it is masked in every dump, log and repr."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    username: str | None = None
    password: SecretStr | None = None
    verify_certs: bool = True
    ca_certs: str | None = None

    @field_serializer("password")
    def _dump_password(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        return reveal_secret(value, info)


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
    opensearch_url: str | None = Field(None, description="OpenSearch URL, e.g. https://search:9200.")
    opensearch_username: str | None = Field(None, description="OpenSearch basic-auth user.")
    opensearch_password: SecretStr | None = Field(None, description="OpenSearch basic-auth password.")
    opensearch_verify_certs: bool = Field(True, description="Verify OpenSearch TLS certificates.")
    opensearch_ca_certs: str | None = Field(None, description="CA bundle for OpenSearch TLS.")
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
    opensearch_heap_mb: int = Field(512, ge=256, le=1024, description="Local OpenSearch JVM heap (MiB).")
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
    # --- task system
    default_queue: str = Field(
        "default", pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="Queue used when none is given."
    )
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of a newly created queue topic.")
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
    max_running: int = Field(32, ge=1, description="Tasks an executor runs at once.")
    consumers: int = Field(1, ge=1, le=64, description="QueueConsumer actors per deployment.")
    keepers: int = Field(
        1, ge=1, le=64, description="StatusKeeper actors per deployment; each owns the tasks whose id hashes to it."
    )
    executors: int = Field(
        1, ge=1, le=16, description="Executor actors per deployment (consumers are spread over them)."
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
        """Read settings from the environment, rejecting unknown ``RAYLANE_*`` names."""
        known = {_PREFIX + name.upper() for name in cls.model_fields}
        unknown = sorted(k for k in os.environ if k.startswith(_PREFIX) and k not in known)
        if unknown:
            raise ConfigError(
                f"unknown raylane setting(s) in the environment: {', '.join(unknown)}; "
                f"known ones are {', '.join(sorted(known))}"
            )
        try:
            return cls(**overrides)
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
        return OpenSearchConnection(
            url=url or self.opensearch_url or f"http://127.0.0.1:{self.opensearch_port}",
            username=self.opensearch_username,
            password=self.opensearch_password,
            verify_certs=self.opensearch_verify_certs,
            ca_certs=self.opensearch_ca_certs,
        )


class Endpoints(BaseModel):
    """Resolved addresses of the three services raylane talks to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka_bootstrap: str
    opensearch: OpenSearchConnection
    ray_address: str | None


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
