"""Wait for a background loop's progress, not for time (no sleeps in the rotation tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Ticker:
    """A background loop ticks once per round; a test waits for rounds or a condition."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def tick(self) -> None:
        self.count += 1
        self._event.set()

    async def until(self, done: Callable[[], bool], within: float = 30.0) -> None:
        while not done():
            self._event.clear()
            await asyncio.wait_for(self._event.wait(), within)

    async def rounds(self, n: int, within: float = 30.0) -> None:
        target = self.count + n
        await self.until(lambda: self.count >= target, within)
