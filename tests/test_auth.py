"""Auth against a real OpenBao: token (env, file, ~/.vault-token), AppRole, renewal, re-login."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from maily_secrets.clock import ManualClock, settle
from maily_secrets.errors import AuthFailed, PermissionDenied
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive

READ_POLICY = """
path "maily/data/*" { capabilities = ["read"] }
path "maily/metadata/*" { capabilities = ["read", "list"] }
"""
NARROW_POLICY = 'path "maily/data/api-keys" { capabilities = ["read"] }'


@pytest.fixture(scope="module")
async def policies(bao: Bao) -> AsyncIterator[None]:
    async with bao.client() as c:
        await c.write("sys/policies/acl/test-read", {"policy": READ_POLICY})
        await c.write("sys/policies/acl/test-narrow", {"policy": NARROW_POLICY})
    yield


async def child_token(root: VaultClient, ttl: str = "1h", policies: str = "test-read") -> str:
    r = await root.write(
        "auth/token/create",
        {"policies": [policies], "ttl": ttl, "explicit_max_ttl": "1h", "no_default_policy": False},
    )
    return str(r.body["auth"]["client_token"])  # type: ignore[index]


async def test_token_from_vault_token_env(
    bao: Bao, root: VaultClient, policies: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", await child_token(root))
    svc = VaultService()
    try:
        assert "db_host" in await svc.get_config()
        assert svc.client.tokens.method.name == "token"
    finally:
        await svc.close()


async def test_bao_prefixed_environment_is_accepted(
    bao: Bao, root: VaultClient, policies: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAO_ADDR", bao.addr)
    monkeypatch.setenv("BAO_TOKEN", await child_token(root))
    svc = VaultService()
    try:
        assert "stripe" in await svc.get_api_keys()
    finally:
        await svc.close()


async def test_token_file_is_reread_after_403(
    bao: Bao, root: VaultClient, policies: None, tmp_path: Path
) -> None:
    """A token file (e.g. /vault/secrets/token written by Vault Agent) may be replaced."""
    token_file = tmp_path / "token"
    first = await child_token(root)
    token_file.write_text(first + "\n")
    svc = VaultService(VaultSettings(addr=bao.addr, token_file=token_file, cache_ttl=0))
    try:
        assert "db_host" in await svc.get_config()
        await root.write("auth/token/revoke", {"token": first})
        token_file.write_text(await child_token(root))  # the agent wrote a new one
        assert "db_host" in await svc.get_config()
        assert svc.client.tokens.logins == 2
    finally:
        await svc.close()


async def test_home_vault_token_is_used_last(
    bao: Bao, root: VaultClient, policies: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Path(os.environ["HOME"])  # a temporary HOME (conftest)
    (home / ".vault-token").write_text(await child_token(root))
    svc = VaultService(VaultSettings(addr=bao.addr))
    try:
        assert "db_host" in await svc.get_config()
    finally:
        await svc.close()


async def test_bad_token_is_auth_failed_without_the_token(bao: Bao) -> None:
    bogus = "s.bogus-" + uuid.uuid4().hex
    svc = VaultService(VaultSettings(addr=bao.addr, token=bogus, max_retries=0))
    try:
        with pytest.raises(AuthFailed) as ei:
            await svc.get_config()
        assert bogus not in str(ei.value) and bogus not in repr(ei.value)
    finally:
        await svc.close()


async def test_no_credentials_at_all(bao: Bao, tmp_path: Path) -> None:
    svc = VaultService(VaultSettings(addr=bao.addr, kubernetes_jwt_path=tmp_path / "none"))
    try:
        with pytest.raises(AuthFailed, match="no Vault credentials"):
            await svc.get_config()
    finally:
        await svc.close()


async def test_permission_denied_names_the_path(
    bao: Bao, root: VaultClient, policies: None
) -> None:
    token = await child_token(root, policies="test-narrow")
    svc = VaultService(VaultSettings(addr=bao.addr, token=token))
    try:
        assert "stripe" in await svc.get_api_keys()
        with pytest.raises(PermissionDenied, match="maily/data/config"):
            await svc.get_config()
    finally:
        await svc.close()


async def test_token_renewal_at_two_thirds_of_ttl(
    bao: Bao, root: VaultClient, policies: None
) -> None:
    r = await root.write(
        "auth/token/create",
        {"policies": ["test-read"], "ttl": "30s", "explicit_max_ttl": "1m", "renewable": True},
    )
    token = str(r.body["auth"]["client_token"])  # type: ignore[index]
    clock = ManualClock()
    client = VaultClient(VaultSettings(addr=bao.addr, token=token), clock=clock)
    svc = VaultService(client=client)
    try:
        await svc.get_config()
        before = bao.audit_requests("auth/token/renew-self")
        # idle: the background renewer sleeps on the clock until 2/3 of the TTL
        await clock.advance(19)  # the server says 29 or 30 s left: renewal at 19.3-20 s
        await settle()
        assert client.tokens.renewals == 0
        await drive(clock, lambda: client.tokens.renewals >= 1, what="a background renewal")
        assert 19 < clock.monotonic() - 1_000 <= 20.01  # at 2/3 of the TTL, before expiry
        assert await bao.wait_audit("auth/token/renew-self", before + 1) >= before + 1
        svc.invalidate()
        assert "db_host" in await svc.get_config()
    finally:
        await svc.close()
        await client.close()


@pytest.fixture
async def approle(bao: Bao, root: VaultClient, policies: None, tmp_path: Path) -> dict[str, Any]:
    mount = "approle-" + uuid.uuid4().hex[:8]
    await root.write(f"sys/auth/{mount}", {"type": "approle"})
    await root.write(
        f"auth/{mount}/role/maily",
        {"token_policies": ["test-read"], "token_ttl": "3s", "token_max_ttl": "1m"},
    )
    role_id = (await root.read(f"auth/{mount}/role/maily/role-id")).data["role_id"]  # type: ignore[index]
    secret_id = (await root.write(f"auth/{mount}/role/maily/secret-id")).data["secret_id"]  # type: ignore[index]
    (tmp_path / "role-id").write_text(role_id)
    (tmp_path / "secret-id").write_text(secret_id)
    return {
        "mount": mount,
        "role_id_file": tmp_path / "role-id",
        "secret_id_file": tmp_path / "secret-id",
        "secret_id": secret_id,
        "role_id": role_id,
    }


def approle_settings(bao: Bao, a: dict[str, Any], **kw: Any) -> VaultSettings:
    return VaultSettings(
        addr=bao.addr,
        approle_mount=a["mount"],
        role_id_file=a["role_id_file"],
        secret_id_file=a["secret_id_file"],
        **kw,
    )


async def test_approle_from_files_one_login_for_many_callers(
    bao: Bao, approle: dict[str, Any]
) -> None:
    svc = VaultService(approle_settings(bao, approle))
    login_path = f"auth/{approle['mount']}/login"
    try:
        results = await asyncio.gather(
            *(svc.get_secret(p) for p in ["maily/data/config", "maily/data/api-keys"] * 25)
        )
        assert len(results) == 50
        assert svc.client.tokens.method.name == "approle"
        assert svc.client.tokens.logins == 1
        assert await bao.wait_audit(login_path, 1) == 1
    finally:
        await svc.close()


async def test_approle_from_env(
    bao: Bao, approle: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_ROLE_ID", approle["role_id"])
    monkeypatch.setenv("VAULT_SECRET_ID", approle["secret_id"])
    monkeypatch.setenv("VAULT_APPROLE_MOUNT", approle["mount"])
    svc = VaultService()
    try:
        assert "db_host" in await svc.get_config()
        assert svc.client.tokens.method.name == "approle"
    finally:
        await svc.close()


async def test_approle_renews_and_relogs_after_revocation(
    bao: Bao, root: VaultClient, approle: dict[str, Any]
) -> None:
    clock = ManualClock()
    client = VaultClient(approle_settings(bao, approle, cache_ttl=0), clock=clock)
    svc = VaultService(client=client)
    try:
        await svc.get_config()
        await drive(clock, lambda: client.tokens.renewals >= 1, what="a renewal at 2/3 TTL")
        await svc.get_config()
        # an operator revokes the token: the next read logs in again (403 -> re-login)
        current = svc.client.tokens.current()
        assert current is not None
        await root.write("auth/token/revoke", {"token": current.value})
        assert "db_host" in await svc.get_config()
        assert svc.client.tokens.logins == 2
    finally:
        await svc.close()
        await client.close()


async def test_approle_bad_secret_id(bao: Bao, approle: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad-secret-id"
    bad.write_text(str(uuid.uuid4()))
    settings = VaultSettings(
        addr=bao.addr,
        approle_mount=approle["mount"],
        role_id_file=approle["role_id_file"],
        secret_id_file=bad,
        max_retries=0,
    )
    svc = VaultService(settings)
    try:
        with pytest.raises(AuthFailed, match="approle login"):
            await svc.get_config()
    finally:
        await svc.close()
