"""Helpers for tests that drive background loops with a ManualClock against a real OpenBao.

Nothing here sleeps for real time: the loops sleep on the injected clock and the
helpers advance it; between steps they only yield to the event loop so that real
I/O (requests to the real server) and callback threads can complete, with a
real-time bound so that a broken loop fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from maily_secrets.clock import ManualClock


async def until(pred: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    """Yield to the loop (no sleeping) until ``pred()``; fail after ``within`` real seconds."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within}s")
        await asyncio.sleep(0)


async def drive(
    clock: ManualClock, done: Callable[[], bool], within: float = 60.0, what: str = "condition"
) -> int:
    """Advance ``clock`` to each next deadline until ``done()``; returns the steps taken.

    When nobody sleeps on the clock (a request or a callback is in flight) it only
    yields, so the clock never runs ahead of work that has not reached its sleep.
    """
    deadline = time.monotonic() + within
    steps = 0
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within}s ({steps} clock steps)")
        nxt = clock.next_deadline()
        if nxt is None:
            await asyncio.sleep(0)
            continue
        await clock.advance(max(0.0, nxt - clock.monotonic()))
        steps += 1
    return steps
