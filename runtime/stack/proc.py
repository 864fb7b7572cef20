"""Child processes of the local stack: start detached, track by pid file, stop gracefully."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file`` if that process still lives, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _take_interrupts() -> None:
    """In the child, before its program starts: SIGINT and SIGQUIT back to their defaults."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def spawn(
    cmd: list[str],
    *,
    log_file: Path,
    pid_file: Path,
    env: dict | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start ``cmd`` in its own session (it outlives the caller), logging to ``log_file``, with
    SIGINT and SIGQUIT handled by default even if the caller ignores them. With
    ``user``, it runs as that user with that user's own group only: no group of the caller
    (root's group 0 included) carries over."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    as_user: dict = {}
    if user is not None:
        import pwd

        as_user = dict(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            # A script's background job starts with SIGINT and SIGQUIT ignored, and a program
            # inherits that: Ray would pass it on to every worker, where Python then drops the
            # interrupt of ray.cancel. The child has a session of its own, so no terminal sends
            # it these signals either way.
            preexec_fn=_take_interrupts if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else None,
            **as_user,
        )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def exited_early(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child; True when it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
    except ChildProcessError:
        pass
    return not pid_alive(pid)


def process_group(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and pid_alive(int(entry.name)):
                    out.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return out


def processes_with_env(key: str, values: Iterable[str]) -> list[int]:
    """Live pids whose environment has ``key`` set to one of ``values``."""
    wanted = {f"{key}={v}".encode() for v in values}
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if wanted.intersection(env) and pid_alive(int(entry.name)):
            out.append(int(entry.name))
    return out


def descendants(pids: Iterable[int]) -> list[int]:
    """Live pids that descend from ``pids`` (children, grandchildren, ...), ``pids`` included."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
    return sorted(p for p in seen if pid_alive(p))


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], until: float) -> list[int]:
    while True:
        for pid in pids:
            exited_early(pid)
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() >= until:
            return alive
        time.sleep(0.1)


def terminate(pids: list[int], grace_s: float, leader: int | None = None) -> list[int]:
    """Stop ``pids``: SIGTERM (to ``leader`` alone first, if given, which stops the rest itself,
    then to whatever it left), wait up to ``grace_s`` in all, then SIGKILL the rest.
    Returns the pids killed forcibly."""
    deadline = time.monotonic() + grace_s
    if leader:
        _signal_all([leader], signal.SIGTERM)
        _wait_gone([leader], deadline)
    alive = [p for p in pids if pid_alive(p)]
    _signal_all(alive, signal.SIGTERM)
    left = _wait_gone(alive, deadline)
    _signal_all(left, signal.SIGKILL)
    _wait_gone(left, time.monotonic() + 5)
    return left


def rss_bytes(pids: Iterable[int]) -> int:
    """Summed resident set size of ``pids``."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def log_tail(log_file: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
