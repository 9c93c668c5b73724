"""Vault Agent beside the app: the file it renders (``MAILY_CONFIG_FILE``) and its API
proxy (``VAULT_AGENT_ADDR``), with a real ``bao agent`` against a real OpenBao.

The watchers sleep on a ManualClock; the agent's own re-render (every second, real
time) is waited for as a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from maily_secrets.clock import ManualClock
from maily_secrets.errors import AuthFailed, PermissionDenied
from maily_secrets.filesource import ConfigFileUnavailable, FileSecret
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.auth import AgentProxyAuth, auth_from_settings
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive
from .kit.agent import approle_reader, bao_agent, wait_json
from .test_deploy import deployment_template
from .test_typescript import ts_built  # noqa: F401 - the fixture: the package's own build

CANARY = 'agent-canary-Zq7"\\\n-pw'
CONFIG = {
    "db_host": "db.internal",
    "db_port": 5432,
    "db_username": "maily_app",
    "db_password": "first-db-pw",
    "redis_host": "redis.internal",
    "redis_port": "6379",
    "redis_password": "first-redis-pw",
}


def write_atomically(path: Path, text: str) -> None:
    """What the agent does: a temporary file renamed over the old one (a new inode)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_service(tmp_path: Path, file: Path, clock: ManualClock, **kw: Any) -> VaultService:
    """No token, no credentials: only the file can serve anything."""
    settings = VaultSettings(
        addr="http://127.0.0.1:9", config_file=file, listener_interval=1.0, **kw
    )
    return VaultService(settings, clock=clock)


# ------------------------------------------------------------------ the file, without Vault
async def test_config_file_serves_get_config_with_no_vault_and_no_token(tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"database": {"password": "pw-1"}}))
    svc = file_service(tmp_path, f, ManualClock())
    try:
        assert await svc.get_config() == {"database": {"password": "pw-1"}}
        assert svc._client is None  # no client was even built: no request, no login
        got = await svc.get_config()
        got["database"]["password"] = "mutated"  # callers get copies
        assert (await svc.get_config())["database"]["password"] == "pw-1"
    finally:
        await svc.close()


async def test_config_file_change_fires_the_config_listeners_once(tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"v": 1}))
    clock = ManualClock()
    svc = file_service(tmp_path, f, clock)
    got: list[dict[str, Any]] = []
    try:
        await svc.register_secret_listener("maily/data/config", got.append)
        watcher = svc._listeners.watchers["maily/data/config"]
        await drive(clock, lambda: watcher.polls >= 3)
        assert got == []  # what exists at registration does not fire
        write_atomically(f, json.dumps({"v": 2}))
        await drive(clock, lambda: len(got) == 1)
        assert got == [{"v": 2}]
        assert await svc.get_config() == {"v": 2}  # the cache was updated first
        write_atomically(f, json.dumps({"v": 2}))  # a re-render of the same content
        polls = watcher.polls
        await drive(clock, lambda: watcher.polls >= polls + 3)
        assert got == [{"v": 2}]
        assert svc._client is None
    finally:
        await svc.close()


async def test_a_malformed_or_partial_file_keeps_the_last_good_value_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"password": "good-" + CANARY}))
    clock = ManualClock()
    svc = file_service(tmp_path, f, clock, cache_ttl=1.0)
    got: list[dict[str, Any]] = []
    caplog.set_level(logging.DEBUG, logger="maily_secrets")
    try:
        await svc.register_secret_listener("maily/data/config", got.append)
        watcher = svc._listeners.watchers["maily/data/config"]
        for bad in ('{"password": "half-' + CANARY, "[1, 2]", "", "\xff"):
            f.write_bytes(bad.encode("latin-1") if bad == "\xff" else bad.encode())
            polls = watcher.polls
            await drive(clock, lambda p=polls: watcher.polls >= p + 2)
            assert await svc.get_config() == {"password": "good-" + CANARY}
        f.unlink()
        polls = watcher.polls
        await drive(clock, lambda: watcher.polls >= polls + 2)
        assert await svc.get_config() == {"password": "good-" + CANARY}
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert str(f) in warnings[0].getMessage()
        write_atomically(f, json.dumps({"password": "new"}))
        await drive(clock, lambda: got == [{"password": "new"}])
        assert any("valid JSON object again" in r.getMessage() for r in caplog.records)
        assert "half-" not in caplog.text and "agent-canary" not in caplog.text
        assert got == [{"password": "new"}]
    finally:
        await svc.close()


