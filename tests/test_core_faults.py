"""The core on its worst day, against the real OpenBao: configuration, redirects, retries
that never apply a write twice, a cache that never goes back in time, close(), event
loops, and errors that say what happened."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from maily_secrets.errors import (
    AuthFailed,
    CheckAndSetConflict,
    ConfigurationError,
    VaultError,
    VaultRequestError,
)
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import ClientClosed, OutcomeUnknown, VaultClient

from .conftest import Bao
from .netfault import LossyProxy

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- configuration
async def test_bare_namespace_role_token_timeout_addr_are_not_our_settings(
    bao: Bao, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod's NAMESPACE (downward API) and other bare names are not read as Vault settings."""
    for name, value in {
        "NAMESPACE": f"team-{uuid.uuid4().hex[:6]}",  # a Vault namespace that does not exist
        "ROLE": "nobody",
        "TOKEN": "not-a-vault-token",
        "TIMEOUT": "0.000001",
        "ADDR": "http://127.0.0.1:9",
        "CACHE_TTL": "0",
        "KV_MOUNT": "elsewhere",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    svc = VaultService()
    try:
        assert "db_host" in await svc.get_config()
        s = svc.settings
        assert (s.namespace, s.role, s.timeout, s.addr, s.kv_mount, s.cache_ttl) == (
            None,
            "maily",
            10.0,
            bao.addr,
            "maily",
            60.0,
        )
    finally:
        await svc.close()


BAD_CONFIG = [
    ("VAULT_ADDR", "http://vault.example:8200/?x=1", "query"),
    ("VAULT_ADDR", "http://vault.example:8200/#top", "fragment"),
    ("VAULT_ADDR", "http://admin:CANARY-pw-1234@vault.example:8200", "userinfo"),
    ("VAULT_ADDR", "vault.example:8200", "http://"),
    ("VAULT_CACERT", "/nonexistent/ca.pem", "cannot read"),
    ("VAULT_CLIENT_TIMEOUT", "soon", "number"),
    ("VAULT_MAX_RETRIES", "-1", "greater than or equal"),
    ("MAILY_SECRETS_CACHE_TTL", "-5", "greater than or equal"),
    ("MAILY_SECRETS_LISTENER_INTERVAL", "nan", "number"),
    ("MAILY_SECRETS_SNAPSHOT_PATH", "/tmp/maily-snapshot-test", "SNAPSHOT_KEY"),
    ("MAILY_SECRETS_CLUSTER_MEMBERS", "http://a:8200,ftp://b", "http://"),
]


@pytest.mark.parametrize(("variable", "value", "reason"), BAD_CONFIG)
async def test_bad_configuration_is_one_typed_error_naming_the_variable_on_first_use(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(variable, value)
    svc = VaultService()  # no I/O, nothing checked yet
    with pytest.raises(ConfigurationError) as ei:
        await svc.get_config()
    assert isinstance(ei.value, VaultError)
    # a snapshot path without a key is fixed by setting the key: that is the one named
    named = "MAILY_SECRETS_SNAPSHOT_KEY" if variable.endswith("SNAPSHOT_PATH") else variable
    assert ei.value.variable == named
    assert named in str(ei.value) and reason in str(ei.value)
    assert "CANARY" not in str(ei.value)
    await svc.close()


def test_snapshot_path_with_an_invalid_key_names_the_key_variable() -> None:
    with pytest.raises(ConfigurationError) as ei:
        VaultSettings(snapshot_path=Path("/tmp/x"), snapshot_key="not-a-fernet-key")
    assert ei.value.variable == "MAILY_SECRETS_SNAPSHOT_KEY"
    assert "not-a-fernet-key" not in str(ei.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VAULT_ADDR", "http://u:CANARY-pw@h:8200"), ("VAULT_CLIENT_TIMEOUT", "-3")],
)
def test_cli_prints_one_line_and_exits_2_on_bad_configuration(variable: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "MAILY_"))}
    env[variable] = value
    env["COLUMNS"] = "40"  # a narrow terminal must not wrap the line either
    for args in (["secrets", "status"], ["doctor"]):
        p = subprocess.run(
            [sys.executable, str(ROOT / "mailyctl.py"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=ROOT,
        )
        assert p.returncode == 2, (args, p.stderr[-500:])
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and variable in lines[0], (args, p.stderr[-500:])
        assert "Traceback" not in p.stderr and "ValidationError" not in p.stderr
        assert "CANARY" not in p.stderr + p.stdout


# ----------------------------------------------------------------------------- redirects
class _Server:
    """A small real HTTP server on loopback: it records what it was sent."""

    def __init__(self, handler: Any) -> None:
        self.seen: list[dict[str, str]] = []
        self._handler = handler
        self.runner: web.AppRunner | None = None
        self.addr = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        result: web.StreamResponse = await self._handler(request)
        return result

    async def __aenter__(self) -> _Server:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.addr = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def _redirect_to(target: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": f"{target}{request.path_qs}"})

    return handler


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.json_response({"data": {"stolen": "yes"}})


async def test_redirect_to_another_origin_is_refused_and_the_token_never_sent(
    bao: Bao,
) -> None:
    async with _Server(_ok) as elsewhere:
        async with _Server(_redirect_to(elsewhere.addr)) as redirector:
            c = VaultClient(VaultSettings(addr=redirector.addr, token=bao.token))
            try:
                with pytest.raises(VaultRequestError) as ei:
                    await c.request("GET", "maily/data/config", token=bao.token)
                assert "refused to follow a redirect" in str(ei.value)
                assert bao.token not in str(ei.value)
            finally:
                await c.close()
            assert len(redirector.seen) == 1
            assert elsewhere.seen == []  # the token never left for the other origin


async def test_redirect_to_a_configured_cluster_member_is_followed(bao: Bao) -> None:
    async with _Server(_redirect_to(bao.addr)) as standby:
        refused = VaultClient(VaultSettings(addr=standby.addr, token=bao.token))
        allowed = VaultClient(
            VaultSettings(addr=standby.addr, token=bao.token, cluster_members=(bao.addr,))
        )
        try:
            with pytest.raises(VaultRequestError):
                await refused.kv.read("maily/data/config")
            assert "db_host" in (await allowed.kv.read("maily/data/config")).data
        finally:
            await refused.close()
            await allowed.close()


# ----------------------------------------------------------------------------- retries
@pytest.fixture
async def lossy(bao: Bao) -> AsyncIterator[LossyProxy]:
    host, port = bao.addr.removeprefix("http://").split(":")
    proxy = LossyProxy(host, int(port))
    await proxy.up()
    try:
        yield proxy
    finally:
        await proxy.down()


async def test_update_whose_answer_was_lost_is_applied_once(bao: Bao, lossy: LossyProxy) -> None:
    mount = await bao.new_kv_mount("lost-answer")
    path = f"{mount}/data/counter"
    svc = VaultService(bao.settings(addr=lossy.addr, retry_base_delay=0.01))
    try:
        await svc.put_secret(path, {"n": 0}, cas=0)
        lossy.lose_next_response(f"POST /v1/{path}".encode())
        version = await svc.update_secret(path, lambda d: {"n": d["n"] + 1})
        assert lossy.lost == 1  # the answer really was lost
        async with bao.client() as root:
            assert (await root.kv.read(path)).data == {"n": 1}  # applied once, not twice
            assert await root.kv.current_version(path) == version == 2
    finally:
        await svc.close()


async def test_write_whose_answer_was_lost_is_not_resent(bao: Bao, lossy: LossyProxy) -> None:
    name = f"lost-{uuid.uuid4().hex[:8]}"
    api_path = f"sys/policies/acl/{name}"
    async with VaultClient(bao.settings(addr=lossy.addr, retry_base_delay=0.01)) as c:
        await c.read("sys/mounts")  # log in first
        lossy.lose_next_response(f"PUT /v1/{api_path}".encode())
        lossy.lose_next_response(f"POST /v1/{api_path}".encode())
        with pytest.raises(OutcomeUnknown) as ei:
            await c.write(api_path, {"policy": 'path "x" { capabilities = ["read"] }'})
        assert "may have been applied" in str(ei.value)
    assert await bao.settled_audit_count(api_path, 1) == 1  # sent once, never resent
    async with bao.client() as root:
        await root.delete(api_path)


async def test_two_hundred_concurrent_updaters_of_one_path_all_succeed(bao: Bao) -> None:
    mount = await bao.new_kv_mount("contention")
    path = f"{mount}/data/counter"
    svc = VaultService(bao.settings())
    try:
        await svc.put_secret(path, {"n": 0}, cas=0)
        results = await asyncio.gather(
            *(svc.update_secret(path, lambda d: {"n": d["n"] + 1}) for _ in range(200)),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, f"{len(failed)} of 200 failed: {type(failed[0]).__name__}"
        async with bao.client() as root:
            assert (await root.kv.read(path)).data == {"n": 200}  # none lost
        assert sorted(results) == list(range(2, 202))  # type: ignore[type-var]
    finally:
        await svc.close()


async def test_writes_right_after_mounting_kv_v2_succeed(bao: Bao) -> None:
    """A fresh KV v2 mount answers 400 "Upgrading from non-versioned to versioned data"
    for a moment; that answer is retried (the rule itself: test_policy_unit.py)."""
    async with bao.client() as root:
        for _ in range(5):
            mount = f"fresh-{uuid.uuid4().hex[:8]}"
            await root.write(f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
            assert await root.kv.write(f"{mount}/data/x", {"a": 1}, cas=0) == 1


# ----------------------------------------------------------------------------- the cache
async def test_a_load_that_started_before_a_write_cannot_overwrite_it(bao: Bao) -> None:
    mount = await bao.new_kv_mount("cache-order")
    path = f"{mount}/data/s"
    svc = VaultService(bao.settings(cache_ttl=3600))
    try:
        await svc.put_secret(path, {"v": "one"}, cas=0)
        svc.invalidate(path)
        gate, started = asyncio.Event(), asyncio.Event()

        async def slow_load() -> Any:
            entry = await svc._fetch(path)  # reads version 1 now ...
            started.set()
            await gate.wait()  # ... and finishes after the write below
            return entry

        load = asyncio.create_task(svc.cache.load(path, slow_load))
        await started.wait()
        assert await svc.put_secret(path, {"v": "two"}, cas=1) == 2
        gate.set()
        await load
        entry = svc.cache.peek(path)
        assert entry is not None and entry.version == 2
        assert await svc.get_secret(path) == {"v": "two"}
    finally:
        await svc.close()


async def test_invalidate_during_an_inflight_load_is_honoured(bao: Bao) -> None:
    mount = await bao.new_kv_mount("cache-invalidate")
    path = f"{mount}/data/s"
    svc = VaultService(bao.settings(cache_ttl=3600))
    async with bao.client() as root:
        await root.kv.write(path, {"v": "one"}, cas=0)
        try:
            gate, started = asyncio.Event(), asyncio.Event()

            async def slow_load() -> Any:
                entry = await svc._fetch(path)
                started.set()
                await gate.wait()
                return entry

            load = asyncio.create_task(svc.cache.load(path, slow_load))
            await started.wait()
            await root.kv.write(path, {"v": "two"}, cas=1)  # written around the service
            svc.invalidate(path)
            # a read after invalidate() does not join the load that started before it
            assert await asyncio.wait_for(svc.get_secret(path), 10) == {"v": "two"}
            gate.set()
            await load
            assert await svc.get_secret(path) == {"v": "two"}  # the old load stored nothing
        finally:
            await svc.close()


# ----------------------------------------------------------------------------- close()
async def _blackhole() -> tuple[asyncio.Server, str, asyncio.Event]:
    """Accepts connections and never answers; the event is set once a request came in."""
    got = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.read(1):
            got.set()
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", got


async def test_close_cancels_inflight_loads(bao: Bao) -> None:
    server, addr, got = await _blackhole()
    svc = VaultService(bao.settings(addr=addr, timeout=60, max_retries=0))
    try:
        read = asyncio.create_task(svc.get_secret("maily/data/config"))
        await asyncio.wait_for(got.wait(), 10)  # the read is in flight
        await asyncio.wait_for(svc.close(), 10)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(read, 5)
    finally:
        server.close()
        await svc.close()


async def test_close_completes_when_the_snapshot_cannot_be_written(
    bao: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from maily_secrets.snapshot import generate_key

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    svc = VaultService(
        bao.settings(snapshot_path=blocker / "snapshot.bin", snapshot_key=generate_key())
    )
    await svc.get_config()
    client = svc.client
    await asyncio.wait_for(svc.close(), 10)
    assert client.closed  # the steps after the snapshot ran
    assert any("snapshot" in r.getMessage() for r in caplog.records)


async def test_close_leaves_a_client_it_was_given_open(bao: Bao) -> None:
    async with bao.client() as c:
        svc = VaultService(client=c)
        assert "db_host" in await svc.get_config()
        await svc.close()
        assert not c.closed
        assert "db_host" in (await c.kv.read("maily/data/config")).data


async def test_a_closed_client_raises_instead_of_reopening(bao: Bao) -> None:
    c = bao.client()
    await c.read("sys/mounts")
    await c.close()
    with pytest.raises(ClientClosed):
        await c.read("sys/mounts")


# ----------------------------------------------------------------------------- event loops
def test_service_keeps_working_with_a_new_event_loop_per_call(bao: Bao) -> None:
    """Django/Celery/scripts: ``asyncio.run`` per call, cache expired between calls."""
    svc = VaultService(bao.settings(cache_ttl=0))
    for _ in range(4):
        assert "db_host" in asyncio.run(svc.get_config())
    assert "aws_access_key" in asyncio.run(svc.get_credentials("aws"))
    asyncio.run(svc.close())


# ----------------------------------------------------------------------------- errors
async def test_a_revoked_token_is_auth_failed_even_without_relogin(bao: Bao) -> None:
    async with bao.client() as root:
        r = await root.write("auth/token/create", {"ttl": "10m"})  # a child of root
        token = r.body["auth"]["client_token"]  # type: ignore[index]
        svc = VaultService(bao.settings(token=token, cache_ttl=0))
        try:
            assert "db_host" in await svc.get_config()
            await root.write("auth/token/revoke", {"token": token})
            with pytest.raises(AuthFailed) as ei:
                await svc.get_config()
            assert "revoked" in str(ei.value) and token not in str(ei.value)
        finally:
            await svc.close()


async def test_a_server_that_is_not_vault_gives_a_typed_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n<html>hi!")
        await writer.drain()
        writer.close()

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    for handler in (garbage, broken):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        addr = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        svc = VaultService(
            VaultSettings(addr=addr, token="CANARY-token-xyz", max_retries=1, retry_base_delay=0.01)
        )
        try:
            with pytest.raises(VaultError) as ei:
                await svc.get_secret("maily/data/config")
            assert "CANARY" not in str(ei.value)
        finally:
            await svc.close()
            server.close()


async def test_check_and_set_conflict_still_names_the_path(bao: Bao) -> None:
    mount = await bao.new_kv_mount("cas-error")
    path = f"{mount}/data/s"
    async with bao.client() as c:
        await c.kv.write(path, {"a": "CANARY-value"}, cas=0)
        with pytest.raises(CheckAndSetConflict) as ei:
            await c.kv.write(path, {"a": "CANARY-value-2"}, cas=0)
        assert path in str(ei.value) and "CANARY" not in str(ei.value)


# ----------------------------------------------------------------------------- supervision
async def test_token_renewal_survives_a_long_outage(
    bao: Bao, caplog: pytest.LogCaptureFixture
) -> None:
    """Thousands of failed renewals (a day of outage on the injected clock), then Vault is
    back: the background renewal is still alive and the client logs in and reads."""
    from maily_secrets.clock import ManualClock

    from .faultkit import drive
    from .netfault import TcpProxy

    async with bao.client() as root:
        r = await root.write("auth/token/create", {"ttl": "10m", "renewable": True})
    token = r.body["auth"]["client_token"]  # type: ignore[index]
    host, port = bao.addr.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.up()
    clock = ManualClock()
    client = VaultClient(VaultSettings(addr=proxy.addr, token=token, max_retries=0), clock=clock)
    try:
        await client.read("sys/mounts")  # logged in; renewal scheduled at 2/3 of 10 min
        await proxy.down()

        def failed() -> int:
            return sum("renewal failed" in m or "refresh failed" in m for m in caplog.messages)

        caplog.set_level(logging.WARNING, logger="maily_secrets.auth")
        await drive(clock, lambda: failed() >= 1500, within=120, what="1500 failed renewals")
        assert clock.monotonic() - 1_000 > 6 * 3600  # hours of outage, in no real time
        renewer = client.tokens._renewer
        assert renewer is not None and not renewer.done()  # still alive
        await proxy.up()
        logins = client.tokens.logins
        await drive(clock, lambda: client.tokens.logins > logins, within=60, what="re-login")
        assert "maily/" in ((await client.read("sys/mounts")).data or {})
    finally:
        await client.close()
        await proxy.down()
