"""Checksum and word statistics for every file of a directory tree, one raylane task per file.

Without ``--path`` the job first generates a reproducible tree of text and binary files.
To show the whole lifecycle it also cancels some tasks right after submitting them and
gives a few tasks a deliberate stall longer than their timeout, so they are killed.
It prints a progress bar, the final count per state, and the throughput.

Run it on the local stack (``raylane stack up`` first):

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:28265 --working-dir . \\
        -- python -m raylane.jobs.checksums --files 3000

or directly: ``python -m raylane.jobs.checksums``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

import raylane
from raylane.errors import WaitTimeout
from raylane.states import TaskState


@raylane.task(name="jobs.checksum_file", timeout=60)
def checksum_file(path: str, stall_s: float = 0.0) -> dict:
    """SHA-256, size, and line/word counts of one file; ``stall_s`` simulates a stuck worker."""
    if stall_s:
        time.sleep(stall_s)
    digest = hashlib.sha256()
    size = lines = words = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            words += len(chunk.split())
    return {"path": path, "sha256": digest.hexdigest(), "bytes": size, "lines": lines, "words": words}


_WORDS = [
    "raylane",
    "kafka",
    "opensearch",
    "ray",
    "task",
    "queue",
    "status",
    "version",
    "cancel",
    "timeout",
    "retry",
    "result",
]


def generate_tree(root: Path, files: int, seed: int = 1) -> list[Path]:
    """A reproducible tree of ``files`` small text and binary files under ``root``."""
    rng = random.Random(seed)
    paths = []
    for i in range(files):
        d = root / f"d{i % 17:02d}" / f"e{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:05d}.{'txt' if i % 3 else 'bin'}"
        if i % 3:
            p.write_text(
                "\n".join(" ".join(rng.choices(_WORDS, k=rng.randint(3, 12))) for _ in range(rng.randint(5, 200)))
            )
        else:
            p.write_bytes(rng.randbytes(rng.randint(256, 32768)))
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run the job. Exit status 0 when every task ended as intended (SUCCEEDED, or CANCELLED or
    TIMED_OUT where the job cancelled or stalled it on purpose) and the results check out; 1 otherwise."""
    ap = argparse.ArgumentParser(prog="python -m raylane.jobs.checksums", description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", type=Path, help="directory tree to checksum (default: generate one)")
    ap.add_argument("--files", type=int, default=3000, help="files to generate when --path is not given (default 3000)")
    ap.add_argument(
        "--cancel-every", type=int, default=100, help="cancel every Nth task right after submitting it (0: none)"
    )
    ap.add_argument("--stalled", type=int, default=5, help="tasks made to stall past their timeout (default 5)")
    ap.add_argument("--timeout", type=float, default=2.0, help="timeout of the stalled tasks in seconds (default 2)")
    ap.add_argument(
        "--missing",
        type=int,
        default=0,
        help="also submit this many paths that do not exist; their tasks fail (default 0)",
    )
    ap.add_argument("--batch", type=int, default=500, help="tasks per submit_many call (default 500)")
    ap.add_argument("--inflight", type=int, default=3, help="submit_many calls under way at once (default 3)")
    ap.add_argument("--deadline", type=float, default=900.0, help="give up waiting after this many seconds")
    ap.add_argument(
        "--json", action="store_true", help="also print the run's figures as one JSON line at the end (for the bench)"
    )
    args = ap.parse_args(argv)
    if args.batch < 1 or args.inflight < 1:
        ap.error("--batch and --inflight must be at least 1")

    tmp = None
    if args.path:
        paths = sorted(p for p in args.path.rglob("*") if p.is_file())
    else:
        tmp = Path(tempfile.mkdtemp(prefix="raylane-checksums-"))
        print(f"generating {args.files} files under {tmp} ...", flush=True)
        paths = generate_tree(tmp, args.files)
    if not paths:
        print("no files to checksum", file=sys.stderr)
        return 2
    paths += [Path(tempfile.gettempdir(), f"raylane-missing-{uuid.uuid4().hex}") for _ in range(args.missing)]

    raylane.init()
    run_tag = f"checksums-{uuid.uuid4().hex[:8]}"
    stalled = set(random.Random(2).sample(range(len(paths)), min(args.stalled, len(paths))))
    normal = checksum_file.options(tags=[run_tag])
    slow = checksum_file.options(tags=[run_tag], timeout=args.timeout)

    def submit_batch(chunk: range) -> tuple[list[raylane.TaskHandle], list[str], list[str], int]:
        """Submit one batch and cancel every ``--cancel-every``-th task of it: its handles, the ids of
        its stalled tasks, the ids cancelled, and how many cancels came too late."""
        plain = [i for i in chunk if i not in stalled]
        batch = normal.submit_many([(str(paths[i]),) for i in plain])
        slow_batch = [slow.submit(str(paths[i]), args.timeout * 15) for i in chunk if i in stalled]
        batch += slow_batch
        to_cancel = [h.id for h in batch[:: args.cancel_every]] if args.cancel_every else []
        ended = raylane.cancel_many(to_cancel) if to_cancel else []  # one call for the batch's cancels
        return batch, [h.id for h in slow_batch], list(ended), len(to_cancel) - len(ended)

    handles: list[raylane.TaskHandle] = []
    stalled_ids: set[str] = set()
    cancelled_ids: set[str] = set()
    cancelled = too_late = 0
    started = time.monotonic()
    chunks = [range(i, min(len(paths), i + args.batch)) for i in range(0, len(paths), args.batch)]
    # A submit waits mostly on the store and Kafka, not on this process: a few batches in flight
    # at once keep the write path busy.
    with (
        tqdm(total=len(paths), desc="submit", unit="task", file=sys.stdout) as bar,
        ThreadPoolExecutor(args.inflight, thread_name_prefix="submit") as pool,
    ):
        futures = [pool.submit(submit_batch, chunk) for chunk in chunks]
        for chunk, future in zip(chunks, futures, strict=True):
            batch, slow_ids, ended, late = future.result()
            handles.extend(batch)
            stalled_ids.update(slow_ids)
            cancelled_ids.update(ended)
            cancelled += len(ended)
            too_late += late
            bar.update(len(chunk))
    submitted_in = time.monotonic() - started

    # Results stream back in batches as tasks finish: no polling, one record per task.
    records: dict[str, raylane.TaskRecord] = {}
    with tqdm(total=len(handles), desc="done  ", unit="task", file=sys.stdout) as bar:
        try:
            for h in raylane.as_completed(handles, timeout=max(1.0, args.deadline - (time.monotonic() - started))):
                records[h.id] = h.wait()
                bar.update(1)
        except WaitTimeout as e:
            print(f"gave up waiting: {e}", file=sys.stderr)
    elapsed = time.monotonic() - started
    terminal = len(records)
    counts = Counter(r.state.value for r in records.values())
    counts["not finished"] = len(handles) - terminal

    # Check every result against a checksum computed here.
    succeeded = [r for r in records.values() if r.state is TaskState.SUCCEEDED]
    mismatches = [
        r.id for r in succeeded if hashlib.sha256(Path(r.result["path"]).read_bytes()).hexdigest() != r.result["sha256"]
    ]

    print(f"\nrun {run_tag}: {len(handles)} tasks, submitted in {submitted_in:.1f}s")
    print(f"cancel requests: {cancelled} cancelled, {too_late} already finished")
    for state in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "not finished"):
        print(f"  {state:<12} {counts.get(state, 0):>6}")
    print(f"throughput: {terminal / elapsed:.1f} tasks/s ({terminal} terminal in {elapsed:.1f}s)")
    print(f"checked {len(succeeded)} results against local checksums: {len(mismatches)} mismatches")
    unintended = _unintended_states(handles, records, cancelled_ids, stalled_ids - cancelled_ids)
    for state, ids in unintended.items():
        print(f"unintended {state}: {len(ids)} task(s), e.g. {', '.join(sorted(ids)[:3])}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    raylane.shutdown()
    ok = terminal == len(handles) and not mismatches and not unintended
    print("all tasks ended as intended" if ok else "some tasks did not end as intended", flush=True)
    if args.json:
        figures = {
            "tasks": len(handles),
            "terminal": terminal,
            "seconds": round(elapsed, 2),
            "submitted_s": round(submitted_in, 2),
            "tasks_per_s": round(terminal / elapsed, 1),
            "states": {k: v for k, v in counts.items() if v},
            "ok": ok,
        }
        print(json.dumps(figures), flush=True)
    return 0 if ok else 1


def _unintended_states(
    handles: list[raylane.TaskHandle], records: dict[str, raylane.TaskRecord], cancelled: set[str], stalled: set[str]
) -> dict[str, set[str]]:
    """Tasks of the run whose final state is not the intended one, by state."""
    out: dict[str, set[str]] = {}
    found: dict[str, set[str]] = {}
    for state in ("FAILED", "CANCELLED", "TIMED_OUT"):
        found[state] = {i for i, r in records.items() if r.state.value == state}
        allowed = cancelled if state == "CANCELLED" else stalled if state == "TIMED_OUT" else set()
        if found[state] - allowed:
            out[state] = found[state] - allowed
    # A stalled task must have been stopped by its timeout (or by a cancel, which is in `cancelled`).
    open_ = {h.id for h in handles} - set(records)
    if open_:
        out["not finished"] = open_
    missed = stalled - found["TIMED_OUT"]
    if missed:
        out["stalled but not TIMED_OUT"] = missed
    return out


if __name__ == "__main__":
    sys.exit(main())
