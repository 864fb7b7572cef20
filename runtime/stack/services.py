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
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

from raylane.config import Settings, running_as_root, user_exists
from raylane.errors import StackError
from raylane.stack import fetch, proc


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

    def __init__(self, settings: Settings):
        self.settings = settings
        self.run_dir = settings.state_dir
        self.pid_file = self.run_dir / f"{self.name}.pid"
        self.log_file = self.run_dir / "logs" / f"{self.name}.log"

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
    """A single-node Kafka 4.x in KRaft mode (broker and controller in one JVM) on loopback."""

    name = "kafka"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.kafka_port}"

    @property
    def _dir(self) -> Path:
        return self.settings.home / "kafka"

    def prepare(self) -> None:
        self._lib = fetch.kafka_libs(self.settings.home, self.settings.kafka_version)
        s = self.settings
        data = self._dir / "data"
        self._dir.mkdir(parents=True, exist_ok=True)
        (self._dir / "server.properties").write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    f"num.partitions={s.partitions}",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
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
            cluster_id = "-"
            while cluster_id.startswith(
                "-"
            ):  # one in 64 would be read as an option by the tool, as Kafka's own ids avoid
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            out = subprocess.run(
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self._dir / "server.properties"),
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

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.address, request_timeout_ms=2000)
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
    """A single-node OpenSearch 2.19 on loopback, run as an unprivileged user when raylane is root."""

    name = "opensearch"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.settings.opensearch_port}"

    @property
    def _root(self) -> Path:
        return self.settings.opensearch_root_dir if running_as_root() else self.settings.home / "opensearch"

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

    def prepare(self) -> None:
        zip_path = fetch.opensearch_zip(self.settings.home, self.settings.opensearch_version)
        self._home = fetch.unpack_opensearch(zip_path, self._root, self.settings.opensearch_version)
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

    def _command(self):
        s = self.settings
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OPENSEARCH_JAVA_HOME": str(_java_home()),
            "OPENSEARCH_JAVA_OPTS": f"-Xms{s.opensearch_heap_mb}m -Xmx{s.opensearch_heap_mb}m",
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
        try:
            with urllib.request.urlopen(f"{self.address}/_cluster/health", timeout=2) as r:
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
            # started per task would cost far more than the task itself.
            "--system-config="
            + json.dumps(
                {
                    "idle_worker_killing_time_threshold_ms": 300_000,
                    "num_workers_soft_limit": 2 * s.ray_num_cpus,
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
