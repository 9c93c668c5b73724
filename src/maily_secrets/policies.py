"""Vault policies and auth roles, what each identity needs, and their idempotent
application (``mailyctl vault bootstrap``).

The HCL files in ``maily_secrets/vault_setup/policies/`` and the role files in
``vault_setup/auth/`` are package data and the single source of both (the repository's
``deploy/vault/policies`` and ``deploy/vault/auth`` are links to them), so an installed
wheel bootstraps a server from any directory. ``$MAILY_DEPLOY_DIR`` (or ``--deploy-dir``)
points at an operator's own tree instead (``vault/policies/*.hcl``, ``vault/auth/*.json``).
``NEEDS`` is the intended matrix that the tests check a real server against and
``mailyctl doctor`` checks with ``sys/capabilities-self``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bootstrap import BootstrapReport
from .errors import SecretNotFound, VaultError
from .vault.client import VaultClient

DEPLOY_DIR_ENV = "MAILY_DEPLOY_DIR"
APP_POLICY = "maily"
ROTATOR_POLICY = "maily-rotator"


#: The built-in policies and auth roles (package data).
PACKAGED_DIR = Path(__file__).resolve().parent / "vault_setup"


def deploy_dir() -> Path | None:
    """``$MAILY_DEPLOY_DIR`` when set (an operator's own ``vault/policies`` and
    ``vault/auth``), else None: the packaged ones are used."""
    env = os.environ.get(DEPLOY_DIR_ENV)
    return Path(env) if env else None


def policy_dir(base: Path | None = None) -> Path:
    """``<base>/vault/policies`` (``base``, else ``$MAILY_DEPLOY_DIR``), else the
    packaged ``vault_setup/policies``."""
    base = base or deploy_dir()
    return base / "vault" / "policies" if base else PACKAGED_DIR / "policies"


def auth_dir(base: Path | None = None) -> Path:
    """``<base>/vault/auth``, else the packaged ``vault_setup/auth``."""
    base = base or deploy_dir()
    return base / "vault" / "auth" if base else PACKAGED_DIR / "auth"


def load_policies(directory: Path | None = None) -> dict[str, str]:
    """``{name: hcl}`` of every ``*.hcl`` in ``directory`` (the name is the file's stem)."""
    d = directory or policy_dir()
    files = sorted(d.glob("*.hcl"))
    if not files:
        raise FileNotFoundError(f"no policy files (*.hcl) in {d}; set ${DEPLOY_DIR_ENV}")
    return {f.stem: f.read_text() for f in files}


@dataclass(frozen=True)
class AuthRoles:
    method: str  # "kubernetes" / "approle"
    mount: str
    roles: dict[str, dict[str, Any]]


def load_auth_roles(method: str, directory: Path | None = None) -> AuthRoles:
    path = (directory or auth_dir()) / f"{method}-roles.json"
    doc = json.loads(path.read_text())
    return AuthRoles(method, str(doc.get("mount") or method), dict(doc["roles"]))


# ------------------------------------------------------------------ the intended matrix
#: identity -> {path: capabilities it must have}. Everything not listed must be denied
#: (the tests probe a set of paths each identity must not reach).
NEEDS: dict[str, dict[str, frozenset[str]]] = {
    APP_POLICY: {
        "maily/data/config": frozenset({"read"}),
        "maily/data/api-keys": frozenset({"read"}),
        "maily/data/credentials": frozenset({"read"}),
        "maily/metadata/config": frozenset({"read"}),
        "maily/metadata/api-keys": frozenset({"read"}),
        "maily/metadata/credentials": frozenset({"read"}),
        "maily/data/_changes": frozenset({"read"}),
        "maily/metadata/_changes": frozenset({"read"}),
        "transit/encrypt/maily-enc-key": frozenset({"update"}),
        "transit/decrypt/maily-enc-key": frozenset({"update"}),
        "auth/token/renew-self": frozenset({"update"}),
        "auth/token/lookup-self": frozenset({"read"}),
        "sys/capabilities-self": frozenset({"update"}),
        "database/creds/maily-app": frozenset({"read"}),
        "sys/leases/renew": frozenset({"update"}),
        "sys/leases/revoke": frozenset({"update"}),
    },
    ROTATOR_POLICY: {
        "maily/data/config": frozenset({"create", "read", "update"}),
        "maily/data/api-keys": frozenset({"create", "read", "update"}),
        "maily/data/credentials": frozenset({"create", "read", "update"}),
        "maily/metadata/config": frozenset({"read"}),
        "maily/metadata/api-keys": frozenset({"read"}),
        "maily/metadata/credentials": frozenset({"read"}),
        "maily/data/_changes": frozenset({"create", "read", "update"}),
        "maily/metadata/_changes": frozenset({"read"}),
        "maily/data/rotation/jwt": frozenset({"create", "read", "update"}),
        "maily/data/rotation/_lock": frozenset({"create", "read", "update"}),
        "maily/data/rotation/_rewrap/encryption_key": frozenset({"create", "read", "update"}),
        "maily/metadata/rotation/jwt": frozenset({"read", "list"}),
        "maily/metadata/rotation": frozenset({"list"}),
        "maily/data/rotator/postgres-admin": frozenset({"create", "read", "update"}),
        "maily/metadata/rotator/postgres-admin": frozenset({"read"}),
        "transit/keys/maily-enc-key": frozenset({"read"}),
        "transit/keys/maily-enc-key/rotate": frozenset({"update"}),
        "transit/keys/maily-enc-key/config": frozenset({"update"}),
        "transit/rewrap/maily-enc-key": frozenset({"update"}),
        "transit/encrypt/maily-enc-key": frozenset({"update"}),
        "transit/decrypt/maily-enc-key": frozenset({"update"}),
        "auth/token/renew-self": frozenset({"update"}),
        "auth/token/lookup-self": frozenset({"read"}),
        "sys/capabilities-self": frozenset({"update"}),
    },
}

#: Paths each identity must NOT reach at all (capabilities ``deny``).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    APP_POLICY: (
        "maily/data/rotation/jwt",
        "maily/data/rotator/postgres-admin",
        "maily/data/other",
        "maily/metadata",
        "transit/keys/maily-enc-key",
        "transit/keys/maily-enc-key/rotate",
        "transit/encrypt/other-key",
        "transit/rewrap/maily-enc-key",
        "database/creds/other-role",
        "database/config/maily-postgres",
        "sys/policies/acl/maily",
        "sys/mounts",
        "sys/audit",
        "auth/token/create",
    ),
    ROTATOR_POLICY: (
        "maily/data/other",
        "maily/delete/config",
        "maily/destroy/config",
        "maily/metadata",
        "transit/keys/other-key",
        "transit/keys/maily-enc-key/trim",
        "transit/encrypt/other-key",
        "transit/export/encryption-key/maily-enc-key",
        "database/creds/maily-app",
        "sys/policies/acl/maily-rotator",
        "sys/mounts",
        "sys/audit",
        "auth/token/create",
    ),
}


