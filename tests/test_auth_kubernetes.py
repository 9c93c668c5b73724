"""Kubernetes auth against a real OpenBao and a TokenReview stand-in.

OpenBao's real ``kubernetes`` auth plugin is configured with the stand-in
(``tests/k8s_standin.py``) as its Kubernetes API: on every login it parses the
service-account JWT itself (claims, expiry, bound names/namespaces) and then
POSTs a TokenReview to the stand-in, authenticated with ``token_reviewer_jwt``
over TLS checked against ``kubernetes_ca_cert``.  The stand-in verifies the
JWT's RS256 signature with its own key, as kube-apiserver does.  Nothing of
the Vault API is mocked.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from maily_secrets.errors import AuthFailed, PermissionDenied
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.auth import KubernetesAuth, auth_from_settings
from maily_secrets.vault.client import VaultClient
from tests.k8s_standin import KubernetesStandin, ServiceAccount, fingerprint, new_rsa_key

CONFIG_KEYS = {"db_host", "db_password", "jwt_secret", "smtp_host"}
NAMESPACE, SA_NAME = "maily", "maily-api"


@pytest.fixture
def k8s() -> Iterator[KubernetesStandin]:
    with KubernetesStandin(tls=True) as standin:
        yield standin


@dataclass
class K8sMount:
    mount: str
    policy: str
    standin: KubernetesStandin
    sa: ServiceAccount
    jwt_file: Path
    root: VaultClient

    @property
    def login_path(self) -> str:
        return f"auth/{self.mount}/login"

    def write_jwt(self, token: str) -> Path:
        """What the kubelet does: (re)write the projected token file."""
        self.jwt_file.write_text(token)
        return self.jwt_file

    def settings(self, **kw: Any) -> VaultSettings:
        base: dict[str, Any] = {
            "addr": self.root.settings.addr,
            "auth_method": "kubernetes",
            "kubernetes_jwt_path": self.jwt_file,
            "kubernetes_mount": self.mount,
            "role": "maily",
        }
        base.update(kw)
        return VaultSettings(**base)

    async def add_role(self, name: str, **kw: Any) -> None:
        body: dict[str, Any] = {
            "bound_service_account_names": [SA_NAME],
            "bound_service_account_namespaces": [NAMESPACE],
            "token_policies": [self.policy],
            "token_ttl": "5m",
        }
        body.update(kw)
        await self.root.write(f"auth/{self.mount}/role/{name}", body)


@pytest.fixture
async def k8s_auth(
    root: VaultClient, k8s: KubernetesStandin, tmp_path: Path
) -> AsyncIterator[K8sMount]:
    """A kubernetes auth mount of the test's own, pointed at the stand-in."""
    suffix = secrets.token_hex(4)
    mount, policy = f"k8s-{suffix}", f"maily-k8s-{suffix}"
    await root.write(f"sys/auth/{mount}", {"type": "kubernetes"})
    await root.write(
        f"auth/{mount}/config",
        {
            "kubernetes_host": k8s.url,
            "kubernetes_ca_cert": k8s.ca_pem,
            "token_reviewer_jwt": k8s.token_reviewer_jwt,
            "disable_local_ca_jwt": True,
        },
    )
    await root.write(
        f"sys/policies/acl/{policy}",
        {"policy": 'path "maily/data/config" { capabilities = ["read"] }'},
    )
    sa = k8s.service_account(NAMESPACE, SA_NAME)
    m = K8sMount(mount, policy, k8s, sa, tmp_path / "sa-token", root)
    await m.add_role("maily")
    m.write_jwt(k8s.issue_projected(sa))
    try:
        yield m
    finally:
        await root.delete(f"sys/auth/{mount}")
        await root.delete(f"sys/policies/acl/{policy}")


async def login_count(bao: Any, m: K8sMount, at_least: int) -> int:
    """Login requests in the audit log; waits for ``at_least``, then a little more."""
    return int(await bao.settled_audit_count(m.login_path, at_least))


