"""Unit tier (no services): what a task's code raises is its own error, ``KeyboardInterrupt`` and
``SystemExit`` included, while an interrupt sent to it (a cancel, a timeout) still goes on up to
Ray. Each case runs ``invoke`` in a child process of its own, with SIGINT blocked as in a Ray
worker, so that this process's signal handlers stay as they were."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_CHILD = """
import _thread, json, signal, sys, threading, time
from raylane import registry
from raylane.actors import worker
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

async def coroutine_task(kind):
    raise KeyboardInterrupt("the task's own, from its event loop")

def task(kind):
    if kind == "interrupt":
        raise KeyboardInterrupt("the task's own")
    if kind == "exit":
        sys.exit(3)
    if kind == "sleep":
        time.sleep(8)
    return kind

registry.load = lambda name: registry.TaskDefinition(name=name, fn=coroutine_task if name == "t.async" else task)
out = []
for kind in KINDS:
    if kind == "sleep":  # a cancel's interrupt, as ray.cancel(force=False) sends it
        threading.Timer(0.2, _thread.interrupt_main).start()
    try:
        reply = worker.invoke("t.async" if kind == "async-interrupt" else "t.own", [kind], {})
        out.append([reply.ok, reply.error_type, list(reply.error_types)])
    except KeyboardInterrupt:
        out.append("interrupted")
print(json.dumps(out))
"""


def _invoked(*kinds: str) -> list:
    code = textwrap.dedent(_CHILD).replace("KINDS", repr(list(kinds)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_keyboard_interrupt_the_task_raised_is_its_failure():
    # First in its process (the interrupt handler is set up by the first task) and after others.
    out = _invoked("interrupt", "ok", "interrupt")
    own = [False, "KeyboardInterrupt", ["builtins:KeyboardInterrupt", "builtins:BaseException"]]
    assert out == [own, [True, None, []], own]


def test_a_keyboard_interrupt_raised_in_an_async_task_is_its_failure():
    own = [False, "KeyboardInterrupt", ["builtins:KeyboardInterrupt", "builtins:BaseException"]]
    assert _invoked("ok", "async-interrupt", "ok") == [[True, None, []], own, [True, None, []]]


def test_system_exit_is_the_tasks_failure_and_the_process_goes_on():
    out = _invoked("exit", "ok")
    assert out == [[False, "SystemExit", ["builtins:SystemExit", "builtins:BaseException"]], [True, None, []]]


def test_an_interrupt_sent_to_the_task_still_reaches_ray():
    # A cancel's interrupt is not the task's error: it goes on up, where Ray makes it a cancel;
    # and the task's own interrupt after it is still told apart.
    assert _invoked("ok", "sleep", "interrupt")[1:] == [
        "interrupted",
        [False, "KeyboardInterrupt", ["builtins:KeyboardInterrupt", "builtins:BaseException"]],
    ]
    assert _invoked("sleep") == ["interrupted"]
