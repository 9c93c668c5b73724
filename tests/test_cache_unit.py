"""Pure logic: the cache's single-flight load, with loaders of our own (no server needed).

The same behaviours against a real OpenBao: tests/test_service.py (single flight, a
cancelled caller) and tests/test_core_faults.py (a load racing a write, invalidate, close).
"""

from __future__ import annotations

import asyncio

import pytest

from maily_secrets.cache import Entry, SecretCache
from maily_secrets.clock import ManualClock


class Loader:
    """A loader that blocks until released; counts its calls and the tasks it ran in."""

    def __init__(self, cache: SecretCache, value: str = "v", version: int = 1) -> None:
        self.cache = cache
        self.value, self.version = value, version
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.tasks: list[asyncio.Task[object] | None] = []

    async def __call__(self) -> Entry:
        self.calls += 1
        self.tasks.append(asyncio.current_task())
        self.started.set()
        await self.release.wait()
        return self.cache.entry({"k": self.value}, self.version)


def cache() -> SecretCache:
    return SecretCache(ttl=60, max_staleness=3600, clock=ManualClock())


async def test_a_lone_miss_runs_its_load_in_the_callers_task() -> None:
    c = cache()
    load = Loader(c)
    load.release.set()
    before = len(asyncio.all_tasks())
    entry = await c.load("p", load)
    assert entry.value == {"k": "v"}
    assert load.tasks == [asyncio.current_task()]  # no task, no shield of its own
    assert len(asyncio.all_tasks()) == before
    assert c.peek("p") is entry


async def test_concurrent_misses_of_one_path_share_one_load() -> None:
    c = cache()
    load = Loader(c)
    callers = [asyncio.create_task(c.load("p", load)) for _ in range(10)]
    await load.started.wait()
    load.release.set()
    entries = await asyncio.gather(*callers)
    assert load.calls == 1
    assert all(e is entries[0] for e in entries)


async def test_a_cancelled_first_caller_hands_the_load_to_the_others() -> None:
    c = cache()
    load = Loader(c)
    first = asyncio.create_task(c.load("p", load))
    await load.started.wait()
    others = [asyncio.create_task(c.load("p", load)) for _ in range(3)]
    await asyncio.sleep(0)  # they joined the flight
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    load.release.set()
    entries = await asyncio.gather(*others)
    assert [e.value for e in entries] == [{"k": "v"}] * 3
    assert load.calls == 2  # the first caller's request died with it: loaded again
    assert load.tasks[1] not in (first, *others)  # by a task of the cache's, not a caller
    assert c.peek("p") is entries[0]
    assert not c._inflight and not c._handovers  # nothing left behind


async def test_a_cancelled_lone_caller_leaves_no_load_behind() -> None:
    c = cache()
    load = Loader(c)
    first = asyncio.create_task(c.load("p", load))
    await load.started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not c._inflight and not c._handovers
    assert c.peek("p") is None
    load.release.set()
    assert (await c.load("p", load)).value == {"k": "v"}  # the next caller loads anew
    assert load.calls == 2


async def test_a_cancelled_waiter_cancels_nobody_else() -> None:
    c = cache()
    load = Loader(c)
    first = asyncio.create_task(c.load("p", load))
    await load.started.wait()
    quitter = asyncio.create_task(c.load("p", load))
    stayer = asyncio.create_task(c.load("p", load))
    await asyncio.sleep(0)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    load.release.set()
    assert (await first).value == (await stayer).value == {"k": "v"}
    assert load.calls == 1


async def test_a_failed_load_fails_every_caller_and_is_not_kept() -> None:
    c = cache()
    gate = asyncio.Event()
    calls = 0

    async def failing() -> Entry:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("vault said no")

    callers = [asyncio.create_task(c.load("p", failing)) for _ in range(4)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert not c._inflight and c.peek("p") is None


async def test_a_load_racing_a_newer_write_gives_everyone_the_write() -> None:
    c = cache()
    load = Loader(c, value="old", version=1)
    callers = [asyncio.create_task(c.load("p", load)) for _ in range(3)]
    await load.started.wait()
    assert c.put("p", c.entry({"k": "new"}, 2))  # a write lands while we load version 1
    load.release.set()
    entries = await asyncio.gather(*callers)
    assert [e.value for e in entries] == [{"k": "new"}] * 3
    e = c.peek("p")
    assert e is not None and e.version == 2  # the older load did not overwrite it


async def test_invalidate_during_a_load_stores_nothing_and_starts_afresh() -> None:
    c = cache()
    old = Loader(c, value="old")
    first = asyncio.create_task(c.load("p", old))
    await old.started.wait()
    waiter = asyncio.create_task(c.load("p", old))
    await asyncio.sleep(0)
    c.invalidate("p")
    new = Loader(c, value="new", version=2)
    new.release.set()
    assert (await c.load("p", new)).value == {"k": "new"}  # did not join the old load
    old.release.set()
    assert (await first).value == (await waiter).value == {"k": "old"}
    e = c.peek("p")
    assert e is not None and e.value == {"k": "new"}


async def test_close_cancels_the_first_caller_and_the_waiters() -> None:
    c = cache()
    load = Loader(c)
    first = asyncio.create_task(c.load("p", load))
    await load.started.wait()
    waiter = asyncio.create_task(c.load("p", load))
    await asyncio.sleep(0)
    await c.close()
    for t in (first, waiter):
        with pytest.raises(asyncio.CancelledError):
            await t
    assert load.calls == 1  # no hand-over after close
    assert not c._inflight and not c._handovers


async def test_close_cancels_a_handed_over_load() -> None:
    c = cache()
    load = Loader(c)
    first = asyncio.create_task(c.load("p", load))
    await load.started.wait()
    waiter = asyncio.create_task(c.load("p", load))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(c._handovers) == 1
    await c.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not c._handovers


async def test_a_flight_of_another_event_loop_is_not_joined() -> None:
    c = cache()
    load = Loader(c)
    first = asyncio.create_task(c.load("p", load))
    await load.started.wait()

    def other_loop() -> Entry:
        async def read() -> Entry:
            async def quick() -> Entry:
                return c.entry({"k": "other"}, 1)

            return await c.load("p", quick)

        return asyncio.run(read())

    assert (await asyncio.to_thread(other_loop)).value == {"k": "other"}
    load.release.set()
    assert (await first).value == {"k": "v"}


def test_an_entrys_created_time_is_vaults_rfc3339_text_as_a_unix_time() -> None:
    c = cache()
    e = c.entry({"k": "v"}, 3, created="2024-05-06T07:08:09.5Z")
    assert e.created == 1714979289.5
    assert e.created == 1714979289.5  # parsed once, kept
    assert c.entry({"k": "v"}, 3, created=1714979289.5).created == 1714979289.5


def test_an_entry_with_no_or_an_unparseable_created_time_has_none() -> None:
    c = cache()
    assert c.entry({"k": "v"}, 3).created is None
    assert c.entry({"k": "v"}, 3, created="not a time").created is None
