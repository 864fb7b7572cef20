"""``async def`` tasks, and the asyncio client: ``await handle``, ``aget``, ``aas_completed``,
``await_all`` and ``asubmit``, none of which blocks the caller's event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import running_anywhere, wait_until

import raylane
from raylane.states import TaskState


@raylane.task(name="test.aio.double")
async def double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@raylane.task(name="test.aio.gather")
async def gather(n: int, seconds: float) -> int:
    # n sleeps at once: the task takes about one sleep, not n
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(asyncio.sleep(seconds) for _ in range(n)))
    return round((loop.time() - t0) / seconds)


@raylane.task(name="test.aio.fail")
async def fail() -> None:
    await asyncio.sleep(0)
    raise ValueError("async boom")


@raylane.task(name="test.aio.nap")
async def nap(seconds: float, marker_dir: str) -> str:
    Path(marker_dir, "began").touch()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        Path(marker_dir, "cancelled").touch()  # its clean-up runs
        raise
    return "slept"


def test_async_def_tasks_run_on_a_loop_of_their_own(rl):
    assert double.submit(21).result(timeout=60) == 42
    assert gather.submit(20, 0.5).result(timeout=60) == 1
    failed = fail.submit().wait(timeout=60)
    assert failed.state is TaskState.FAILED and failed.error_type == "ValueError" and "async boom" in failed.error


def test_the_asyncio_client(rl):
    async def main() -> None:
        h = await double.asubmit(5)
        assert await h == 10
        assert (await raylane.aget(h.id)).state is TaskState.SUCCEEDED
        assert (await h.arecord()).result == 10
        handles = double.submit_many([(i,) for i in range(30)])
        seen = [done.id async for done in raylane.aas_completed(handles, timeout=60)]
        assert sorted(seen) == sorted(x.id for x in handles)
        records = await raylane.await_all(handles)
        assert [r.result for r in records] == [2 * i for i in range(30)]
        with pytest.raises(raylane.TaskFailed, match="async boom"):
            await fail.submit()
        with pytest.raises(raylane.TaskNotFound):
            await raylane.aget("0" * 32)

    asyncio.run(main())


def test_waiting_does_not_block_the_event_loop(rl):
    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        slow = gather.submit(1, 2.0)
        result = await slow
        ticking.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    # About 40 ticks fit in the 2 s wait; a loop blocked by the wait would see none.
    assert result == 1 and ticks >= 10, ticks


def test_an_async_wait_past_its_timeout_raises(rl):
    async def main() -> None:
        slow = gather.submit(1, 5.0)
        with pytest.raises(raylane.WaitTimeout):
            async for _ in raylane.aas_completed([slow], timeout=0.5):
                pass
        assert await slow == 1

    asyncio.run(main())


def test_an_awaited_result_past_its_timeout_raises(rl):
    async def main() -> None:
        slow = gather.submit(1, 5.0)
        with pytest.raises(raylane.WaitTimeout):
            await slow.aresult(timeout=0.5)
        assert await slow == 1

    asyncio.run(main())


def test_cancelling_an_async_task_cancels_its_await_at_once(rl, tmp_path):
    # Its loop waits in epoll for the sleep's end; the interrupt wakes it, asyncio cancels the
    # task's coroutine, and its clean-up runs, without its worker being killed.
    from raylane.actors.deploy import actor_stats

    before = actor_stats("raylane")["Executor"]["workers_killed"]
    h = nap.submit(60.0, str(tmp_path))
    wait_until(lambda: (tmp_path / "began").exists(), what="the task to start")
    assert h.cancel().state is TaskState.CANCELLED
    wait_until(lambda: (tmp_path / "cancelled").exists(), timeout=20, what="the task's await to be cancelled")
    wait_until(lambda: not running_anywhere([h]), timeout=30, what="its Ray task to end")
    assert actor_stats("raylane")["Executor"]["workers_killed"] == before
