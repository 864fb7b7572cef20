"""Unit tier (no services): an interrupt meant for a task ends a blocking call it is in, in a
process that blocks SIGINT as Ray's workers do. Each case runs in a child process of its own, so
that this process's signal handlers and wake-up file stay as they were."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

# The child blocks SIGINT as a Ray worker does, starts a blocking call, and has another thread
# simulate SIGINT after 0.2 s the way ray.cancel(force=False) does (_thread.interrupt_main).
_CHILD = """
import _thread, json, signal, threading, time
from raylane.actors import interrupts
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
SETUP
threading.Timer(0.2, _thread.interrupt_main).start()
began = time.monotonic()
out = {}
try:
    BODY
except KeyboardInterrupt:
    out["interrupted_after"] = time.monotonic() - began
else:
    out["ran_for"] = time.monotonic() - began
out["wake_ups"] = interrupts.wake_ups()
print(json.dumps(out))
"""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _child(body: str, setup: str = "", born_ignoring_sigint: bool = False) -> dict:
    code = textwrap.dedent(_CHILD).replace("SETUP", setup).replace("BODY", body)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        preexec_fn=_ignore_sigint if born_ignoring_sigint else None,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_interrupt_ends_a_sleep_in_a_task_at_once():
    out = _child("with interrupts.wakeable():\n        time.sleep(8)")
    assert out.get("interrupted_after", 99) < 4, out  # not the sleep's 8 s
    assert out["wake_ups"] == 1


def test_an_interrupt_reaches_a_task_of_a_process_born_ignoring_sigint():
    # A shell without job control starts its background commands with SIGINT ignored, and every
    # Ray worker of a node started that way inherits it; Python then drops a simulated interrupt.
    out = _child("with interrupts.wakeable():\n        time.sleep(8)", born_ignoring_sigint=True)
    assert out.get("interrupted_after", 99) < 4, out
    assert out["wake_ups"] == 1


def test_an_interrupt_ends_a_blocking_read_in_a_task():
    setup = "import os\nr, w = os.pipe()"
    out = _child("with interrupts.wakeable():\n        os.read(r, 1)", setup)
    assert out.get("interrupted_after", 99) < 4, out  # the read would block for ever


def test_outside_a_task_a_blocking_call_runs_to_its_end():
    # No task runs: nothing is woken, and the interrupt lands only once the call returns.
    out = _child("time.sleep(1.0)", "with interrupts.wakeable():\n    pass")
    assert out.get("interrupted_after", 0) >= 1.0, out
    assert out["wake_ups"] == 0


def test_a_wake_up_file_of_the_tasks_own_is_left_alone():
    setup = "import os\nr, w = os.pipe()\nos.set_blocking(w, False)\nsignal.set_wakeup_fd(w)"
    body = "with interrupts.wakeable():\n        time.sleep(1.0)\n    assert signal.set_wakeup_fd(-1) == w"
    out = _child(body, setup)
    assert out.get("interrupted_after", 0) >= 1.0, out  # the task's own file: no wake-up, and it stays set
    assert out["wake_ups"] == 0
