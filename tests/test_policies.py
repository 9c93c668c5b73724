"""deploy/vault policies and auth roles against a real OpenBao: the intended matrix
(identity x path x capability, allowed and denied), real requests, and an idempotent
`vault bootstrap`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from maily_secrets.changes import bump
from maily_secrets.cli.vault_cmd import bootstrap_server
from maily_secrets.errors import PermissionDenied, TransitKeyNotFound
from maily_secrets.paths import KV2Path
from maily_secrets.policies import (
    APP_POLICY,
    FORBIDDEN,
    NEEDS,
    ROTATOR_POLICY,
    KubernetesAuthConfig,
    capabilities_self,
    load_policies,
)
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .k8s_standin import KubernetesStandin

ALL_CAPS = {"create", "read", "update", "patch", "delete", "list", "sudo"}


async def token_with(root: VaultClient, policy: str) -> str:
    r = await root.write(
        "auth/token/create",
        {"policies": [policy], "no_default_policy": True, "ttl": "10m"},
    )
    return str((r.body or {})["auth"]["client_token"])


def client_for(addr: str, token: str) -> VaultClient:
    return VaultClient(VaultSettings(addr=addr, token=token, auth_method="token", max_retries=0))


def test_policy_files_are_the_two_roles() -> None:
    assert set(load_policies()) == {APP_POLICY, ROTATOR_POLICY}


@pytest.mark.parametrize("policy", [APP_POLICY, ROTATOR_POLICY])
async def test_capability_matrix_is_exactly_the_intended_one(bao: Any, policy: str) -> None:
    async with bao.client() as root:
        await bootstrap_server(root)
        token = await token_with(root, policy)
    async with client_for(bao.addr, token) as c:
        need = NEEDS[policy]
        have = await capabilities_self(c, list(need))
        for path, caps in need.items():
            # allowed: exactly what is needed, never more (no delete/list/sudo on the side)
            assert have[path] == set(caps), (policy, path, have[path])
        denied = await capabilities_self(c, list(FORBIDDEN[policy]))
        for path, got in denied.items():
            assert got == {"deny"}, (policy, path, got)
        # a sample of other operations on allowed paths stays denied
        for path, caps in need.items():
            assert not (ALL_CAPS - set(caps)) & have[path]


async def test_real_requests_follow_the_policies(private_bao: Any) -> None:
    async with private_bao.client() as root:
        await bootstrap_server(root)
        app_token = await token_with(root, APP_POLICY)
        rot_token = await token_with(root, ROTATOR_POLICY)
    cfg = KV2Path("maily", "config")
    async with client_for(private_bao.addr, app_token) as app:
        assert (await app.kv.read(cfg)).data["db_port"] == 5432
        assert await app.kv.current_version(KV2Path("maily", "api-keys")) >= 1
        ct = await app.transit().encrypt("maily-enc-key", "hello")
        assert await app.transit().decrypt("maily-enc-key", ct) == b"hello"
        with pytest.raises(PermissionDenied):
            await app.kv.write(cfg, {"x": 1}, cas=1)
        # the change feed's beacon: polled and read, never written
        beacon = KV2Path("maily", "_changes")
        assert await app.kv.current_version(beacon) >= 0  # 0: nothing written through us yet
        with pytest.raises(PermissionDenied):
            await app.kv.write(beacon, {"maily/data/config": 99}, cas=0)
        with pytest.raises(PermissionDenied):
            await app.kv.read(KV2Path("maily", "rotation/jwt"))
        with pytest.raises(PermissionDenied):
            await app.transit().rotate_key("maily-enc-key")
        with pytest.raises(PermissionDenied):
            await app.list("maily/metadata")
        await app.write("auth/token/renew-self", {})
    async with client_for(private_bao.addr, rot_token) as rot:
        version = await rot.kv.update(cfg, lambda d: {**d, "jwt_kid": "k2"})
        # the promote's bump of the beacon (check-and-set), then the app's listeners read it
        assert await bump(rot, KV2Path("maily", "_changes"), {cfg.data: version})
        with pytest.raises(PermissionDenied):
            await rot.delete("maily/metadata/_changes")
        state = KV2Path("maily", "rotation/_policy_probe")
        await rot.kv.write(state, {"step": "created"}, cas=0)
        assert await rot.kv.current_version(state) == 1
        before = (await rot.transit().key_versions("maily-enc-key")).latest
        assert await rot.transit().rotate_key("maily-enc-key") == before + 1
        ct = await rot.transit().encrypt("maily-enc-key", "x")
        assert (await rot.transit().rewrap("maily-enc-key", ct)).startswith("vault:v")
        with pytest.raises(PermissionDenied):
            await rot.delete("maily/metadata/config")
        with pytest.raises(PermissionDenied):
            await rot.kv.read(KV2Path("maily", "other"))
        with pytest.raises(PermissionDenied):
            await rot.write("sys/policies/acl/maily-rotator", {"policy": ""})
        # no key of its own making: encrypt with another name is denied, not an upsert
        with pytest.raises((PermissionDenied, TransitKeyNotFound)):
            await rot.transit().encrypt("other-key", "x")
    async with client_for(private_bao.addr, app_token) as app:
        beacon = KV2Path("maily", "_changes")  # what the rotator's bump wrote, the app reads
        assert await app.kv.current_version(beacon) >= 1
        assert (await app.kv.read(beacon)).data[cfg.data] == version


async def test_bootstrap_is_idempotent_with_kubernetes_and_approle(
    private_bao: Any, tmp_path: Path
) -> None:
    with KubernetesStandin(tls=True) as k8s:
        kube = KubernetesAuthConfig(
            host=k8s.url,
            ca_cert=k8s.ca_pem,
            token_reviewer_jwt=k8s.token_reviewer_jwt,
            disable_local_ca_jwt=True,
        )
        async with private_bao.client() as root:
            first = await bootstrap_server(root, kubernetes=kube, approle=True, samples=True)
            assert "policy maily" in first.created
            assert "kubernetes role maily-rotator" in first.created
            # bootstrap_dev of the fixture already made the mounts/key/secrets
            second = await bootstrap_server(root, kubernetes=kube, approle=True, samples=True)
            assert second.created == []
            assert set(second.unchanged) == set(first.created) | set(first.unchanged)

            # the role really logs the rotator's service account in with its policy
            sa = k8s.service_account("vault", "vault-secret-rotation")
            jwt = k8s.issue_projected(sa)
            r = await root.request(
                "POST",
                "auth/kubernetes/login",
                json_body={"role": "maily-rotator", "jwt": jwt},
                authenticated=False,
            )
            auth = (r.body or {})["auth"]
            assert ROTATOR_POLICY in auth["token_policies"]
            # ... and the app's account may not use the rotator's role
            app_sa = k8s.service_account("maily", "maily-api")
            with pytest.raises(PermissionDenied):
                await root.request(
                    "POST",
                    "auth/kubernetes/login",
                    json_body={"role": "maily-rotator", "jwt": k8s.issue_projected(app_sa)},
                    authenticated=False,
                    retries=0,
                )
            # a drifted policy is put back, and only that
            await root.write(
                "sys/policies/acl/maily", {"policy": 'path "maily/*" { capabilities = ["read"] }'}
            )
            third = await bootstrap_server(root, kubernetes=kube, approle=True)
            assert third.created == ["policy maily"]