# ----------------------------------------------------------------------------- (1)
@pytest.mark.parametrize("form", ["projected", "legacy"])
async def test_login_and_read_config(k8s_auth: K8sMount, bao: Any, form: str) -> None:
    m, k8s = k8s_auth, k8s_auth.standin
    token = k8s.issue_projected(m.sa) if form == "projected" else k8s.issue_legacy(m.sa)
    m.write_jwt(token)
    before = k8s.reviews
    svc = VaultService(m.settings())
    try:
        assert isinstance(svc.client.tokens.method, KubernetesAuth)
        config = await svc.get_config()
        assert CONFIG_KEYS <= config.keys()

        # The plugin really asked the "cluster": one TokenReview, with our reviewer
        # token, about exactly the JWT in the file, and the stand-in vouched for it.
        assert k8s.reviews == before + 1
        review = k8s.review_log[-1]
        assert review.reviewer == k8s.reviewer_account.username
        assert review.authenticated and review.username == m.sa.username
        assert review.token_sha256 == fingerprint(token)
        assert await login_count(bao, m, 1) == 1
        assert svc.client.tokens.logins == 1

        # The token OpenBao issued carries the role and the service account.
        current = svc.client.tokens.current()
        assert current is not None and 0 < current.ttl <= 300
        me = (await svc.client.request("GET", "auth/token/lookup-self")).data or {}
        assert me["meta"]["role"] == "maily"
        assert me["meta"]["service_account_name"] == SA_NAME
        assert me["meta"]["service_account_namespace"] == NAMESPACE
        assert me["meta"]["service_account_uid"] == m.sa.uid
        assert m.policy in me["policies"]
    finally:
        await svc.close()


# ----------------------------------------------------------------------------- (2)
@pytest.mark.parametrize(("namespace", "name"), [(NAMESPACE, "intruder"), ("other-team", SA_NAME)])
async def test_unbound_service_account_is_refused(
    k8s_auth: K8sMount, namespace: str, name: str
) -> None:
    m, k8s = k8s_auth, k8s_auth.standin
    m.write_jwt(k8s.issue_projected(k8s.service_account(namespace, name)))
    before = k8s.reviews
    svc = VaultService(m.settings())
    try:
        with pytest.raises(AuthFailed) as ei:
            await svc.get_config()
    finally:
        await svc.close()
    msg = str(ei.value)
    assert "kubernetes login" in msg
    assert "role 'maily'" in msg and f"auth/{m.mount}" in msg
    assert "HTTP 403" in msg and "bound service accounts" in msg
    assert ei.value.status == 403
    # OpenBao refuses on the JWT's claims alone, before asking Kubernetes.
    assert k8s.reviews == before


# ----------------------------------------------------------------------------- (3)
async def test_jwt_signed_by_another_key_is_refused(k8s_auth: K8sMount) -> None:
    m, k8s = k8s_auth, k8s_auth.standin
    forged = k8s.issue_projected(m.sa, key=new_rsa_key())  # right claims, wrong signer
    m.write_jwt(forged)
    before = k8s.reviews
    svc = VaultService(m.settings())
    try:
        with pytest.raises(AuthFailed, match=r"role 'maily' .*refused \(HTTP 403"):
            await svc.get_config()
    finally:
        await svc.close()
    # The claims fooled nobody: it was the TokenReview that said no.
    assert k8s.reviews == before + 1
    review = k8s.review_log[-1]
    assert review.token_sha256 == fingerprint(forged)
    assert not review.authenticated and "cryptographic" in (review.error or "")


async def test_expired_and_deleted_service_account_tokens_are_refused(
    k8s_auth: K8sMount,
) -> None:
    m, k8s = k8s_auth, k8s_auth.standin
    # Expired: OpenBao checks exp itself.
    m.write_jwt(k8s.issue_projected(m.sa, ttl=600, now=time.time() - 3600))
    svc = VaultService(m.settings())
    try:
        with pytest.raises(AuthFailed, match="HTTP 403"):
            await svc.get_config()
    finally:
        await svc.close()
    # Valid JWT, but the service account was deleted and recreated (new uid):
    # only the API server knows, and the review says so.
    m.write_jwt(k8s.issue_projected(m.sa))
    k8s.delete_service_account(NAMESPACE, SA_NAME)
    k8s.service_account(NAMESPACE, SA_NAME)
    before = k8s.reviews
    svc = VaultService(m.settings())
    try:
        with pytest.raises(AuthFailed, match="HTTP 403"):
            await svc.get_config()
    finally:
        await svc.close()
    assert k8s.reviews == before + 1 and not k8s.review_log[-1].authenticated


