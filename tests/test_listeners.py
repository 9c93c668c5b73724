"""Secret listeners against a real OpenBao: the guide's snippet, fan-out, isolation, outages.

Every watcher here sleeps on an injected ManualClock: a test moves time on and
counts polls instead of sleeping and hoping that enough of them happened.
"""

from __future__ import annotations

import ast
import asyncio
import threading
import uuid
from typing import Any

import pytest

from apps.api.services.vault_service import vault_service
from maily_secrets.clock import ManualClock, settle
from maily_secrets.listeners import _Watcher
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive, until
from .guide import code_blocks
from .kit.listeners import LISTENER_INTERVAL, new_secret, service
from .netfault import TcpProxy
from .secrecy import assert_same

FAST = LISTENER_INTERVAL  # seconds of the ManualClock between polls


async def polls(clock: ManualClock, n: int, *watchers: _Watcher) -> None:
    """Move the clock on until each watcher polled ``n`` more times (each poll finished)."""
    targets = [(w, w.polls + n) for w in watchers]
    await drive(clock, lambda: all(w.polls >= t for w, t in targets), what=f"{n} polls")

    def all_asleep() -> bool:  # no callback at work, so every sleeper is a watcher
        busy = any(r._task is not None and not r._task.done() for w in watchers for r in w.runners)
        return not busy and clock.sleepers >= len(watchers)

    await until(all_asleep, what="polls finished")
    await settle()


async def barrier(bao: Bao, root: VaultClient) -> None:
    """Every request sent so far is in the audit log (it is written in order)."""
    marker = f"maily/data/barrier-{uuid.uuid4().hex[:8]}"
    await root.kv.write(marker, {"x": 1}, cas=0)
    assert await bao.wait_audit(marker, 1) >= 1