async def capabilities_self(client: VaultClient, paths: list[str]) -> dict[str, set[str]]:
    """``sys/capabilities-self`` for ``paths``: ``{path: {capability, ...}}``."""
    r = await client.request("POST", "sys/capabilities-self", json_body={"paths": paths})
    body = r.data or {}
    out: dict[str, set[str]] = {}
    for p in paths:
        caps = body.get(p)
        if caps is None and r.body:
            caps = r.body.get(p)
        out[p] = set(caps or [])
    return out


def missing_capabilities(
    have: Mapping[str, set[str]], need: Mapping[str, frozenset[str]]
) -> dict[str, set[str]]:
    """What ``need`` asks for that ``have`` lacks (``root`` grants everything)."""
    out: dict[str, set[str]] = {}
    for path, caps in need.items():
        got = have.get(path, set())
        if "root" in got:
            continue
        lack = set(caps) - got
        if lack:
            out[path] = lack
    return out


# ------------------------------------------------------------------ applying them
def _norm(text: str) -> str:
    return text.strip().replace("\r\n", "\n")


async def ensure_policies(
    client: VaultClient, policies: Mapping[str, str], report: BootstrapReport
) -> None:
    for name, text in sorted(policies.items()):
        try:
            have = (await client.read(f"sys/policies/acl/{name}")).data or {}
            same = _norm(str(have.get("policy") or "")) == _norm(text)
        except SecretNotFound:
            same = False
        if not same:
            await client.write(f"sys/policies/acl/{name}", {"policy": text})
        report.add(f"policy {name}", not same)