@pytest.mark.parametrize("reviewer", ["not-auth-delegator", "not-a-token"])
async def test_reviewer_jwt_is_checked_by_the_api(k8s_auth: K8sMount, reviewer: str) -> None:
    """The plugin sends token_reviewer_jwt as bearer; the "API server" refuses a bad one."""
    m, k8s = k8s_auth, k8s_auth.standin
    bad = (
        k8s.issue_legacy(k8s.service_account("default", "nobody"))
        if reviewer == "not-auth-delegator"
        else "not-a-jwt"
    )
    await m.root.write(
        f"auth/{m.mount}/config",
        {
            "kubernetes_host": k8s.url,
            "kubernetes_ca_cert": k8s.ca_pem,
            "token_reviewer_jwt": bad,
            "disable_local_ca_jwt": True,
        },
    )
    before = k8s.reviews
    async with VaultService(m.settings()) as svc:
        with pytest.raises(AuthFailed, match="HTTP 403"):
            await svc.get_config()
    assert k8s.reviews == before + 1
    expected = 403 if reviewer == "not-auth-delegator" else 401
    assert k8s.review_log[-1].http_status == expected


async def test_kubernetes_api_down_is_auth_failed(k8s_auth: K8sMount) -> None:
    """OpenBao answers 403 when it cannot reach the API: the client cannot tell more."""
    k8s_auth.standin.stop()
    async with VaultService(k8s_auth.settings()) as svc:
        with pytest.raises(AuthFailed, match="HTTP 403"):
            await svc.get_config()


async def test_missing_jwt_file_is_a_clear_auth_error(k8s_auth: K8sMount) -> None:
    absent = k8s_auth.jwt_file.with_name("absent")
    async with VaultService(k8s_auth.settings(kubernetes_jwt_path=absent)) as svc:
        with pytest.raises(AuthFailed, match="cannot read Kubernetes service-account token"):
            await svc.get_config()


# ----------------------------------------------------------------------------- (4)
async def test_auto_picks_kubernetes_with_default_role(k8s_auth: K8sMount) -> None:
    m = k8s_auth
    s = VaultSettings(
        addr=m.root.settings.addr, kubernetes_jwt_path=m.jwt_file, kubernetes_mount=m.mount
    )
    assert s.auth_method == "auto" and s.role == "maily"
    method = auth_from_settings(s)
    assert isinstance(method, KubernetesAuth)
    assert (method.role, method.mount, method.jwt_path) == ("maily", m.mount, m.jwt_file)
    async with VaultService(s) as svc:
        assert CONFIG_KEYS <= (await svc.get_config()).keys()
        assert svc.client.tokens.logins == 1


