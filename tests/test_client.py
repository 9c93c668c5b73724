"""The HTTP layer against a real OpenBao: retries, typed errors, check-and-set."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from maily_secrets.clock import ManualClock
from maily_secrets.dev.server import free_port
from maily_secrets.errors import (
    CheckAndSetConflict,
    SecretNotFound,
    VaultRequestError,
    VaultUnavailable,
)
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive


async def unseal_key(bao: Bao) -> str:
    """The dev server's unseal key: kept 0600 next to the token, never in its log."""
    return await asyncio.to_thread(bao.server.unseal_key)


async def test_retries_through_a_sealed_server(private_bao: Bao) -> None:
    """503 (sealed) is retried with backoff; the read succeeds once the server is unsealed."""
    key = await unseal_key(private_bao)
    clock = ManualClock()
    async with VaultClient(
        private_bao.settings(max_retries=20, retry_base_delay=0.05, retry_max_delay=0.2),
        clock=clock,
    ) as c:
        await c.read("sys/mounts")  # token checked while unsealed
        await c.write("sys/seal")
        read = asyncio.create_task(c.kv.read("maily/data/config"))
        # sealed answers, each followed by a backoff on the injected clock
        await drive(clock, lambda: c.stats["GET"] >= 5, what="two retries")
        assert not read.done()
        async with VaultClient(VaultSettings(addr=private_bao.addr)) as anon:
            await anon.request("POST", "sys/unseal", json_body={"key": key}, authenticated=False)
        await drive(clock, read.done, what="the read after unsealing")
        secret = await read
        assert "db_host" in secret.data
        assert c.stats["GET"] >= 3  # it really was retried


async def test_gives_up_after_max_retries_with_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    async with VaultClient(
        VaultSettings(
            addr=f"http://127.0.0.1:{port}", token="x", max_retries=2, retry_base_delay=0.01
        )
    ) as c:
        with pytest.raises(VaultUnavailable) as ei:
            await c.request("GET", "maily/data/config", token="x")
        msg = str(ei.value)
        assert f"127.0.0.1:{port}" in msg and "maily/data/config" in msg and "3 attempt" in msg
        assert c.stats["GET"] == 3


async def test_404_and_400_are_not_retried(bao: Bao) -> None:
    async with bao.client(max_retries=5) as c:
        await c.read("sys/mounts")
        gets = c.stats["GET"]
        with pytest.raises(SecretNotFound):
            await c.kv.read("maily/data/nope-" + uuid.uuid4().hex)
        assert c.stats["GET"] == gets + 1
        posts = c.stats["POST"]
        with pytest.raises(VaultRequestError):
            await c.write("sys/mounts/bad-" + uuid.uuid4().hex[:6], {"type": "no-such-engine"})
        assert c.stats["POST"] == posts + 1


async def test_check_and_set(bao: Bao) -> None:
    path = "maily/data/cas-" + uuid.uuid4().hex[:8]
    async with bao.client() as c:
        assert await c.kv.write(path, {"v": 1}, cas=0) == 1
        with pytest.raises(CheckAndSetConflict):
            await c.kv.write(path, {"v": 2}, cas=0)  # create-only: it exists
        with pytest.raises(CheckAndSetConflict):
            await c.kv.write(path, {"v": 2}, cas=5)
        assert await c.kv.write(path, {"v": 2}, cas=1) == 2
        # the mount forces CAS: a write without it is refused by the server itself
        with pytest.raises(VaultRequestError):
            await c.request("POST", path, json_body={"data": {"v": 3}})
        assert (await c.kv.read(path, version=1)).data == {"v": 1}


async def test_concurrent_updates_lose_nothing(bao: Bao) -> None:
    path = "maily/data/counter-" + uuid.uuid4().hex[:8]
    async with bao.client() as c:
        await c.kv.write(path, {"n": 0}, cas=0)

        def incr(d: dict[str, int]) -> dict[str, int]:
            d["n"] += 1
            return d

        await asyncio.gather(*(c.kv.update(path, incr, attempts=100) for _ in range(20)))
        final = await c.kv.read(path)
        assert final.data == {"n": 20}
        assert final.version == 21  # every version is kept
        assert (await c.kv.read(path, version=1)).data == {"n": 0}


async def test_vault_namespace_is_honoured(
    bao: Bao, root: VaultClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenBao has namespaces: the same path in another namespace is another secret."""
    ns = "team-" + uuid.uuid4().hex[:6]
    await root.write(f"sys/namespaces/{ns}")
    async with bao.client(namespace=ns) as c:
        await c.write("sys/mounts/maily", {"type": "kv", "options": {"version": "2"}})
        await c.kv.write("maily/data/config", {"owner": ns}, cas=0)
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    monkeypatch.setenv("VAULT_NAMESPACE", ns)
    svc = VaultService()
    try:
        assert await svc.get_config() == {"owner": ns}
    finally:
        await svc.close()
    assert "owner" not in (await root.kv.read("maily/data/config")).data
