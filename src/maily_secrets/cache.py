"""In-memory secret cache: TTL, single-flight loads, stale-if-error, copy-out.

The cache never hands out the object it stores: every caller gets its own copy,
so mutating a returned dict cannot change what the next caller sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .clock import SYSTEM_CLOCK, Clock

CacheStatus = Literal["hit", "miss", "stale", "snapshot"]
_SCALARS = (str, int, float, bool, type(None))


def json_copy(value: Any) -> Any:
    """Deep copy of a JSON value (dict/list/scalars); much faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value


@dataclass(slots=True)
class Entry:
    value: dict[str, Any] = field(repr=False)  # the secret: never shown
    version: int | None
    fetched: float  # the clock's monotonic() of the fetch
    fetched_wall: float  # the clock's time() of the fetch, for snapshots
    flat: bool  # every value is a scalar: a shallow copy is a full copy
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False, compare=False)
    # When Vault created this version: a Unix time, or Vault's RFC 3339 ``created_time``
    # as it came, parsed only when someone asks (:attr:`created`; most entries never are).
    created_at: float | str | None = None

    @classmethod
    def make(
        cls,
        value: dict[str, Any],
        version: int | None,
        fetched_wall: float | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        created: float | str | None = None,
    ) -> Entry:
        now_wall = clock.time()
        if fetched_wall is None:  # fetched now: the common case, a miss
            wall, fetched = now_wall, clock.monotonic()
        else:
            wall = fetched_wall
            fetched = clock.monotonic() - max(0.0, now_wall - wall)
        return cls(value, version, fetched, wall, _flat(value), clock, created)

    @property
    def created(self) -> float | None:
        """The wall time Vault created this version (``None``: unknown), for the change
        lag metric."""
        c = self.created_at
        if isinstance(c, str):
            c = self.created_at = _wall(c)
        return c

    def copy_out(self) -> dict[str, Any]:
        return dict(self.value) if self.flat else json_copy(self.value)

    def age(self) -> float:
        return self.clock.monotonic() - self.fetched


def _wall(created_time: str) -> float | None:
    """Vault's RFC 3339 ``created_time`` as a Unix time (``None`` when absent or odd)."""
    if not created_time:
        return None
    try:
        return datetime.fromisoformat(created_time).timestamp()
    except ValueError:
        return None


def _flat(value: dict[str, Any]) -> bool:
    for v in value.values():
        if not isinstance(v, _SCALARS):
            return False
    return True


def newer_or_same(new: Entry, current: Entry | None) -> bool:
    """The cache's one rule: an entry is replaced only by the same or a newer version.

    Entries without a version (paths that are not KV v2) replace each other.
    """
    if current is None or new.version is None or current.version is None:
        return True
    return new.version >= current.version


