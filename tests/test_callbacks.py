"""The callback pool and run_watched (pure logic, no server needed; ManualClock only)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from maily_secrets.callbacks import CallbackExecutor, run_watched
from maily_secrets.clock import ManualClock, settle

from .faultkit import until


async def test_pool_threads_are_daemons_and_start_only_on_demand() -> None:
    ex = CallbackExecutor(max_workers=2, max_threads=4, name="t-daemon")
    assert ex.threads == 0  # nothing at construction
    seen: list[bool] = []
    clock = ManualClock()
    await run_watched(
        lambda _: seen.append(threading.current_thread().daemon),
        None,
        executor=ex,
        clock=clock,
        watch=None,
    )
    assert seen == [True] and ex.threads == 1
    ex.shutdown()


async def test_pool_runs_at_most_max_workers_calls_until_one_is_abandoned() -> None:
    ex = CallbackExecutor(max_workers=2, max_threads=3, name="t-bound")
    release = threading.Event()
    lock = threading.Lock()
    running = {"n": 0}

    def block(_: object) -> None:
        with lock:
            running["n"] += 1
        release.wait(30)

    works = [ex.submit(block, i) for i in range(4)]
    await until(lambda: running["n"] == 2)
    await settle()
    assert running["n"] == 2 and ex.threads == 2  # bounded
    ex.abandon(works[0])  # too slow: another thread may serve the queue
    await until(lambda: running["n"] == 3)
    ex.abandon(works[1])
    await settle()
    assert ex.threads == 3 and running["n"] == 3  # max_threads caps even abandoned ones
    release.set()
    await until(lambda: all(w.future.done() for w in works))
    ex.shutdown()


async def test_run_watched_reports_slow_calls_once_and_returns_the_result() -> None:
    ex = CallbackExecutor(max_workers=1, name="t-slow")
    clock = ManualClock()
    release = threading.Event()
    slow: list[int] = []

    def work(x: int) -> int:
        release.wait(30)
        return x * 2

    task = asyncio.ensure_future(
        run_watched(work, 21, executor=ex, clock=clock, watch=3.0, on_slow=lambda: slow.append(1))
    )
    await settle()
    await clock.advance(2.9)
    assert slow == []
    await clock.advance(0.2)
    assert slow == [1] and not task.done()  # not interrupted
    release.set()
    assert await task == 42
    ex.shutdown()


async def test_run_watched_cancels_a_slow_coroutine_when_asked() -> None:
    clock = ManualClock()
    cancelled = asyncio.Event()

    async def hang(_: object) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(
        run_watched(
            hang,
            None,
            executor=CallbackExecutor(),
            clock=clock,
            watch=1.0,
            cancel_after_watch=True,
        )
    )
    await settle()
    await clock.advance(1.0)
    with pytest.raises(TimeoutError):
        await task
    assert cancelled.is_set()


async def test_exceptions_of_sync_callbacks_reach_the_caller_and_shutdown_cancels_queued() -> None:
    ex = CallbackExecutor(max_workers=1, name="t-exc")
    clock = ManualClock()

    def boom(_: object) -> None:
        raise ValueError("from the callback")

    with pytest.raises(ValueError, match="from the callback"):
        await run_watched(boom, None, executor=ex, clock=clock, watch=None)
    release = threading.Event()
    first = ex.submit(lambda _: release.wait(30), None)
    queued = ex.submit(lambda _: None, None)
    await until(first.future.running)
    ex.shutdown()
    assert queued.future.cancelled()
    release.set()
    with pytest.raises(RuntimeError, match="shut down"):
        ex.submit(lambda _: None, None)
