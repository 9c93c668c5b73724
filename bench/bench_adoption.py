"""Adoption: queries through the adapters while a rotation runs and retires.

    bench/.venv/bin/python bench/run.py --only adoption [--quick] [--rounds N]

Figures (issue 14, item 2):

- ``adoption_pg_rate``: operations per second through ``adapters.postgres_pool`` (psycopg
  pool, async) and ``adapters.sqlalchemy_engine`` (SQLAlchemy AsyncEngine) while
  ``mailyctl secrets rotate --secret-types database`` runs in a child process, the
  adapter adopts the new login role and drains the old one, and the engine's ``--due``
  pass (its clock moved past the 1h grace) retires the previous role: the rate over that
  window, 8 concurrent workers (``SELECT session_user, count(*) FROM items``). Goal >= 200/s.
- ``adoption_pg_failures``: operations that failed in those rounds (the whole load of each
  round, before, during and after); goal: 0 in total.

Each round runs one rotation + retirement per adapter, the adapters in a rotating order;
the pool and the engine live through every round (a long-running service through several
rotations). Rotations after the first use ``--force``: rounds follow each other within
the grace, and the previous role has been retired already, so the two-slot guard protects
nobody.

Everything is this run's own: a KV v2 mount ``adopt-bench-<hex>`` on ``ctx.addr``, a
database ``adopt_bench_<hex>`` with two login roles, their group and a rotator admin on
the machine's PostgreSQL (``$MAILY_DEV_PG_URL``, default 127.0.0.1:5432, as ``make
services`` starts it), all dropped at the end.

Also runs ``bench/adoption_redis.py`` and ``bench/adoption_aws_smtp.py`` (``figures(ctx)``,
the same contract) when they are there, and says so when they are not.
"""

from __future__ import annotations

import importlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

try:
    from bench_context import Context
except ImportError:  # imported as bench.bench_adoption
    from .bench_context import Context

WORKERS = 8
QUERY = "SELECT session_user, count(*) FROM items"
GRACE = timedelta(hours=1)
OTHERS = ("adoption_redis", "adoption_aws_smtp")  # bench/<name>.py of the other adapters


@dataclass
class World:
    mount: str
    db: str
    roles: list[str]  # a, b, group, rotator admin
    config_file: Path
    target: Any  # PostgresTarget (admin on the machine's PostgreSQL)


# ---------------------------------------------------------------------------- setup
async def _setup(ctx: Context, h: str) -> World:
    from psycopg import sql

    from maily_secrets.bootstrap import ensure_postgres_login_roles, prepare_postgres
    from maily_secrets.dev.bootstrap import dev_postgres_target
    from maily_secrets.paths import KV2Path
    from maily_secrets.settings import VaultSettings
    from maily_secrets.targets import random_password
    from maily_secrets.targets.postgres import alter_password_statement, scram_sha256_verifier
    from maily_secrets.vault.client import VaultClient

    target = dev_postgres_target()
    why = prepare_postgres(target)
    if why:
        raise RuntimeError(f"PostgreSQL not usable ({why}); run `make services` first")
    a, b, group, rot = (f"adopt_{h}_a", f"adopt_{h}_b", f"adopt_{h}_grp", f"adopt_{h}_rot")
    db, mount = f"adopt_bench_{h}", f"adopt-bench-{h}"
    world = World(mount, db, [a, b, group, rot], ctx.scratch / f"adoption-{h}.yaml", target)
    a_password, rot_password = random_password(), random_password()
    import psycopg

    admin_kw = target.connect_kwargs()
    async with await psycopg.AsyncConnection.connect(**admin_kw, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        await conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(rot)))
        await conn.execute(alter_password_statement(rot, scram_sha256_verifier(rot_password)))
        await conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(rot)))
    await ensure_postgres_login_roles(
        {**admin_kw, "dbname": db},
        roles=(a, b),
        group=group,
        passwords={a: a_password},
        rotator=rot,
    )
    async with await psycopg.AsyncConnection.connect(
        **{**admin_kw, "dbname": db}, autocommit=True
    ) as conn:
        await conn.execute("CREATE TABLE items (id int)")
        await conn.execute("INSERT INTO items SELECT generate_series(1, 10)")
        await conn.execute(sql.SQL("GRANT SELECT ON items TO {}").format(sql.Identifier(group)))
    settings = VaultSettings(addr=ctx.addr, token=ctx.token, auth_method="token")
    async with VaultClient(settings) as c:
        await c.write(f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
        await c.kv.configure(mount)
        await c.kv.write(
            KV2Path(mount, "rotator/postgres-admin"),
            {
                "host": target.host,
                "port": target.port,
                "dbname": db,
                "username": rot,
                "password": rot_password,
                "sslmode": "disable",
            },
            cas=0,
        )
        await c.kv.write(
            KV2Path(mount, "config"),
            {
                "db_host": target.host,
                "db_port": target.port,
                "db_name": db,
                "db_sslmode": "disable",
                "db_username": a,
                "db_password": a_password,
            },
            cas=0,
        )
    doc = {
        "defaults": {"environment": "development", "intervals": {"database": "30d"}},
        "types": {
            "database": {
                "secret": "config",
                "grace": "1h",
                "options": {
                    "admin_secret": "rotator/postgres-admin",
                    "login_roles": [a, b],
                    "group": group,
                },
            }
        },
        "environments": {
            "development": {
                "vault": {"kv_mount": mount, "auth_method": "token"},  # addr, token: ctx.env()
                "lock_ttl": "30s",
            }
        },
    }
    world.config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return world


async def _teardown(ctx: Context, w: World) -> None:
    import psycopg
    from psycopg import sql

    from maily_secrets.dev.bootstrap import drop_postgres_roles
    from maily_secrets.settings import VaultSettings
    from maily_secrets.vault.client import VaultClient

    try:
        async with await psycopg.AsyncConnection.connect(
            **w.target.connect_kwargs(), autocommit=True
        ) as conn:
            await conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(w.db))
            )
        await drop_postgres_roles(w.target, w.roles)
    finally:
        settings = VaultSettings(addr=ctx.addr, token=ctx.token, auth_method="token")
        async with VaultClient(settings) as c:
            await c.delete(f"sys/mounts/{w.mount}")


