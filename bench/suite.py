"""The benchmark sequence. Every figure is measured here, in this run, on this machine.

CPU is the CPU time the whole machine used over the measured window, from ``/proc/stat``
(every process: the Kafka and OpenSearch JVMs, Ray's processes, Redis and Celery, and this
driver; time stolen by the hypervisor is not counted), divided by the tasks finished in it.
Each system gets a 200-task warm-up before its window. OpenSearch requests come from the
node's own REST action counters (``_nodes/usage``); Kafka bytes from the sizes of the queue
topic's log segments.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import raylane
from raylane.bench.processes import RoleMeter, keeper_cpu_ms, keeper_shares, per_task, shares

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def results_dir() -> Path:
    """Where a run writes its results unless told otherwise: ``<RAYLANE_HOME>/bench``, outside the
    source tree (a curated run is kept in docs/bench)."""
    from raylane.config import Settings

    return Settings.from_env().home / "bench"


@raylane.task(name="bench.noop", num_cpus=1)
def noop(i: int) -> int:
    """Return the argument: the work is nothing, so the cost measured is raylane's."""
    return i


@dataclass(frozen=True)
class Sizes:
    """How much work each part of the suite does."""

    burst: int
    ray: int
    celery: int
    rtt: int
    lookup_steps: tuple[int, ...]
    scale_burst: int
    soak: int
    job: int = 3_000  # files of the main job, as ./dev job runs it
    scale_configs: tuple[int, ...] = (1, 2, 4)


FULL = Sizes(
    burst=20_000,
    ray=20_000,
    celery=10_000,
    rtt=200,
    lookup_steps=(10_000, 100_000, 1_000_000),
    scale_burst=10_000,
    soak=100_000,
)
QUICK = Sizes(
    burst=5_000, ray=5_000, celery=3_000, rtt=50, lookup_steps=(10_000, 100_000), scale_burst=3_000, soak=20_000
)


def say(text: str) -> None:
    """Progress on stderr, so stdout stays for results."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def cpu_busy_ms() -> float:
    """CPU time the machine's processes and kernel used since boot, in milliseconds (steal, the
    time the hypervisor gave a vCPU to someone else, is not work done here)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) * 1000 / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and machine CPU over a window."""

    def __enter__(self) -> Meter:
        self.t0, self.c0 = time.perf_counter(), cpu_busy_ms()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu_ms = cpu_busy_ms() - self.c0


REST_S = 3.0  # how long the machine's CPU at rest is measured before a burst


def cores_at_rest(seconds: float = REST_S) -> float:
    """Cores the machine keeps busy with nothing submitted, over ``seconds``: the stack's own
    polling, timers and reporting (Ray's idle workers, its agents, the JVMs, the actors' loops)."""
    with Meter() as m:
        time.sleep(seconds)  # a window to measure, not a wait for something
    return m.cpu_ms / (m.seconds * 1000)


def above_rest_ms(cpu_ms: float, rest_cores: float, seconds: float, n: int) -> float:
    """CPU milliseconds per task beyond what the machine spends at rest over the same ``seconds``:
    the part of a burst's CPU that grows with its tasks, not with its length."""
    return max(0.0, cpu_ms - rest_cores * seconds * 1000) / n


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


# ---------------------------------------------------------------- raw Ray


def bench_ray(n: int) -> dict:
    """No-op Ray tasks, submitted at once and gathered: the ceiling of one task = one Ray task."""
    import ray

    @ray.remote(num_cpus=1)
    def ray_noop(i: int) -> int:
        return i

    ray.get([ray_noop.remote(i) for i in range(200)])  # warm the worker pool
    rest = cores_at_rest()
    with Meter() as m:
        ray.get([ray_noop.remote(i) for i in range(n)])
    return {
        "n": n,
        "tasks_per_s": _r(n / m.seconds),
        "cpu_ms_per_task": _r(m.cpu_ms / n, 3),
        # raylane's stack runs beside raw Ray too: its rest is taken out the same way as a burst's.
        "cores_at_rest": _r(rest, 3),
        "cpu_ms_per_task_above_rest": _r(above_rest_ms(m.cpu_ms, rest, m.seconds, n), 3),
        "seconds": _r(m.seconds, 2),
    }


# ---------------------------------------------------------------- Celery and Dramatiq


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _redis_and_workers(worker_argv: list[str]) -> Iterator[str | None]:
    """A Redis of its own on a free port, and a worker (``python -m <worker_argv>``) bound to it
    through ``RAYLANE_BENCH_REDIS``; yields Redis's URL (None when redis-server is not installed).
    Both are stopped at the end."""
    redis = shutil.which("redis-server")
    if redis is None:
        yield None
        return
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "RAYLANE_BENCH_REDIS": url}
    work = Path(tempfile.mkdtemp(prefix="raylane-bench-redis-"))
    procs: list[subprocess.Popen] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        redis_argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        procs.append(subprocess.Popen([*redis_argv, "--dir", str(work)], **quiet))  # type: ignore[call-overload]
        _await_listening(port, procs[0])  # a client or worker that comes first is refused
        procs.append(subprocess.Popen([sys.executable, "-m", *worker_argv], env=env, **quiet))  # type: ignore[call-overload]
        os.environ["RAYLANE_BENCH_REDIS"] = url
        yield url
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        os.environ.pop("RAYLANE_BENCH_REDIS", None)
        shutil.rmtree(work, ignore_errors=True)


