"""``mailyctl doctor``: the guide's troubleshooting list, run against a real server.

One line per check (ok / warn / fail / skip) with a hint how to fix it; exit 1 when a
check failed, 2 on a usage error; ``--json`` for machines.
"""

from __future__ import annotations

import asyncio
import secrets as _secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ..bootstrap import TRANSIT_KEY
from ..cliname import program
from ..errors import (
    AuthFailed,
    ConfigurationError,
    PermissionDenied,
    SecretNotFound,
    TransitKeyNotFound,
    VaultError,
    VaultUnavailable,
)
from ..paths import KV2Path
from ..policies import APP_POLICY, NEEDS, ROTATOR_POLICY, capabilities_self, missing_capabilities
from ..rotation.config import ConfigError, RotationConfig
from ..rotation.engine import RotationEngine
from ..settings import VaultSettings
from ..vault.client import VaultClient
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    config_fail,
    fmt_time,
    print_json,
    say,
    styled,
)

Status = Literal["ok", "warn", "fail", "skip"]
SECRETS = ("config", "api-keys", "credentials")
TOKEN_TTL_WARN_S = 300

H_PODS = "kubectl get pods -n vault; kubectl logs -n vault vault-0"
H_ADDR = "check VAULT_ADDR (in Kubernetes: http://vault.vault:8200)"
H_UNSEAL = (
    "unseal it: bao operator unseal (each node), then kubectl logs -n vault vault-0;"
    " a dev server's key is in <dev dir>/unseal-key (paste it at the prompt)"
)
H_AUTH = (
    "the token is revoked, expired or wrong: set VAULT_TOKEN / VAULT_TOKEN_FILE, or check the"
    " Kubernetes auth role (VAULT_ROLE) is bound to this service account"
    " ({mailyctl} vault bootstrap)"
)
H_POLICY = (
    "the policy lacks these rights: apply the policies maily and maily-rotator"
    " ({mailyctl} vault bootstrap) and check the role's token_policies"
)
H_ROTATION = (
    "check the rotation logs: kubectl logs -n vault vault-secret-rotation-<pod-id>;"
    " the ConfigMap vault-secret-rotation-config; then"
    " {mailyctl} secrets rotate --due --env={env} --notify"
)


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""


