"""``vault_service.health()`` against a real OpenBao: readiness follows the staleness
bound of the required secrets, liveness the service's background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest

from maily_secrets.clock import ManualClock
from maily_secrets.errors import InvalidPath
from maily_secrets.service import VaultService
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.listeners import new_secret
from .netfault import TcpProxy


async def test_readiness_follows_the_staleness_bound_of_required_secrets(
    bao: Bao, root: VaultClient
) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    by_env = await new_secret(root, {"password": canary}, prefix="health")
    by_call = await new_secret(root, {"v": 1}, prefix="health")
    clock = ManualClock()
    proxy = TcpProxy.to(bao.addr)
    await proxy.up()
    svc = VaultService(
        bao.settings(
            addr=proxy.addr,
            cache_ttl=10,
            max_staleness=100,
            max_retries=0,
            required_secrets=(by_env,),
        ),
        clock=clock,
    )
    svc.require(by_call)
    try:
        h = await svc.readiness()
        assert h.ready and [c.name for c in h.checks] == [by_env, by_call]
        assert {c.detail for c in h.checks} == {"read from Vault"}
        assert (await svc.readiness()).checks[0].detail == "fresh in memory"

        await proxy.down()
        await clock.advance(50)  # stale, within the bound: still servable
        h = await svc.readiness()
        assert h.ready, h
        assert all("last known value" in c.detail for c in h.checks)

        await clock.advance(51)  # past max_staleness: nothing servable any more
        h = await svc.health()
        assert not h.ready and not h.ok
        assert {c.name for c in h.failed()} == {by_env, by_call}
        assert all("VaultUnavailable" in c.detail for c in h.failed())
        doc = json.dumps(h.to_dict())
        assert canary not in doc and canary not in repr(h)

        await proxy.up()
        assert (await svc.readiness()).ready
    finally:
        await svc.close()
        await proxy.down()


async def test_nothing_required_is_ready_and_a_bad_required_path_is_refused(bao: Bao) -> None:
    svc = VaultService(bao.settings())
    try:
        h = await svc.health()
        assert h.ok and h.ready and h.live and h.checks == ()
        with pytest.raises(InvalidPath):
            svc.require("maily/../etc")
    finally:
        await svc.close()


def test_required_secrets_setting_is_comma_separated(
    bao: Bao, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILY_SECRETS_REQUIRED", "maily/data/config, maily/data/api-keys")
    svc = VaultService()
    assert svc.required_secrets == ("maily/data/config", "maily/data/api-keys")


async def test_a_dead_watcher_task_is_not_live(bao: Bao, root: VaultClient) -> None:
    path = await new_secret(root, {"v": 0}, prefix="health-live")
    svc = VaultService(bao.settings(listener_interval=1.0), clock=ManualClock())
    try:
        await svc.register_secret_listener(path, lambda _v: None)
        live = svc.liveness()
        assert live.live and any(c.name == "listeners" and c.ok for c in live.checks)

        task = svc._listeners.watchers[path]._task
        assert task is not None
        task.cancel()  # the watcher dies outside close(): nothing polls the secret any more
        with contextlib.suppress(asyncio.CancelledError):
            await task
        live = svc.liveness()
        assert not live.live
        (failed,) = live.failed()
        assert failed.name == "listeners" and path in failed.detail
    finally:
        await svc.close()
