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

from raylane.actors.deploy import Deployment, create_actors, find_request_handler, take_service_config

_CALL_TIMEOUT_S = 30.0


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
    print(f"raylane actors ready in namespace {config.namespace!r}: {deployment.size()} actors", flush=True)
    supervise(deployment)  # until the job is stopped; holding `deployment` keeps the actors alive
    return 0


def supervise(deployment: Deployment, every_s: float = 2.0, give_up_s: float = 300.0, grow_every: int = 3) -> None:
    """Keep the loops of the StatusKeepers, Executors and QueueConsumers running: an actor that Ray
    restarted after a crash starts with none, and resumes from the records and committed offsets.
    Every ``grow_every`` rounds, place the actors of nodes that joined (``Deployment.grow``), and
    tell every consumer how many share the partitions. Returns when no actor has answered for
    ``give_up_s`` (the cluster is gone)."""
    stop = threading.Event()
    last_answer = time.monotonic()
    # Unanswered calls, by actor, with when each was sent. Calls are awaited together: an actor on
    # a node that just died answers no one until Ray declares it dead, and the actors restarted
    # beside it must not wait for that to get their loops back.
    unanswered: dict[int, tuple[ray.ObjectRef, float]] = {}
    rounds = 0
    while not stop.wait(every_s):
        rounds += 1
        if rounds % grow_every == 0:
            try:
                placed = deployment.grow()
            except Exception as e:  # a node that joins and dies at once, say: look again next time
                print(f"raylane service: placing the actors of a new node failed: {e!r}", file=sys.stderr, flush=True)
            else:
                if placed:
                    print(f"raylane service: a node joined; placed {', '.join(placed)}", flush=True)
        if _ensure_running(deployment, unanswered, every_s):
            last_answer = time.monotonic()
        if time.monotonic() - last_answer > give_up_s:
            print(
                f"raylane service: no actor answered for {give_up_s:.0f}s; the cluster is gone, exiting",
                file=sys.stderr,
                flush=True,
            )
            return


def _ensure_running(deployment: Deployment, unanswered: dict[int, tuple[ray.ObjectRef, float]], wait_s: float) -> bool:
    """Call ``ensure_running`` on every actor of ``deployment`` with no recent call in
    ``unanswered``, and await all calls in it for up to ``wait_s``; True if some actor answered.
    A call unanswered for ``_CALL_TIMEOUT_S`` is given up on and made again: while an actor is
    stuck, it gets one call per that time, not one per round."""
    now = time.monotonic()
    members = len(deployment.consumers)
    targets = [(a, ()) for a in deployment.loopers] + [(c, (members,)) for c in deployment.consumers]
    for actor, args in targets:
        sent = unanswered.get(id(actor))
        if sent is None or now - sent[1] > _CALL_TIMEOUT_S:
            unanswered[id(actor)] = (actor.ensure_running.remote(*args), now)
    calls = [ref for ref, _ in unanswered.values()]
    answered = set(ray.wait(calls, num_returns=len(calls), timeout=wait_s)[0]) if calls else set()
    ok = False
    for key, (call, _) in list(unanswered.items()):
        if call not in answered:
            continue
        del unanswered[key]
        try:
            ray.get(call)
            ok = True
        except Exception as e:  # restarting, or briefly unreachable: called again next round
            print(f"raylane service: {e!r}", file=sys.stderr, flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