async def _ensure_auth_mount(
    client: VaultClient, method: str, mount: str, report: BootstrapReport
) -> None:
    auths = (await client.read("sys/auth")).data or {}
    cur = auths.get(f"{mount}/")
    if cur is None:
        await client.write(f"sys/auth/{mount}", {"type": method})
        report.add(f"auth {mount}/ ({method})", True)
    elif cur.get("type") != method:
        raise VaultError(f"auth mount {mount}/ exists but is {cur.get('type')}, not {method}")
    else:
        report.add(f"auth {mount}/ ({method})", False)


def _same_value(have: Any, want: Any) -> bool:
    if isinstance(want, list):
        return sorted(str(x) for x in (have or [])) == sorted(str(x) for x in want)
    return bool(have == want)


async def _ensure_roles(client: VaultClient, auth: AuthRoles, report: BootstrapReport) -> None:
    for name, want in sorted(auth.roles.items()):
        path = f"auth/{auth.mount}/role/{name}"
        try:
            have: dict[str, Any] | None = (await client.read(path)).data or {}
        except SecretNotFound:
            have = None
        same = have is not None and all(_same_value(have.get(k), v) for k, v in want.items())
        if not same:
            await client.write(path, want)
        report.add(f"{auth.method} role {name}", not same)


@dataclass(frozen=True)
class KubernetesAuthConfig:
    host: str
    ca_cert: str | None = None  # PEM
    token_reviewer_jwt: str | None = field(default=None, repr=False)  # None: its own pod token
    disable_local_ca_jwt: bool = False  # Vault outside the cluster


async def ensure_kubernetes_auth(
    client: VaultClient,
    config: KubernetesAuthConfig,
    roles: AuthRoles,
    report: BootstrapReport,
) -> None:
    await _ensure_auth_mount(client, "kubernetes", roles.mount, report)
    try:
        have = (await client.read(f"auth/{roles.mount}/config")).data or {}
    except SecretNotFound:
        have = {}
    want: dict[str, Any] = {
        "kubernetes_host": config.host,
        "disable_local_ca_jwt": config.disable_local_ca_jwt,
    }
    if config.ca_cert:
        want["kubernetes_ca_cert"] = config.ca_cert
    same = (
        have.get("kubernetes_host") == config.host
        and bool(have.get("disable_local_ca_jwt")) == config.disable_local_ca_jwt
    ) and (
        not config.ca_cert
        or _norm(str(have.get("kubernetes_ca_cert") or "")) == _norm(config.ca_cert)
    )
    if config.token_reviewer_jwt and not have.get("token_reviewer_jwt_set"):
        same = False
    if not same:
        body = dict(want)
        if config.token_reviewer_jwt:
            body["token_reviewer_jwt"] = config.token_reviewer_jwt
        await client.write(f"auth/{roles.mount}/config", body)
    report.add(f"kubernetes auth config ({config.host})", not same)
    await _ensure_roles(client, roles, report)


async def ensure_approle(client: VaultClient, roles: AuthRoles, report: BootstrapReport) -> None:
    await _ensure_auth_mount(client, "approle", roles.mount, report)
    await _ensure_roles(client, roles, report)
