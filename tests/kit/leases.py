"""Recording a ``LeaseContainer``'s events.

events = LeaseEvents()
container.subscribe(events)          # or LeaseContainer(..., listener=events)
await events.wait("renewed", within=5)
events.kinds(), events.count("expired"), events.of("rotated")
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from maily_secrets.leases import LeaseEvent


class LeaseEvents:
    """Collects lease events in order; ``wait`` polls with a deadline."""

    def __init__(self) -> None:
        self.events: list[LeaseEvent[Any]] = []

    def __call__(self, event: LeaseEvent[Any]) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[LeaseEvent[Any]]:
        return [e for e in self.events if e.kind == kind]

    def count(self, kind: str) -> int:
        return len(self.of(kind))

    async def wait(self, kind: str, within: float, count: int = 1) -> list[LeaseEvent[Any]]:
        deadline = time.monotonic() + within
        while len(self.of(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind!r} event within {within}s: {self.kinds()}")
            await asyncio.sleep(0.05)
        return self.of(kind)
