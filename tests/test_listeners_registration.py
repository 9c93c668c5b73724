"""Registering listeners: no lock held across the network, one baseline read per path.

A registration claims its path, reads the baseline under no lock, and publishes the
watcher; concurrent registrations of one path share that read. Against a real OpenBao,
a registration's baseline read is held at a gate (the real request is sent once the
gate opens) to show what does and does not wait for it. The last tests drive the
registry's logic alone through an injected source (no Vault), on a ManualClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from maily_secrets.cache import Entry, SecretCache
from maily_secrets.clock import ManualClock, settle
from maily_secrets.errors import PermissionDenied
from maily_secrets.listeners import ListenerRegistry
from maily_secrets.paths import KV2Path
from maily_secrets.service import VaultService
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive, until
from .kit.listeners import new_secret, service
from .test_listeners import barrier, polls


def gate_baseline(svc: VaultService, path: str) -> tuple[asyncio.Event, list[str]]:
    """Hold every metadata read of ``path`` until the returned event is set; the list
    records each metadata read the service asks for (its path), gated or not."""
    real = svc.current_version
    gate = asyncio.Event()
    asked: list[str] = []

    async def gated(kv: KV2Path) -> int:
        asked.append(kv.data)
        if kv.data == path:
            await gate.wait()
        return await real(kv)

    svc.current_version = gated  # type: ignore[method-assign]
    return gate, asked


async def test_a_registration_waiting_on_the_network_blocks_no_other_registration_or_unregister(
    bao: Bao, root: VaultClient
) -> None:
    slow, other, kept = [await new_secret(root, {"v": 0}) for _ in range(3)]
    clock = ManualClock()
    svc = service(bao, clock)
    got: dict[str, list[Any]] = {slow: [], other: [], kept: []}
    try:
        kept_sub = await svc.register_secret_listener(kept, got[kept].append)
        await svc.register_secret_listener(kept, got[kept].append)
        gate, asked = gate_baseline(svc, slow)
        pending = asyncio.create_task(svc.register_secret_listener(slow, got[slow].append))
        await until(lambda: slow in asked, what="the slow registration's read")
        # While that read waits on the network: another path registers, one unregisters.
        await asyncio.wait_for(svc.register_secret_listener(other, got[other].append), 10)
        assert await asyncio.wait_for(svc.unregister_secret_listener(kept, got[kept].append), 10)
        await asyncio.wait_for(kept_sub.cancel(), 10)
        assert kept not in svc._listeners.watchers
        assert not pending.done() and slow not in svc._listeners.watchers
        await root.kv.write(other, {"v": 1}, cas=1)
        await drive(clock, lambda: got[other] == [{"v": 1}], what="the other path's callback")
        gate.set()
        await asyncio.wait_for(pending, 10)
        await root.kv.write(slow, {"v": 1}, cas=1)  # after registration: a change
        await drive(clock, lambda: got[slow] == [{"v": 1}], what="the slow path's callback")
        assert got[kept] == []
    finally:
        await svc.close()


async def test_concurrent_registrations_of_one_path_read_once_and_all_fire(
    bao: Bao, root: VaultClient
) -> None:
    path = await new_secret(root, {"v": 0})
    name = path.split("/", 2)[2]
    clock = ManualClock()
    svc = service(bao, clock)
    got: list[list[Any]] = [[] for _ in range(5)]

    def sink(i: int) -> Callable[[dict[str, Any]], None]:
        return got[i].append

    try:
        gate, asked = gate_baseline(svc, path)
        first = asyncio.create_task(svc.register_secret_listener(path, sink(0)))
        await until(lambda: asked == [path], what="the first registration's read")
        rest = [asyncio.create_task(svc.register_secret_listener(path, sink(i))) for i in (1, 2)]

        async def async_sink(value: dict[str, Any]) -> None:
            got[3].append(value)

        rest.append(asyncio.create_task(svc.register_secret_listener(path, async_sink)))
        await settle()
        assert not any(t.done() for t in (first, *rest))  # they wait for that one read
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        await svc.register_secret_listener(path, sink(4))  # watched already: no read
        assert asked == [path]  # one baseline read for five registrations
        watcher = svc._listeners.watchers[path]
        assert len(watcher.runners) == 5
        await polls(clock, 2, watcher)
        assert got == [[]] * 5  # registering does not fire
        await root.kv.write(path, {"v": 1}, cas=1)
        await drive(clock, lambda: all(g == [{"v": 1}] for g in got), what="all five callbacks")
        await polls(clock, 3, watcher)
        assert all(g == [{"v": 1}] for g in got)  # once each
    finally:
        await svc.close()
    await barrier(bao, root)
    # on the server: the one baseline read and one per poll, nothing else
    assert bao.audit_requests(f"maily/metadata/{name}") == watcher.polls + 1


# ---------------------------------------------------------------------------- the logic alone
class FakeSource:
    """A ``SecretSource`` of KV v2 versions held in memory; reads can be held at a gate."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.cache = SecretCache(60.0, 3600.0, clock=clock)
        self.versions: dict[str, int] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.errors: dict[str, Exception] = {}
        self.reads: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered = 0

    async def current_version(self, path: KV2Path) -> int:
        self.reads.append(path.data)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            gate = self.gates.get(path.data)
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(0)  # an answer takes a turn of the loop at least
            if path.data in self.errors:
                raise self.errors[path.data]
            return self.versions.get(path.data, 0)
        finally:
            self.in_flight -= 1
            self.answered += 1

    async def read_entry(self, path: str) -> Entry:
        return self.cache.entry({"v": self.versions[path]}, self.versions[path])

    async def read_data(self, path: str) -> dict[str, Any] | None:
        raise AssertionError("only KV v2 paths here")

    async def get_secret(self, path: str) -> dict[str, Any]:
        raise AssertionError("not used by listeners")