# ---------------------------------------------------------------------------- one round
@dataclass
class Adapter:
    label: str
    op: Callable[[], Awaitable[str]]
    stats: Callable[[], Any]  # -> RotationStats


async def _round(ctx: Context, w: World, adapter: Adapter, client: Any) -> tuple[float, int]:
    """One rotation (CLI) + adoption + retirement under load: (ops/s over it, failures)."""
    from maily_secrets.dev.adoption import QueryLoad, retire_due, rotate_cli, until

    load = QueryLoad(adapter.op, workers=WORKERS)
    load.start()
    try:
        if not await until(lambda: load.tally.total >= 50, 30):
            raise RuntimeError(f"{adapter.label}: the load did not start")
        generation = adapter.stats().generation
        before, t0 = load.tally.ok, time.perf_counter()
        env = ctx.env(MAILY_ROTATION_CONFIG=str(w.config_file))
        results = await rotate_cli("database", "--force", env=env)
        if [r["status"] for r in results] != ["rotated"]:
            raise RuntimeError(f"rotate: {[(r['status'], r.get('reason')) for r in results]}")
        adopted = await until(
            lambda: (
                adapter.stats().generation > generation and adapter.stats().old_connections == 0
            ),
            60,
        )
        if not adopted:
            raise RuntimeError(f"{adapter.label} did not drain its old connections")
        notes = await retire_due(
            w.config_file, client, ["database"], past=GRACE + timedelta(minutes=1)
        )
        if not any("retired previous login role" in n for n in notes):
            raise RuntimeError(f"nothing retired: {notes}")
        window = time.perf_counter() - t0
        done = load.tally.ok - before
    finally:
        tally = await load.stop()
    if tally.errors:
        ctx.log(f"adoption: {adapter.label} errors {dict(tally.errors)}")
    return done / window, tally.failed


async def _adapters(ctx: Context, w: World) -> tuple[list[Adapter], Callable[[], Awaitable[None]]]:
    from sqlalchemy import text

    from maily_secrets import adapters
    from maily_secrets.service import VaultService
    from maily_secrets.settings import VaultSettings

    settings = VaultSettings(
        addr=ctx.addr,
        token=ctx.token,
        auth_method="token",
        kv_mount=w.mount,
        listener_interval=0.2,
        snapshot_path=None,
    )
    service = VaultService(settings)
    pool = await adapters.postgres_pool(
        service, min_size=4, max_size=8, application_name="maily-bench"
    )
    engine = await adapters.sqlalchemy_engine(
        service, pool_size=4, max_overflow=4, application_name="maily-bench"
    )

    async def pool_op() -> str:
        async with pool.connection() as conn:
            row = await (await conn.execute(QUERY)).fetchone()
        return str(row[0]) if row else "?"

    async def engine_op() -> str:
        async with engine.connect() as conn:
            row = (await conn.execute(text(QUERY))).one()
        return str(row[0])

    async def close() -> None:
        await engine.dispose()
        await pool.close()
        await service.close()

    return [
        Adapter("psycopg pool (async)", pool_op, pool.rotation_stats),
        Adapter("SQLAlchemy AsyncEngine", engine_op, engine.rotation_stats),
    ], close