class Doctor:
    def __init__(
        self, client: VaultClient, config: RotationConfig, env: str, identity: str
    ) -> None:
        self.client = client
        self.config = config
        self.env = env
        self.identity = identity
        self.checks: list[Check] = []

    def add(self, name: str, status: Status, detail: str, hint: str = "") -> Check:
        """``{mailyctl}`` and ``{env}`` in ``hint``: the command as invoked, the env."""
        hint = hint.replace("{mailyctl}", program()).replace("{env}", self.env)
        c = Check(
            name, status, " ".join(detail.split()), hint if status in ("fail", "warn") else ""
        )
        self.checks.append(c)
        return c

    def skip_rest(self, names: list[str], why: str) -> None:
        for n in names:
            self.add(n, "skip", why)

    async def run(self) -> list[Check]:
        later = [
            "auth",
            "token ttl",
            "capabilities",
            *[f"secret {s}" for s in SECRETS],
            f"transit key {TRANSIT_KEY}",
            "rotation",
            "audit device",
        ]
        addr = self.client.settings.api_addr  # VAULT_AGENT_ADDR when set
        try:
            r = await self.client.request(
                "GET",
                "sys/health",
                authenticated=False,
                retries=0,
                params={
                    "standbyok": "true",
                    "perfstandbyok": "true",
                    "sealedcode": "200",
                    "uninitcode": "200",
                },
            )
        except VaultUnavailable as exc:
            self.add("reachable", "fail", f"{addr}: {exc}", f"{H_ADDR}; {H_PODS}")
            self.skip_rest(["server state", *later], "server unreachable")
            return self.checks
        except VaultError as exc:
            self.add("reachable", "fail", f"{addr}: {exc}", H_PODS)
            self.skip_rest(["server state", *later], "server unreachable")
            return self.checks
        h = r.body or {}
        self.add("reachable", "ok", f"{addr} (version {h.get('version', '?')})")
        if not h.get("initialized", True):
            self.add("server state", "fail", "not initialized", "bao operator init")
            self.skip_rest(later, "server not initialized")
            return self.checks
        if h.get("sealed"):
            self.add("server state", "fail", "sealed", H_UNSEAL)
            self.skip_rest(later, "server sealed")
            return self.checks
        if h.get("standby"):
            self.add(
                "server state",
                "ok",
                "unsealed, standby (requests are forwarded to the active node)",
            )
        else:
            self.add("server state", "ok", "unsealed, active")

        # auth + token
        try:
            look = (await self.client.read("auth/token/lookup-self")).data or {}
        except (AuthFailed, PermissionDenied) as exc:
            self.add("auth", "fail", str(exc), H_AUTH)
            self.skip_rest(later[1:], "not authenticated")
            return self.checks
        except VaultError as exc:
            self.add("auth", "fail", str(exc), H_AUTH)
            self.skip_rest(later[1:], "not authenticated")
            return self.checks
        policies = sorted(
            set(look.get("policies") or []) | set(look.get("identity_policies") or [])
        )
        self.add(
            "auth",
            "ok",
            f"{self.client.settings.auth_method} auth; policies {', '.join(policies) or '-'}",
        )
        self._token_ttl(look)
        await self._capabilities()
        for s in SECRETS:
            await self._secret(s)
        await self._transit()
        await self._rotation()
        await self._audit()
        return self.checks

    def _token_ttl(self, look: dict[str, Any]) -> None:
        ttl = int(look.get("ttl") or 0)
        renewable = bool(look.get("renewable"))
        if ttl == 0:
            self.add(
                "token ttl",
                "warn",
                "token never expires (root or periodic-less token)",
                "services should log in with a role (kubernetes/approle) that issues"
                " short-lived renewable tokens",
            )
        elif ttl < TOKEN_TTL_WARN_S and not renewable:
            self.add(
                "token ttl",
                "fail",
                f"{ttl}s left, not renewable",
                "the token expires soon: log in again (or raise the role's token_ttl)",
            )
        elif ttl < TOKEN_TTL_WARN_S:
            self.add("token ttl", "warn", f"{ttl}s left (renewable)", "check token renewal")
        else:
            self.add(
                "token ttl",
                "ok",
                f"{ttl}s left{' (renewable)' if renewable else ', not renewable'}",
            )

    async def _capabilities(self) -> None:
        need = NEEDS[self.identity]
        try:
            have = await capabilities_self(self.client, list(need))
        except VaultError as exc:
            self.add("capabilities", "fail", str(exc), H_POLICY)
            return
        lack = missing_capabilities(have, need)
        if lack:
            detail = "; ".join(f"{p}: {', '.join(sorted(c))}" for p, c in sorted(lack.items()))
            self.add(
                "capabilities",
                "fail",
                f"policy {self.identity} missing: {detail}",
                H_POLICY,
            )
        else:
            self.add("capabilities", "ok", f"all {len(need)} paths of policy {self.identity}")

    async def _secret(self, name: str) -> None:
        path = KV2Path(self.client.settings.kv_mount, name)
        check = f"secret {name}"
        try:
            v = await self.client.kv.read(path)
        except PermissionDenied:
            self.add(check, "fail", f"{path.data}: permission denied", H_POLICY)
        except SecretNotFound as exc:
            self.add(
                check,
                "fail",
                f"{path.data}: not found ({exc})",
                f"check the path; bao kv get {path.mount}/{name}; create it (dev:"
                " {mailyctl} vault bootstrap --samples) or undelete the version:"
                f" bao kv undelete -versions=<n> {path.mount}/{name}",
            )
        except VaultError as exc:
            self.add(check, "fail", f"{path.data}: {exc}", H_PODS)
        else:
            self.add(check, "ok", f"{path.data} version {v.version}, {len(v.data)} keys")

    async def _transit(self) -> None:
        check = f"transit key {TRANSIT_KEY}"
        transit = self.client.transit()
        probe = "maily-doctor-" + _secrets.token_hex(4)
        try:
            ct = await transit.encrypt(TRANSIT_KEY, probe)
            ok = await transit.decrypt(TRANSIT_KEY, ct) == probe.encode()
        except TransitKeyNotFound:
            self.add(
                check,
                "fail",
                f"{transit.mount}/keys/{TRANSIT_KEY} does not exist",
                "create it: {mailyctl} vault bootstrap (or bao write -f"
                f" {transit.mount}/keys/{TRANSIT_KEY})",
            )
            return
        except PermissionDenied:
            self.add(check, "fail", "encrypt/decrypt denied", H_POLICY)
            return
        except VaultError as exc:
            self.add(check, "fail", str(exc), "check the transit mount: {mailyctl} vault bootstrap")
            return
        if ok:
            self.add(check, "ok", "encrypt/decrypt round trip")
        else:
            self.add(check, "fail", "round trip returned another value", "check the key")

    async def _rotation(self) -> None:
        engine = RotationEngine(self.config, self.env, client=self.client)
        try:
            rows = await engine.status()
        except PermissionDenied:
            self.add(
                "rotation",
                "skip",
                "this identity may not read the rotation state (run as maily-rotator or admin)",
            )
            return
        except VaultError as exc:
            self.add("rotation", "fail", str(exc), H_ROTATION)
            return
        failed = [r["type"] for r in rows if r.get("last_outcome") in ("failed", "rolled_back")]
        overdue = [r["type"] for r in rows if r.get("overdue")]
        busy = [r["type"] for r in rows if r.get("in_progress")]
        hint = H_ROTATION
        if failed or overdue:
            parts = []
            if overdue:
                parts.append(f"overdue: {', '.join(overdue)}")
            if failed:
                parts.append(f"last run failed: {', '.join(failed)}")
            self.add("rotation", "fail", "; ".join(parts), hint)
        elif busy:
            self.add("rotation", "warn", f"in progress: {', '.join(busy)}", hint)
        else:
            nxt = min((r["next_due"] for r in rows if r.get("next_due")), default=None)
            when = f"; next due {fmt_time(nxt)}" if isinstance(nxt, datetime) else ""
            self.add("rotation", "ok", f"{len(rows)} types, none overdue{when}")

    async def _audit(self) -> None:
        try:
            devices = (await self.client.read("sys/audit")).data or {}
        except PermissionDenied:
            self.add(
                "audit device",
                "skip",
                "listing audit devices needs sudo on sys/audit (run with an admin token)",
            )
            return
        except VaultError as exc:
            self.add("audit device", "fail", str(exc), H_PODS)
            return
        if not devices:
            self.add(
                "audit device",
                "fail",
                "no audit device enabled: accesses are not logged (best practice 6)",
                'add the declarative audit "file" stanza of deploy/vault/server/vault.hcl'
                " (or bao audit enable file file_path=/vault/audit/audit.log)",
            )
            return
        desc = ", ".join(f"{k.rstrip('/')} ({v.get('type')})" for k, v in sorted(devices.items()))
        self.add("audit device", "ok", desc)