@pytest.fixture
def fake() -> tuple[FakeSource, ListenerRegistry]:
    source = FakeSource(ManualClock())
    return source, ListenerRegistry(source, interval=1.0, max_polls=3)


async def test_a_cancelled_registration_hands_its_path_to_the_one_waiting(
    fake: tuple[FakeSource, ListenerRegistry],
) -> None:
    source, registry = fake
    path = "maily/data/cancelled"
    source.gates[path] = asyncio.Event()
    try:
        first = asyncio.create_task(registry.register(path, lambda v: None))
        await until(lambda: source.reads == [path])
        second = asyncio.create_task(registry.register(path, lambda v: None))
        await settle()
        first.cancel()
        await settle()
        assert first.cancelled() and not second.done()
        assert source.reads == [path, path]  # the waiting one claimed the path and reads
        source.gates[path].set()
        sub = await asyncio.wait_for(second, 5)
        assert registry.watchers[path].runners == [sub._runner]
    finally:
        await registry.close()


async def test_a_refused_baseline_read_fails_every_registration_waiting_for_it(
    fake: tuple[FakeSource, ListenerRegistry],
) -> None:
    source, registry = fake
    path = "maily/data/forbidden"
    source.gates[path] = asyncio.Event()
    source.errors[path] = PermissionDenied("permission denied", path=path)
    try:
        tasks = [asyncio.create_task(registry.register(path, lambda v: None)) for _ in range(3)]
        await until(lambda: source.reads == [path])
        source.gates[path].set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, PermissionDenied) for r in results)
        assert source.reads == [path]  # one read answered all three
        assert path not in registry.watchers and not registry._starting
    finally:
        await registry.close()


async def test_closing_during_a_registration_starts_no_watcher(
    fake: tuple[FakeSource, ListenerRegistry],
) -> None:
    source, registry = fake
    path = "maily/data/closing"
    source.gates[path] = asyncio.Event()
    pending = asyncio.create_task(registry.register(path, lambda v: None))
    await until(lambda: source.reads == [path])
    await registry.close()
    source.gates[path].set()
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(pending, 5)
    assert not registry.watchers and source.clock.sleepers == 0  # nothing polls


async def test_polls_of_many_paths_share_a_few_slots_and_one_while_registering(
    fake: tuple[FakeSource, ListenerRegistry],
) -> None:
    source, registry = fake
    clock = source.clock
    paths = [f"maily/data/p{i}" for i in range(30)]
    try:
        await asyncio.gather(*(registry.register(p, lambda v: None) for p in paths))
        assert source.most_in_flight <= registry.max_reads
        watchers = [registry.watchers[p] for p in paths]
        # every poll due at once; each answer is held until we let it through
        for p in paths:
            source.gates[p] = asyncio.Event()
        source.most_in_flight = 0
        await clock.advance(1.2)  # past the +10% jitter: all 30 are due
        await until(lambda: source.in_flight == registry.max_polls, what="polls in flight")
        await settle()
        assert source.in_flight == registry.max_polls  # the others queue in the registry
        # a registration reading its baseline now: polls go on, one at a time
        late = "maily/data/late"
        source.gates[late] = asyncio.Event()
        registering = asyncio.create_task(registry.register(late, lambda v: None))
        await until(lambda: late in source.reads, what="the late registration's read")
        answered = source.answered
        for p in paths:
            source.gates[p].set()
        # the polls that were in flight before the registration began finish ...
        await until(lambda: source.answered >= answered + registry.max_polls)
        source.most_in_flight = source.in_flight  # ... and from now on:
        await until(lambda: all(w.polls >= 1 for w in watchers), what="every poll")
        assert source.most_in_flight <= 2  # one poll and the registration's read
        assert not registering.done()
        source.gates[late].set()
        await asyncio.wait_for(registering, 5)
        # registered: the polls have their slots back
        for p in paths:
            source.gates[p].clear()
        source.most_in_flight = 0
        await clock.advance(1.2)
        await until(lambda: source.in_flight == registry.max_polls, what="polls in flight")
        for p in paths:
            source.gates[p].set()
    finally:
        await registry.close()