class SecretCache:
    """Per-path entries with one TTL; concurrent misses share one load.

    It never goes back in time: :meth:`put` refuses an entry older than the one it
    holds, so a load that started before a write cannot overwrite the write's newer
    entry (whoever stores it: a load, a write, a watcher), and :meth:`invalidate`
    during an in-flight load is honoured: that load's result is not stored, and the
    next caller starts a new load instead of joining the old one.
    """

    def __init__(self, ttl: float, max_staleness: float, *, clock: Clock | None = None) -> None:
        self.ttl = ttl
        self.max_staleness = max_staleness
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._now = self.clock.monotonic  # bound once: fresh() is the hot path
        self._entries: dict[str, Entry] = {}
        self._inflight: dict[str, _Flight] = {}
        self._handovers: set[asyncio.Task[None]] = set()
        self._generation: dict[str, int] = {}
        self._epoch = 0  # bumped by invalidate() of everything

    def entry(
        self, value: dict[str, Any], version: int | None, *, created: float | str | None = None
    ) -> Entry:
        """A new entry fetched now, on this cache's clock (``created``: the version's
        creation as wall time or Vault's ``created_time``, when Vault said)."""
        clock = self.clock
        return Entry(value, version, self._now(), clock.time(), _flat(value), clock, created)

    def fresh(self, path: str) -> Entry | None:
        e = self._entries.get(path)
        if e is not None and self._now() - e.fetched < self.ttl:
            return e
        return None

    def usable_stale(self, path: str) -> Entry | None:
        e = self._entries.get(path)
        if e is not None and e.age() <= self.max_staleness:
            return e
        return None

    def put(self, path: str, entry: Entry) -> bool:
        """Store ``entry`` unless the cache holds a newer version; True if stored."""
        if not newer_or_same(entry, self._entries.get(path)):
            return False
        self._entries[path] = entry
        return True

    def peek(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def invalidate(self, path: str | None = None) -> None:
        if path is None:
            self._entries.clear()
            self._inflight.clear()
            self._epoch += 1
        else:
            self._entries.pop(path, None)
            self._inflight.pop(path, None)
            self._generation[path] = self._generation.get(path, 0) + 1

    def items(self) -> list[tuple[str, Entry]]:
        return list(self._entries.items())

    def _stamp(self, path: str) -> tuple[int, int]:
        return self._epoch, self._generation.get(path, 0)

    async def load(self, path: str, loader: Callable[[], Awaitable[Entry]]) -> Entry:
        """Run ``loader`` once for all concurrent callers of ``path``; store the result.

        The first caller runs the load itself (no task, no shield: a miss nobody else
        waits for costs what the request costs); later callers wait on a future of
        their own, so a waiter that is cancelled cancels nobody else. A first caller
        that is cancelled (a request timing out) while others wait hands the load to
        a task that loads again for them: they are neither cancelled nor left waiting.
        Callers get the newest entry the cache knows when the load ends (a write may
        have landed meanwhile).
        """
        loop = asyncio.get_running_loop()
        flight = self._inflight.get(path)
        if flight is not None and flight.loop is loop:
            waiter: asyncio.Future[Entry] = loop.create_future()
            flight.waiters.append(waiter)
            return await waiter
        stamp = self._epoch, self._generation.get(path, 0)  # (_stamp, inlined: hot path)
        flight = _Flight(loop, stamp, asyncio.current_task(loop))
        self._inflight[path] = flight
        try:
            entry = await loader()
        except Exception as exc:
            self._land(path, flight)
            for w in flight.waiters:
                if not w.done():
                    w.set_exception(exc)
            raise
        except BaseException:  # cancelled: the waiters, if any, are not
            self._hand_over(path, flight, loader)
            raise
        return self._settle(path, flight, entry)

    def _settle(self, path: str, flight: _Flight, entry: Entry) -> Entry:
        """Store a finished load's entry (unless invalidated meanwhile) and answer its
        waiters with what the cache holds now."""
        if self._inflight.get(path) is flight:  # (_land, inlined: the hot path)
            del self._inflight[path]
        if (self._epoch, self._generation.get(path, 0)) == flight.stamp and not self.put(
            path, entry
        ):
            entry = self._entries[path]  # a newer version arrived while we loaded
        for w in flight.waiters:
            if not w.done():
                w.set_result(entry)
        return entry

    def _land(self, path: str, flight: _Flight) -> None:
        if self._inflight.get(path) is flight:
            del self._inflight[path]

    def _hand_over(
        self, path: str, flight: _Flight, loader: Callable[[], Awaitable[Entry]]
    ) -> None:
        """The first caller of a load was cancelled: if others wait, load again for them
        in a task (a read is safe to send twice); else drop the flight."""
        if not any(not w.done() for w in flight.waiters):
            self._land(path, flight)
            return
        task = flight.loop.create_task(self._drive(path, flight, loader))
        flight.driver = task
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    async def _drive(
        self, path: str, flight: _Flight, loader: Callable[[], Awaitable[Entry]]
    ) -> None:
        try:
            entry = await loader()
        except BaseException as exc:
            self._land(path, flight)
            for w in flight.waiters:
                if w.done():
                    continue
                if isinstance(exc, Exception):
                    w.set_exception(exc)
                else:
                    w.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        self._settle(path, flight, entry)

    async def close(self) -> None:
        """Cancel the loads in flight (their callers get CancelledError)."""
        flights = list(self._inflight.values())
        self._inflight.clear()
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        for f in flights:
            if f.loop is not loop:
                continue
            for w in f.waiters:
                w.cancel()
            if f.driver is not None and f.driver is not me and not f.driver.done():
                f.driver.cancel()
        mine = [t for t in self._handovers if t.get_loop() is loop and not t.done()]
        for t in mine:
            t.cancel()
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
        else:
            await asyncio.sleep(0)  # the cancelled callers see it before the pool closes


class _Flight:
    """One load in flight: who drives it (the first caller's task, or a hand-over task)
    and the futures of the callers that joined it."""

    __slots__ = ("driver", "loop", "stamp", "waiters")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stamp: tuple[int, int],
        driver: asyncio.Task[Any] | None,
    ) -> None:
        self.loop = loop
        self.stamp = stamp
        self.driver = driver
        self.waiters: list[asyncio.Future[Entry]] = []
