"""The ``raylane`` command: the local stack and the task commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import UTC, datetime, timedelta

from raylane.config import Settings
from raylane.errors import (
    RaylaneError,
    ScheduleNotFound,
    ServiceUnavailable,
    StackError,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskTimedOut,
    WaitTimeout,
)
from raylane.text import printable

# Exit codes, the same for every command.
EXIT_OK = 0
EXIT_TASK_FAILED = 1  # the task failed, was cancelled or timed out
EXIT_USAGE = 2  # bad arguments or input
EXIT_NOT_FOUND = 3  # no such task, schedule or token
EXIT_UNAVAILABLE = 4  # Kafka, OpenSearch, Ray or the local stack is not there
EXIT_WAIT_TIMEOUT = 5  # a wait ran out before the task finished
_EXIT_OF_ERROR: list[tuple[tuple[type[BaseException], ...], int]] = [
    ((TaskFailed, TaskCancelled, TaskTimedOut), EXIT_TASK_FAILED),
    ((TaskNotFound, ScheduleNotFound), EXIT_NOT_FOUND),
    ((ServiceUnavailable, StackError), EXIT_UNAVAILABLE),
    ((WaitTimeout,), EXIT_WAIT_TIMEOUT),
]


def exit_code_of(error: BaseException) -> int:
    """The exit code of a command that ended with ``error`` (``EXIT_USAGE`` for any other raylane error)."""
    for classes, code in _EXIT_OF_ERROR:
        if isinstance(error, classes):
            return code
    return EXIT_USAGE


def _stack(args: argparse.Namespace) -> int:
    from raylane.stack import LocalStack

    overrides = {"secure_stack": True} if args.secure else {}
    stack = LocalStack(Settings.from_env(**overrides), quiet=getattr(args, "json", False))
    if args.stack_cmd == "up":
        statuses = stack.up(only=args.services or None)
        if not args.no_actors:
            from raylane.client import deploy_on_local_stack

            url = deploy_on_local_stack(stack, http=args.http)
            if url:
                print(f"raylane HTTP API and web page: {url}  (OpenAPI: {url}/openapi.json)", file=sys.stderr)
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
            rss = f"rss {s.rss_bytes / 2**20:7.1f} MiB"
            print(f"{s.name:<11} {state:<8} pid {pid!s:<8} {s.address:<28} {rss}  log {s.log_file}")
    if args.stack_cmd == "status" and not all(s.running for s in statuses):
        return EXIT_UNAVAILABLE
    return 0


def _serve(args: argparse.Namespace) -> int:
    import raylane
    from raylane.api import deploy_http, remove_http
    from raylane.client import current_settings

    overrides = {k: v for k, v in (("http_host", args.host), ("http_port", args.port)) if v is not None}
    raylane.init(**overrides)
    if args.stop:
        remove_http()
        _say(args, "raylane HTTP API removed", {"removed": True})
        return 0
    url = deploy_http(current_settings())
    _say(args, url, {"url": url, "web_page": f"{url}/ui", "openapi": f"{url}/openapi.json"})
    print(
        f"  web page {url}/ui   OpenAPI {url}/openapi.json   tokens {current_settings().tokens_path}", file=sys.stderr
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raylane.bench.suite import PARTS, run

    parts = {p.strip() for p in args.only.split(",")} if args.only else None
    known = set(PARTS)
    if parts and not parts <= known:
        print(f"raylane: error: unknown part(s) {sorted(parts - known)}; known: {sorted(known)}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"raylane: error: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    # stdout holds one form only, so that ``--json`` can be piped to a parser: what Ray forwards
    # from its workers and raylets while the suite runs goes to stderr then.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        try:
            results = run(
                quick=args.quick, parts=parts, out_dir=Path(args.out) if args.out else None, rounds=args.rounds
            )
        finally:
            import raylane

            raylane.shutdown()  # Ray forwards lines until its driver disconnects
    if args.json:
        print(json.dumps(results, default=str))
    else:
        from raylane.bench.report import markdown

        print(markdown(results))
    return 0


def _token(args: argparse.Namespace) -> int:
    from raylane.tokens import TokenFile

    tokens = TokenFile(Settings.from_env().tokens_path)
    if args.token_cmd == "create":
        entry, token = tokens.create(
            args.tenant,
            "operator" if args.operator else "read" if args.read_only else "write",
            args.note or "",
            max_open=args.max_open,
        )
        _say(args, token, {"token": token, "id": entry.id, "tenant": entry.tenant, "scope": entry.scope})
        print(
            f"token {entry.id} for tenant {entry.tenant} ({entry.scope}); it is shown only now, "
            f"{tokens.path} keeps its hash",
            file=sys.stderr,
        )
    elif args.token_cmd == "list":
        entries = tokens.entries()
        if args.json:
            print(json.dumps([e.model_dump(mode="json") for e in entries]))
        for e in [] if args.json else entries:
            _echo(f"{e.id}  {e.tenant:<20} {e.scope:<5} {e.created_at:%Y-%m-%d %H:%M:%S}  {e.note}")
    else:
        if not tokens.revoke(args.id):
            print(f"raylane: error: no token with id {args.id!r}", file=sys.stderr)
            return EXIT_NOT_FOUND
        _say(args, f"token {args.id} revoked", {"revoked": args.id})
    return 0


def _connect():
    import raylane

    raylane.init()
    return raylane


def _json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word is taken as a string


def _add_filters(sp: argparse.ArgumentParser) -> None:
    """The task filters every command that picks tasks by search shares."""
    sp.add_argument("--name", help="only tasks of this name")
    sp.add_argument("--queue", help="only tasks of this queue")
    sp.add_argument("--tag", action="append", help="only tasks with this tag (repeatable: all must match)")
    sp.add_argument("--workflow", help="only the tasks of this workflow (its id)")
    sp.add_argument("--since", type=_when, help="created at or after: ISO 8601, or a duration ago (e.g. 1h, 2d)")
    sp.add_argument("--until", type=_when, help="created before: ISO 8601, or a duration ago")


def _filters(args: argparse.Namespace) -> dict:
    """The filters of ``_add_filters``, as keyword arguments of ``raylane.search`` and its kin."""
    return dict(
        name=args.name,
        queue=args.queue,
        tags=args.tag or (),
        workflow=args.workflow,
        since=args.since,
        until=args.until,
    )


def _when(text: str) -> datetime:
    """A time given as ISO 8601 (naive means UTC), or as a duration ago (``90s``, ``2h``, ``7d``)."""
    from raylane.models import duration_s

    try:
        when = datetime.fromisoformat(text)
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return datetime.now(UTC) - timedelta(seconds=duration_s(text))
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"not a time or a duration: {text!r}") from e


def _usage(problem: str) -> int:
    """Say what is wrong with the command line; the exit code for it."""
    _echo(f"raylane: error: {problem}", err=True)
    return EXIT_USAGE


def _echo(text: str, err: bool = False) -> None:
    """Print ``text`` for a person: what records and services say is shown, never acted on by
    the terminal (see ``raylane.text``). JSON output needs no such care: ``json.dumps``
    escapes every control character."""
    print(printable(text), file=sys.stderr if err else sys.stdout)


def _say(args: argparse.Namespace, text: str, data: object) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=str))
    else:
        _echo(text)


def _print_record(rec, as_json: bool) -> None:
    if as_json:
        doc = rec.model_dump(mode="json")
        if rec.progress is not None:
            doc.update(progress=rec.progress, progress_message=rec.progress_message)
        print(json.dumps(doc, indent=2))
        return
    _echo(f"{rec.id}  {rec.state.value:<9} {rec.name}  queue={rec.queue} attempt={rec.attempt} version={rec.version}")
    if rec.progress is not None:
        bar = "#" * round(rec.progress * 20)
        message = printable(rec.progress_message or "", one_line=True)
        _echo(f"  progress [{bar:<20}] {rec.progress:.0%}  {message}".rstrip())
    started, finished = rec.started_at or "-", rec.finished_at or "-"
    _echo(f"  created {rec.created_at:%Y-%m-%d %H:%M:%S}  started {started}  finished {finished}")
    if rec.result is not None:
        _echo(f"  result: {json.dumps(rec.result)[:500]}")
    if rec.error:
        _echo(f"  error: {rec.error_type}: {rec.error}")


def _submit(args: argparse.Namespace) -> int:
    from raylane.client import submit_requests
    from raylane.models import SubmitRequest

    kwargs = json.loads(args.kwargs) if args.kwargs else {}
    if not isinstance(kwargs, dict):
        return _usage("--kwargs must be a JSON object")
    options = {
        "delay_s": args.delay,
        "eta": args.eta,
        "expires_at": args.expires,
        "soft_timeout_s": args.soft_timeout,
        "idempotency_key": args.idempotency_key,
        "max_retries": args.max_retries,
        "priority": args.priority,
        "concurrency_key": args.concurrency_key,
        "max_concurrency": args.max_concurrency,
        "rate_limit": args.rate_limit,
    }
    req = SubmitRequest(
        name=args.name,
        args=[_json_arg(a) for a in args.args],
        kwargs=kwargs,
        queue=args.queue,
        timeout_s=args.timeout,
        tags=args.tag or None,
        **{k: v for k, v in options.items() if v is not None},
    )
    _connect()
    [handle] = submit_requests([req])
    _say(args, handle.id, {"id": handle.id})
    return 0


def _status(args: argparse.Namespace) -> int:
    rl = _connect()
    _print_record(rl.get(args.id), args.json)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    filters = _filters(args)
    if args.id is None and not any(filters.values()) and not args.state:
        return _usage("give a task id, or filters (--name, --queue, --tag, --workflow, --state, --since, --until)")
    rl = _connect()
    if args.id is not None:
        rec = rl.cancel(args.id)
        _say(args, f"{rec.id} {rec.state.value}", {"id": rec.id, "state": rec.state.value, "version": rec.version})
        return 0
    states = args.state or ["PENDING", "SCHEDULED", "RUNNING"]
    if not args.yes:
        rl.refresh()
        n = min(args.limit, sum(rl.counts(states, **filters).values()))
        text = f"this would cancel {n} unfinished task(s); run again with --yes to cancel them"
        _say(args, text, {"would_cancel": n})
        return 0
    ids = rl.cancel_matching(states, **filters, limit=args.limit)
    _say(args, f"cancelled {len(ids)} task(s)", {"cancelled": ids})
    return 0


def _wait(args: argparse.Namespace) -> int:
    rl = _connect()
    rec = rl.wait(args.id, args.timeout)
    _print_record(rec, args.json)
    return 0 if rec.state.value == "SUCCEEDED" else 1


def _ls(args: argparse.Namespace) -> int:
    rl = _connect()
    records, cursor = rl.search_page(
        state=args.state, text=args.text, limit=args.limit, cursor=args.cursor, **_filters(args)
    )
    if cursor is not None:
        print(f"more: raylane ls ... --cursor {cursor}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
    else:
        for r in records:
            error = printable((r.error or "")[:60], one_line=True)
            _echo(f"{r.id}  {r.state.value:<9}  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.name}  {error}")
    return 0


def _counts(args: argparse.Namespace) -> int:
    rl = _connect()
    counts = rl.counts(**_filters(args))
    if args.json:
        print(json.dumps(counts))
    else:
        for state, n in sorted(counts.items()):
            print(f"{state:<10} {n}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from raylane.client import _endpoints
    from raylane.store import MAPPING_VERSION, OpenSearchStore

    settings = Settings.from_env()
    store = OpenSearchStore(_endpoints(settings, start_missing=False).opensearch, args.alias or settings.index_alias)
    try:
        before = store.write_index()
        store.ensure_schema()  # adds in place what it can, and migrates what it cannot
        after = store.write_index()
        sealed = _seal_schedules(store, settings.signer()) if args.seal_schedules else None
    finally:
        store.close()
    moved = after if after != before else None
    if args.json:
        outcome = {"alias": store.alias, "from": before, "to": moved, "mapping_version": MAPPING_VERSION}
        print(json.dumps(outcome | ({} if sealed is None else {"sealed_schedules": sealed})))
        return 0
    if moved:
        print(f"moved the records of {store.alias} from {before} to {moved} (mapping version {MAPPING_VERSION})")
    else:
        print(f"{store.alias} ({before}) has mapping version {MAPPING_VERSION}: nothing to move")
    if sealed is not None:
        print(f"sealed the task message of {len(sealed)} schedule(s)" + (f": {', '.join(sealed)}" if sealed else ""))
    return 0


def _seal_schedules(store, signer) -> list[str]:
    """Seal the message of each schedule in ``store`` that bears no seal; the keys sealed. One
    whose message bears a seal that does not hold was changed in the store: it is left alone."""
    keys = []
    for schedule in store.list_schedules():
        if schedule.message is not None and schedule.message.seal is None:
            store.save_schedule(schedule.model_copy(update={"message": signer.sealed(schedule.message)}))
            keys.append(schedule.key)
    return keys


def _purge(args: argparse.Namespace) -> int:
    rl = _connect()
    deleted = rl.purge(args.older_than, args.state or None)
    if args.json:
        print(json.dumps({"deleted": deleted}))
    else:
        print(f"deleted the records of {deleted} task(s) finished more than {args.older_than} ago")
    return 0


def _retry(args: argparse.Namespace) -> int:
    rl = _connect()
    rec = rl.retry(args.id).record()
    if args.json:
        print(json.dumps(rec.model_dump(mode="json"), indent=2))
    else:
        _echo(f"{rec.id} {rec.state.value} attempt={rec.attempt}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    rl = _connect()
    filters = _filters(args)
    states = args.state or ["FAILED"]
    if args.dry_run:
        would = min(args.limit, sum(rl.counts(states, **filters).values()))
        print(json.dumps({"would_replay": would}) if args.json else f"would start {would} task(s) again")
        return 0
    handles = rl.replay(states, **filters, limit=args.limit)
    if args.json:
        print(json.dumps({"replayed": [h.id for h in handles]}))
    else:
        print(f"started {len(handles)} task(s) again")
    return 0


def _dlq(args: argparse.Namespace) -> int:
    rl = _connect()
    if args.dlq_cmd == "replay":
        handles = rl.replay_dead_letters(args.limit)
        ids = [h.id for h in handles]
        print(json.dumps({"replayed": ids}) if args.json else f"started {len(ids)} task(s) again")
        return 0
    letters = rl.dead_letters(args.limit)
    if args.json:
        print(json.dumps(letters, indent=2))
        return 0
    for d in letters:
        task = f"task {d['task_id']} {d['state']}" if d.get("task_id") else "no recorded task"
        where = f"{d.get('topic') or '?'}[{d.get('partition')}]@{d.get('offset')}"
        _echo(f"{where}  {task}  {printable((d.get('reason') or '')[:100], one_line=True)}")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from raylane.grafana import dashboard

    text = json.dumps(dashboard(), indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(json.dumps({"written": args.out}) if args.json else f"wrote the raylane dashboard to {args.out}")
    else:
        print(text)
    return 0


def _pause(args: argparse.Namespace) -> int:
    rl = _connect()
    (rl.pause if args.cmd == "pause" else rl.resume)(args.queue)
    done = "paused" if args.cmd == "pause" else "resumed"
    _say(args, f"queue {args.queue} {done}", {"queue": args.queue, "paused": args.cmd == "pause"})
    return 0


def _schedule(args: argparse.Namespace) -> int:
    rl = _connect()
    action = args.schedule_cmd
    if action == "add":
        kwargs = json.loads(args.kwargs) if args.kwargs else {}
        if not isinstance(kwargs, dict):
            return _usage("--kwargs must be a JSON object")
        saved = rl.schedule(
            args.id,
            task=args.task,
            args=[_json_arg(a) for a in args.args],
            kwargs=kwargs,
            cron=args.cron,
            every=args.every,
            timezone=args.timezone,
            catch_up=args.catch_up,
            queue=args.queue,
            timeout=args.timeout,
            tags=args.tag,
            paused=args.paused,
        )
        _print_schedules([saved], args.json)
    elif action == "ls":
        _print_schedules(rl.schedules(), args.json)
    elif action == "rm":
        rl.unschedule(args.id)
        _say(args, f"schedule {args.id} removed", {"removed": args.id})
    else:
        changed = (rl.pause_schedule if action == "pause" else rl.resume_schedule)(args.id)
        _print_schedules([changed], args.json)
    return 0


def _print_schedules(schedules: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([dict(s.model_dump(mode="json", exclude={"message"})) for s in schedules], indent=2))
        return
    for s in schedules:
        rule = f"cron {s.cron!r} {s.timezone}" if s.cron else f"every {s.every_s:g}s"
        upcoming = s.upcoming()
        nxt = "paused" if s.paused else "never due" if upcoming is None else f"next {upcoming:%Y-%m-%d %H:%M:%S}Z"
        _echo(f"{s.id}  {s.task}  {rule}  catch-up {s.catch_up}  {nxt}")


def _add_submit_options(sp: argparse.ArgumentParser) -> None:
    from datetime import datetime

    def when(text: str) -> datetime:
        t = datetime.fromisoformat(text)
        if t.tzinfo is None:
            raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +00:00)")
        return t

    sp.add_argument("--delay", type=float, help="start no earlier than this many seconds from now (SCHEDULED)")
    sp.add_argument("--eta", type=when, help="start no earlier than this time (ISO 8601 with a zone)")
    sp.add_argument("--expires", type=when, help="not started by this time (ISO 8601): CANCELLED as expired")
    sp.add_argument("--soft-timeout", type=float, help="seconds before SoftTimeLimitExceeded is raised in the task")
    sp.add_argument("--idempotency-key", help="a second submit with this key returns the first task's id")
    sp.add_argument("--max-retries", type=int, help="retries after a failed attempt (default: the task's)")
    sp.add_argument("--priority", type=int, choices=range(10), metavar="0-9", help="9 runs first (default 0)")
    sp.add_argument("--concurrency-key", help="the key --max-concurrency and --rate-limit count under")
    sp.add_argument("--max-concurrency", type=int, help="at most this many RUNNING per key (default key: the name)")
    sp.add_argument("--rate-limit", help='starts per key, e.g. "100/s", "30/m", "5/h"')


def _add_schedule_parser(sub) -> None:
    sc = sub.add_parser(
        "schedule",
        help="run a task on a cron expression or a fixed interval",
        description="Schedules submit one task per tick, however many schedulers run. Missed ticks "
        "(nothing could fire them for 5 s) follow --catch-up: none skips them, last runs the "
        "latest once, all runs each.",
    )
    sc_sub = sc.add_subparsers(dest="schedule_cmd", required=True, metavar="ACTION")
    add = sc_sub.add_parser("add", help="create a schedule, or replace the one with this id")
    add.add_argument("id", help="schedule id (letters, digits, _ . : -)")
    add.add_argument("task", help="registered task name")
    add.add_argument("args", nargs="*", metavar="ARG", help="positional arguments (JSON)")
    rule = add.add_mutually_exclusive_group(required=True)
    rule.add_argument("--cron", help='five-field cron expression, e.g. "*/5 * * * *"')
    rule.add_argument("--every", type=float, help="seconds between ticks (at least 1)")
    add.add_argument("--kwargs", help="keyword arguments as a JSON object")
    add.add_argument("--timezone", default="UTC", help="IANA time zone of the cron expression (default UTC)")
    add.add_argument("--catch-up", choices=["none", "last", "all"], default="none", help="missed ticks (default none)")
    add.add_argument("--queue", help="queue of the tasks (default: the task's)")
    add.add_argument("--timeout", type=float, help="seconds before each task is killed")
    add.add_argument("--tag", action="append", help="tag the tasks (repeatable)")
    add.add_argument("--paused", action="store_true", help="create it paused")
    add.add_argument("--json", action="store_true", help="print the schedule as JSON")
    ls = sc_sub.add_parser("ls", help="list schedules with their next tick")
    ls.add_argument("--json", action="store_true", help="print as JSON")
    for verb, text in (
        ("rm", "remove a schedule (tasks it fired stay)"),
        ("pause", "stop a schedule firing; its ticks meanwhile are skipped"),
        ("resume", "let a paused schedule fire again"),
    ):
        sp = sc_sub.add_parser(verb, help=text)
        sp.add_argument("id", help="schedule id")
    sc.set_defaults(func=_schedule)


def _services_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "services",
        nargs="*",
        choices=["kafka", "opensearch", "ray", []],
        metavar="SERVICE",
        help=f"{verb} only these (kafka, opensearch, ray); default all",
    )
    parser.add_argument(
        "--secure",
        action="store_true",
        help="the secure local stack (as RAYLANE_SECURE_STACK=1): Kafka on SASL_SSL with SCRAM-SHA-512, "
        "OpenSearch on HTTPS with basic auth; certificates and credentials under <home>/secure",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raylane")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _json_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give every command that has none a ``--json`` flag: every command prints JSON with it."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if not any("--json" in a.option_strings for a in parser._actions):
            parser.add_argument("--json", action="store_true", help="print JSON")
        return
    for choice in subs[0].choices.values():
        _json_everywhere(choice)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``raylane`` command."""
    p = argparse.ArgumentParser(
        prog="raylane",
        description="Asynchronous tasks on Ray, queued in Kafka, tracked in OpenSearch.",
        epilog="Exit codes: 0 ok; 1 the task failed, was cancelled or timed out; 2 usage or bad input; "
        "3 not found; 4 a service is unavailable; 5 a wait timed out.",
    )
    p.add_argument("--version", action="version", version=f"raylane {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    st = sub.add_parser(
        "stack",
        help="manage the local Kafka, OpenSearch and Ray",
        description=(
            "Manage the local stack: a single-node Kafka (KRaft), OpenSearch and Ray head on loopback, "
            "fetched once from Maven Central into RAYLANE_HOME (default ~/.cache/raylane)."
        ),
    )
    st_sub = st.add_subparsers(dest="stack_cmd", required=True, metavar="ACTION")
    up = st_sub.add_parser("up", help="start what is not running and wait until ready (idempotent)")
    _services_argument(up, "start")
    up.add_argument("--json", action="store_true", help="print the resulting status as JSON")
    up.add_argument("--no-actors", action="store_true", help="start only the services, not raylane's actors")
    up.add_argument(
        "--http",
        action="store_true",
        help="also serve the HTTP API and web page with Ray Serve (RAYLANE_HTTP_PORT, default 28000)",
    )
    down = st_sub.add_parser("down", help="stop the processes the stack started")
    _services_argument(down, "stop")
    down.add_argument(
        "--grace", type=float, default=20.0, help="seconds to wait after SIGTERM before SIGKILL (default 20)"
    )
    status = st_sub.add_parser(
        "status", help="show each service's state, pid, address and memory; exit 4 unless all run"
    )
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.add_argument("--secure", action="store_true", help="the secure local stack (as RAYLANE_SECURE_STACK=1)")
    st.set_defaults(func=_stack)

    from raylane.states import TaskState

    states = [s.value for s in TaskState]

    sp = sub.add_parser(
        "submit",
        help="submit a registered task; prints its id",
        description="Submit a task by name. Each ARG is parsed as JSON, or taken as a string.",
    )
    sp.add_argument("name", help="registered task name, e.g. raylane.echo")
    sp.add_argument("args", nargs="*", metavar="ARG", help="positional arguments (JSON)")
    sp.add_argument("--kwargs", help="keyword arguments as a JSON object")
    sp.add_argument("--queue", help="queue to use (default: the task's, else 'default')")
    sp.add_argument("--timeout", type=float, help="seconds before the task is killed")
    sp.add_argument("--tag", action="append", help="tag the task (repeatable)")
    _add_submit_options(sp)
    sp.set_defaults(func=_submit)
    _add_schedule_parser(sub)

    sp = sub.add_parser("status", help="show a task's record")
    sp.add_argument("id", help="task id")
    sp.add_argument("--json", action="store_true", help="print the whole record as JSON")
    sp.set_defaults(func=_status)

    sp = sub.add_parser(
        "cancel",
        help="cancel a task that has not finished, or every one matching filters",
        description="Cancel one task by id, or every unfinished task matching the filters: first it says how "
        "many that is, and cancels them only when run again with --yes. Running tasks are killed.",
    )
    sp.add_argument("id", nargs="?", help="task id")
    sp.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in TaskState if not s.terminal],
        help="only tasks in this state (repeatable; default every unfinished one)",
    )
    _add_filters(sp)
    sp.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000, up to 10000)")
    sp.add_argument("--yes", action="store_true", help="cancel the matching tasks (without it: only count them)")
    sp.set_defaults(func=_cancel)

    sp = sub.add_parser(
        "wait", help="wait for a task to finish; exit 0 if it SUCCEEDED, 1 if it failed, was cancelled or timed out"
    )
    sp.add_argument("id", help="task id")
    sp.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 5)")
    sp.add_argument("--json", action="store_true", help="print the record as JSON")
    sp.set_defaults(func=_wait)

    sp = sub.add_parser("ls", help="search tasks, newest first")
    sp.add_argument("--state", action="append", choices=states, help="only tasks in this state (repeatable)")
    _add_filters(sp)
    sp.add_argument("--text", help="words that must appear in the error message")
    sp.add_argument("--limit", type=int, default=50, help="a page of at most this many (default 50, up to 1000)")
    sp.add_argument("--cursor", help="go on after the page that printed it (on stderr, as 'more: ...')")
    sp.add_argument("--json", action="store_true", help="print records as JSON")
    sp.set_defaults(func=_ls)

    sp = sub.add_parser("counts", help="number of tasks per state")
    _add_filters(sp)
    sp.add_argument("--json", action="store_true", help="print as JSON")
    sp.set_defaults(func=_counts)

    sp = sub.add_parser(
        "migrate",
        help="bring the status index to the current mapping",
        description="Bring the status index to this release's mapping: fields added since are added in "
        "place; a mapping that cannot change in place (a field of another type) moves every record to "
        "a new index behind the same alias while writes go on. raylane's keepers do the same at start.",
    )
    sp.add_argument("--alias", help="the status index's alias (default RAYLANE_INDEX_ALIAS)")
    sp.add_argument(
        "--seal-schedules",
        action="store_true",
        help="also seal the task message of every schedule that bears no seal, so that it fires again: "
        "schedules saved before seals existed are not fired. Run it once after upgrading, only if every "
        "schedule in the store is one you made (sealing vouches for it)",
    )
    sp.add_argument("--json", action="store_true", help="print the outcome as JSON")
    sp.set_defaults(func=_migrate)

    sp = sub.add_parser(
        "retry",
        help="start a new attempt of a finished task",
        description="Start a new attempt of a finished task (FAILED, TIMED_OUT, CANCELLED or SUCCEEDED), with "
        "the same arguments; the record keeps the finished attempt in its attempts. Exit 2 if the task "
        "has not finished, 3 if there is no such task.",
    )
    sp.add_argument("id", help="task id")
    sp.add_argument("--json", action="store_true", help="print the new attempt's record as JSON")
    sp.set_defaults(func=_retry)

    sp = sub.add_parser(
        "replay",
        help="start a new attempt of every finished task matching filters (FAILED by default)",
        description="raylane retry in bulk: a new attempt of each finished task that matches every filter, "
        "newest first, at most --limit.",
    )
    sp.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in TaskState if s.terminal],
        help="only tasks that ended so (repeatable; default FAILED)",
    )
    _add_filters(sp)
    sp.add_argument("--limit", type=int, default=1000, help="at most this many tasks (default 1000, up to 10000)")
    sp.add_argument("--dry-run", action="store_true", help="only say how many tasks would start again")
    sp.add_argument("--json", action="store_true", help="print the ids started again as JSON")
    sp.set_defaults(func=_replay)

    sp = sub.add_parser(
        "dlq",
        help="list the dead letters, or start their tasks again",
        description="Messages raylane set aside (malformed, unsigned, of an unknown task, or that kept "
        "failing), newest first. A dead-lettered task raylane recorded is FAILED; replay starts a new attempt "
        "of it from its record. A message raylane did not sign names no recorded task and is never replayed.",
    )
    dlq = sp.add_subparsers(dest="dlq_cmd", required=True)
    for verb, text in (("ls", "list the newest dead letters"), ("replay", "start their recorded tasks again")):
        d = dlq.add_parser(verb, help=text, description=text)
        d.add_argument("--limit", type=int, default=100, help="the newest this many dead letters (default 100)")
        d.add_argument("--json", action="store_true", help="print JSON")
        d.set_defaults(func=_dlq)

    sp = sub.add_parser(
        "purge",
        help="delete the records of tasks finished more than a while ago",
        description="Delete the records of finished tasks (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT; not a "
        "failed attempt whose retry follows) that finished more than --older-than ago. With "
        "RAYLANE_RETENTION set, the service does this daily.",
    )
    sp.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 90s, 30m, 12h, 7d, 2w")
    sp.add_argument(
        "--state", action="append", choices=[s.value for s in TaskState if s.terminal], help="only this state"
    )
    sp.add_argument("--json", action="store_true", help="print the count as JSON")
    sp.set_defaults(func=_purge)

    sp = sub.add_parser(
        "serve",
        help="serve the HTTP API and web page with Ray Serve; prints the URL",
        description="Deploy raylane's HTTP API (FastAPI on Ray Serve) on the connected Ray cluster, "
        "starting the local stack if nothing is configured. It keeps running after this "
        "command returns; tokens come from `raylane token create`.",
    )
    sp.add_argument("--host", help="listen address (default RAYLANE_HTTP_HOST, 127.0.0.1)")
    sp.add_argument("--port", type=int, help="listen port (default RAYLANE_HTTP_PORT, 28000)")
    sp.add_argument("--stop", action="store_true", help="remove the HTTP API instead")
    sp.set_defaults(func=_serve)

    sp = sub.add_parser(
        "bench",
        help="run the benchmark suite; writes latest.{json,md,png} into <RAYLANE_HOME>/bench (or --out)",
        description="Benchmarks in one sequence on this machine: raw Ray, Celery with Redis, and "
        "raylane end to end (throughput, latency, CPU per task, OpenSearch requests per "
        "transition, Kafka bytes per task), lookup latency as the index grows, and "
        "throughput by consumers. Numbers only; nothing is asserted.",
    )
    sp.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes instead of about ten")
    sp.add_argument(
        "--only",
        help="comma-separated parts: rtt,floor,ray,celery,dramatiq,burst,timed_burst,job,lookup,scale,keepers,soak",
    )
    sp.add_argument("--out", help="directory for the results (default <RAYLANE_HOME>/bench)")
    sp.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run ray, dramatiq, burst and timed_burst this many times in turn and report the median "
        "of the ratios taken within each round, with their range; and the keepers' burst this many "
        "times, their shares taken of the CPU of all rounds (default 1)",
    )
    sp.set_defaults(func=_bench)

    tk = sub.add_parser(
        "token",
        help="manage the HTTP API's tokens",
        description=(
            "Tokens of the HTTP API, each bound to a tenant. The token file (RAYLANE_TOKEN_FILE, default "
            "RAYLANE_HOME/tokens.json) keeps only their SHA-256; a running API sees changes at once."
        ),
    )
    tk_sub = tk.add_subparsers(dest="token_cmd", required=True, metavar="ACTION")
    tc = tk_sub.add_parser("create", help="make a token for a tenant and print it (only this once)")
    tc.add_argument("--tenant", required=True, help="tenant the token acts for (lowercase letters, digits, _ and -)")
    scope = tc.add_mutually_exclusive_group()
    scope.add_argument("--read-only", action="store_true", help="may look up, search and wait, not submit or cancel")
    scope.add_argument(
        "--operator",
        action="store_true",
        help="may also see the cluster's queues, executors and dead letters on the web page, and pause and "
        "resume queues (its tasks stay its tenant's)",
    )
    tc.add_argument("--note", help="a note kept with the token, e.g. who has it")
    tc.add_argument(
        "--max-open",
        type=int,
        help="the tenant's quota of unfinished tasks when this token submits "
        "(default: RAYLANE_HTTP_MAX_OPEN_PER_TENANT)",
    )
    tk_sub.add_parser("list", help="list tokens (id, tenant, scope, creation time; never the token)")
    tr = tk_sub.add_parser("revoke", help="revoke a token by id")
    tr.add_argument("id", help="token id (the 12 hex digits after rl_)")
    tk.set_defaults(func=_token)

    mt = sub.add_parser("metrics", help="dashboards of raylane's metrics")
    mt_sub = mt.add_subparsers(dest="metrics_cmd", required=True, metavar="ACTION")
    gf = mt_sub.add_parser(
        "grafana",
        help="print a Grafana dashboard (JSON) of raylane's metrics",
        description="A Grafana dashboard of the metrics Ray exports for raylane (ray_raylane_*): tasks finished "
        "per state, submitted and started, running, backlog per queue, consumers' held messages, dead letters, "
        "status writes and their latency. Import it in Grafana, or put it where Ray's Grafana provisions "
        "dashboards from: <Ray session dir>/metrics/grafana/dashboards/.",
    )
    gf.add_argument("--out", help="write it to this file instead of printing it")
    gf.set_defaults(func=_metrics)

    for verb, text in (("pause", "stop consumers taking tasks of a queue"), ("resume", "resume a paused queue")):
        sp = sub.add_parser(verb, help=text)
        sp.add_argument("queue", help="queue name")
        sp.set_defaults(func=_pause)
    _json_everywhere(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raylane`` command."""
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RaylaneError as e:
        _echo(f"raylane: error: {e}", err=True)
        return exit_code_of(e)
    except (ValidationError, json.JSONDecodeError) as e:
        _echo(f"raylane: error: invalid input: {e}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
