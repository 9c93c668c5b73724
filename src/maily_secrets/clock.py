"""Time, injectable: every TTL, expiry, due date, backoff and lock deadline asks a clock.

Production code takes a ``clock: Clock | None`` and uses :data:`SYSTEM_CLOCK` when
none is given. Tests pass a :class:`ManualClock` and move time with
``await clock.advance(seconds)``, so nothing waits on real time::

    clock = ManualClock()
    cache = SecretCache(ttl=60, max_staleness=3600, clock=clock)
    ...
    await clock.advance(61)      # the entry is now expired; no sleep happened

``ManualClock.sleep`` suspends until the clock is advanced past the deadline, so a
background loop that sleeps on the clock is driven step by step by the test.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What the library needs of time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for ages, TTLs, deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps that leave the process)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clocks: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that moves only when told to (for tests).

    ``monotonic()`` starts at ``start``; ``time()`` is ``wall_start`` plus the same
    elapsed seconds. ``sleep(s)`` returns once :meth:`advance` moved the clock to or
    past its deadline (``sleep(0)`` just yields). :meth:`advance` wakes sleepers in
    deadline order and lets each woken task run before it wakes the next one.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock right now."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking (and running) every sleeper due."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():  # the sleeper was cancelled
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await settle()
        self._now = target
        await settle()

    async def run_until_idle(self, limit: float = 3_600.0) -> None:
        """Advance to each next deadline until no task sleeps (or ``limit`` seconds passed)."""
        end = self._now + limit
        await settle()
        while (d := self.next_deadline()) is not None and d <= end:
            await self.advance(d - self._now)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:.3f}, sleepers={self.sleepers})"


async def settle(rounds: int = 20) -> None:
    """Let the tasks that are ready run (a few turns of the loop; no real time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def rfc3339(t: datetime, *, ms: bool = True) -> str:
    """``t`` in UTC as RFC 3339 with a ``Z``: ``2026-12-01T23:18:18.123Z`` (``ms=False``:
    whole seconds). The one timestamp format of the CLI's output and its JSON documents;
    a naive ``t`` is taken as UTC."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond // 1000:03d}Z" if ms else "Z")