def test_file_secret_counts_content_changes_not_renames(tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    fs = FileSecret(f, "maily/data/config")
    with pytest.raises(ConfigFileUnavailable, match="MAILY_CONFIG_FILE"):
        fs.entry()
    assert fs.version() == 0
    write_atomically(f, '{"a": 1}')
    assert fs.version() == 1 and fs.entry().value == {"a": 1}
    reads = fs.reads
    assert fs.version() == 1 and fs.reads == reads  # unchanged: one stat, no read
    write_atomically(f, '{"a": 1}')  # a new inode, same content
    assert fs.version() == 1 and fs.reads == reads + 1
    write_atomically(f, json.dumps({"a": CANARY}))
    assert fs.version() == 2
    assert "agent-canary" not in repr(fs) and "version=2" in repr(fs)


async def test_another_path_still_goes_to_vault_and_needs_auth(bao: Bao, tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    f.write_text('{"from": "file"}')
    settings = VaultSettings(addr=bao.addr, config_file=f)  # no credentials at all
    async with VaultService(settings, clock=ManualClock()) as svc:
        assert await svc.get_config() == {"from": "file"}
        with pytest.raises(AuthFailed, match="no Vault credentials"):
            await svc.get_api_keys()
    async with VaultService(bao.settings(config_file=f)) as svc:  # with a token
        assert isinstance(await svc.get_api_keys(), dict)  # from Vault, with the token
        assert await svc.get_config() == {"from": "file"}


def test_config_file_setting_is_read_from_maily_config_file_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONFIG_FILE", "/elsewhere")
    assert VaultSettings().config_file is None
    monkeypatch.setenv("MAILY_CONFIG_FILE", str(tmp_path / "c.json"))
    assert VaultSettings().config_file == tmp_path / "c.json"


# ------------------------------------------------------------------ VAULT_AGENT_ADDR
def test_vault_agent_addr_takes_precedence_and_needs_no_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example:8200")
    monkeypatch.setenv("VAULT_AGENT_ADDR", "http://127.0.0.1:8100/")
    s = VaultSettings()
    assert s.addr == "https://vault.example:8200"
    assert s.api_addr == "http://127.0.0.1:8100"
    assert isinstance(auth_from_settings(s), AgentProxyAuth)
    assert "127.0.0.1:8100" in repr(VaultClient(s))
    monkeypatch.setenv("VAULT_TOKEN", "s.own-token")
    assert auth_from_settings(VaultSettings()).name == "token"  # own credentials win
    monkeypatch.delenv("VAULT_TOKEN")
    monkeypatch.setenv("BAO_AGENT_ADDR", "http://127.0.0.1:8101")
    monkeypatch.delenv("VAULT_AGENT_ADDR")
    assert VaultSettings().api_addr == "http://127.0.0.1:8101"
    monkeypatch.setenv("VAULT_AGENT_ADDR", "unix:///run/agent.sock")
    with pytest.raises(Exception, match="VAULT_AGENT_ADDR"):
        VaultSettings()


# ------------------------------------------------------------------ a real bao agent
async def _own_config(root: VaultClient, bao: Bao) -> str:
    mount = await bao.new_kv_mount("agentkv")
    await root.kv.write(f"{mount}/data/config", CONFIG, cas=0)
    return mount


async def test_real_agent_render_serves_get_config_and_a_rerender_fires_the_listener(
    bao: Bao, root: VaultClient, tmp_path: Path
) -> None:
    mount = await _own_config(root, bao)
    role = await approle_reader(root, mount, tmp_path)
    template = deployment_template().replace('"maily/data/config"', f'"{mount}/data/config"')
    assert f'secret "{mount}/data/config"' in template
    clock = ManualClock()
    with bao_agent(tmp_path, upstream=bao.addr, role=role, template=template) as agent:
        assert agent.rendered is not None
        await asyncio.to_thread(wait_json, agent.rendered, lambda d: True)
        settings = VaultSettings(
            addr=bao.addr, kv_mount=mount, config_file=agent.rendered, listener_interval=1.0
        )
        svc = VaultService(settings, clock=clock)
        got: list[dict[str, Any]] = []
        try:
            config = await svc.get_config()
            assert config["database"] == {
                "host": "db.internal",
                "port": 5432,
                "username": "maily_app",
                "password": "first-db-pw",
            }
            assert config["redis"]["port"] == 6379
            await svc.register_secret_listener(f"{mount}/data/config", got.append)
            await root.kv.update(f"{mount}/data/config", lambda d: {**d, "redis_password": CANARY})
            await asyncio.to_thread(
                wait_json, agent.rendered, lambda d: d["redis"]["password"] == CANARY
            )
            await drive(clock, lambda: len(got) == 1, what="listener after the re-render")
            assert got[0]["redis"]["password"] == CANARY
            assert (await svc.get_config())["redis"]["password"] == CANARY
            assert svc._client is None  # the app never spoke to Vault nor logged in
        finally:
            await svc.close()
        assert CANARY not in agent.log.read_text()


async def test_agent_api_proxy_with_auto_auth_token_serves_an_app_with_no_token(
    bao: Bao, root: VaultClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = await _own_config(root, bao)
    role = await approle_reader(root, mount, tmp_path)
    with bao_agent(tmp_path, upstream=bao.addr, role=role, proxy=True) as agent:
        assert agent.addr is not None
        monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")  # nothing listens: unused
        monkeypatch.setenv("VAULT_AGENT_ADDR", agent.addr)
        monkeypatch.setenv("MAILY_SECRETS_MOUNT", mount)
        clock = ManualClock()
        svc = VaultService(VaultSettings(listener_interval=1.0), clock=clock)
        got: list[dict[str, Any]] = []
        try:
            assert svc.client.tokens.method.name == "agent"
            assert await svc.get_config() == CONFIG
            await svc.register_secret_listener(f"{mount}/data/config", got.append)
            await root.kv.update(f"{mount}/data/config", lambda d: {**d, "db_password": CANARY})
            await drive(clock, lambda: len(got) == 1, what="listener through the agent")
            assert got[0]["db_password"] == CANARY
            with pytest.raises(PermissionDenied):  # the agent's token may only read
                await svc.put_secret(f"{mount}/data/config", {"x": 1}, cas=2)
            assert svc.client.tokens.logins == 1  # the empty "login": no request
        finally:
            await svc.close()


NODE_READ = """
const { VaultClient } = await import(process.argv[1]);
const c = new VaultClient();
try {
  const got = await c.getSecret(`${process.env.MAILY_SECRETS_MOUNT}/data/config`, (v) => ({
    port: Number(v.db_port), password: String(v.db_password),
  }));
  console.log(JSON.stringify({ ok: got.port === 5432 && got.password === 'first-db-pw' }));
} finally {
  await c.close();
}
"""


async def test_typescript_client_reads_through_the_agent_proxy_with_no_token(
    bao: Bao,
    root: VaultClient,
    tmp_path: Path,
    ts_built: Path,  # noqa: F811 - the fixture
) -> None:
    mount = await _own_config(root, bao)
    role = await approle_reader(root, mount, tmp_path)
    with bao_agent(tmp_path, upstream=bao.addr, role=role, proxy=True) as agent:
        assert agent.addr is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(
            VAULT_ADDR="http://127.0.0.1:9",
            VAULT_AGENT_ADDR=agent.addr,
            MAILY_SECRETS_MOUNT=mount,
            HOME=str(tmp_path),
        )
        index = (ts_built / "dist" / "vault" / "index.js").as_uri()
        out = await asyncio.to_thread(
            subprocess.run,
            ["node", "--input-type=module", "-e", NODE_READ, index],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout) == {"ok": True}
        assert "first-db-pw" not in out.stdout + out.stderr