def _await_listening(port: int, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Return once something accepts connections on ``port`` of this host; raise if ``proc``
    (which is to listen there) exits first, or nothing does within ``timeout_s``."""
    import socket

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({proc.returncode}) before it listened on {port}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not listen on {port} within {timeout_s:g} s") from None
            time.sleep(0.02)


_NO_REDIS = {"skipped": "redis-server is not installed (./dev bench installs Debian's redis-server)"}
_PEER_WORKERS = 2  # worker processes of Celery and Dramatiq: one per CPU of this machine


def bench_celery(n: int) -> dict:
    """Celery 5 with Redis as broker and result backend, 2 prefork worker processes, ``delay`` per task."""
    worker = ["celery", "-A", "raylane.bench.celery_app", "worker", "-c", str(_PEER_WORKERS), "-P", "prefork"]
    worker += ["--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with _redis_and_workers(worker) as url:
        if url is None:
            return _NO_REDIS
        import importlib

        import raylane.bench.celery_app as celery_app

        importlib.reload(celery_app)  # bind to this run's Redis
        deadline = time.monotonic() + 90
        while not celery_app.app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                return {"skipped": "the Celery worker did not answer within 90 s"}
        [r.get(timeout=60) for r in [celery_app.noop.delay(i) for i in range(200)]]  # warm
        from celery.result import ResultSet

        with Meter() as m:
            results = ResultSet([celery_app.noop.delay(i) for i in range(n)])
            values = results.join_native(timeout=600)  # Celery's fastest way to collect many results
        assert values == list(range(n))
        return _peer_row(n, m)


def bench_dramatiq(n: int) -> dict:
    """Dramatiq 2 with a Redis broker and Redis results, 2 worker processes of one thread each,
    ``send`` per task, results collected through a ``group``."""
    worker = ["dramatiq", "raylane.bench.dramatiq_app", "-p", str(_PEER_WORKERS), "-t", "1"]
    with _redis_and_workers(worker) as url:
        if url is None:
            return _NO_REDIS
        import importlib

        from dramatiq import group

        import raylane.bench.dramatiq_app as dramatiq_app

        importlib.reload(dramatiq_app)  # bind to this run's Redis
        # The workers take a few seconds to start: the warm-up waits for them.
        warm = group(dramatiq_app.noop.message(-j) for j in range(1, 201)).run()
        list(warm.get_results(block=True, timeout=120_000))
        with Meter() as m:
            runs = group(dramatiq_app.noop.message(i) for i in range(n)).run()
            values = list(runs.get_results(block=True, timeout=600_000))
        assert values == list(range(n))
        return _peer_row(n, m)


def _peer_row(n: int, m: Meter) -> dict:
    return {
        "n": n,
        "workers": _PEER_WORKERS,
        "tasks_per_s": _r(n / m.seconds),
        "cpu_ms_per_task": _r(m.cpu_ms / n, 3),
        "seconds": _r(m.seconds, 2),
    }


# ---------------------------------------------------------------- raylane


def _os_client():
    from raylane.client import _connection
    from raylane.store import OpenSearchStore

    return OpenSearchStore(_connection_endpoints().opensearch, _connection().settings.index_alias)


def os_requests(client) -> int:
    """HTTP requests OpenSearch has served since it started (all REST actions, all nodes)."""
    usage = client.transport.perform_request("GET", "/_nodes/usage")
    return sum(sum(node.get("rest_actions", {}).values()) for node in usage["nodes"].values())


def kafka_log_bytes(settings, topic_prefix: str) -> int | None:
    """Bytes in the log segments of topics starting with ``topic_prefix`` (local stack only)."""
    if settings.kafka_bootstrap is not None:
        return None
    data = settings.home / "kafka" / "data"
    total = 0
    for d in data.glob(f"{topic_prefix}*"):
        total += sum(f.stat().st_size for f in d.glob("*.log"))
    return total


def task_times(store, tag: str) -> list[dict]:
    """created/started/finished of every task with ``tag`` (read straight from the index, once
    every write so far is searchable: the last ends of a burst may be newer than the refresh)."""
    store.client.indices.refresh(index=store.alias)
    out, after = [], None
    while True:
        body: dict[str, Any] = {
            "query": {"term": {"tags": tag}},
            "size": 5000,
            "sort": [{"id": "asc"}],
            "_source": ["id", "created_at", "started_at", "finished_at", "state"],
        }
        if after:
            body["search_after"] = after
        hits = store.client.search(index=store.alias, body=body)["hits"]["hits"]
        out += [h["_source"] for h in hits]
        if len(hits) < 5000:
            return out
        after = hits[-1]["sort"]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def bench_rtt(n: int) -> dict:
    """Submit-to-result of one task at a time on an idle system, and where the time went: the
    median of each step between the hops its record keeps (see ``raylane.models.HOPS``)."""
    for i in range(10):
        noop.submit(i).result(timeout=60)
    lat, ids, got = [], [], {}
    for i in range(n):
        t = time.perf_counter()
        handle = noop.submit(i)
        assert handle.result(timeout=60) == i
        lat.append((time.perf_counter() - t) * 1000)
        ids.append(handle.id)
        got[handle.id] = time.time()
    out: dict[str, Any] = {
        "n": n,
        "p50_ms": _r(pct(lat, 50)),
        "p99_ms": _r(pct(lat, 99)),
        "mean_ms": _r(statistics.fmean(lat)),
    }
    raylane.refresh()
    store = _os_client()
    try:
        out["hops_ms"] = hop_breakdown(store.get_many(ids), got)
    finally:
        store.close()
    return out


def hop_breakdown(records: dict, got: dict[str, float] | None = None) -> dict[str, float]:
    """Median milliseconds of each step of the tasks' way, from the marks their records keep
    (``raylane.tracing.MARKS``), and with ``got`` (each task's time its result reached the
    caller) the last step to the caller. Steps no record has are left out."""
    from raylane.tracing import marks

    steps: dict[str, list[float]] = {}
    for rec in records.values():
        if rec is None or not rec.hops or rec.finished_at is None:
            continue
        at = marks(rec)
        if got and rec.id in got:
            at["result"] = got[rec.id]
        names = list(at)
        for a, b in itertools.pairwise(names):
            steps.setdefault(f"{a}→{b}", []).append((at[b] - at[a]) * 1000)
    return {step: round(statistics.median(v), 2) for step, v in steps.items()}


PATH = (
    "SDK -> RequestHandler (socket), queue, QueueConsumer -> Executor (socket), the longer of the claim (a socket "
    "call to the StatusKeeper with its status write, its answer on to the waiting worker by socket, and the "
    "worker's end by socket) and the Ray task, Executor -> StatusKeeper (socket), the end's status write, "
    "StatusKeeper -> SDK (socket)"
)
FLOOR_GAP_S = 0.005  # each step on the path follows an idle moment of its actor, not a busy loop


def floor_ms(status_write_ms: float, queue_ms: float, ray_task_ms: float, socket_call_ms: float) -> float:
    """The least a round trip can take under raylane's design, from its steps each measured
    alone (a message is half a call on a kept socket). One after another on a task's way: the
    submit (SDK -> RequestHandler, by the handler's socket); the queue, with the PENDING write
    beside it; the hand-over (QueueConsumer -> Executor, by the executor's socket); then the
    claim and the Ray task side by side (the gated launch), the longer of the two: the claim is
    a socket call to the StatusKeeper with its status write, its answer goes on to the worker
    that waits for it, and the worker tells its end (both by the executor's socket); last, the
    end (Executor -> StatusKeeper by socket, a status write) and its answer to the SDK's wait,
    held at that keeper (by its socket). Every socket call is on a kept connection; the actors
    and the driver share a node, as on the local stack."""
    half = socket_call_ms / 2
    claim = socket_call_ms + status_write_ms + half + half
    return half + queue_ms + half + max(claim, ray_task_ms) + half + status_write_ms + half


def _median_ms(step: Callable[[], float | None], n: int, gap_s: float) -> float:
    """Median duration of ``step`` (its wall time, or the milliseconds it returns) after a pause of ``gap_s``."""
    for _ in range(5):
        step()
    lat = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)
        t = time.perf_counter()
        took = step()
        lat.append(took if took is not None else (time.perf_counter() - t) * 1000)
    return statistics.median(lat)


def bench_floor(n: int) -> dict:
    """The least a round trip can take here under raylane's design: each step of its path
    measured alone from this driver (a no-op actor call, a one-record bulk write into an index
    with raylane's mapping, a Kafka message from send to a polling consumer, a no-op Ray task),
    summed as the path has them. How far ``rtt`` is above it is what raylane's own code costs."""
    import threading

    import ray
    from kafka import KafkaConsumer

    from raylane.actors.channel import BlockingClient, ChannelAddress, ChannelServer, Method
    from raylane.client import _connection
    from raylane.models import PackedRecord, TaskMessage, TaskRecord, new_task_id, utcnow
    from raylane.queue import KafkaTaskQueue
    from raylane.store import OpenSearchStore

    endpoints = _connection_endpoints()
    out: dict[str, Any] = {"n": n, "gap_ms": FLOOR_GAP_S * 1000}

    @ray.remote(num_cpus=0)
    class Echo:
        async def ping(self) -> None:
            return None

        async def channel(self) -> ChannelAddress:
            async def echo(body: Any) -> Any:
                return body

            node = ray.get_runtime_context().get_node_id()
            self.server = ChannelServer({"echo": Method(lambda body: body, echo)}, node, "bench-floor-echo")
            return await self.server.start()

    echo = Echo.remote()  # type: ignore[attr-defined]  # a Ray actor class
    ray.get(echo.ping.remote())
    out["actor_call_ms"] = _r(_median_ms(lambda: ray.get(echo.ping.remote()), n, FLOOR_GAP_S), 2)
    out["actor_call_busy_ms"] = _r(_median_ms(lambda: ray.get(echo.ping.remote()), n, 0), 2)  # back to back
    # A call by the actor's socket on a connection kept between calls, as a driver submits and
    # waits and a worker asks its executor and keeper.
    kept = BlockingClient(ray.get(echo.channel.remote()))
    try:
        out["socket_call_ms"] = _r(_median_ms(lambda: kept.call("echo", None), n, FLOOR_GAP_S), 2)
    finally:
        kept.close()
    ray.kill(echo)

    @ray.remote
    def nothing() -> None:
        return None

    out["ray_task_ms"] = _r(_median_ms(lambda: ray.get(nothing.remote()), n, FLOOR_GAP_S), 2)

    store = OpenSearchStore(endpoints.opensearch, f"raylane-bench-floor-{uuid.uuid4().hex[:6]}")
    store.ensure_schema()
    try:

        def write() -> None:
            msg = TaskMessage(id=new_task_id(), name="bench.floor", queue="floor", args=[1], created_at=utcnow())
            [outcome] = store.write_many([PackedRecord.of(TaskRecord.pending(msg))])
            assert outcome.accepted, outcome

        out["status_write_ms"] = _r(_median_ms(write, n, FLOOR_GAP_S), 2)
    finally:
        _drop_index(store)

    # raylane's producer, on a topic outside the queue prefix, so that no QueueConsumer reads it.
    queue_name = "floor"
    cfg = _connection().settings
    producer = KafkaTaskQueue(
        endpoints.kafka,
        prefix=f"raylane-bench-floor-{uuid.uuid4().hex[:6]}.",
        dlq_topic=cfg.dlq_topic,
        partitions=1,
        max_payload_bytes=cfg.max_payload_bytes,
        signer=cfg.signer(),
    )
    topic = producer.ensure_queue(queue_name)
    consumer = KafkaConsumer(
        topic,
        **endpoints.kafka.client_options(),
        auto_offset_reset="latest",
        enable_auto_commit=False,
        group_id=None,
    )
    arrived = threading.Event()
    stop = threading.Event()
    arrival = [0.0]

    def poll_loop() -> None:
        while not stop.is_set():
            if consumer.poll(timeout_ms=500):
                arrival[0] = time.perf_counter()
                arrived.set()

    while not consumer.assignment():
        consumer.poll(timeout_ms=100)
    consumer.poll(timeout_ms=100)
    poller = threading.Thread(target=poll_loop, daemon=True)
    poller.start()
    try:

        def through_queue() -> float:
            # From the send to the consumer's poll returning it (the producer's acknowledgement may come later).
            arrived.clear()
            sent = time.perf_counter()
            producer.produce_many(
                [TaskMessage(id=new_task_id(), name="bench.floor", queue=queue_name, args=[1], created_at=utcnow())]
            )
            if not arrived.wait(10):
                raise RuntimeError("a message sent to the floor topic did not arrive within 10 s")
            return (arrival[0] - sent) * 1000

        out["queue_ms"] = _r(_median_ms(through_queue, n, FLOOR_GAP_S), 2)
    finally:
        stop.set()
        poller.join()
        consumer.close()
        producer.close()
        _delete_topic(topic)

    out["path"] = PATH
    steps = ("status_write_ms", "queue_ms", "ray_task_ms", "socket_call_ms")
    out["floor_ms"] = _r(floor_ms(*(out[step] for step in steps)), 1)
    return out


def bench_burst(n: int, chunk: int = 1000, progress: bool = True, timeout: float | None = None) -> dict:
    """``n`` no-op tasks submitted as fast as ``submit_many`` takes them, run to the end; with
    ``timeout``, each task has that timeout (so each is timed, and killed past it)."""
    from raylane.client import _connection

    settings = _connection().settings
    store = _os_client()
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    tag = f"burst-{uuid.uuid4().hex[:8]}"
    topic_prefix = f"{settings.topic_prefix}{queue}-"
    # The queue's topic is made and the worker pool warmed before the window, as for Ray and Celery.
    warm = noop.options(queue=queue).submit_many([(-j,) for j in range(1, 201)])
    for h in warm:
        h.result(timeout=120)
    rest = cores_at_rest()
    fn = noop.options(queue=queue, tags=[tag], timeout=timeout)
    bar = _bar(n, "raylane burst" if timeout is None else "raylane timed burst", progress)
    req0, kb0 = os_requests(store.client), kafka_log_bytes(settings, topic_prefix)
    wall0 = time.time()
    handles = []
    with Meter() as m, RoleMeter(settings.namespace) as roles:
        for i in range(0, n, chunk):
            handles += fn.submit_many([(j,) for j in range(i, min(n, i + chunk))])
        submitted_s = time.perf_counter() - m.t0
        # The results stream back as the tasks end (raylane.as_completed); the end time of the
        # burst itself comes from the records.
        for _ in raylane.as_completed(handles):
            bar.update(1)
        results_s = time.time() - wall0
    bar.close()
    requests = os_requests(store.client) - req0 - 1  # the closing usage call itself
    kb1 = kafka_log_bytes(settings, topic_prefix)
    times = task_times(store, tag)
    _remove_burst(store, settings, queue, [t["id"] for t in times] + [h.id for h in warm])
    created = [_ts(t["created_at"]) for t in times]
    started = [_ts(t["started_at"]) for t in times if t.get("started_at")]
    finished = [_ts(t["finished_at"]) for t in times if t.get("finished_at")]
    last = max(finished)
    to_start = [(_ts(t["started_at"]) - _ts(t["created_at"])) * 1000 for t in times if t.get("started_at")]
    to_end = [(_ts(t["finished_at"]) - _ts(t["created_at"])) * 1000 for t in times if t.get("finished_at")]
    states = {s: sum(1 for t in times if t["state"] == s) for s in TERMINAL}
    # Polling the counts costs OpenSearch requests too (a count twice a second); they are counted,
    # since a user waiting for a burst makes them as well.
    return {
        "n": n,
        "timeout_s": timeout,
        "states": {k: v for k, v in states.items() if v},
        "tasks_per_s": _r(n / (last - wall0)),
        "submit_per_s": _r(n / submitted_s),
        "results_per_s": _r(n / results_s),
        "seconds": _r(last - wall0, 2),
        "submit_to_start_p50_ms": _r(pct(to_start, 50)),
        "submit_to_start_p99_ms": _r(pct(to_start, 99)),
        "submit_to_result_p50_ms": _r(pct(to_end, 50)),
        "submit_to_result_p99_ms": _r(pct(to_end, 99)),
        "cpu_ms_per_task": _r(m.cpu_ms / n, 3),
        # The machine at rest costs the same whether a burst takes one second or ten: with it
        # taken out, what the tasks themselves cost.
        "cores_at_rest": _r(rest, 3),
        "cpu_ms_per_task_above_rest": _r(above_rest_ms(m.cpu_ms, rest, m.seconds, n), 3),
        # Each actor (and the stack's other processes) on its own: what a scale estimate builds on.
        "cpu_ms_per_task_by_process": per_task(roles.by_role, m.cpu_ms, n),
        "ray_workers_started": roles.workers_started,
        "keeper_cpu_shares": keeper_shares(roles.by_role),
        "keeper_cpu_ms": [round(ms, 1) for ms in keeper_cpu_ms(roles.by_role)],
        "os_requests": requests,
        "os_requests_per_transition": _r(requests / (3 * n), 4),
        "kafka_bytes_per_task": None if kb0 is None or kb1 is None else _r((kb1 - kb0) / n, 1),
        "first_created_to_last_finished_s": _r(last - min(created), 2),
        "started": len(started),
    }


def _remove_burst(store, settings, queue: str, ids: list[str]) -> None:
    """Delete a run's records and its queue topic, so that runs do not pile up work for the
    consumers (every topic's partitions are polled) or records in the index. By id: OpenSearch
    without its reindex module (as the local stack runs it) has no delete-by-query."""
    from opensearchpy import helpers

    from raylane.queue import topic_of

    index = store.client.indices.get_alias(name=store.alias)
    write_index = next(iter(index))
    helpers.bulk(
        store.client,
        ({"_op_type": "delete", "_index": write_index, "_id": i} for i in ids),
        chunk_size=5000,
        raise_on_error=False,
        request_timeout=120,
    )
    store.close()
    _delete_topic(topic_of(settings.topic_prefix, queue))


def _delete_topic(topic: str) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**_connection_endpoints().kafka.client_options())
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


def _connection_endpoints():
    from raylane.client import _connection, _endpoints

    return _endpoints(_connection().settings, start_missing=False)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="task", disable=not enabled, file=sys.stderr, leave=False)


# ---------------------------------------------------------------- cost growth: records

_WORDS = [
    "timeout",
    "disk",
    "quota",
    "network",
    "refused",
    "reset",
    "broken",
    "pipe",
    "permission",
    "denied",
    "missing",
    "file",
    "key",
    "value",
    "checksum",
    "mismatch",
    "overflow",
    "underflow",
    "parse",
    "error",
    "invalid",
    "token",
    "connection",
    "lost",
    "retry",
    "later",
]


def _fake_docs(start: int, count: int, rnd: random.Random) -> list[dict]:
    from raylane.models import TaskRecord
    from raylane.states import TaskState, version_of

    base = datetime(2026, 1, 1, tzinfo=UTC)
    states = [TaskState.SUCCEEDED] * 8 + [TaskState.FAILED, TaskState.CANCELLED]
    out = []
    for k in range(start, start + count):
        st = rnd.choice(states)
        created = base + timedelta(seconds=k)
        error = " ".join(rnd.choices(_WORDS, k=6)) if st is TaskState.FAILED else None
        rec = TaskRecord(
            id=f"{k:032x}",
            name=f"bench.job{k % 20}",
            queue="default",
            state=st,
            level=st.level,
            version=version_of(st, 0),
            args=[k],
            created_at=created,
            started_at=created,
            finished_at=created + timedelta(milliseconds=40),
            updated_at=created,
            tags=[f"t{k % 100}"],
            error=error,
            error_type="ValueError" if error else None,
            result=k if st is TaskState.SUCCEEDED else None,
        )
        out.append(rec.to_doc())
    return out


def bench_lookup(steps: tuple[int, ...], progress: bool = True, samples: int = 300) -> list[dict]:
    """Lookup by id, search and count latency as the index grows through ``steps`` records."""
    from opensearchpy import helpers

    from raylane.states import TaskState
    from raylane.store import OpenSearchStore, TaskQuery

    alias = f"raylane-bench-lookup-{uuid.uuid4().hex[:6]}"
    store = OpenSearchStore(_connection_endpoints().opensearch, alias)
    store.ensure_schema()
    c = store.client
    index = f"{alias}-000001"
    rnd = random.Random(7)
    out, have = [], 0
    try:
        c.indices.put_settings(index=index, body={"index": {"refresh_interval": "-1"}})
        for target in steps:
            bar = _bar(target - have, f"loading to {target:,} records", progress)
            while have < target:
                batch = min(5000, target - have)
                actions = ({"_index": index, "_id": d["id"], "_source": d} for d in _fake_docs(have, batch, rnd))
                helpers.bulk(c, actions, chunk_size=batch, request_timeout=120)
                have += batch
                bar.update(batch)
            bar.close()
            c.indices.refresh(index=index)
            ids = [f"{rnd.randrange(have):032x}" for _ in range(samples)]
            get_ms, search_ms, text_ms, count_ms = [], [], [], []
            for task_id in ids:
                t = time.perf_counter()
                assert store.get(task_id) is not None
                get_ms.append((time.perf_counter() - t) * 1000)
                q = TaskQuery(tags=[f"t{rnd.randrange(100)}"], state=[TaskState.FAILED])
                t = time.perf_counter()
                store.search(q, limit=50)
                search_ms.append((time.perf_counter() - t) * 1000)
                q = TaskQuery(text=" ".join(rnd.choices(_WORDS, k=2)), name=f"bench.job{rnd.randrange(20)}")
                t = time.perf_counter()
                store.search(q, limit=50)
                text_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                store.counts(TaskQuery(tags=[f"t{rnd.randrange(100)}"]))
                count_ms.append((time.perf_counter() - t) * 1000)
            row: dict[str, float | None] = {"records": have}
            for name, vals in (("get", get_ms), ("search", search_ms), ("text_search", text_ms), ("counts", count_ms)):
                row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = _r(pct(vals, 50), 2), _r(pct(vals, 99), 2)
            say(f"lookup at {have:,} records: {row}")
            out.append(row)
    finally:
        _drop_index(store)
    return out


def _drop_index(store) -> None:
    """Remove a scratch store's indices and template, and close it."""
    store.drop()
    store.close()


# ---------------------------------------------------------------- cost growth: consumers


def _child_burst(settings_env: dict[str, str], n: int) -> dict:
    """One burst of ``n`` tasks through a deployment of its own (own namespace, topics and index,
    configured by ``settings_env``), run in a child process and removed afterwards; its figures,
    or ``error``."""
    tag = uuid.uuid4().hex[:6]
    env = {
        **os.environ,
        **settings_env,
        "RAYLANE_NAMESPACE": f"raylane-bench-{tag}",
        "RAYLANE_TOPIC_PREFIX": f"raylane-bench-{tag}.",
        "RAYLANE_INDEX_ALIAS": f"raylane-bench-{tag}",
        "RAYLANE_DLQ_TOPIC": f"raylane-bench-{tag}.dlq",
    }
    run = subprocess.run(
        [sys.executable, "-m", "raylane.bench.scale", "--n", str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    from raylane.bench.scale import RESULT_PREFIX

    lines = [line[len(RESULT_PREFIX) :] for line in run.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if run.returncode != 0 or not lines:
        say(f"  failed: {(run.stdout + run.stderr)[-2000:]}")
        return {"error": (run.stdout + run.stderr)[-2000:]}
    return json.loads(lines[-1])


def bench_scale(counts: tuple[int, ...], n: int) -> list[dict]:
    """Throughput with N consumers over N partitions, each a deployment of its own."""
    out = []
    for k in counts:
        say(f"{k} consumer(s) over {k} partition(s): {n:,} tasks")
        row = _child_burst({"RAYLANE_CONSUMERS": str(k), "RAYLANE_PARTITIONS": str(k)}, n)
        out.append({"consumers": k, "partitions": k, **row})
        say(f"  {row.get('tasks_per_s')} tasks/s")
    return out


def bench_keepers(keepers: int, n: int, rounds: int = 1) -> dict:
    """``rounds`` bursts of ``n`` tasks, each through a deployment of its own with ``keepers``
    StatusKeepers (and as many consumers and partitions): how evenly the keepers share the
    work, by the CPU each used over all rounds. A keeper uses about 0.03 ms a task, read from
    /proc in 10 ms ticks, so one burst gives each some 25 ticks, and one pause of one process
    moves its share by a tenth: the shares of every round are reported beside the total's."""
    env = {"RAYLANE_KEEPERS": str(keepers), "RAYLANE_CONSUMERS": str(keepers), "RAYLANE_PARTITIONS": str(keepers)}
    rows = []
    for i in range(1, rounds + 1):
        say(f"{keepers} keepers: {n:,} tasks" + (f", round {i} of {rounds}" if rounds > 1 else ""))
        row = _child_burst(env, n)
        if "error" in row:
            return {"keepers": keepers, **row}
        rows.append(row)
    row = dict(sorted(rows, key=lambda r: r["tasks_per_s"])[(len(rows) - 1) // 2])  # the median round
    per_round = [r.get("keeper_cpu_ms") or [] for r in rows]
    # A round that lost sight of a keeper's process has nothing to add up with the others.
    total_ms = [sum(ms) for ms in zip(*per_round, strict=True)] if len({len(x) for x in per_round}) == 1 else []
    row.update(
        rounds=len(rows),
        rounds_tasks_per_s=[r["tasks_per_s"] for r in rows],
        rounds_keeper_cpu_shares=[r.get("keeper_cpu_shares") for r in rows],
        keeper_cpu_ms=[round(ms, 1) for ms in total_ms],
        keeper_cpu_shares=shares(total_ms),
    )
    if row["keeper_cpu_shares"]:
        row["busiest_keeper_share"] = max(row["keeper_cpu_shares"])
        row["busiest_keeper_target"] = round(1 / keepers + 0.10, 3)
    return {"keepers": keepers, **row}


# ---------------------------------------------------------------- the run

SHARDED_KEEPERS = 3  # the keepers part's deployment


def bench_job(files: int) -> dict:
    """The main job (``raylane.jobs.checksums``) over ``files`` generated files, its cancels and
    stalled tasks included, run as its own driver on the deployment the bench uses: its
    end-to-end throughput, and the CPU per task of each process over the run."""
    import ray

    from raylane.client import _connection
    from raylane.protocol import EXECUTOR, live_members

    settings = _connection().settings
    cmd = [sys.executable, "-m", "raylane.jobs.checksums", "--files", str(files), "--json"]

    def workers_killed() -> int:
        executors = [ray.get_actor(n, namespace=settings.namespace) for n in live_members(settings.namespace, EXECUTOR)]
        stats: list[dict] = ray.get([e.get_stats.remote() for e in executors])
        return sum(s["workers_killed"] for s in stats)

    killed_before = workers_killed()
    with Meter() as m, RoleMeter(settings.namespace) as roles:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    figures = next((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")), None)
    if done.returncode != 0 or figures is None:
        raise RuntimeError(f"the main job failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {
        **figures,
        # Each killed worker is a Python process Ray starts again: its stalled tasks should be
        # interrupted, not killed.
        "workers_killed": workers_killed() - killed_before,
        "cpu_ms_per_task": _r(m.cpu_ms / figures["tasks"], 3),
        "cpu_ms_per_task_by_process": per_task(roles.by_role, m.cpu_ms, figures["tasks"]),
        "ray_workers_started": roles.workers_started,
    }


TARGETS = [
    # key, label, how the target is computed from the results, comparison
    ("celery_ratio", "raylane tasks/s ≥ 2× Celery's", lambda r: 2.0, ">="),
    ("ray_ratio", "raylane tasks/s ≥ 1.0× raw Ray's", lambda r: 1.0, ">="),
    ("dramatiq_ratio", "raylane tasks/s ≥ 0.8× Dramatiq's (Redis broker)", lambda r: 0.8, ">="),
    ("timed_ratio", "timed burst (timeout=60) tasks/s ≥ 0.8× the untimed burst's", lambda r: 0.8, ">="),
    ("results_ratio", "submit-to-all-results ≥ 0.8× the burst's terminal rate", lambda r: 0.8, ">="),
    ("cpu_ms_per_task", "CPU per task ≤ 1.2 ms, all processes", lambda r: 1.2, "<="),
    ("os_requests_per_transition", "OpenSearch requests per transition ≤ 0.05", lambda r: 0.05, "<="),
    ("rtt_p50_ms", "unloaded submit-to-result p50 ≤ 15 ms", lambda r: 15.0, "<="),
    ("rtt_p99_ms", "unloaded submit-to-result p99 ≤ 40 ms", lambda r: 40.0, "<="),
    ("main_job_tasks_per_s", "main job (3,000 files) end to end ≥ 600 tasks/s", lambda r: 600.0, ">="),
    ("lookup_growth", "status lookup p50 within 2× from 10^4 to 10^6 records", lambda r: 2.0, "<="),
    (
        "busiest_keeper_share",
        f"with {SHARDED_KEEPERS} keepers, the busiest does ≤ 1/K + 10 % of their work (CPU)",
        lambda r: round(1 / SHARDED_KEEPERS + 0.10, 3),
        "<=",
    ),
]


# The parts in the order they run: the round trip first, on a machine nothing else has just loaded.
PARTS = (
    "rtt",
    "floor",
    "ray",
    "celery",
    "dramatiq",
    "burst",
    "timed_burst",
    "job",
    "lookup",
    "scale",
    "keepers",
    "soak",
)
TIMED_BURST_TIMEOUT_S = 60.0  # far above a no-op's run: the timed burst measures the cost of the clock

# The throughput parts the targets compare with one another. With rounds, each runs once per
# round, in the order of PARTS, and every ratio is taken between the runs of one round: a
# machine whose speed drifts by a fifth from one minute to the next (a shared host does) moves
# both sides of a ratio taken so, and only one side of a ratio taken a suite apart.
ROUNDED = ("ray", "dramatiq", "burst", "timed_burst")
ROUND_RATIOS = (  # headline key, numerator part, denominator part
    ("ray_ratio", "burst", "ray"),
    ("dramatiq_ratio", "burst", "dramatiq"),
    ("timed_ratio", "timed_burst", "burst"),
)


def combine_rounds(runs: dict[str, list[dict]]) -> tuple[dict[str, dict], dict]:
    """Of each part run once per round (``runs``, in round order): the run with the median
    tasks/s, which stands for the part, with every round's tasks/s beside it; and each ratio of
    ``ROUND_RATIOS`` taken within every round, with its median and range."""
    chosen = {}
    for part, rs in runs.items():
        ordered = sorted(rs, key=lambda x: x["tasks_per_s"])
        chosen[part] = dict(ordered[(len(ordered) - 1) // 2], rounds_tasks_per_s=[x["tasks_per_s"] for x in rs])
    ratios = {}
    for key, num, den in ROUND_RATIOS:
        if num in runs and den in runs:
            per = [round(a["tasks_per_s"] / b["tasks_per_s"], 3) for a, b in zip(runs[num], runs[den], strict=True)]
            median = round(statistics.median(per), 3)
            ratios[key] = {"per_round": per, "median": median, "min": min(per), "max": max(per)}
    return chosen, {"n": max((len(rs) for rs in runs.values()), default=0), "ratios": ratios}


def run(
    quick: bool = False,
    parts: set[str] | None = None,
    progress: bool = True,
    out_dir: Path | None = None,
    rounds: int = 1,
) -> dict:
    """Run the suite (every part unless ``parts`` names some) and write the results (into
    ``out_dir``, by default ``results_dir()``); returns them. With ``rounds`` above 1, the parts
    of ``ROUNDED`` run that many times in turn, and the ratios between them are the medians of
    the ratios within each round (see ``combine_rounds``)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    out_dir = out_dir or results_dir()
    sizes = QUICK if quick else FULL

    def want(p: str) -> bool:
        return parts is None or p in parts

    raylane.init()
    import ray

    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "started_at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "ray": ray.__version__},
    }
    steps: dict[str, Callable[[], Any]] = {
        "rtt": lambda: bench_rtt(sizes.rtt),
        "floor": lambda: bench_floor(sizes.rtt),
        "ray": lambda: bench_ray(sizes.ray),
        "celery": lambda: bench_celery(sizes.celery),
        "dramatiq": lambda: bench_dramatiq(sizes.celery),
        "burst": lambda: bench_burst(sizes.burst, progress=progress),
        "timed_burst": lambda: bench_burst(sizes.burst, progress=progress, timeout=TIMED_BURST_TIMEOUT_S),
        "job": lambda: bench_job(sizes.job),
        "lookup": lambda: bench_lookup(sizes.lookup_steps, progress=progress),
        "scale": lambda: bench_scale(sizes.scale_configs, sizes.scale_burst),
        "keepers": lambda: bench_keepers(SHARDED_KEEPERS, sizes.scale_burst, rounds),
        "soak": lambda: _soak(sizes.soak, progress),
    }
    rounded = [p for p in PARTS if p in ROUNDED and want(p)] if rounds > 1 else []
    for name in PARTS:
        if not want(name) or (name in rounded and name != rounded[0]):
            continue
        if name not in rounded:
            say(f"{name} ...")
            results[name] = steps[name]()
            say(f"{name}: {json.dumps(results[name])[:400]}")
            continue
        runs: dict[str, list[dict]] = {p: [] for p in rounded}
        for i in range(1, rounds + 1):
            for p in rounded:
                say(f"{p}, round {i} of {rounds} ...")
                runs[p].append(steps[p]())
                say(f"{p}: {json.dumps(runs[p][-1])[:400]}")
        chosen, results["rounds"] = combine_rounds(runs)
        results.update(chosen)
    results.update(headline(results))
    results["finished_at"] = datetime.now(UTC).isoformat()
    from raylane.bench.report import write

    write(results, out_dir)
    return results


def _soak(tasks: int, progress: bool) -> dict:
    from raylane.bench.soak import bench_soak

    return bench_soak(tasks, progress=progress)


def headline(r: dict) -> dict:
    """The figures the targets are stated in."""
    burst, ray_, celery, rtt = r.get("burst", {}), r.get("ray", {}), r.get("celery", {}), r.get("rtt", {})
    h: dict[str, Any] = {
        "raylane_tasks_per_s": burst.get("tasks_per_s"),
        "raylane_results_per_s": burst.get("results_per_s"),
        "raylane_timed_tasks_per_s": r.get("timed_burst", {}).get("tasks_per_s"),
        "ray_tasks_per_s": ray_.get("tasks_per_s"),
        "celery_tasks_per_s": celery.get("tasks_per_s"),
        "dramatiq_tasks_per_s": r.get("dramatiq", {}).get("tasks_per_s"),
        "cpu_ms_per_task": burst.get("cpu_ms_per_task"),
        "cpu_ms_per_task_above_rest": burst.get("cpu_ms_per_task_above_rest"),
        "os_requests_per_transition": burst.get("os_requests_per_transition"),
        "rtt_p50_ms": rtt.get("p50_ms"),
        "rtt_p99_ms": rtt.get("p99_ms"),
        "rtt_floor_ms": r.get("floor", {}).get("floor_ms"),
        "kafka_bytes_per_task": burst.get("kafka_bytes_per_task"),
        "busiest_keeper_share": r.get("keepers", {}).get("busiest_keeper_share"),
        "main_job_tasks_per_s": r.get("job", {}).get("tasks_per_s"),
    }
    if h["raylane_tasks_per_s"] and h["celery_tasks_per_s"]:
        h["celery_ratio"] = round(h["raylane_tasks_per_s"] / h["celery_tasks_per_s"], 2)
    if h["raylane_tasks_per_s"] and h["raylane_timed_tasks_per_s"]:
        h["timed_ratio"] = round(h["raylane_timed_tasks_per_s"] / h["raylane_tasks_per_s"], 3)
    if h["raylane_tasks_per_s"] and h["dramatiq_tasks_per_s"]:
        h["dramatiq_ratio"] = round(h["raylane_tasks_per_s"] / h["dramatiq_tasks_per_s"], 3)
    if h["raylane_tasks_per_s"] and h["raylane_results_per_s"]:
        h["results_ratio"] = round(h["raylane_results_per_s"] / h["raylane_tasks_per_s"], 3)
    if h["raylane_tasks_per_s"] and h["ray_tasks_per_s"]:
        h["ray_ratio"] = round(h["raylane_tasks_per_s"] / h["ray_tasks_per_s"], 3)
    for key, within in (r.get("rounds") or {}).get("ratios", {}).items():
        h[key] = within["median"]
    lookup = r.get("lookup") or []
    if len(lookup) >= 2:
        # How much the median grows from the smallest index to the largest: status lookups by id
        # (the target's figure), and filtered searches, reported beside it.
        def growth(k: str) -> float:
            return round(max(row[k] for row in lookup) / lookup[0][k], 2)

        h["lookup_growth"] = growth("get_p50_ms")
        h["search_growth"] = growth("search_p50_ms")
    return h
