"""The local stack's readiness probes answer at once while a service does not listen yet."""

from __future__ import annotations

import socket
import time

from raylane.config import Settings
from raylane.stack.services import Kafka


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kafka_probe_says_not_ready_at_once_when_nothing_listens(tmp_path):
    # A Kafka client's bootstrap would retry the refused connection for 30 s: a stack start
    # waited that long after a broker that came up in 10 s.
    kafka = Kafka(Settings(home=tmp_path, kafka_port=_free_port()))
    began = time.monotonic()
    assert kafka.probe() is False
    assert time.monotonic() - began < 10.0
