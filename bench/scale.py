"""One point of the consumer scaling curve: a deployment configured by RAYLANE_* (its own
namespace, topics and index), one burst, its figures as JSON on stdout; then the
deployment is removed (its service job stopped, its index deleted)."""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time

RESULT_PREFIX = "raylane-bench-result: "  # Ray may print to stdout too; the result line is marked


def main() -> int:
    """Entry point: ``python -m raylane.bench.scale --n 10000``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000, help="tasks in the burst")
    args = p.parse_args()
    import raylane
    from raylane.bench.suite import bench_burst
    from raylane.client import _connection

    raylane.init()
    settings = _connection().settings
    try:
        row = bench_burst(args.n, progress=False)
    finally:
        remove_deployment(settings)
    print(RESULT_PREFIX + json.dumps(row), flush=True)
    return 0


def service_namespace(entrypoint: str) -> str | None:
    """The namespace a raylane service job's entrypoint deploys into (its ``--namespace``)."""
    words = shlex.split(entrypoint)
    for flag, value in itertools.pairwise(words):
        if flag == "--namespace":
            return value
    return None


def remove_deployment(settings) -> None:
    """Stop the service job of the deployment in ``settings.namespace`` and delete its index and topics."""
    from ray.job_submission import JobSubmissionClient

    from raylane.client import _dashboard_url, _endpoints
    from raylane.store import OpenSearchStore

    dashboard = _dashboard_url()
    client = JobSubmissionClient(dashboard if dashboard.startswith("http") else f"http://{dashboard}")
    for job in client.list_jobs():
        if (
            (job.metadata or {}).get("raylane") == "service"
            and service_namespace(job.entrypoint) == settings.namespace
            and job.status.value in ("PENDING", "RUNNING")
            and job.submission_id
        ):
            client.stop_job(job.submission_id)
    endpoints = _endpoints(settings, start_missing=False)
    store = OpenSearchStore(endpoints.opensearch, settings.index_alias)
    store.drop()
    store.close()
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    # A broker that just died stays in the cluster's metadata until the controller fences it, and
    # kafka-python sends to it without trying another: a fresh client a moment later does better.
    for attempt in range(1, 4):
        admin = KafkaAdminClient(**endpoints.kafka.client_options())
        try:
            topics = [t for t in admin.list_topics() if t.startswith(settings.topic_prefix) or t == settings.dlq_topic]
            if topics:
                admin.delete_topics(topics)
            return
        except KafkaError:
            if attempt == 3:
                raise
            time.sleep(5.0 * attempt)
        finally:
            admin.close()


if __name__ == "__main__":
    sys.exit(main())
