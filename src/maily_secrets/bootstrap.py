"""Idempotent bootstrap of a Vault server for Maily: mounts, transit key, sample secrets.

Run it as often as you like: mounts and keys are created only when missing, and
sample secrets are written with check-and-set version 0 (create-only) or only
fill in keys that are missing, so existing values are never overwritten.
Sample secret values are generated at random, never fixed strings.
"""

from __future__ import annotations

import logging
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from .errors import SecretNotFound, VaultError
from .paths import KV2Path
from .vault.client import VaultClient

log = logging.getLogger("maily_secrets.bootstrap")

TRANSIT_KEY = "maily-enc-key"
_URL_SAFE = string.ascii_letters + string.digits + "-_"


def random_password(n: int = 32) -> str:
    """A random password that is safe inside a DSN/URL without escaping."""
    return "".join(secrets.choice(_URL_SAFE) for _ in range(n))


def sample_secrets() -> dict[str, dict[str, Any]]:
    """The guide's three secrets with freshly generated values."""
    upper = string.ascii_uppercase + string.digits
    return {
        "config": {
            "db_host": "127.0.0.1",
            "db_port": 5432,
            "db_username": "maily_app",
            "db_password": random_password(),
            "redis_host": "127.0.0.1",
            "redis_port": 6379,
            "redis_password": random_password(),
            "jwt_secret": secrets.token_urlsafe(48),
            "smtp_host": "127.0.0.1",
            "smtp_port": 2525,
            "smtp_username": "maily",
            "smtp_password": random_password(),
        },
        "api-keys": {
            "stripe": "sk_test_" + secrets.token_hex(24),
            "sendgrid": "SG." + secrets.token_urlsafe(22) + "." + secrets.token_urlsafe(32),
            "openai": "sk-" + secrets.token_urlsafe(36),
            "internal_service": secrets.token_urlsafe(32),
        },
        "credentials": {
            "aws": {
                "aws_access_key": "AKIA" + "".join(secrets.choice(upper) for _ in range(16)),
                "aws_secret_key": secrets.token_urlsafe(30),
                "aws_region": "us-east-1",
            }
        },
    }


@dataclass
class BootstrapReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def add(self, what: str, created: bool) -> None:
        (self.created if created else self.unchanged).append(what)


async def ensure_kv2_mount(client: VaultClient, mount: str, report: BootstrapReport) -> None:
    mounts = (await client.read("sys/mounts")).data or {}
    cur = mounts.get(f"{mount}/")
    if cur is None:
        await client.write(
            f"sys/mounts/{mount}",
            {"type": "kv", "options": {"version": "2"}, "description": "Maily secrets"},
        )
        report.add(f"mount {mount}/ (kv v2)", True)
    else:
        version = str((cur.get("options") or {}).get("version") or "1")
        if cur.get("type") not in ("kv", "generic") or version != "2":
            raise VaultError(
                f"mount {mount}/ exists but is {cur.get('type')} version {version}, not kv v2"
            )
        report.add(f"mount {mount}/ (kv v2)", False)
    # Every write must carry check-and-set; keep every version.
    await client.kv.configure(mount, cas_required=True)


async def ensure_transit(
    client: VaultClient, mount: str, key: str, report: BootstrapReport
) -> None:
    mounts = (await client.read("sys/mounts")).data or {}
    if f"{mount}/" not in mounts:
        await client.write(f"sys/mounts/{mount}", {"type": "transit"})
        report.add(f"mount {mount}/ (transit)", True)
    else:
        report.add(f"mount {mount}/ (transit)", False)
    try:
        await client.read(f"{mount}/keys/{key}")
        report.add(f"transit key {key}", False)
    except SecretNotFound:
        await client.write(f"{mount}/keys/{key}", {"type": "aes256-gcm96"})
        report.add(f"transit key {key}", True)


async def ensure_secret(
    client: VaultClient, path: KV2Path, sample: dict[str, Any], report: BootstrapReport
) -> None:
    """Create the secret, or add only the keys it lacks; never overwrite a value."""
    added: list[str] = []

    def fill(cur: dict[str, Any]) -> dict[str, Any]:
        added.clear()
        for k, v in sample.items():
            if k not in cur:
                cur[k] = v
                added.append(k)
        return cur

    current = await client.kv.current_version(path)
    if current == 0:
        await client.kv.write(path, sample, cas=0)
        report.add(f"secret {path.data}", True)
        return
    cur = await client.kv.read(path)
    if all(k in cur.data for k in sample):
        report.add(f"secret {path.data}", False)
        return
    await client.kv.update(path, fill)
    report.add(f"secret {path.data} (+{', '.join(added)})", True)


async def bootstrap_dev(
    client: VaultClient, *, kv_mount: str = "maily", transit_mount: str = "transit"
) -> BootstrapReport:
    report = BootstrapReport()
    await ensure_kv2_mount(client, kv_mount, report)
    await ensure_transit(client, transit_mount, TRANSIT_KEY, report)
    for name, data in sample_secrets().items():
        await ensure_secret(client, KV2Path(kv_mount, name), data, report)
    return report