def _postgres_figures(ctx: Context) -> list[dict[str, Any]]:
    from maily_secrets.settings import VaultSettings
    from maily_secrets.vault.client import VaultClient

    h = secrets.token_hex(4)
    rounds = ctx.rounds
    keys = ("pool", "sqlalchemy")
    rates: dict[str, list[float]] = {k: [] for k in keys}
    failures: dict[str, list[float]] = {k: [] for k in keys}
    load_before = [round(x, 2) for x in os.getloadavg()]
    labels: dict[str, str] = {}
    ctx.log(f"adoption: database {f'adopt_bench_{h}'}, mount adopt-bench-{h}, {rounds} rounds")
    w = ctx.runner.run(_setup(ctx, h))
    try:

        async def run_all() -> None:
            found, close = await _adapters(ctx, w)
            by_key = dict(zip(keys, found, strict=True))
            labels.update({k: a.label for k, a in by_key.items()})
            settings = VaultSettings(
                addr=ctx.addr, token=ctx.token, auth_method="token", kv_mount=w.mount
            )
            try:
                async with VaultClient(settings) as client:
                    for r in range(rounds):
                        shift = r % len(keys)
                        for k in keys[shift:] + keys[:shift]:
                            rate, failed = await _round(ctx, w, by_key[k], client)
                            rates[k].append(rate)
                            failures[k].append(float(failed))
                            ctx.log(
                                f"adoption round {r + 1}/{rounds}: {k} {rate:,.0f} ops/s,"
                                f" {failed} failed"
                            )
            finally:
                await close()

        ctx.runner.run(run_all())
    finally:
        ctx.runner.run(_teardown(ctx, w))
    load_after = [round(x, 2) for x in os.getloadavg()]
    total = sum(sum(v) for v in failures.values())
    notes = {
        "workers": WORKERS,
        "query": QUERY,
        "rotation": "mailyctl secrets rotate --secret-types database --json --force (child)",
        "retirement": "RotationEngine.run(['database'], due_only=True), now = +1h grace",
        "load_before": load_before,
        "load_after": load_after,
        "failures_total": total,
    }
    return [
        {
            "key": "adoption_pg_rate",
            "title": "PostgreSQL adapters: ops/s through rotation and retirement",
            "description": (
                f"{WORKERS} workers querying through the adapter while `mailyctl secrets rotate"
                " --secret-types database` runs, the adapter drains the old login role, and"
                " the engine retires it (clock past the grace): completed ops / window"
            ),
            "unit": "ops/s",
            "better": "higher",
            "variants": {k: {"label": labels.get(k, k), "rounds": rates[k]} for k in keys},
            "goals": [{"label": f"{k} rate", "variant": k, "op": ">=", "value": 200} for k in keys],
            "notes": notes,
        },
        {
            "key": "adoption_pg_failures",
            "title": "PostgreSQL adapters: failed ops through rotation and retirement",
            "description": "operations that raised, per round (the whole load of the round)",
            "unit": "ops",
            "better": "lower",
            "variants": {
                **{k: {"label": labels.get(k, k), "rounds": failures[k]} for k in keys},
                "total": {"label": "all rounds, both adapters", "rounds": [total]},
            },
            "goals": [{"label": "failed ops", "variant": "total", "op": "<=", "value": 0}],
            "notes": notes,
        },
    ]


# ---------------------------------------------------------------------------- the others
def _other_figures(ctx: Context) -> list[dict[str, Any]]:
    """``bench/adoption_<x>.py: figures(ctx)`` of the other adapters, when present."""
    try:
        from bench_report import error_figure
    except ImportError:  # imported as bench.bench_adoption
        from .bench_report import error_figure

    out: list[dict[str, Any]] = []
    here = Path(__file__).resolve().parent
    for name in OTHERS:
        if not (here / f"{name}.py").exists():
            ctx.log(f"adoption: bench/{name}.py is not there; skipped")
            continue
        try:
            mod = importlib.import_module(name)
            figs = mod.figures(ctx)
            if not isinstance(figs, list) or not all(isinstance(f, dict) for f in figs):
                raise TypeError(f"{name}.figures() did not return a list of dicts")
            out += figs
        except Exception as exc:
            ctx.log(f"adoption: {name} failed: {type(exc).__name__}: {exc}"[:500])
            out.append(error_figure(name, f"bench/{name}.py", f"{type(exc).__name__}: {exc}"[:500]))
    return out


def figures(ctx: Context) -> list[dict[str, Any]]:
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    return _postgres_figures(ctx) + _other_figures(ctx)