def _settings(cfg: RotationConfig, env: str | None) -> tuple[str, VaultSettings]:
    resolved = cfg.environment(env)
    return resolved.name, resolved.vault_settings()


_MARK = {
    "ok": styled(" ok ", "green"),
    "warn": styled("warn", "yellow"),
    "fail": styled("FAIL", "red"),
    "skip": styled("skip", "dim"),
}


def doctor(
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            metavar="NAME",
            help="Environment of the rotation config (default: $MAILY_ENV).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", metavar="FILE", help="Rotation config YAML.", show_default=False),
    ] = None,
    identity: Annotated[
        str,
        typer.Option(
            "--as",
            metavar="POLICY",
            help=f"Whose needs to check: {APP_POLICY} (the app) or {ROTATOR_POLICY}.",
        ),
    ] = APP_POLICY,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Diagnose the Vault setup: reachable, sealed/standby, auth, token TTL, capabilities
    of every path the service needs, each secret, the transit key, rotation state
    (overdue types), audit device. Exit 1 when a check fails."""
    if identity not in NEEDS:
        say(styled("error:", "red"), f" --as must be one of {', '.join(NEEDS)}", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        cfg = RotationConfig.load(config)
        env_name, settings = _settings(cfg, env)
    except (ConfigError, ConfigurationError, ValueError) as exc:
        config_fail(exc)
    settings = settings.model_copy(update={"max_retries": min(settings.max_retries, 1)})

    async def go() -> list[Check]:
        async with VaultClient(settings) as client:
            return await Doctor(client, cfg, env_name, identity).run()

    try:
        checks = asyncio.run(go())
    except ConfigurationError as exc:
        config_fail(exc)
    except VaultError as exc:  # a credential that cannot even be loaded
        checks = [Check("auth", "fail", str(exc), H_AUTH.replace("{mailyctl}", program()))]
    failed = any(c.status == "fail" for c in checks)
    if json_out:
        print_json(
            {
                "ok": not failed,
                "env": env_name,
                "addr": settings.api_addr,
                "identity": identity,
                "generated_at": datetime.now(UTC),
                "checks": [asdict(c) for c in checks],
            }
        )
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            say(_MARK[c.status], f" {c.name:<{width}}  {c.detail}")
            if c.hint:
                say(f"     {'':<{width}}  ", styled("fix:", "dim"), f" {c.hint}")
    raise typer.Exit(EXIT_FAILURE if failed else EXIT_OK)