async def test_auto_from_environment(k8s_auth: K8sMount, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only environment variables, as in a pod: VAULT_ROLE unset means role ``maily``."""
    m = k8s_auth
    monkeypatch.setenv("VAULT_ADDR", m.root.settings.addr)
    monkeypatch.setenv("VAULT_K8S_JWT_PATH", str(m.jwt_file))
    monkeypatch.setenv("VAULT_K8S_MOUNT", m.mount)
    async with VaultService() as svc:
        assert svc.settings.role == "maily"
        assert isinstance(svc.client.tokens.method, KubernetesAuth)
        assert CONFIG_KEYS <= (await svc.get_config()).keys()
        me = (await svc.client.request("GET", "auth/token/lookup-self")).data or {}
        assert me["meta"]["role"] == "maily"

    # VAULT_ROLE picks another role of the same mount.
    await m.add_role("maily-worker")
    monkeypatch.setenv("VAULT_ROLE", "maily-worker")
    async with VaultService() as svc:
        assert CONFIG_KEYS <= (await svc.get_config()).keys()
        me = (await svc.client.request("GET", "auth/token/lookup-self")).data or {}
        assert me["meta"]["role"] == "maily-worker"


async def test_auto_without_jwt_file_is_not_kubernetes(tmp_path: Path) -> None:
    s = VaultSettings(addr="http://127.0.0.1:1", kubernetes_jwt_path=tmp_path / "absent")
    assert not isinstance(auth_from_settings(s), KubernetesAuth)
    async with VaultService(s) as svc:
        with pytest.raises(AuthFailed, match="no Vault credentials"):
            await svc.get_config()


# ----------------------------------------------------------------------------- (5)
@pytest.mark.parametrize("via", ["service", "client"])
async def test_concurrent_first_reads_log_in_once(k8s_auth: K8sMount, bao: Any, via: str) -> None:
    """50 concurrent first reads: one login, one TokenReview.

    ``service`` goes through the facade (whose cache also coalesces the reads);
    ``client`` sends 50 real reads, so only the token manager keeps it to one login.
    """
    m, k8s = k8s_auth, k8s_auth.standin
    before = k8s.reviews
    async with VaultService(m.settings()) as svc:
        if via == "service":
            results = await asyncio.gather(*(svc.get_config() for _ in range(50)))
            assert all(CONFIG_KEYS <= r.keys() for r in results)
        else:
            resp = await asyncio.gather(*(svc.client.read("maily/data/config") for _ in range(50)))
            assert all(CONFIG_KEYS <= ((r.data or {}).get("data") or {}).keys() for r in resp)
        assert svc.client.tokens.logins == 1
    assert k8s.reviews == before + 1
    assert await login_count(bao, m, 1) == 1


# ----------------------------------------------------------------------------- (6)
async def test_revoked_token_logs_in_again(k8s_auth: K8sMount, bao: Any) -> None:
    m, k8s = k8s_auth, k8s_auth.standin
    async with VaultService(m.settings(cache_ttl=0)) as svc:
        await svc.get_config()
        first = svc.client.tokens.current()
        assert first is not None
        before = k8s.reviews

        # The kubelet rotated the projected token meanwhile; the admin revokes ours.
        rotated = k8s.issue_projected(m.sa)
        m.write_jwt(rotated)
        await m.root.write("auth/token/revoke", {"token": first.value})

        config = await svc.get_config()  # 403 -> re-login -> retry
        assert CONFIG_KEYS <= config.keys()
        second = svc.client.tokens.current()
        assert second is not None and second.value != first.value
        assert svc.client.tokens.logins == 2
        assert k8s.reviews == before + 1
        assert k8s.review_log[-1].token_sha256 == fingerprint(rotated)  # file re-read
        assert await login_count(bao, m, 2) == 2


async def test_expired_token_logs_in_again(k8s_auth: K8sMount) -> None:
    """A token at its max TTL cannot be renewed: the next read logs in again.

    (The background renewer usually gets there first: renew-self past the max TTL
    fails with OpenBao's HTTP 500 "past the max TTL, cannot renew", and the token
    manager logs in instead.  The read must succeed either way.)
    """
    m, k8s = k8s_auth, k8s_auth.standin
    await m.add_role("maily", token_ttl="2s", token_max_ttl="2s")
    async with VaultService(m.settings(cache_ttl=0)) as svc:
        await svc.get_config()
        first = svc.client.tokens.current()
        assert first is not None and 0 < first.ttl <= 2
        before = k8s.reviews
        await asyncio.sleep(first.ttl + 0.5)  # past the token's expiry
        assert CONFIG_KEYS <= (await svc.get_config()).keys()
        second = svc.client.tokens.current()
        assert second is not None and second.value != first.value
        assert svc.client.tokens.logins >= 2
        assert k8s.reviews >= before + 1
        # The old token is really dead on the server side.
        with pytest.raises(PermissionDenied):
            await svc.client.request("GET", "auth/token/lookup-self", token=first.value)


# ----------------------------------------------------------------------------- 403 handling
async def test_failed_relogin_after_revocation_is_auth_failed(k8s_auth: K8sMount) -> None:
    m, k8s = k8s_auth, k8s_auth.standin
    async with VaultService(m.settings(cache_ttl=0)) as svc:
        await svc.get_config()
        token = svc.client.tokens.current()
        assert token is not None
        k8s.delete_service_account(NAMESPACE, SA_NAME)  # its JWT no longer authenticates
        await m.root.write("auth/token/revoke", {"token": token.value})
        with pytest.raises(AuthFailed, match="kubernetes login"):
            await svc.get_config()


async def test_permission_denied_does_not_log_in_again(k8s_auth: K8sMount) -> None:
    m, k8s = k8s_auth, k8s_auth.standin
    async with VaultService(m.settings()) as svc:
        await svc.get_config()
        token = svc.client.tokens.current()
        before = k8s.reviews
        for _ in range(5):
            with pytest.raises(PermissionDenied):
                await svc.get_api_keys()  # not in the role's policy
        logins, reviews = svc.client.tokens.logins, k8s.reviews - before
        assert (logins, reviews) == (1, 0), (
            f"5 denied reads with a live token caused {logins - 1} re-logins and {reviews}"
            " TokenReviews"
        )
        assert svc.client.tokens.current() is token