async def test_guide_listener_snippet_verbatim(
    bao: Bao, root: VaultClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    (snippet,) = code_blocks("Registering a Secret Listener", "python")
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    monkeypatch.setenv("MAILY_SECRETS_LISTENER_INTERVAL", str(FAST))
    # the snippet's change is written around the service: seen at a full poll
    monkeypatch.setenv("MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL", str(FAST))
    clock = ManualClock()
    monkeypatch.setattr(vault_service, "clock", clock, raising=False)
    await vault_service.close()
    printed: list[str] = []
    # The snippet's callback prints the whole config; capture it instead of the terminal.
    ns: dict[str, Any] = {"__name__": "guide_listener", "print": printed.append}
    exec(compile(snippet, "guide:Registering a Secret Listener", "exec"), ns)  # noqa: S102
    try:
        await ns["setup"]()
        cur = await root.kv.read("maily/data/config")
        new = {**cur.data, "feature_flag": uuid.uuid4().hex}
        await root.kv.write("maily/data/config", new, cas=cur.version)
        await drive(clock, lambda: len(printed) == 1, what="the snippet's print")
        prefix = "Configuration updated: "
        assert printed[0].startswith(prefix)
        assert_same(ast.literal_eval(printed[0][len(prefix) :]), new, "printed config")
        await polls(clock, 5, vault_service._listeners.watchers["maily/data/config"])
        assert len(printed) == 1  # once per change
        assert_same(await vault_service.get_config(), new, "cached config")  # updated first
    finally:
        await vault_service.close()


async def test_sync_and_async_callbacks_fire_once_per_change(bao: Bao, root: VaultClient) -> None:
    path = await new_secret(root, {"v": 0})
    clock = ManualClock()
    svc = service(bao, clock)
    got_sync: list[dict[str, Any]] = []
    got_async: list[dict[str, Any]] = []
    seen_in_cache: list[int | None] = []

    def on_sync(value: dict[str, Any]) -> None:
        got_sync.append(value)

    async def on_async(value: dict[str, Any]) -> None:
        entry = svc.cache.peek(path)
        seen_in_cache.append(entry.version if entry else None)
        got_async.append(value)

    try:
        await svc.register_secret_listener(path, on_sync)
        await svc.register_secret_listener(path, on_async)
        watcher = svc._listeners.watchers[path]
        await polls(clock, 3, watcher)
        assert got_sync == got_async == []  # registering does not fire
        for v in (1, 2, 3):
            await root.kv.write(path, {"v": v}, cas=v)
            await drive(clock, lambda v=v: len(got_sync) == v and len(got_async) == v)
        await polls(clock, 3, watcher)
        assert got_sync == got_async == [{"v": 1}, {"v": 2}, {"v": 3}]
        assert seen_in_cache == [2, 3, 4]  # cache updated before each callback
        got_sync[0]["v"] = "mutated"  # each callback has its own copy
        assert got_async[0] == {"v": 1}
    finally:
        await svc.close()


async def test_hundred_callbacks_cost_no_more_requests_than_one(
    bao: Bao, root: VaultClient
) -> None:
    one, many = await new_secret(root, {"v": 0}), await new_secret(root, {"v": 0})
    clock = ManualClock()
    svc = service(bao, clock)
    calls = {"one": 0, "many": 0}
    lock = threading.Lock()

    def make(name: str) -> Any:
        def cb(value: dict[str, Any]) -> None:
            with lock:
                calls[name] += 1

        return cb

    try:
        await svc.register_secret_listener(one, make("one"))
        for _ in range(100):
            await svc.register_secret_listener(many, make("many"))
        assert len(svc._listeners.watchers) == 2
        w_one, w_many = svc._listeners.watchers[one], svc._listeners.watchers[many]
        for v in (1, 2, 3):
            await root.kv.write(one, {"v": v}, cas=v)
            await root.kv.write(many, {"v": v}, cas=v)
            await drive(clock, lambda v=v: calls["one"] == v and calls["many"] == 100 * v)
        await polls(clock, 3, w_one, w_many)
    finally:
        await svc.close()
    name_one, name_many = one.split("/", 2)[2], many.split("/", 2)[2]
    await barrier(bao, root)
    # data reads: exactly one per change for each path, however many callbacks
    assert bao.audit_requests(one, "read") == bao.audit_requests(many, "read") == 3
    # metadata reads: the baseline and one per poll, for one callback as for a hundred
    assert bao.audit_requests(f"maily/metadata/{name_one}") == w_one.polls + 1
    assert bao.audit_requests(f"maily/metadata/{name_many}") == w_many.polls + 1


async def test_a_raising_or_slow_callback_does_not_stop_the_others(
    bao: Bao, root: VaultClient
) -> None:
    path = await new_secret(root, {"v": 0})
    clock = ManualClock()
    svc = service(bao, clock)
    release = asyncio.Event()
    blocking = threading.Event()
    slow_started: list[int] = []
    good: list[Any] = []

    def raising(value: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    async def slow_async(value: dict[str, Any]) -> None:
        slow_started.append(value["v"])
        await release.wait()

    def slow_sync(value: dict[str, Any]) -> None:
        blocking.wait(10)  # blocks its worker thread, not the event loop

    async def fast(value: dict[str, Any]) -> None:
        good.append(value["v"])

    try:
        for cb in (raising, slow_async, slow_sync, fast):
            await svc.register_secret_listener(path, cb)
        await root.kv.write(path, {"v": 1}, cas=1)
        await drive(clock, lambda: good == [1])
        await root.kv.write(path, {"v": 2}, cas=2)
        await drive(clock, lambda: good == [1, 2])  # while slow_async is still stuck on v1
        assert slow_started == [1]
        await root.kv.write(path, {"v": 3}, cas=3)
        await drive(clock, lambda: good == [1, 2, 3])
        release.set()
        # the slow callback catches up with the newest value, skipping what it missed
        await until(lambda: slow_started == [1, 3])
        runners = svc._listeners.watchers[path].runners
        await until(lambda: runners[0].failures == 3, what="three failures of the raising one")
        assert runners[0].calls == 0
    finally:
        blocking.set()
        await svc.close()


async def test_write_through_the_service_notifies_once(bao: Bao, root: VaultClient) -> None:
    path = await new_secret(root, {"v": 0})
    clock = ManualClock()
    svc = service(bao, clock)
    got: list[Any] = []
    try:
        await svc.register_secret_listener(path, lambda v: got.append(v))
        watcher = svc._listeners.watchers[path]
        version = await svc.put_secret(path, {"v": 1}, cas=1)
        assert version == 2
        await until(lambda: len(got) == 1)  # at once, no poll needed
        await polls(clock, 3, watcher)  # polls see version 2 again
        await svc.update_secret(path, lambda cur: {**cur, "w": True})
        await until(lambda: len(got) == 2)
        await polls(clock, 3, watcher)  # polls see version 3 again
        assert got == [{"v": 1}, {"v": 1, "w": True}]
        assert await svc.get_secret(path) == {"v": 1, "w": True}
    finally:
        await svc.close()


async def test_unregister_and_close_stop_the_watcher(bao: Bao, root: VaultClient) -> None:
    path = await new_secret(root, {"v": 0})
    name = path.split("/", 2)[2]
    clock = ManualClock()
    svc = service(bao, clock)
    got: list[Any] = []

    def cb(v: dict[str, Any]) -> None:
        got.append(v)

    try:
        sub = await svc.register_secret_listener(path, cb)
        await svc.register_secret_listener(path, cb)  # the same function twice
        assert await svc.unregister_secret_listener(path, cb) is True
        await root.kv.write(path, {"v": 1}, cas=1)
        first = svc._listeners.watchers[path]
        await drive(clock, lambda: len(got) == 1)  # one registration left
        await sub.cancel()
        assert path not in svc._listeners.watchers
        assert await svc.unregister_secret_listener(path, cb) is False
        assert first._task is None and clock.sleepers == 0  # nothing waits to poll
        await barrier(bao, root)
        before = bao.audit_requests(f"maily/metadata/{name}")
        assert before == first.polls + 1  # baseline and every poll, nothing else
        await root.kv.write(path, {"v": 2}, cas=2)
        await clock.advance(50 * FAST)
        await barrier(bao, root)
        assert got == [{"v": 1}]
        assert bao.audit_requests(f"maily/metadata/{name}") == before  # no more polling

        await svc.register_secret_listener(path, cb)
        watcher = svc._listeners.watchers[path]
    finally:
        await svc.close()
    assert watcher._task is None
    assert not svc._listeners.watchers


async def test_outage_then_change_then_recovery_fires(bao: Bao, root: VaultClient) -> None:
    """The network to Vault is cut, the secret changes meanwhile, the listener catches up."""
    path = await new_secret(root, {"v": 0})
    proxy = TcpProxy.to(bao.addr)
    await proxy.up()
    clock = ManualClock()
    svc = service(bao, clock, addr=proxy.addr, max_retries=0, cache_ttl=0.0)
    got: list[Any] = []
    try:
        await svc.register_secret_listener(path, lambda v: got.append(v))
        watcher = svc._listeners.watchers[path]
        assert await svc.get_secret(path) == {"v": 0}
        await proxy.down()
        await drive(clock, lambda: watcher._failures >= 4)  # failed polls: it backs off
        await root.kv.write(path, {"v": 1}, cas=1)  # changed during the outage
        assert await svc.get_secret(path) == {"v": 0}  # stale-if-error meanwhile
        await proxy.up()
        await drive(clock, lambda: got == [{"v": 1}])
        assert watcher._failures == 0
    finally:
        await svc.close()
        await proxy.down()


async def test_any_path_including_non_kv(bao: Bao, root: VaultClient) -> None:
    """A KV v2 secret outside the defaults, and a non-KV path (an ACL policy) watched by value."""
    policy = "watched-" + uuid.uuid4().hex[:6]
    await root.write(
        f"sys/policies/acl/{policy}", {"policy": 'path "a/*" { capabilities = ["read"] }'}
    )
    other = await new_secret(root, {"x": 1})
    clock = ManualClock()
    svc = service(bao, clock)
    got: list[Any] = []
    try:
        await svc.register_secret_listener(f"sys/policies/acl/{policy}", lambda v: got.append(v))
        await svc.register_secret_listener(other, lambda v: got.append(v))
        await polls(clock, 3, *svc._listeners.watchers.values())
        assert got == []  # what exists at registration is no change
        await root.write(
            f"sys/policies/acl/{policy}", {"policy": 'path "b/*" { capabilities = ["read"] }'}
        )
        await root.kv.write(other, {"x": 2}, cas=1)
        await drive(clock, lambda: len(got) == 2)
        assert {"x": 2} in got
        assert any('path "b/*"' in str(v.get("policy")) for v in got)
    finally:
        await svc.close()


async def test_listener_on_a_secret_created_later(bao: Bao, root: VaultClient) -> None:
    path = f"maily/data/later-{uuid.uuid4().hex[:8]}"
    clock = ManualClock()
    svc = service(bao, clock)
    got: list[Any] = []
    try:
        await svc.register_secret_listener(path, lambda v: got.append(v))
        await polls(clock, 2, svc._listeners.watchers[path])
        assert got == []
        await root.kv.write(path, {"born": True}, cas=0)
        await drive(clock, lambda: got == [{"born": True}])
    finally:
        await svc.close()
