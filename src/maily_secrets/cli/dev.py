"""``mailyctl dev``: the embedded OpenBao development server."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from pydantic import SecretStr

from ..bootstrap import (
    DB_APP_ROLE,
    DB_MOUNT,
    BootstrapReport,
    PostgresSetupError,
    PostgresTarget,
    ensure_database,
    ensure_database_rotation,
    ensure_redis_rotation,
    prepare_postgres,
)
from ..cliname import command
from ..dev import standins
from ..dev.bootstrap import (
    DEV_PG_URL_ENV,
    DEV_RESOURCES_FILE,
    DevNames,
    dev_postgres_target,
    drop_dev_database,
    drop_postgres_roles,
    drop_redis_user,
    ensure_dev_names,
    load_dev_resources,
    postgres_record,
    record_dev_resources,
)
from ..dev.server import DevServer, DevServerError, DevServerInfo, health
from ..errors import VaultError
from ..settings import VaultSettings
from ..vault.client import VaultClient
from .common import Part, fail, print_json, say, styled

app = typer.Typer(
    help="Run a local OpenBao dev server (in memory, loopback only) bootstrapped for Maily.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        metavar="DIR",
        help="State directory (default: $MAILY_DEV_DIR or ~/.local/state/maily-secrets/dev).",
        show_default=False,
    ),
]


async def _bootstrap(
    addr: str, token: str, postgres: PostgresTarget | None, server: DevServer
) -> tuple[BootstrapReport, str | None]:
    """KV, transit and sample secrets; then, if ``postgres`` is given, dynamic database
    credentials.  Returns the report and why the database part failed (None: it worked).

    The PostgreSQL roles and the Redis ACL user are this dev directory's own
    (:class:`DevNames`), recorded in ``dev-resources.json`` before they are made."""
    names = DevNames.for_dir(server.state_dir)
    resources = server.manifest.claim_file(server.state_dir / DEV_RESOURCES_FILE)
    settings = VaultSettings(addr=addr, token=token, auth_method="token")
    async with VaultClient(settings) as client:
        # the same bootstrap as a real server (`mailyctl vault bootstrap`): mounts,
        # transit key, policies; plus the sample secrets of a dev server
        from .vault_cmd import bootstrap_server

        report = await bootstrap_server(client, samples=True)
        await ensure_dev_names(client, names, report)
        cfg = (await client.kv.read("maily/data/config")).data
        record_dev_resources(
            resources,
            redis={
                "host": str(cfg.get("redis_host") or "127.0.0.1"),
                "port": int(cfg.get("redis_port") or 6379),
                "user": names.redis_user,
            },
        )
        redis_skipped = await ensure_redis_rotation(client, report, user=names.redis_user)
        if redis_skipped:
            report.add(f"redis rotation skipped ({redis_skipped})", False)
        if postgres is None:
            return report, None
        record_dev_resources(resources, postgres=postgres_record(postgres, names))
        try:
            await ensure_database(client, postgres, report)
            # the `database` secret type rotates the two login roles of the app
            await ensure_database_rotation(
                client, postgres, report, roles=names.login_roles, group=names.group
            )
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


def _database_line(postgres: PostgresTarget, skipped: str | None) -> list[Part]:
    where = postgres.describe()
    if skipped is None:
        return [
            f"  database: PostgreSQL at {where} reachable; dynamic credentials at ",
            styled(f"{DB_MOUNT}/creds/{DB_APP_ROLE}", "bold"),
        ]
    return [
        "  ",
        styled("database: skipped", "yellow"),
        f" (PostgreSQL at {where}: {skipped}); set {DEV_PG_URL_ENV} to use another server",
    ]


@app.command(short_help="Start and bootstrap the dev server.")
def up(
    port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT",
            help="Port on 127.0.0.1 (default 8200, or a free one if taken; 0 = any).",
        ),
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

    The PostgreSQL login roles and the Redis ACL user carry a short hash of the
    directory (maily_app_<h>, maily_<h>): two dev servers never touch each other's.
    --dir may hold other files: only what this tool makes is removed by `dev down`.
    The server's log never holds its root token or unseal key (<dir>/token and
    <dir>/unseal-key, mode 0600).
    """
    server = DevServer(state_dir)
    if server.running() is None:
        # a dev server that died: its stand-ins, roles and users go with its state dir
        standins.stop_all(server.state_dir)
        _drop_dev_resources(server, None)  # not its database: this up uses it
    try:
        info, started = server.start(port=port)
    except DevServerError as exc:
        fail(str(exc))
    verb = "started" if started else "already running"
    say(f"OpenBao dev server {verb} at ", styled(info.addr, "bold"), f" (pid {info.pid})")
    postgres, pg_skipped = _dev_postgres()
    try:
        report, db_failed = asyncio.run(
            _bootstrap(info.addr, info.token(), postgres if pg_skipped is None else None, server)
        )
    except Exception as exc:
        fail(f"bootstrap failed: {exc}")
    for item in report.created:
        say("  ", styled("created", "green"), f"   {item}")
    for item in report.unchanged:
        say("  ", styled("unchanged", "dim"), f" {item}")
    if postgres is None:
        say("  ", styled("database: skipped", "yellow"), f" ({pg_skipped})")
    else:
        say(*_database_line(postgres, pg_skipped or db_failed))
    names = DevNames.for_dir(server.state_dir)
    say(
        f"  this dev directory's PostgreSQL login roles {', '.join(names.login_roles)}"
        f" (group {names.group}) and Redis ACL user {names.redis_user}"
    )
    ups = standins.dev_up(
        server.state_dir, info.addr, info.token(), type_options=names.rotation_options()
    )
    for parts in ups.lines:
        say(*parts)
    say(f"  audit log: {info.audit_log}")
    say("Use it from a shell:  ", styled(f'eval "$({command("dev", "env")})"', "bold"))


