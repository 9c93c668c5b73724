"""TLS trust (VAULT_CACERT) against a real OpenBao serving HTTPS, and the request timeout."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maily_secrets.dev.server import bao_binary, free_port, health
from maily_secrets.errors import VaultUnavailable
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .kit.servers import running


@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    d = tmp_path_factory.mktemp("tls-bao")
    port = free_port()
    token = "tls-" + secrets.token_urlsafe(16)
    argv = [
        bao_binary(),
        "server",
        "-dev",
        "-dev-tls",
        f"-dev-tls-cert-dir={d}",
        f"-dev-listen-address=127.0.0.1:{port}",
        "-dev-no-store-token",
    ]
    env = {"BAO_DEV_ROOT_TOKEN_ID": token}
    addr = f"https://127.0.0.1:{port}"
    with running(argv, d / "server.log", env=env, clean_env=False):
        deadline = time.monotonic() + 15
        while not (d / "vault-ca.pem").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # wait until it answers (health over plain urllib would fail TLS; poll the port)
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert health(addr) is None  # plain urllib without the CA cannot verify it either
        yield addr, token, d / "vault-ca.pem"


async def test_cacert_verifies_the_server(tls_bao: tuple[str, str, Path]) -> None:
    addr, token, ca = tls_bao
    async with VaultClient(VaultSettings(addr=addr, token=token, cacert=ca)) as c:
        r = await c.read("sys/mounts")
        assert "secret/" in (r.data or {})


async def test_untrusted_certificate_is_a_clear_error_without_retries(
    tls_bao: tuple[str, str, Path],
) -> None:
    addr, token, _ = tls_bao
    async with VaultClient(VaultSettings(addr=addr, token=token, max_retries=3)) as c:
        with pytest.raises(VaultUnavailable, match=r"TLS verification .* VAULT_CACERT"):
            await c.read("sys/mounts")
        assert c.stats["GET"] == 1


async def test_skip_verify_is_possible_and_warned(
    tls_bao: tuple[str, str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    addr, token, _ = tls_bao
    async with VaultClient(VaultSettings(addr=addr, token=token, skip_verify=True)) as c:
        await c.read("sys/mounts")
    assert "verification is disabled" in caplog.text


async def test_request_timeout() -> None:
    """A server that accepts connections but never answers: bounded by the timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        settings = VaultSettings(
            addr=f"http://127.0.0.1:{port}",
            token="t",
            timeout=0.3,
            max_retries=1,
            retry_base_delay=0.01,
        )
        async with VaultClient(settings) as c:
            with pytest.raises(VaultUnavailable, match="TimeoutError"):
                # the guard only exists so that a missing timeout fails instead of hanging
                await asyncio.wait_for(c.request("GET", "maily/data/config", token="t"), 30)
            assert c.stats["GET"] == 2
    finally:
        stop.set()
        t.join()
        for conn in held:
            conn.close()
        srv.close()
