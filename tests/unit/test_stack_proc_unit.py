"""Unit tier: the local stack's services start with SIGINT and SIGQUIT handled by default, even when
the stack is started from a script's background job, which ignores both (and so would every Ray
worker of a node started that way)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

# The caller of spawn reports which signals it ignores, then starts a shell that reports its own.
_CALLER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from raylane.stack import proc
    print(Path("/proc/self/status").read_text().split("SigIgn:")[1].split()[0])
    report = ["sh", "-c", "grep SigIgn /proc/$$/status"]
    pid = proc.spawn(report, log_file=Path(sys.argv[1]), pid_file=Path(sys.argv[2]))
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # the shell ended before spawn returned, and dropping its Popen reaped it
""")


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)


def _ignores(mask: int, sig: signal.Signals) -> bool:
    return bool(mask & (1 << (sig - 1)))


def test_a_service_takes_interrupts_though_its_caller_ignores_them(tmp_path: Path):
    log = tmp_path / "service.log"
    done = subprocess.run(
        [sys.executable, "-c", _CALLER, str(log), str(tmp_path / "service.pid")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        preexec_fn=_ignore_interrupts,
    )
    caller = int(done.stdout.split()[0], 16)
    assert _ignores(caller, signal.SIGINT) and _ignores(caller, signal.SIGQUIT)  # as a background job
    service = int(log.read_text().split()[-1], 16)
    assert not _ignores(service, signal.SIGINT) and not _ignores(service, signal.SIGQUIT), hex(service)
