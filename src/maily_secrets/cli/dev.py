"""``mailyctl dev``: the embedded OpenBao development server."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Annotated

import psycopg
import typer

from .. import standins
from ..bootstrap import (
    DB_APP_ROLE,
    DB_MOUNT,
    DEV_PG_URL_ENV,
    BootstrapReport,
    PostgresSetupError,
    PostgresTarget,
    dev_postgres_target,
    ensure_database,
    ensure_database_rotation,
    ensure_redis_rotation,
    prepare_postgres,
)
from ..devserver import DevServer, DevServerError, health
from ..errors import VaultError
from ..settings import VaultSettings
from ..vault.client import VaultClient
from .common import console, fail, print_json

app = typer.Typer(
    help="Run a local OpenBao dev server (in memory, loopback only) bootstrapped for Maily.",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="State directory (default: $MAILY_DEV_DIR or ~/.local/state/maily-secrets/dev).",
        show_default=False,
    ),
]


async def _bootstrap(
    addr: str, token: str, postgres: PostgresTarget | None
) -> tuple[BootstrapReport, str | None]:
    """KV, transit and sample secrets; then, if ``postgres`` is given, dynamic database
    credentials.  Returns the report and why the database part failed (None: it worked)."""
    settings = VaultSettings(addr=addr, token=token, auth_method="token")
    async with VaultClient(settings) as client:
        # the same bootstrap as a real server (`mailyctl vault bootstrap`): mounts,
        # transit key, policies; plus the sample secrets of a dev server
        from .vault_cmd import bootstrap_server

        report = await bootstrap_server(client, samples=True)
        redis_skipped = await ensure_redis_rotation(client, report)
        if redis_skipped:
            report.add(f"redis rotation skipped ({redis_skipped})", False)
        if postgres is None:
            return report, None
        try:
            await ensure_database(client, postgres, report)
            # the `database` secret type rotates the two login roles of the app
            await ensure_database_rotation(client, postgres, report)
        except (VaultError, PostgresSetupError, OSError, psycopg.Error) as exc:
            return report, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return report, None


def _dev_postgres() -> tuple[PostgresTarget | None, str | None]:
    """The dev PostgreSQL and, when it cannot be used, why (blocking, 3 s at most)."""
    try:
        postgres = dev_postgres_target()
    except ValueError as exc:
        return None, f"{DEV_PG_URL_ENV}: {exc}"
    return postgres, prepare_postgres(postgres)


def _database_line(postgres: PostgresTarget, skipped: str | None) -> str:
    where = postgres.describe()
    if skipped is None:
        return (
            f"  database: PostgreSQL at {where} reachable; dynamic credentials at"
            f" [bold]{DB_MOUNT}/creds/{DB_APP_ROLE}[/bold]"
        )
    return (
        f"  [yellow]database: skipped[/yellow] (PostgreSQL at {where}: {skipped});"
        f" set {DEV_PG_URL_ENV} to use another server"
    )


@app.command()
def up(
    port: Annotated[
        int | None,
        typer.Option(help="Port on 127.0.0.1 (default 8200, or a free one if taken; 0 = any)."),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Start the dev server (if not running) and bootstrap it idempotently.

    Mounts KV v2 at maily/, the transit engine with key maily-enc-key, and
    sample secrets with random values at maily/data/config, maily/data/api-keys
    and maily/data/credentials. When PostgreSQL answers ($MAILY_DEV_PG_URL, default
    postgresql://postgres@127.0.0.1:5432/maily; password in the URL or
    $MAILY_DEV_PG_PASSWORD), also the database secrets engine at database/ with the
    connection maily-postgres and the dynamic role maily-app (1h leases, 24h max).
    Also local stand-ins (when moto and aiosmtpd are installed): AWS IAM/STS (moto,
    IAM user maily-app, its key in maily/data/credentials) and an SMTP server with
    AUTH (smtp_* in maily/data/config), so that the aws and smtp secret types rotate
    for real. Running it twice is harmless.
    """
    server = DevServer(state_dir)
    if server.running() is None:
        # stand-ins of a dev server that died: their pid files go with its state dir
        standins.stop_all(server.state_dir)
    try:
        info, started = server.start(port=port)
    except DevServerError as exc:
        fail(str(exc))
    verb = "started" if started else "already running"
    console.print(f"OpenBao dev server {verb} at [bold]{info.addr}[/bold] (pid {info.pid})")
    postgres, pg_skipped = _dev_postgres()
    try:
        report, db_failed = asyncio.run(
            _bootstrap(info.addr, info.token(), postgres if pg_skipped is None else None)
        )
    except Exception as exc:
        fail(f"bootstrap failed: {exc}")
    for item in report.created:
        console.print(f"  [green]created[/green]   {item}")
    for item in report.unchanged:
        console.print(f"  [dim]unchanged[/dim] {item}")
    if postgres is None:
        console.print(f"  [yellow]database: skipped[/yellow] ({pg_skipped})")
    else:
        console.print(_database_line(postgres, pg_skipped or db_failed))
    for line in standins.dev_up(server.state_dir, info.addr, info.token()).lines:
        console.print(line, highlight=False)
    console.print(f"  audit log: {info.audit_log}")
    console.print('Use it from a shell:  [bold]eval "$(./mailyctl.py dev env)"[/bold]')


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop the dev server this tool started (by its pid file) and delete its data."""
    server = DevServer(state_dir)
    stopped = standins.stop_all(server.state_dir)
    if stopped:
        console.print(f"Stand-ins stopped: {', '.join(stopped)}.")
    if server.stop():
        console.print("OpenBao dev server stopped; its data is gone.")
    else:
        console.print("No dev server of ours was running.")


@app.command()
def status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Is the dev server running, where, and is it healthy? Exit code 1 when not running."""
    server = DevServer(state_dir)
    info = server.running()
    h = health(info.addr) if info else None
    doc = {
        "running": info is not None,
        "healthy": bool(h and not h.get("sealed")),
        "addr": info.addr if info else None,
        "pid": info.pid if info else None,
        "version": h.get("version") if h else None,
        "sealed": h.get("sealed") if h else None,
        "audit_log": info.audit_log if info else None,
        "state_dir": str(server.state_dir),
    }
    if as_json:
        print_json(doc)
    elif info is None:
        console.print("dev server: [red]not running[/red]  (start it: ./mailyctl.py dev up)")
    else:
        state = "[green]healthy[/green]" if doc["healthy"] else "[red]not answering[/red]"
        console.print(
            f"dev server: {state} at {info.addr} (pid {info.pid}, OpenBao {doc['version']})"
        )
        console.print(f"audit log:  {info.audit_log}")
    if not doc["healthy"]:
        raise typer.Exit(1)


@app.command()
def env(state_dir: StateDir = None) -> None:
    """Print `export VAULT_ADDR=... VAULT_TOKEN=...` for a shell (this prints the dev token).

    With the local stand-ins running, also MAILY_AWS_ENDPOINT_URL (moto) and
    MAILY_ROTATION_CONFIG (the built-in rotation config plus the stand-ins), so that
    `secrets rotate` rotates aws and smtp against them. Use: eval "$(./mailyctl.py dev env)"
    """
    server = DevServer(state_dir)
    info = server.running()
    if info is None:
        fail("the dev server is not running; start it with `./mailyctl.py dev up`")
    pairs = {"VAULT_ADDR": info.addr, "VAULT_TOKEN": info.token()}
    pairs.update(standins.dev_environment(server.state_dir))
    typer.echo("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in pairs.items()))