def _drop_dev_resources(
    server: DevServer, info: DevServerInfo | None
) -> tuple[list[list[Part]], PostgresTarget | None]:
    """Drop what ``dev up`` made outside the directory (recorded in dev-resources.json):
    dynamic database users (by revoking their leases while the server runs), the login
    roles and their group, the Redis ACL user. Best effort. Returns the lines to print
    and the PostgreSQL target whose roles were dropped (its database can go once the
    server, and its database connection, are gone: :func:`drop_dev_database`)."""
    path = server.state_dir / DEV_RESOURCES_FILE
    if not server.manifest.owns(path):
        return [], None
    doc = load_dev_resources(path)
    lines: list[list[Part]] = []
    database: list[PostgresTarget] = []
    pg, rd = doc.get("postgres"), doc.get("redis")

    async def go() -> None:
        admin_password: SecretStr | None = None
        if info is not None:
            settings = VaultSettings(addr=info.addr, token=info.token(), auth_method="token")
            async with VaultClient(settings) as client:
                with contextlib.suppress(VaultError):
                    # revocation runs the role's revocation statements: users dropped
                    await client.write(f"sys/leases/revoke-prefix/{DB_MOUNT}/creds", {})
                with contextlib.suppress(VaultError):
                    a = (await client.kv.read("maily/data/rotator/postgres-admin")).data
                    if a.get("password"):
                        admin_password = SecretStr(str(a["password"]))
        if isinstance(pg, dict):
            password = admin_password or dev_postgres_target().password
            target = PostgresTarget(
                host=str(pg["host"]),
                port=int(pg["port"]),
                user=str(pg["user"]),
                dbname=str(pg["dbname"]),
                password=password,
            )
            try:
                dropped = await drop_postgres_roles(target, [str(r) for r in pg["roles"]])
                if dropped:
                    lines.append([f"PostgreSQL roles dropped: {', '.join(dropped)}."])
                database.append(target)
            except (OSError, psycopg.Error) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                lines.append([styled("PostgreSQL roles not dropped", "yellow"), f" ({first})"])
        if isinstance(rd, dict):
            import redis.asyncio as aioredis

            try:
                if await drop_redis_user(str(rd["host"]), int(rd["port"]), str(rd["user"])):
                    lines.append([f"Redis ACL user dropped: {rd['user']}."])
            except (OSError, aioredis.RedisError) as exc:
                lines.append(
                    [styled("Redis ACL user not dropped", "yellow"), f" ({type(exc).__name__})"]
                )

    try:
        asyncio.run(go())
    except Exception as exc:
        lines.append([styled("cleanup incomplete", "yellow"), f" ({type(exc).__name__})"])
    return lines, (database[0] if database else None)


@app.command(short_help="Stop the dev server and clean up.")
def down(state_dir: StateDir = None) -> None:
    """Stop the dev server this tool started (by its pid file), drop the PostgreSQL roles
    and Redis user it made, and delete the files it made (nothing else in the folder)."""
    server = DevServer(state_dir)
    lines, database = _drop_dev_resources(server, server.running())
    for parts in lines:
        say(*parts)
    stopped = standins.stop_all(server.state_dir)
    if stopped:
        say(f"Stand-ins stopped: {', '.join(stopped)}.")
    if server.stop():
        say("OpenBao dev server stopped; its data is gone.")
    else:
        say("No dev server of ours was running.")
    if database is not None:  # if `dev up` made it and no other dev directory uses it
        try:
            say(f"PostgreSQL {asyncio.run(drop_dev_database(database))}.")
        except (OSError, psycopg.Error) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            say(styled("PostgreSQL database not dropped", "yellow"), f" ({first})")
    kept = server.kept
    if kept:
        say(f"Kept (they hold files the dev tools did not make): {', '.join(kept)}")


@app.command(short_help="Is the dev server running and healthy?")
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
        say(
            "dev server: ",
            styled("not running", "red"),
            f"  (start it: {command('dev', 'up')})",
        )
    else:
        state = styled("healthy", "green") if doc["healthy"] else styled("not answering", "red")
        say(
            "dev server: ",
            state,
            f" at {info.addr} (pid {info.pid}, OpenBao {doc['version']})",
        )
        say(f"audit log:  {info.audit_log}")
    if not doc["healthy"]:
        raise typer.Exit(1)


@app.command(short_help="Print export lines for a shell.")
def env(state_dir: StateDir = None) -> None:
    """Print `export VAULT_ADDR=... VAULT_TOKEN=...` for a shell (this prints the dev token).

    Also MAILY_ROTATION_CONFIG (the built-in rotation config plus this dev directory's
    PostgreSQL roles and Redis user and the stand-ins' options) and, with moto running,
    MAILY_AWS_ENDPOINT_URL, so that `secrets rotate` rotates this dev server's own
    credentials. Use: eval "$(mailyctl dev env)"
    """
    server = DevServer(state_dir)
    info = server.running()
    if info is None:
        fail(f"the dev server is not running; start it with `{command('dev', 'up')}`")
    pairs = {"VAULT_ADDR": info.addr, "VAULT_TOKEN": info.token()}
    pairs.update(standins.dev_environment(server.state_dir))
    typer.echo("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in pairs.items()))
