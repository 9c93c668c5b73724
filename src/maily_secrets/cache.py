"""In-memory secret cache: TTL, single-flight loads, stale-if-error, copy-out.

The cache never hands out the object it stores: every caller gets its own copy,
so mutating a returned dict cannot change what the next caller sees.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

CacheStatus = Literal["hit", "miss", "stale", "snapshot"]
_SCALARS = (str, int, float, bool, type(None))
_monotonic = time.monotonic


def json_copy(value: Any) -> Any:
    """Deep copy of a JSON value (dict/list/scalars); much faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value


@dataclass(slots=True)
class Entry:
    value: dict[str, Any]
    version: int | None
    fetched: float  # time.monotonic() of the fetch
    fetched_wall: float  # time.time() of the fetch, for snapshots
    flat: bool  # every value is a scalar: a shallow copy is a full copy

    @classmethod
    def make(
        cls, value: dict[str, Any], version: int | None, fetched_wall: float | None = None
    ) -> Entry:
        now_wall = time.time()
        wall = now_wall if fetched_wall is None else fetched_wall
        return cls(
            value=value,
            version=version,
            fetched=time.monotonic() - max(0.0, now_wall - wall),
            fetched_wall=wall,
            flat=all(isinstance(v, _SCALARS) for v in value.values()),
        )

    def copy_out(self) -> dict[str, Any]:
        return dict(self.value) if self.flat else json_copy(self.value)

    def age(self) -> float:
        return time.monotonic() - self.fetched


class SecretCache:
    """Per-path entries with one TTL; concurrent misses share one load."""

    def __init__(self, ttl: float, max_staleness: float) -> None:
        self.ttl = ttl
        self.max_staleness = max_staleness
        self._entries: dict[str, Entry] = {}
        self._inflight: dict[str, asyncio.Task[Entry]] = {}

    def fresh(self, path: str) -> Entry | None:
        e = self._entries.get(path)
        if e is not None and _monotonic() - e.fetched < self.ttl:
            return e
        return None

    def usable_stale(self, path: str) -> Entry | None:
        e = self._entries.get(path)
        if e is not None and e.age() <= self.max_staleness:
            return e
        return None

    def put(self, path: str, entry: Entry) -> None:
        self._entries[path] = entry

    def peek(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def invalidate(self, path: str | None = None) -> None:
        if path is None:
            self._entries.clear()
        else:
            self._entries.pop(path, None)

    def items(self) -> list[tuple[str, Entry]]:
        return list(self._entries.items())

    async def load(self, path: str, loader: Callable[[], Awaitable[Entry]]) -> Entry:
        """Run ``loader`` once for all concurrent callers of ``path``; store the result.

        The load runs in its own task: a caller that is cancelled (a request timing
        out) does not cancel the load for the others.
        """
        task = self._inflight.get(path)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._run(path, loader))
            task.add_done_callback(_retrieve)
            self._inflight[path] = task
        return await asyncio.shield(task)

    async def _run(self, path: str, loader: Callable[[], Awaitable[Entry]]) -> Entry:
        try:
            entry = await loader()
            self._entries[path] = entry
            return entry
        finally:
            self._inflight.pop(path, None)


def _retrieve(task: asyncio.Task[Entry]) -> None:
    """Mark the outcome as seen, so that a load nobody waits for any more logs no warning."""
    if not task.cancelled():
        task.exception()
