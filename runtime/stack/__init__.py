"""The local stack: Kafka, OpenSearch and Ray started by raylane itself on loopback.

``LocalStack(settings).up()`` is idempotent: it starts only what is not running, and
waits for each service to be ready. ``down()`` stops only processes recorded in the
stack's pid files.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from raylane.config import Endpoints, Settings
from raylane.errors import StackError
from raylane.stack import proc
from raylane.stack.services import Kafka, OpenSearch, RayHead, Service

__all__ = ["LocalStack", "ServiceStatus"]


class ServiceStatus(BaseModel):
    """What ``raylane stack status`` reports for one service."""

    name: str
    running: bool
    pid: int | None
    address: str
    rss_bytes: int
    log_file: str
    started_in_s: float | None = None


class LocalStack:
    """Kafka, OpenSearch and a Ray head on this machine, managed through pid files under ``RAYLANE_HOME``."""

    def __init__(self, settings: Settings, quiet: bool = False):
        self.settings = settings
        self.kafka = Kafka(settings)
        self.opensearch = OpenSearch(settings)
        self.ray = RayHead(settings)
        self.services: list[Service] = [self.kafka, self.opensearch, self.ray]
        self.quiet = quiet

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(f"raylane: {msg}", file=sys.stderr, flush=True)

    def get(self, name: str) -> Service:
        """The service called ``name`` (kafka, opensearch or ray)."""
        for s in self.services:
            if s.name == name:
                return s
        raise StackError(f"unknown service {name!r}; the stack has kafka, opensearch and ray")

    def up(self, only: list[str] | None = None) -> list[ServiceStatus]:
        """Start every service that is not running and wait until all are ready."""
        targets = [self.get(n) for n in only] if only else self.services
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        to_start = []
        for svc in targets:
            pid = svc.pid()
            if pid:
                self._say(f"{svc.name} already running (pid {pid}, {svc.address})")
            else:
                to_start.append(svc)
        for svc in to_start:
            svc.prepare()

        def start_one(svc: Service) -> None:
            started = time.monotonic()
            self._say(f"starting {svc.name} ...")
            pid = svc.start()
            svc.wait_ready(pid, self.settings.start_timeout_s)
            timings[svc.name] = time.monotonic() - started
            self._say(f"{svc.name} ready in {timings[svc.name]:.1f}s (pid {pid}, {svc.address})")

        with ThreadPoolExecutor(max_workers=len(to_start) or 1) as pool:
            futures = [pool.submit(start_one, svc) for svc in to_start]
            errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            raise errors[0]
        statuses = self.status()
        for st in statuses:
            st.started_in_s = timings.get(st.name)
        return statuses

    def down(self, grace_s: float = 20.0, only: list[str] | None = None) -> list[str]:
        """Stop the stack's own processes (Ray first); returns the names of the services stopped."""
        stopped = []
        for svc in [self.ray, self.kafka, self.opensearch]:
            if only and svc.name not in only:
                continue
            if svc.pid():
                self._say(f"stopping {svc.name} ...")
            if svc.stop(grace_s):
                stopped.append(svc.name)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """Running state, pid, address and memory of each service."""
        out = []
        for svc in self.services:
            pid = svc.pid()
            out.append(
                ServiceStatus(
                    name=svc.name,
                    running=pid is not None and svc.probe(),
                    pid=pid,
                    address=svc.address,
                    rss_bytes=proc.rss_bytes(svc.pids()),
                    log_file=str(svc.log_file),
                )
            )
        return out

    def endpoints(self) -> Endpoints:
        """The addresses clients use to reach the local services."""
        return Endpoints(
            kafka=self.kafka.connection(),
            opensearch=self.opensearch.connection(),
            ray_address=self.ray.address,
        )
