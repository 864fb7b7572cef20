"""The raylane service: a Ray job whose driver owns raylane's actors for as long as it runs.

Owning the actors from a live job matters: Ray reuses task workers only while the job
that owns them lives, so actors left behind by an exited driver would start a fresh
worker process for every task. ``deploy`` submits this job; ``ray job stop`` ends it.

    python -m raylane.actors.service --config-key <key> [--namespace raylane]

The configuration (secrets included) waits under ``<key>`` in Ray's KV store, put there by
``deploy``; it is never on the command line.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import ray

from raylane.actors.deploy import create_actors, find_request_handler, take_service_config


def main(argv: list[str] | None = None) -> int:
    """Create raylane's actors (unless another service runs them) and keep them alive."""
    ap = argparse.ArgumentParser(prog="python -m raylane.actors.service", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config-key", required=True, help="key of the ActorConfig in Ray's KV store")
    ap.add_argument("--namespace", default="raylane", help="Ray namespace of raylane's actors")
    args = ap.parse_args(argv)
    ray.init(namespace=args.namespace)
    config = take_service_config(args.config_key, args.namespace)
    if find_request_handler(config.namespace) is not None:
        print("raylane actors already run under another service job; nothing to do", flush=True)
        return 0
    deployment = create_actors(config)
    count = 1 + len(deployment.loopers) + len(deployment.handlers)
    print(f"raylane actors ready in namespace {config.namespace!r}: {count} actors", flush=True)
    supervise(deployment.loopers)  # until the job is stopped; holding `deployment` keeps the actors alive
    return 0


def supervise(loopers: list, every_s: float = 2.0, give_up_s: float = 300.0) -> None:
    """Keep the loops of the StatusKeeper, Executor and QueueConsumers running: an actor that Ray
    restarted after a crash starts with none, and resumes from the records and committed offsets.
    Returns when no actor has answered for ``give_up_s`` (the cluster is gone)."""
    stop = threading.Event()
    last_answer = time.monotonic()
    while not stop.wait(every_s):
        for actor in loopers:
            try:
                ray.get(actor.ensure_running.remote(), timeout=30)
                last_answer = time.monotonic()
            except Exception as e:  # restarting, or briefly unreachable: try again next round
                print(f"raylane service: {e!r}", file=sys.stderr, flush=True)
        if time.monotonic() - last_answer > give_up_s:
            print(
                f"raylane service: no actor answered for {give_up_s:.0f}s; the cluster is gone, exiting",
                file=sys.stderr,
                flush=True,
            )
            return


if __name__ == "__main__":
    sys.exit(main())
