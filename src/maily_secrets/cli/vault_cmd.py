"""``mailyctl vault``: apply Maily's Vault setup (mounts, key, policies, auth roles) to a server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ..bootstrap import BootstrapReport, ensure_engines
from ..errors import ConfigurationError, VaultError
from ..policies import (
    KubernetesAuthConfig,
    auth_dir,
    ensure_approle,
    ensure_kubernetes_auth,
    ensure_policies,
    load_auth_roles,
    load_policies,
    policy_dir,
)
from ..rotation.config import ConfigError, RotationConfig
from ..settings import VaultSettings
from ..vault.client import VaultClient
from .common import EXIT_USAGE, config_fail, fail, print_json, say, styled

app = typer.Typer(
    help="Apply Maily's Vault setup (mounts, transit key, policies, auth roles) idempotently.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

IN_CLUSTER_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")


async def bootstrap_server(
    client: VaultClient,
    *,
    deploy: Path | None = None,
    kubernetes: KubernetesAuthConfig | None = None,
    approle: bool = False,
    samples: bool = False,
    kv_mount: str = "maily",
    transit_mount: str = "transit",
    report: BootstrapReport | None = None,
) -> BootstrapReport:
    """KV v2 at ``kv_mount`` (cas_required), transit with ``maily-enc-key`` (no upsert),
    the policies of ``policy_dir(deploy)`` (the packaged ones without ``deploy``),
    Kubernetes auth roles (when ``kubernetes`` is given), AppRole roles (``approle``) and,
    with ``samples``, the guide's three secrets with random values (create-only).
    Running it again changes nothing."""
    report = report if report is not None else BootstrapReport()
    policies = load_policies(policy_dir(deploy))
    await ensure_engines(
        client, report, kv_mount=kv_mount, transit_mount=transit_mount, samples=samples
    )
    await ensure_policies(client, policies, report)
    if kubernetes is not None:
        roles = load_auth_roles("kubernetes", auth_dir(deploy))
        await ensure_kubernetes_auth(client, kubernetes, roles, report)
    if approle:
        await ensure_approle(client, load_auth_roles("approle", auth_dir(deploy)), report)
    return report


def admin_settings(env: str | None, config: Path | None) -> tuple[str, VaultSettings]:
    """The environment's address/TLS settings, with the operator's own credentials
    (VAULT_TOKEN etc. from the environment), not the environment's service role."""
    cfg = RotationConfig.load(config)
    resolved = cfg.environment(env)
    overrides: dict[str, Any] = {
        k: v for k, v in resolved.env.vault.items() if k not in ("auth_method", "role")
    }
    return resolved.name, VaultSettings(**overrides)


def kubernetes_config(
    host: str | None, ca_file: Path | None, reviewer_file: Path | None
) -> KubernetesAuthConfig | None:
    """From the options, else from the pod this runs in; None: not configured."""
    if host is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        h = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"https://{'[' + h + ']' if ':' in h else h}:{port}"
        if ca_file is None and IN_CLUSTER_CA.exists():
            ca_file = IN_CLUSTER_CA
    if host is None:
        return None
    return KubernetesAuthConfig(
        host=host,
        ca_cert=ca_file.read_text() if ca_file else None,
        token_reviewer_jwt=reviewer_file.read_text().strip() if reviewer_file else None,
    )


@app.command(short_help="Apply mounts, key, policies, auth roles.")
def bootstrap(
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            metavar="NAME",
            help="Environment of the rotation config (its Vault address).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", metavar="FILE", help="Rotation config YAML.", show_default=False),
    ] = None,
    deploy_dir: Annotated[
        Path | None,
        typer.Option(
            "--deploy-dir",
            metavar="DIR",
            help="Directory with vault/policies/*.hcl and vault/auth/*.json"
            " (default: $MAILY_DEPLOY_DIR, else the policies and roles built into the package).",
            show_default=False,
        ),
    ] = None,
    kubernetes_host: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Kubernetes API URL for the kubernetes auth method (default: in a pod, the"
            " cluster's; elsewhere kubernetes auth is skipped).",
        ),
    ] = None,
    kubernetes_ca_cert: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="PEM CA of the Kubernetes API.", show_default=False),
    ] = None,
    token_reviewer_jwt_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Token reviewer JWT (default: Vault's own).", show_default=False
        ),
    ] = None,
    approle: Annotated[bool, typer.Option("--approle", help="Also set up AppRole roles.")] = False,
    samples: Annotated[
        bool | None,
        typer.Option(
            "--samples/--no-samples",
            help="Create the guide's three secrets with random values when absent"
            " (default: only in the development environment).",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Apply mounts (KV v2 maily/ with cas_required, transit/), the transit key
    maily-enc-key (disable_upsert), the policies maily and maily-rotator, and the
    Kubernetes (and optionally AppRole) auth roles. Uses the operator's credentials
    (VAULT_TOKEN); idempotent: a second run reports everything unchanged."""
    try:
        env_name, settings = admin_settings(env, config)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    k8s = kubernetes_config(kubernetes_host, kubernetes_ca_cert, token_reviewer_jwt_file)
    with_samples = env_name == "development" if samples is None else samples

    async def go() -> BootstrapReport:
        async with VaultClient(settings) as client:
            return await bootstrap_server(
                client,
                deploy=deploy_dir,
                kubernetes=k8s,
                approle=approle,
                samples=with_samples,
                kv_mount=settings.kv_mount,
                transit_mount=settings.transit_mount,
            )

    try:
        report = asyncio.run(go())
    except ConfigurationError as exc:
        config_fail(exc)
    except (VaultError, OSError, ValueError) as exc:
        fail(f"bootstrap of {settings.addr} failed: {exc}")
    if json_out:
        print_json(
            {
                "env": env_name,
                "addr": settings.addr,
                "created": report.created,
                "unchanged": report.unchanged,
                "kubernetes_auth": k8s is not None,
            }
        )
        return
    say("Vault at ", styled(settings.addr, "bold"), f" (env {env_name})")
    for item in report.created:
        say("  ", styled("created", "green"), f"   {item}")
    for item in report.unchanged:
        say("  ", styled("unchanged", "dim"), f" {item}")
    if k8s is None:
        say("  ", styled("kubernetes auth: skipped", "yellow"), " (no --kubernetes-host)")
