"""The ``raylane`` command: the local stack and the task commands."""
from __future__ import annotations

import argparse
import json
import sys

from raylane.config import Settings
from raylane.errors import RaylaneError


def _stack(args: argparse.Namespace) -> int:
    from raylane.stack import LocalStack

    stack = LocalStack(Settings.from_env(), quiet=getattr(args, "json", False))
    if args.stack_cmd == "up":
        statuses = stack.up(only=args.services or None)
        if not args.no_actors:
            from raylane.client import deploy_on_local_stack
            deploy_on_local_stack(stack)
    elif args.stack_cmd == "down":
        stack.down(grace_s=args.grace, only=args.services or None)
        statuses = stack.status()
    else:
        statuses = stack.status()
    if getattr(args, "json", False):
        print(json.dumps({s.name: s.model_dump() for s in statuses}, indent=2))
    else:
        for s in statuses:
            state = "running" if s.running else "stopped"
            pid = s.pid if s.pid else "-"
            print(f"{s.name:<11} {state:<8} pid {pid!s:<8} {s.address:<28} rss {s.rss_bytes / 2**20:7.1f} MiB  log {s.log_file}")
    if args.stack_cmd == "status" and not all(s.running for s in statuses):
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``raylane`` command."""
    p = argparse.ArgumentParser(prog="raylane", description="Asynchronous tasks on Ray, queued in Kafka, tracked in OpenSearch.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    st = sub.add_parser("stack", help="manage the local Kafka, OpenSearch and Ray", description=(
        "Manage the local stack: a single-node Kafka (KRaft), OpenSearch and Ray head on loopback, "
        "fetched once from Maven Central into RAYLANE_HOME (default ~/.cache/raylane)."))
    st_sub = st.add_subparsers(dest="stack_cmd", required=True, metavar="ACTION")
    up = st_sub.add_parser("up", help="start what is not running and wait until ready (idempotent)")
    up.add_argument("services", nargs="*", choices=["kafka", "opensearch", "ray", []], metavar="SERVICE",
                    help="start only these (kafka, opensearch, ray); default all")
    up.add_argument("--json", action="store_true", help="print the resulting status as JSON")
    up.add_argument("--no-actors", action="store_true", help="start only the services, not raylane's actors")
    down = st_sub.add_parser("down", help="stop the processes the stack started")
    down.add_argument("services", nargs="*", choices=["kafka", "opensearch", "ray", []], metavar="SERVICE",
                      help="stop only these (kafka, opensearch, ray); default all")
    down.add_argument("--grace", type=float, default=20.0, help="seconds to wait after SIGTERM before SIGKILL (default 20)")
    status = st_sub.add_parser("status", help="show each service's state, pid, address and memory; exit 3 unless all run")
    status.add_argument("--json", action="store_true", help="print as JSON")
    st.set_defaults(func=_stack)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raylane`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RaylaneError as e:
        print(f"raylane: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
