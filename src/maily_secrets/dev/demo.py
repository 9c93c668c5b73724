"""``make demo``: walk through the integration guide against the embedded OpenBao.

Run ``./mailyctl.py dev up`` first (``make demo`` does). Values are masked.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..cli.common import mask
from ..errors import InvalidPath, SecretNotFound, VaultError
from ..logs import configure
from ..service import VaultService
from ..vault.client import VaultClient
from . import standins
from .server import DevServer

console = Console(highlight=False)
if not console.is_terminal:
    console.soft_wrap = True  # piped (make demo | tee): a line is never broken mid-word
REPO_ROOT = Path(__file__).resolve().parents[3]


def _table(title: str, data: dict[str, object]) -> Table:
    t = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    t.add_column("key")
    t.add_column("value (masked)")
    for k, v in data.items():
        t.add_row(k, mask(k, v))
    return t


async def basic_usage() -> None:
    # The guide's "Basic Usage", as a Maily service would write it.
    from apps.api.services.vault_service import vault_service

    access = io.StringIO()
    configure(logging.INFO, stream=access)

    config = await vault_service.get_config()
    db_host = config.get("db_host")
    aws_creds = await vault_service.get_credentials("aws")
    access_key = aws_creds.get("aws_access_key")
    api_keys = await vault_service.get_api_keys()
    stripe_key = api_keys.get("stripe")

    console.rule("[bold]1. Basic Usage[/bold]  (apps.api.services.vault_service)")
    console.print(_table("await vault_service.get_config()", config))
    console.print(_table('await vault_service.get_credentials("aws")', aws_creds))
    console.print(_table("await vault_service.get_api_keys()", api_keys))
    console.print(
        f"db_host = {db_host}, access_key = {mask('aws_access_key', access_key)},"
        f" stripe_key = {mask('stripe', stripe_key)}"
    )

    console.rule("[bold]2. Access log[/bold] (best practice 6: names and outcomes, no values)")
    logging.getLogger("maily_secrets").setLevel(logging.WARNING)
    lines = [ln for ln in access.getvalue().splitlines() if '"secret_read"' in ln]
    for ln in lines[:4]:
        console.print(ln, markup=False, soft_wrap=True)
    console.print(f"... {len(lines)} access events so far (JSON lines, maily_secrets.access)")
    console.rule("[bold]3. Cache[/bold]")
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        await vault_service.get_config()
    per_call = (time.perf_counter() - t0) / n * 1e6
    console.print(f"{n:,} cached get_config() calls: {per_call:.2f} µs each (no Vault request)")

    console.rule("[bold]4. Errors are typed and name the path, never a value[/bold]")
    try:
        await vault_service.get_secret("maily/data/no-such-secret")
    except SecretNotFound as exc:
        console.print(f"SecretNotFound: {exc}", markup=False)
    try:
        await vault_service.get_secret("maily/../sys/seal")
    except InvalidPath as exc:
        console.print(f"InvalidPath:    {exc}", markup=False)

    await listener_and_encryption(vault_service)
    await dynamic_database_credentials(vault_service)
    await vault_service.close()
    await secret_rotation(vault_service)
    await vault_service.close()
    await pool_through_rotation()


async def secret_rotation(vault_service: VaultService) -> None:
    console.rule(
        "[bold]8. Secret Rotation[/bold]  (the guide's commands, as an operator runs them)"
    )
    seen: dict[str, list[dict[str, object]]] = {"config": [], "credentials": []}

    def on_config(new: dict[str, object]) -> None:
        seen["config"].append(new)

    def on_credentials(new: dict[str, object]) -> None:
        seen["credentials"].append(new)

    before_cfg = await vault_service.get_config()
    before_aws = await vault_service.get_credentials("aws")
    await vault_service.register_secret_listener("maily/data/config", on_config, interval=0.5)
    await vault_service.register_secret_listener(
        "maily/data/credentials", on_credentials, interval=0.5
    )
    root = REPO_ROOT
    runs = [["--secret-types=jwt,aws"]]  # database: in the next part, under load
    for args in runs:
        cmd = ["./mailyctl.py", "secrets", "rotate", *args]
        console.print(f"$ {' '.join(cmd)}", style="bold")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(root / "mailyctl.py"),
            *cmd[1:],
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        try:
            results = json.loads(out)["results"]
        except (ValueError, KeyError):
            console.print(f"[red]rotate exited {proc.returncode} without a report[/red]")
            continue
        for r in results:
            console.print(
                f"  {r['type']:<9} {r['status']:<16} {r.get('rotation_id') or ''}"
                f"  {(r.get('reason') or '')[:160]}"
            )
    await asyncio.sleep(1.5)  # two listener polls
    after_cfg = await vault_service.get_config()
    after_aws = await vault_service.get_credentials("aws")
    console.print(
        f"listeners fired: config {len(seen['config'])}x, credentials"
        f" {len(seen['credentials'])}x (the rotation wrote new versions; values not shown)"
    )
    console.print(
        f"  jwt_kid       {before_cfg.get('jwt_kid', '(derived)')} -> {after_cfg.get('jwt_kid')}"
    )
    changed = before_aws.get("aws_access_key") != after_aws.get("aws_access_key")
    console.print(
        f"  aws key       {'replaced' if changed else 'unchanged'} in maily/data/credentials"
    )
    console.print(
        "History: ./mailyctl.py secrets history jwt    Status: ./mailyctl.py secrets status"
    )


async def pool_through_rotation() -> None:
    """A psycopg pool serving queries while the database type rotates and retires."""

    console.rule("[bold]9. A pool through rotation and retirement[/bold]  (adapters.postgres_pool)")
    config_file = os.environ.get("MAILY_ROTATION_CONFIG")
    if not config_file:
        # without this dev directory's rotation config the database rotator would
        # look for the built-in role names, which other dev servers may use
        console.print("skipped: no rotation config of this dev server (./mailyctl.py dev up)")
        return
    try:
        import psycopg_pool  # noqa: F401 - the optional extra
    except ImportError:
        console.print(
            "skipped: psycopg-pool is not installed (pip install maily-secrets[postgres])"
        )
        return
    from .. import adapters
    from ..settings import VaultSettings
    from .adoption import QueryLoad, rotate_cli, until
    from .bootstrap import dev_postgres_target

    # the app's service; a short listener interval so that the demo need not wait 30 s
    service = VaultService(VaultSettings(listener_interval=0.5))
    try:
        pool = await adapters.postgres_pool(
            service,
            min_size=4,
            max_size=8,
            application_name="maily-demo",
            dbname=dev_postgres_target().dbname,
        )
    except Exception as exc:
        console.print(f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}", markup=False)
        await service.close()
        return
    console.print(
        "pool = await adapters.postgres_pool(vault_service, min_size=4, max_size=8)"
        f"  -> logged in as {pool.source.user} (generation {pool.source.generation})"
    )

    async def query() -> str:
        async with pool.connection() as conn:
            row = await (await conn.execute("SELECT session_user")).fetchone()
        return str(row[0]) if row else "?"

    load = QueryLoad(query, workers=8)
    old_role = new_role = pool.source.user
    rotated = retired = False
    load.start()
    try:
        await until(lambda: load.tally.total >= 200, 30)
        args = ["--secret-types=database", "--wait-retire=2m"]
        console.print(f"$ ./mailyctl.py secrets rotate {' '.join(args)}", style="bold")
        console.print(
            "  (promote; the pool's listener swaps the credential and drains the old"
            " connections; the rotator watches pg_stat_activity and retires the previous"
            " role as soon as it has no sessions)",
            markup=False,
        )
        results = await rotate_cli("database", *args[1:], within=180)
        for r in results:
            console.print(
                f"  {r['type']:<9} {r['status']:<16} {r.get('rotation_id') or ''}"
                f"  {(r.get('reason') or '')[:120]}",
                markup=False,
            )
            for note in r.get("notes") or []:
                console.print(f"    {note[:200]}", markup=False)
        rotated = any(r["status"] in ("rotated", "retired") for r in results)
        if rotated:
            stats = pool.rotation_stats()
            new_role = pool.source.user
            console.print(
                f"listener: generation {stats.generation}, new connections log in as"
                f" {new_role}; open connections per generation {stats.connections}"
            )
            retired = any(
                f"retired previous login role {old_role}" in n
                for r in results
                for n in r.get("notes") or []
            )
        after = load.tally.ok
        await until(lambda: load.tally.ok >= after + 200, 30)
    finally:
        tally = await load.stop()
        await pool.close()
        await service.close()
    style = "green" if tally.failed == 0 else "red"
    through = f"rotation {old_role} -> {new_role}" if rotated else "no rotation"
    console.print(
        f"pool: {tally.ok:,} queries, {tally.failed} failed ({load.rate:,.0f}/s), through"
        f" {through}{f' and retirement of {old_role}' if retired else ''};"
        f" served as {dict(tally.users)}",
        style=style,
        markup=False,
    )


async def dynamic_database_credentials(vault_service: VaultService) -> None:
    console.rule("[bold]7. Dynamic secrets: database credentials[/bold]")
    try:
        creds = await vault_service.get_database_credentials("maily-app")
    except VaultError as exc:
        console.print(
            f"skipped: {exc} (is PostgreSQL running? `./mailyctl.py dev up` says)", markup=False
        )
        return
    cfg = await vault_service.get_config()
    params = creds.conninfo(host=cfg["db_host"], port=cfg["db_port"], dbname="maily")
    who = await asyncio.to_thread(_whoami, params)
    console.print(
        f"Vault created PostgreSQL user {creds.username} (lease {creds.lease_duration} s,"
        f" renewed at 2/3, replaced before max_ttl); connected as: {who}"
    )
    await vault_service.close()  # revokes the lease: the user is dropped
    try:
        await asyncio.to_thread(_whoami, params)
        console.print(f"[red]after close() {creds.username} can still log in[/red]")
    except Exception as exc:
        console.print(f"close() revoked the lease; a login now fails ({type(exc).__name__})")


def _whoami(params: dict[str, object]) -> str:
    import psycopg

    with psycopg.connect(connect_timeout=5, **params) as conn:  # type: ignore[arg-type]
        row = conn.execute("select current_user").fetchone()
    return str(row[0]) if row else "?"


async def listener_and_encryption(vault_service: VaultService) -> None:
    console.rule("[bold]5. Registering a Secret Listener[/bold]")
    fired = asyncio.Event()
    seen: dict[str, object] = {}
    loop = asyncio.get_running_loop()

    def my_config_callback(new_config: dict[str, object]) -> None:
        # The guide prints the whole config; a real service must not print secrets.
        # (A plain function runs on a listener thread: wake the loop thread-safely.)
        seen.update(new_config)
        loop.call_soon_threadsafe(fired.set)

    await vault_service.register_secret_listener(
        "maily/data/config", my_config_callback, interval=1.0
    )
    console.print("listening on maily/data/config (the change feed's beacon, polled every 1 s)")
    # An operator changes the config elsewhere, with check-and-set, and announces it on the
    # change feed's beacon (a plain `bao kv put` is seen at the next full poll, 5 min).
    from ..changes import announce

    async with VaultClient(vault_service.settings) as operator:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        version = await operator.kv.update(
            "maily/data/config", lambda cur: {**cur, "demo_changed_at": stamp}
        )
        await announce(operator, "maily/data/config", version)
    t0 = time.perf_counter()
    await asyncio.wait_for(fired.wait(), 10)
    console.print(
        f"operator wrote version {version}; the listener fired"
        f" {time.perf_counter() - t0:.2f} s later"
        f" with demo_changed_at={seen.get('demo_changed_at')}"
    )

    console.rule("[bold]6. Using Encryption Service[/bold]  (transit key maily-enc-key)")
    sensitive = "card ending 4242"
    encrypted = await vault_service.encrypt_data("maily-enc-key", sensitive)
    decrypted = await vault_service.decrypt_data("maily-enc-key", encrypted)
    console.print(f"encrypt_data -> {encrypted[:24]}... ({len(encrypted)} chars)")
    console.print(f"decrypt_data -> round trip {'ok' if decrypted == sensitive else 'FAILED'}")
    rows = [f"subscriber-{i}@example.com" for i in range(2000)]
    t0 = time.perf_counter()
    cts = await vault_service.encrypt_many("maily-enc-key", rows)
    back = await vault_service.decrypt_many("maily-enc-key", cts)
    ok = [b.decode() for b in back] == rows
    console.print(
        f"encrypt_many + decrypt_many of {len(rows):,} values in"
        f" {time.perf_counter() - t0:.2f} s (batched): {'ok' if ok else 'FAILED'}"
    )


def main() -> int:
    server = DevServer()
    info = server.running()
    if info is None:
        console.print("[red]The dev server is not running.[/red] Start it: ./mailyctl.py dev up")
        return 1
    # What a Maily service gets from its environment (and `secrets rotate`: the
    # stand-ins' endpoint and rotation config, as `dev env` exports them).
    os.environ["VAULT_ADDR"] = info.addr
    os.environ["VAULT_TOKEN"] = info.token()
    os.environ.update(standins.dev_environment(server.state_dir))
    asyncio.run(basic_usage())
    console.rule()
    console.print(f"OpenBao dev server still running at {info.addr}.")
    console.print('Explore:  eval "$(./mailyctl.py dev env)"    Stop:  ./mailyctl.py dev down')
    return 0


if __name__ == "__main__":
    sys.exit(main())
