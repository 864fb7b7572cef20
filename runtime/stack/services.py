"""The three services of the local stack: Kafka (KRaft), OpenSearch and a Ray head node.

Each service knows how to start itself from the cache, how to tell that it is ready,
which processes are its own (by pid file), and how to stop them.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

from raylane.config import KafkaConnection, OpenSearchConnection, Settings, running_as_root, user_exists
from raylane.errors import StackError
from raylane.stack import fetch, proc, secure


def _java_home() -> Path:
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "java is not installed; the local stack needs Java 17 (apt-get install openjdk-17-jre-headless)"
        )
    return Path(os.path.realpath(java)).parent.parent


class Service(ABC):
    """One process tree of the local stack, tracked by its pid file."""

    name: str

    # Whether the service has a secure variant (RAYLANE_SECURE_STACK), with files of its own.
    _has_secure = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.run_dir = settings.state_dir
        self.secure = settings.secure_stack and self._has_secure
        stem = f"{self.name}-secure" if self.secure else self.name
        self.pid_file = self.run_dir / f"{stem}.pid"
        self.log_file = self.run_dir / "logs" / f"{stem}.log"

    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients reach the service."""

    def pid(self) -> int | None:
        """The pid of the running service, or None."""
        return proc.read_pid(self.pid_file)

    def pids(self) -> list[int]:
        """Every process that belongs to the running service."""
        pid = self.pid()
        return [pid] if pid else []

    def prepare(self) -> None:  # noqa: B027 -- optional: most services have nothing to prepare
        """Fetch and lay out whatever the service needs before it starts (idempotent)."""

    @abstractmethod
    def _command(self) -> tuple[list[str], dict, str | None]:
        """The command line, environment and user of the service."""

    @abstractmethod
    def probe(self) -> bool:
        """One readiness check; True when the service answers as ready."""

    def start(self) -> int:
        """Start the service detached; returns its pid."""
        cmd, env, user = self._command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as log:
            log.write(f"\n--- raylane starting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        return proc.spawn(cmd, log_file=self.log_file, pid_file=self.pid_file, env=env, user=user)

    def wait_ready(self, pid: int, deadline_s: float) -> None:
        """Block until ``probe`` passes, the process dies, or the deadline passes."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if proc.exited_early(pid):
                raise StackError(
                    f"{self.name} exited during start-up:\n{proc.log_tail(self.log_file)}\n",
                    service=self.name,
                    log_file=str(self.log_file),
                )
            if self.probe():
                return
            time.sleep(0.25)
        raise StackError(
            f"{self.name} was not ready within {deadline_s:.0f}s", service=self.name, log_file=str(self.log_file)
        )

    # Whether SIGTERM to the main process alone stops the whole tree in order.
    _leader_stops_all = False

    def stop(self, grace_s: float = 20.0) -> bool:
        """Stop the service's own processes: SIGTERM, then SIGKILL after ``grace_s``. True if it was running."""
        pids = self.pids()
        if pids:
            proc.terminate(pids, grace_s, leader=self.pid() if self._leader_stops_all else None)
        self.pid_file.unlink(missing_ok=True)
        return bool(pids)


class Kafka(Service):
    """Kafka 4.x in KRaft mode (broker and controller in one JVM) on loopback; secure, its clients
    use SASL_SSL with SCRAM-SHA-512, and its controller TLS with client certificates (SCRAM
    credentials live in the metadata the controller serves, so it cannot use them itself).

    The local stack has one node. ``Kafka(settings, node=n, nodes=k)`` is node n of a k-node
    cluster (every node a voter), with ports ``NODE_PORT_STEP`` apart per node and a folder
    and pid file of its own: the replication tests run three."""

    name = "kafka"
    _has_secure = True
    NODE_PORT_STEP = 10

    def __init__(self, settings: Settings, node: int = 1, nodes: int = 1):
        if not 1 <= node <= nodes:
            raise StackError(f"Kafka node {node} is not one of {nodes}", service="kafka")
        self.node, self.nodes = node, nodes
        super().__init__(settings)
        if nodes > 1:
            self.pid_file = self.pid_file.with_name(f"{self.pid_file.stem}-{node}-of-{nodes}.pid")
            self.log_file = self.log_file.with_name(f"{self.log_file.stem}-{node}-of-{nodes}.log")

    def _port(self, base: int, node: int | None = None) -> int:
        return base + ((node or self.node) - 1) * self.NODE_PORT_STEP

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._port(self.settings.kafka_port)}"

    def connection(self) -> KafkaConnection:
        """How raylane's clients reach this Kafka."""
        if self.secure:
            return secure.kafka_connection(self.settings, self.address)
        return self.settings.kafka(self.address)

    @property
    def _dir(self) -> Path:
        folder = self.settings.home / ("kafka-secure" if self.secure else "kafka")
        return folder.with_name(f"{folder.name}-{self.node}-of-{self.nodes}") if self.nodes > 1 else folder

    def _cluster_id(self) -> str:
        """The id the storage is formatted with; one for all nodes of a cluster."""
        shared = self.settings.home / f"kafka-cluster-id-{self.nodes}" if self.nodes > 1 else None
        if shared is not None and shared.exists():
            return shared.read_text().strip()
        cluster_id = "-"
        while cluster_id.startswith("-"):  # one in 64 would be read as an option by the tool, as Kafka's own ids avoid
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if shared is not None:
            shared.write_text(cluster_id)
        return cluster_id

    def _listeners(self) -> list[str]:
        s = self.settings
        port = self._port(s.kafka_port)
        controller = f"CONTROLLER://127.0.0.1:{self._port(s.kafka_controller_port)}"
        if not self.secure:
            return [
                f"listeners=PLAINTEXT://127.0.0.1:{port},{controller}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            ]
        m = secure.material(s)
        creds = m.credentials()
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{secure.USER}" password="{creds["kafka_password"]}";'
        )
        return [
            f"listeners=SASL_SSL://127.0.0.1:{port},{controller}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
            "listener.name.controller.ssl.client.auth=required",
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={m.keystore}",
            f"ssl.keystore.password={creds['keystore_password']}",
            f"ssl.key.password={creds['keystore_password']}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={m.ca}",
        ]

    def prepare(self) -> None:
        self._lib = fetch.kafka_libs(self.settings.home, self.settings.kafka_version)
        s = self.settings
        if self.secure:
            secure.material(s).ensure()
        data = self._dir / "data"
        self._dir.mkdir(parents=True, exist_ok=True)
        properties = self._dir / "server.properties"
        properties.touch(mode=0o600)  # it holds the keystore's password when secure
        voters = ",".join(f"{n}@127.0.0.1:{self._port(s.kafka_controller_port, n)}" for n in range(1, self.nodes + 1))
        copies = min(3, self.nodes)
        min_isr = max(1, copies - 1)
        properties.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node}",
                    f"controller.quorum.voters={voters}",
                    *self._listeners(),
                    "controller.listener.names=CONTROLLER",
                    f"log.dirs={data}",
                    f"num.partitions={s.partitions}",
                    "auto.create.topics.enable=false",
                    # Kafka's own topics as replicated as the cluster allows (acks=all writes of
                    # the consumer offsets then survive a broker).
                    f"offsets.topic.replication.factor={copies}",
                    "offsets.topic.num.partitions=8",
                    f"transaction.state.log.replication.factor={copies}",
                    f"transaction.state.log.min.isr={min_isr}",
                    f"share.coordinator.state.topic.replication.factor={copies}",
                    f"share.coordinator.state.topic.min.isr={min_isr}",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    # The log cleaner allocates its whole dedupe buffer in the heap at start-up,
                    # 128 MiB unless told: a broker with a small heap died of it before it listened.
                    # An eighth of the heap still holds the keys of a few hundred thousand records
                    # per pass, far more than the compacted offsets topic keeps here.
                    f"log.cleaner.dedupe.buffer.size={s.kafka_heap_mb * 1024 * 1024 // 8}",
                    "",
                ]
            )
        )
        (self._dir / "log4j2.properties").write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.console.type = Console",
                    "appender.console.name = STDOUT",
                    "appender.console.layout.type = PatternLayout",
                    "appender.console.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = info",
                    "rootLogger.appenderRef.stdout.ref = STDOUT",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = warn",
                    "logger.apache.name = org.apache.kafka",
                    "logger.apache.level = warn",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            cluster_id = self._cluster_id()
            # The SCRAM user is part of the metadata the storage starts with.
            scram = []
            if self.secure:
                password = secure.material(s).credentials()["kafka_password"]
                scram = ["--add-scram", f"SCRAM-SHA-512=[name={secure.USER},password={password}]"]
            out = subprocess.run(
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self._dir / "server.properties"),
                    *scram,
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {out.stdout}{out.stderr}", service="kafka")

    def _java(self) -> list[str]:
        return [
            str(_java_home() / "bin" / "java"),
            f"-Xms{min(256, self.settings.kafka_heap_mb)}m",
            f"-Xmx{self.settings.kafka_heap_mb}m",
            "-XX:+UseG1GC",
            # split as OpenSearch's start script splits its options: on spaces, with no quoting
            *self.settings.stack_jvm_options.split(),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._dir / 'log4j2.properties'}",
            "-cp",
            f"{self._lib}/*",
        ]

    def _command(self):
        return [*self._java(), "kafka.Kafka", str(self._dir / "server.properties")], None, None

    def probe(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        # Until the broker listens, a client's bootstrap retries refused connections for its whole
        # timeout (30 s by default), long after the broker has come up: a plain connect says so at once.
        try:
            socket.create_connection(("127.0.0.1", self._port(self.settings.kafka_port)), timeout=1).close()
        except OSError:
            return False
        try:
            admin = KafkaAdminClient(
                **self.connection().client_options(), request_timeout_ms=2000, bootstrap_timeout_ms=2000
            )
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()


class OpenSearch(Service):
    """A single-node OpenSearch 2.19 on loopback, run as an unprivileged user when raylane is root;
    secure, with the ``opensearch-security`` plugin of the same release from Maven Central: HTTPS
    (and TLS between nodes) with the secure material's certificate, and basic auth."""

    name = "opensearch"
    _has_secure = True

    @property
    def address(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"{scheme}://127.0.0.1:{self.settings.opensearch_port}"

    def connection(self) -> OpenSearchConnection:
        """How raylane's clients reach this OpenSearch."""
        if self.secure:
            return secure.opensearch_connection(self.settings, self.address)
        return self.settings.opensearch(self.address)

    @property
    def _root(self) -> Path:
        root = self.settings.opensearch_root_dir if running_as_root() else self.settings.home / "opensearch"
        return root.with_name(f"{root.name}-secure") if self.secure else root

    def _secure_config(self) -> list[str]:
        """Install the security plugin (once) and configure it; the lines it adds to opensearch.yml."""
        m = secure.material(self.settings)
        m.ensure()
        config = self._home / "config"
        if not (self._home / "plugins" / "opensearch-security").exists():
            plugin = fetch.opensearch_security_zip(self.settings.home, self.version)
            out = subprocess.run(
                [str(self._home / "bin" / "opensearch-plugin"), "install", "--batch", plugin.as_uri()],
                env={**os.environ, "OPENSEARCH_JAVA_HOME": str(_java_home())},
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise StackError(f"installing opensearch-security failed: {out.stdout}{out.stderr}", service=self.name)
        # The plugin reads certificates only from inside its config folder.
        for src, name in ((m.ca, "raylane-ca.pem"), (m.cert, "raylane-node.pem"), (m.key, "raylane-node-key.pem")):
            shutil.copyfile(src, config / name)
            (config / name).chmod(0o600)
        tool = self._home / "plugins" / "opensearch-security" / "tools" / "hash.sh"
        tool.chmod(0o755)
        hashed = subprocess.run(
            [str(tool), "-env", "RAYLANE_OPENSEARCH_HASH_PASSWORD"],
            env={
                **os.environ,
                "JAVA_HOME": str(_java_home()),
                "OPENSEARCH_JAVA_HOME": str(_java_home()),
                "RAYLANE_OPENSEARCH_HASH_PASSWORD": m.credentials()["opensearch_password"],
            },
            capture_output=True,
            text=True,
        )
        bcrypt = hashed.stdout.strip().splitlines()[-1] if hashed.returncode == 0 and hashed.stdout.strip() else ""
        if not bcrypt.startswith("$2"):
            raise StackError(f"hashing the OpenSearch password failed: {hashed.stdout}{hashed.stderr}")
        (config / "opensearch-security" / "internal_users.yml").write_text(
            "\n".join(
                [
                    "_meta:",
                    '  type: "internalusers"',
                    "  config_version: 2",
                    f"{secure.USER}:",
                    f'  hash: "{bcrypt}"',
                    "  reserved: true",
                    '  backend_roles: ["admin"]',  # mapped to all_access by the plugin's default roles mapping
                    '  description: "raylane"',
                    "",
                ]
            )
        )
        return [
            "plugins.security.ssl.transport.pemcert_filepath: raylane-node.pem",
            "plugins.security.ssl.transport.pemkey_filepath: raylane-node-key.pem",
            "plugins.security.ssl.transport.pemtrustedcas_filepath: raylane-ca.pem",
            "plugins.security.ssl.transport.enforce_hostname_verification: false",
            "plugins.security.ssl.http.enabled: true",
            "plugins.security.ssl.http.pemcert_filepath: raylane-node.pem",
            "plugins.security.ssl.http.pemkey_filepath: raylane-node-key.pem",
            "plugins.security.ssl.http.pemtrustedcas_filepath: raylane-ca.pem",
            "plugins.security.allow_default_init_securityindex: true",
            'plugins.security.nodes_dn: ["CN=127.0.0.1,O=raylane"]',
            'plugins.security.authcz.admin_dn: ["CN=raylane-admin,O=raylane"]',
            "plugins.security.audit.type: noop",
        ]

    def _ensure_user(self) -> None:
        user = self.settings.opensearch_user
        if not user_exists(user):
            out = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0 and not user_exists(user):
                raise StackError(
                    f"could not create the user {user!r} that runs OpenSearch: {out.stderr.strip()}",
                    service="opensearch",
                )

    @property
    def version(self) -> str:
        """The OpenSearch release this service runs."""
        return self.settings.opensearch_secure_version if self.secure else self.settings.opensearch_version

    def prepare(self) -> None:
        zip_path = fetch.opensearch_zip(self.settings.home, self.version)
        self._home = fetch.unpack_opensearch(zip_path, self._root, self.version)
        s = self.settings
        data, logs = self._root / "data", self._root / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        (self._home / "config" / "opensearch.yml").write_text(
            "\n".join(
                [
                    "cluster.name: raylane",
                    "node.name: raylane-local",
                    f"path.data: {data}",
                    f"path.logs: {logs}",
                    "network.host: 127.0.0.1",
                    f"http.port: {s.opensearch_port}",
                    f"transport.port: {s.opensearch_transport_port}",
                    "discovery.type: single-node",
                    "cluster.routing.allocation.disk.threshold_enabled: false",
                    *(self._secure_config() if self.secure else []),
                    "",
                ]
            )
        )
        if running_as_root():
            self._ensure_user()
            pw = pwd.getpwnam(s.opensearch_user)
            for path in [self._root, *self._root.rglob("*")]:
                if path.is_symlink():
                    continue
                if path.stat().st_uid != pw.pw_uid:
                    os.chown(path, pw.pw_uid, pw.pw_gid)

    def _java_opts(self) -> str:
        """The JVM options OpenSearch's start script adds to its own (its heap, and the stack's options)."""
        s = self.settings
        return f"-Xms{s.opensearch_heap_mb}m -Xmx{s.opensearch_heap_mb}m {s.stack_jvm_options}".strip()

    def _command(self):
        s = self.settings
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OPENSEARCH_JAVA_HOME": str(_java_home()),
            "OPENSEARCH_JAVA_OPTS": self._java_opts(),
            "OPENSEARCH_TMPDIR": str(self._root / "tmp"),
            "HOME": str(self._root),
        }
        (self._root / "tmp").mkdir(exist_ok=True)
        if running_as_root():
            pw = pwd.getpwnam(s.opensearch_user)
            os.chown(self._root / "tmp", pw.pw_uid, pw.pw_gid)
        user = s.opensearch_user if running_as_root() else None
        return [str(self._home / "bin" / "opensearch")], env, user

    def health(self) -> dict | None:
        """The cluster health document, or None when OpenSearch does not answer."""
        request = urllib.request.Request(f"{self.address}/_cluster/health")
        context = None
        if self.secure:
            m = secure.material(self.settings)
            if not m.ready():
                return None
            context = ssl.create_default_context(cafile=str(m.ca))
            login = f"{secure.USER}:{m.credentials()['opensearch_password']}".encode()
            request.add_header("Authorization", "Basic " + base64.b64encode(login).decode())
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as r:
                return json.load(r)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def probe(self) -> bool:
        h = self.health()
        return h is not None and h.get("status") in ("yellow", "green")


# Where Ray's defaults grow with the number of tasks run, bounded. Every raylane task runs as a
# Ray task named after it (raylane:<name>:<id>), so the Name label of Ray's task metrics would
# make a new time series per task in every node's agent ("low" drops that label); and the task
# events kept for the dashboard's task list are capped below Ray's 100,000.
RAY_MEMORY_BOUNDS = {"RAY_metric_cardinality_level": "low", "RAY_task_events_max_num_task_in_gcs": "20000"}


class RayHead(Service):
    """A local Ray head node (``ray start --head --block``) with a bounded object store and token auth."""

    name = "ray"
    _leader_stops_all = True  # `ray start --block` shuts its node down on SIGTERM

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.ray_port}"

    @property
    def dashboard_url(self) -> str:
        """The Ray dashboard, also the address for ``ray job submit``."""
        return f"http://127.0.0.1:{self.settings.ray_dashboard_port}"

    @property
    def metrics_url(self) -> str:
        """The node's Prometheus endpoint (Ray's metrics and raylane's)."""
        return f"http://127.0.0.1:{self.settings.ray_metrics_port}/metrics"

    @property
    def temp_dir(self) -> Path:
        # Ray's unix socket paths must stay short, so this is not under RAYLANE_HOME.
        return Path(tempfile.gettempdir()) / f"raylane-ray-{os.getuid()}-{self.settings.ray_port}"

    def prepare(self) -> None:
        # Token authentication needs a token before the head starts; make one on first use.
        if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
            return
        if not (Path.home() / ".ray" / "auth_token").exists():
            out = subprocess.run(
                [sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"],
                env=dict(os.environ, RAY_AUTH_MODE="token"),
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise StackError(f"could not create a Ray auth token: {out.stderr.strip()[-500:]}", service="ray")

    def pids(self) -> list[int]:
        pid = self.pid()
        if not pid:
            return []
        group = proc.process_group(pid)
        # Ray workers start their own sessions; they name their raylet in the environment.
        workers = proc.processes_with_env("RAY_RAYLET_PID", [str(p) for p in group])
        # Job drivers (the raylane service among them) are children of their job's supervisor worker.
        return proc.descendants(set(group) | set(workers))

    def _command(self):
        s = self.settings
        cmd = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={s.ray_port}",
            f"--ray-client-server-port={s.ray_port + 1}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={s.ray_dashboard_port}",
            # The node's agents get ports next to the dashboard's, so that two stacks on one
            # machine (or a stack beside another Ray) do not fight over Ray's fixed defaults.
            f"--dashboard-agent-listen-port={s.ray_dashboard_port + 1}",
            f"--dashboard-agent-grpc-port={s.ray_dashboard_port + 2}",
            f"--runtime-env-agent-port={s.ray_dashboard_port + 3}",
            f"--num-cpus={s.ray_num_cpus}",
            f"--object-store-memory={s.ray_object_store_mb * 1024 * 1024}",
            f"--metrics-export-port={s.ray_metrics_port}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            # Keep idle workers warm: raylane's executor runs many short tasks, and a worker
            # started per task would cost far more than the task itself. Ray keeps idle as many
            # workers as the node has CPUs free, and ends the others once idle this long (an
            # hour, not a second). Ray's worker soft limit is left alone: set, it also becomes
            # the number of idle workers Ray starts more to keep while tasks queue, which with
            # 2 per CPU started a worker process per CPU in use, each a second of CPU, in every
            # busy minute (mostly never given a task).
            "--system-config="
            + json.dumps(
                {
                    "idle_worker_killing_time_threshold_ms": 3_600_000,
                    # metrics reach the Prometheus endpoint within seconds
                    "metrics_report_interval_ms": 2000,
                }
            ),
        ]
        # The raylane service job would hold a node drain for its full 30 s default; its work
        # is safe in Kafka and OpenSearch, so a short drain is enough.
        env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="3",
            **RAY_MEMORY_BOUNDS,
        )
        env.pop("RAY_ADDRESS", None)
        return cmd, env, None

    def probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/api/gcs_healthz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False
