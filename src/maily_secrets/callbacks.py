"""Running user callbacks so that none of them can hold the process hostage.

Plain-function callbacks (secret listeners, lease listeners) run on a
:class:`CallbackExecutor`: a small pool of **daemon** threads of our own, not the
loop's default executor. The default executor (``asyncio.to_thread``) has
``min(32, cores + 4)`` threads shared with aiohttp's resolver, and its threads are
joined when ``asyncio.run()`` ends and at interpreter exit, so one callback that
blocks forever would hang the process on exit. Daemon threads are not joined.

The pool is bounded (``max_workers``), but a call that has run longer than its
watch time is *abandoned*: its thread no longer counts against the bound, so a
replacement can serve the others (up to ``max_threads`` threads in all, which
bounds what a flood of stuck callbacks can cost). :func:`run_watched` is the
asyncio side: it runs a callback (thread or coroutine), waits for it, and after
``watch`` seconds of the given clock calls ``on_slow`` once and abandons the
thread — it keeps waiting, so one callback still sees its values in order.

No value passed to a callback appears in any ``repr`` here.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from .clock import Clock

log = logging.getLogger("maily_secrets.callbacks")

#: A sync callback that has run this long (no timeout of its own given) stops
#: counting against the pool's bound, so that it cannot starve the others.
STUCK_AFTER = 5.0


class _Work:
    """One call waiting for or running on a worker thread (the argument is not shown)."""

    __slots__ = ("abandoned", "arg", "fn", "future")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn = fn
        self.arg = arg
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.abandoned = False

    def __repr__(self) -> str:
        return f"<_Work {callback_name(self.fn)} abandoned={self.abandoned}>"


class CallbackExecutor:
    """A bounded pool of daemon threads that never delays process exit.

    Threads start on demand (none at construction) and the idle ones beyond
    ``max_workers`` leave. :meth:`shutdown` never joins a thread.
    """

    _ids = itertools.count(1)

    def __init__(
        self, max_workers: int = 4, max_threads: int = 32, name: str = "maily-callback"
    ) -> None:
        if max_workers < 1 or max_threads < max_workers:
            raise ValueError("need 1 <= max_workers <= max_threads")
        self.max_workers = max_workers
        self.max_threads = max_threads
        self.name = name
        self._cond = threading.Condition()
        self._queue: collections.deque[_Work] = collections.deque()
        self._threads = 0  # live worker threads
        self._idle = 0  # of which waiting for work
        self._abandoned = 0  # of which running an abandoned call
        self._closed = False
        self._warned_full = False

    def __repr__(self) -> str:
        return (
            f"CallbackExecutor(name={self.name!r}, threads={self._threads},"
            f" idle={self._idle}, abandoned={self._abandoned}, queued={len(self._queue)})"
        )

    @property
    def threads(self) -> int:
        return self._threads

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> _Work:
        work = _Work(fn, arg)
        with self._cond:
            if self._closed:
                raise RuntimeError("callback executor is shut down")
            self._queue.append(work)
            self._spawn_if_needed()
            self._cond.notify()
        return work

    def abandon(self, work: _Work) -> None:
        """``work`` runs too long: let another thread serve the queue meanwhile."""
        with self._cond:
            if work.abandoned or work.future.done():
                return
            work.abandoned = True
            if work.future.running():
                self._abandoned += 1
            self._spawn_if_needed()

    def shutdown(self) -> None:
        """Idle threads leave; busy ones leave when their call returns (never joined)."""
        with self._cond:
            self._closed = True
            while self._queue:
                self._queue.popleft().future.cancel()
            self._cond.notify_all()

    # --- internals (hold self._cond)
    def _spawn_if_needed(self) -> None:
        if not self._queue or self._idle >= len(self._queue):
            return
        counted = self._threads - self._abandoned
        if counted >= self.max_workers:
            return
        if self._threads >= self.max_threads:
            if not self._warned_full:
                self._warned_full = True
                log.warning(
                    "%s: all %d callback threads are busy; callbacks wait",
                    self.name,
                    self._threads,
                    extra={"threads": self._threads},
                )
            return
        self._threads += 1
        t = threading.Thread(
            target=self._worker, name=f"{self.name}-{next(self._ids)}", daemon=True
        )
        t.start()

    def _worker(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._queue and not self._closed:
                    if not self._cond.wait(timeout=30.0) and not self._queue:
                        # idle for long: leave if the pool is above its bound
                        if self._threads - self._abandoned > self.max_workers:
                            break
                self._idle -= 1
                if not self._queue:  # closed, or surplus
                    self._threads -= 1
                    return
                work = self._queue.popleft()
                if not work.future.set_running_or_notify_cancel():
                    continue
                if work.abandoned:  # abandoned while queued: it counts as soon as it runs
                    self._abandoned += 1
            try:
                result = work.fn(work.arg)
            except BaseException as exc:  # handed to the waiting side, whatever it is
                work.future.set_exception(exc)
            else:
                work.future.set_result(result)
            finally:
                work.arg = None  # do not keep the value alive in an idle thread
                with self._cond:
                    if work.abandoned:
                        self._abandoned -= 1


def callback_name(cb: Any) -> str:
    return str(getattr(cb, "__qualname__", None) or type(cb).__name__)


def is_async_callable(cb: Any) -> bool:
    return inspect.iscoroutinefunction(cb) or inspect.iscoroutinefunction(
        getattr(cb, "__call__", None)  # noqa: B004 - async callable objects
    )


async def run_watched(
    callback: Callable[[Any], Any],
    arg: Any,
    *,
    executor: CallbackExecutor,
    clock: Clock,
    watch: float | None,
    on_slow: Callable[[], None] | None = None,
    is_async: bool | None = None,
    cancel_after_watch: bool = False,
) -> Any:
    """Call ``callback(arg)``: a coroutine function in the loop, a function on ``executor``.

    After ``watch`` seconds of ``clock`` without a result, ``on_slow()`` is called
    once and the thread is abandoned (not counted against the pool's bound). We
    then keep waiting, unless ``cancel_after_watch``: an async callback is then
    cancelled and :class:`TimeoutError` raised; a thread cannot be cancelled, so
    for a sync one the wait stops (TimeoutError) and the thread runs on abandoned.
    An awaitable returned by a plain function is awaited in the loop.
    """
    loop = asyncio.get_running_loop()
    if is_async is None:
        is_async = is_async_callable(callback)
    work: _Work | None = None
    fut: asyncio.Future[Any]
    if is_async:
        fut = asyncio.ensure_future(callback(arg))
    else:
        work = executor.submit(callback, arg)
        fut = asyncio.wrap_future(work.future, loop=loop)
    timer: asyncio.Task[None] | None = None
    try:
        if watch is not None:
            timer = loop.create_task(clock.sleep(watch))
            await asyncio.wait({fut, timer}, return_when=asyncio.FIRST_COMPLETED)
            if not fut.done():
                if work is not None:
                    executor.abandon(work)
                if on_slow is not None:
                    on_slow()
                if cancel_after_watch:
                    fut.cancel()  # a running thread is not stopped by this
                    raise TimeoutError(f"callback ran longer than {watch}s")
        result = await fut
    finally:
        if timer is not None:
            timer.cancel()
        if not fut.done():
            fut.cancel()
    if inspect.isawaitable(result):
        result = await result
    return result
