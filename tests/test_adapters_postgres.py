"""PostgreSQL adapters (psycopg pool async and sync, SQLAlchemy) through a real rotation.

Real OpenBao (session ``bao``), the private PostgreSQL cluster that checks passwords with
SCRAM (``tests.pg``: a retired password really stops working there), the real
``database`` rotator run by ``mailyctl secrets rotate --secret-types database`` in a
child process, and the retirement at the end of the grace by an in-process
``RotationEngine`` whose ``now`` is past the grace (no waiting for an hour).

Every test has its own KV v2 mount (``pad-<hex>``), database (``padb_<hex>``), login
roles (``pa_<hex>``, ``pa_<hex>_b``), group and rotator admin, dropped at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from maily_secrets.adapters import postgres_pool, postgres_pool_sync, sqlalchemy_engine
from maily_secrets.adapters.postgres import (
    PgCredential,
    PgCredentialSource,
    RotatingAsyncConnection,
    RotationStats,
    pick_postgres,
)
from maily_secrets.bootstrap import ensure_postgres_login_roles
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.service import VaultService
from maily_secrets.sync import SyncVaultService
from maily_secrets.targets import random_password
from maily_secrets.targets.postgres import alter_password_statement, scram_sha256_verifier
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.cli import ROOT, mailyctl_argv
from .kit.rotation import hexid
from .pg import PgServer, pg
from .secrecy import assert_absent

__all__ = ["pg"]  # the session fixture, imported for pytest

ADMIN_SECRET = "rotator/postgres-admin"
QUERY = "SELECT session_user, count(*) FROM items"
WORKERS = 8
LISTENER_INTERVAL = 0.2  # seconds between the listener's polls of the secret


# ---------------------------------------------------------------------------- the world
@dataclass
class World:
    pg: PgServer
    bao: Bao
    client: VaultClient  # kv_mount = mount
    mount: str
    db: str
    a: str  # the login role in use at first
    b: str
    group: str
    a_password: str = field(repr=False)
    config_file: Path
    app: str  # the application_name the adapters set

    @property
    def config(self) -> KV2Path:
        return KV2Path(self.mount, "config")

    async def operator_update(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        """A write of the consumer secret by another process's service (check-and-set)."""
        operator = VaultService(self.bao.settings(kv_mount=self.mount))
        try:
            return await operator.update_secret(self.config.data, change)
        finally:
            await operator.close()

    def settings(self) -> Any:
        return self.bao.settings(kv_mount=self.mount, listener_interval=LISTENER_INTERVAL)

    def sessions(self) -> list[tuple[str, str, int]]:
        """(login role, application_name, count) of the sessions on our database."""
        rows = self.pg.query(
            "SELECT usename, coalesce(application_name, ''), count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY 1, 2 ORDER BY 1, 2",
            self.db,
        )
        return [(str(u), str(a), int(n)) for u, a, n in rows]

    def env(self) -> dict[str, str]:
        """A ``mailyctl`` child's environment: the token in a variable, never in argv."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        base.update(
            {
                "VAULT_TOKEN": self.bao.token,
                "MAILY_ROTATION_CONFIG": str(self.config_file),
                "COLUMNS": "200",
            }
        )
        return base

    async def rotate_with_cli(self) -> dict[str, Any]:
        """``mailyctl secrets rotate --secret-types database`` in a child process."""
        proc = await asyncio.create_subprocess_exec(
            *mailyctl_argv("secrets", "rotate", "--secret-types", "database", "--json"),
            env=self.env(),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, f"rotate exited {proc.returncode}: {err.decode()[-2000:]}"
        (result,) = json.loads(out)["results"]
        assert result["status"] == "rotated", result
        return dict(result)

    async def retire_past_the_grace(self) -> str:
        """What the CronJob's next ``--due`` run does once the grace (1h) is over."""
        engine = RotationEngine(
            RotationConfig.load(self.config_file),
            "development",
            client=self.client,
            now=lambda: datetime.now(UTC) + timedelta(hours=2),
        )
        (result,) = (await engine.run(["database"], due_only=True)).results
        assert result.status == "skipped" and "not due" in result.reason, result
        retired = [n for n in result.notes if "retired previous login role" in n]
        assert retired, result.notes
        return retired[0]


@pytest.fixture
async def world(pg: PgServer, bao: Bao, root: VaultClient, tmp_path: Path) -> AsyncIterator[World]:
    h = hexid()
    a, b, group, rot, db = f"pa_{h}", f"pa_{h}_b", f"pgrp_{h}", f"prot_{h}", f"padb_{h}"
    # a canary inside the first password: any output that shows it is caught
    rot_password, a_password = random_password(), f"CANARY{uuid.uuid4().hex}"
    mount = f"pad-{h}"
    pg.create_database(db)
    try:
        with pg.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(rot)))
            conn.execute(alter_password_statement(rot, scram_sha256_verifier(rot_password)))
            conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(rot)))
        await ensure_postgres_login_roles(
            pg.conninfo(dbname=db),
            roles=(a, b),
            group=group,
            passwords={a: a_password},
            rotator=rot,
        )
        with pg.connect(dbname=db) as conn:
            conn.execute("CREATE TABLE items (id int)")
            conn.execute("INSERT INTO items SELECT generate_series(1, 10)")
            conn.execute(sql.SQL("GRANT SELECT ON items TO {}").format(sql.Identifier(group)))
        await root.write(f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
        await root.kv.configure(mount)
        admin = {
            "host": pg.host,
            "port": pg.port,
            "dbname": db,
            "username": rot,
            "password": rot_password,
            "sslmode": "disable",
        }
        await root.kv.write(KV2Path(mount, ADMIN_SECRET), admin, cas=0)
        await root.kv.write(
            KV2Path(mount, "config"),
            {
                "db_host": pg.host,
                "db_port": pg.port,
                "db_name": db,
                "db_sslmode": "disable",
                "db_username": a,
                "db_password": a_password,
                "jwt_secret": random_password(48),
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
                        "admin_secret": ADMIN_SECRET,
                        "login_roles": [a, b],
                        "group": group,
                    },
                }
            },
            "environments": {
                "development": {
                    "vault": {"addr": bao.addr, "kv_mount": mount, "auth_method": "token"},
                    "lock_ttl": "30s",
                }
            },
        }
        config_file = tmp_path / "rotation.yaml"
        config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        async with bao.client(kv_mount=mount) as client:
            yield World(
                pg, bao, client, mount, db, a, b, group, a_password, config_file, f"app-{h}"
            )
    finally:
        with pg.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )
        for role in (a, b, group, rot):
            pg.drop_role(role)
        await root.delete(f"sys/mounts/{mount}")


# ---------------------------------------------------------------------------- load
@dataclass
class Tally:
    """Operations of a load: how many succeeded (per login role) and how many failed."""

    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    users: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, user: str | None, error: BaseException | None = None) -> None:
        with self.lock:
            if error is None and user is not None:
                self.ok += 1
                self.users[user] += 1
            else:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{type(error).__name__}: {error}")


class AsyncLoad:
    """``WORKERS`` tasks running ``op`` (returns the session user) until stopped."""

    def __init__(self, op: Callable[[], Awaitable[str]]) -> None:
        self.op = op
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                user = await self.op()
            except Exception as exc:
                self.tally.record(None, exc)
            else:
                self.tally.record(user)
            await asyncio.sleep(0)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(WORKERS)]

    async def stop(self) -> Tally:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.tally


class ThreadLoad:
    """``WORKERS`` threads running ``op`` until stopped."""

    def __init__(self, op: Callable[[], str]) -> None:
        self.op = op
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            for i in range(WORKERS)
        ]

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                user = self.op()
            except Exception as exc:
                self.tally.record(None, exc)
            else:
                self.tally.record(user)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    async def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            await asyncio.to_thread(t.join, 30)
        assert not any(t.is_alive() for t in self._threads)
        return self.tally


async def until(check: Callable[[], bool], what: str, within: float = 60.0) -> None:
    """Poll ``check`` (a condition, not a duration) until it holds; fail after ``within``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f}s")
        await asyncio.sleep(0.02)


async def no_session_left(w: World) -> None:
    """After a close: the client closed its sockets, and each backend leaves
    pg_stat_activity once it has finished exiting (a moment later on a loaded machine)."""
    await until(lambda: w.sessions() == [], "no session left on our database after close")


async def through_rotation_and_retirement(
    w: World,
    load: AsyncLoad | ThreadLoad,
    stats: Callable[[], RotationStats],
) -> tuple[Tally, dict[str, int], str]:
    """Run ``load`` before, while and after the CLI rotates, and through the retirement;
    returns the tally, the operations per phase and the retirement note."""
    tally = load.tally
    load.start()
    try:
        await until(lambda: tally.ok + tally.failed >= 100, "the load did not start")
        assert stats().generation == 1
        phases = {"before": tally.ok}
        await w.rotate_with_cli()
        phases["rotation"] = tally.ok - phases["before"]
        # the listener brings the new credential; old connections drain as returned
        await until(
            lambda: stats().generation == 2 and stats().old_connections == 0,
            f"the adapter still holds old connections: {stats()}",
        )
        at_switch = tally.ok
        await until(lambda: tally.users[w.b] >= 100, "no operation as the new role")
        note = await w.retire_past_the_grace()
        after_retire = tally.ok
        await until(lambda: tally.ok - after_retire >= 200, "the load stalled after retirement")
        phases["switch"] = after_retire - at_switch
        phases["after_retirement"] = tally.ok - after_retire
    finally:
        await load.stop()
    return tally, phases, note


async def assert_the_new_role_serves_and_the_old_is_retired(
    w: World, tally: Tally, note: str, new_password: str
) -> None:
    assert tally.failed == 0, tally.errors
    assert set(tally.users) == {w.a, w.b}, tally.users  # both credentials really served
    # the rotator saw no session of the previous role when it retired it
    assert f"retired previous login role {w.a}" in note and "no sessions were open" in note
    sessions = w.sessions()
    assert sessions, "the adapter keeps no connection open"
    assert all(user == w.b and app == w.app for user, app, _ in sessions), sessions
    assert not await w.pg.try_login_async(w.a, w.a_password, w.db)  # really retired
    assert await w.pg.try_login_async(w.b, new_password, w.db)


async def current_password(w: World) -> str:
    data = (await w.client.kv.read(w.config)).data
    assert data["db_username"] == w.b
    return str(data["db_password"])


# ---------------------------------------------------------------------------- the pools
async def test_async_pool_has_no_failed_query_through_rotation_and_retirement(
    world: World,
) -> None:
    w = world
    svc = VaultService(w.settings())
    pool = await postgres_pool(svc, min_size=4, max_size=8, application_name=w.app)
    try:

        async def op() -> str:
            async with pool.connection() as conn:
                row = await (await conn.execute(QUERY)).fetchone()
            assert row is not None and row[1] == 10
            return str(row[0])

        assert w.sessions() and {u for u, _, _ in w.sessions()} == {w.a}
        tally, phases, note = await through_rotation_and_retirement(
            w, AsyncLoad(op), pool.rotation_stats
        )
        await assert_the_new_role_serves_and_the_old_is_retired(
            w, tally, note, await current_password(w)
        )
        assert phases["rotation"] > 0, phases
        stats = pool.rotation_stats()
        assert stats.generation == 2 and set(stats.connections) == {2}, stats
        print(f"\nasync pool: {tally.ok} queries, {tally.failed} failed; phases {phases}")
    finally:
        await pool.close()
        await svc.close()
    # closing the pool closed its connections and unsubscribed
    await no_session_left(w)
    assert pool.feed._sub is None


async def test_sync_pool_in_threads_has_no_failed_query_through_rotation_and_retirement(
    world: World,
) -> None:
    w = world
    svc = SyncVaultService(w.settings())
    # the blocking API may not run on this (event loop) thread
    pool = await asyncio.to_thread(
        postgres_pool_sync, svc, min_size=4, max_size=8, application_name=w.app
    )
    try:

        def op() -> str:
            with pool.connection() as conn:
                row = conn.execute(QUERY).fetchone()
            assert row is not None and row[1] == 10
            return str(row[0])

        tally, phases, note = await through_rotation_and_retirement(
            w, ThreadLoad(op), pool.rotation_stats
        )
        await assert_the_new_role_serves_and_the_old_is_retired(
            w, tally, note, await current_password(w)
        )
        assert phases["rotation"] > 0, phases
        print(f"\nsync pool: {tally.ok} queries, {tally.failed} failed; phases {phases}")
    finally:
        await asyncio.to_thread(pool.close)
        await asyncio.to_thread(svc.close)
    await no_session_left(w)
    assert pool.feed._sub is None


async def test_sqlalchemy_engine_has_no_failed_query_through_rotation_and_retirement(
    world: World,
) -> None:
    from sqlalchemy import text

    w = world
    svc = VaultService(w.settings())
    engine = await sqlalchemy_engine(svc, pool_size=4, max_overflow=4, application_name=w.app)
    try:

        async def op() -> str:
            async with engine.connect() as conn:
                row = (await conn.execute(text(QUERY))).one()
            assert row[1] == 10
            return str(row[0])

        tally, phases, note = await through_rotation_and_retirement(
            w, AsyncLoad(op), engine.rotation_stats
        )
        await assert_the_new_role_serves_and_the_old_is_retired(
            w, tally, note, await current_password(w)
        )
        assert phases["rotation"] > 0, phases
        stats = engine.rotation_stats()
        assert stats.generation == 2 and set(stats.connections) == {2}, stats
        print(f"\nSQLAlchemy: {tally.ok} queries, {tally.failed} failed; phases {phases}")
    finally:
        await engine.dispose()
        await svc.close()
    await no_session_left(w)
    assert engine.feed._sub is None


async def test_idle_connections_of_the_old_role_are_replaced_without_any_query(
    world: World,
) -> None:
    """A quiet application: after the change no session of the previous role is left."""
    from sqlalchemy import text

    w = world
    svc = VaultService(w.settings())
    pool = await postgres_pool(svc, min_size=3, max_size=3, application_name=w.app)
    engine = await sqlalchemy_engine(svc, pool_size=3, application_name=w.app)
    try:
        conns = [await engine.connect() for _ in range(3)]
        for c in conns:
            await c.execute(text("SELECT 1"))
        for c in conns:
            await c.close()  # three idle connections in the engine's pool
        assert engine.rotation_stats().connections == {1: 3}
        assert pool.rotation_stats().connections == {1: 3}
        await w.rotate_with_cli()
        await until(
            lambda: (
                {u for u, _, _ in w.sessions()} == {w.b}
                and pool.rotation_stats().connections == {2: 3}
                and engine.rotation_stats().connections == {2: 3}
            ),
            f"old sessions left: {w.sessions()}",
        )
    finally:
        await engine.dispose()
        await pool.close()
        await svc.close()


async def test_connection_in_use_finishes_its_work_on_the_old_login(world: World) -> None:
    """In-flight work is never cut: a transaction open across the change commits, and its
    connection is closed only when it is returned."""
    w = world
    svc = VaultService(w.settings())
    pool = await postgres_pool(svc, min_size=1, max_size=4, application_name=w.app)
    try:
        async with pool.connection() as held:
            async with held.transaction():
                await held.execute("CREATE TEMP TABLE t (x int)")
                await w.rotate_with_cli()
                await until(
                    lambda: pool.rotation_stats().generation == 2, "the change did not arrive"
                )
                async with pool.connection() as fresh:  # a new one: the new role
                    row = await (await fresh.execute("SELECT session_user")).fetchone()
                    assert row == (w.b,)
                await held.execute("INSERT INTO t VALUES (1)")
                row = await (await held.execute("SELECT session_user, count(*) FROM t")).fetchone()
                assert row == (w.a, 1)  # still the old login, still working
            assert pool.rotation_stats().old_connections == 1  # the one in use
        await until(
            lambda: pool.rotation_stats().old_connections == 0,
            "the returned old connection was not closed",
        )
        assert pool.rotation_stats().discarded == 0  # drained on return, not at checkout
    finally:
        await pool.close()
        await svc.close()


async def test_a_login_that_races_with_a_change_is_redone_with_the_new_credential(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credential changes while a connection logs in with the previous one: the
    connection class logs in again, so no connection of the old generation joins the pool."""
    w = world
    source = PgCredentialSource(
        name="race", application_name=w.app, dbname=w.db, connect_kwargs=None
    )
    old = PgCredential(w.a, w.a_password, w.pg.host, w.pg.port, w.db, "disable")
    b_password = random_password()
    with w.pg.connect() as conn:
        conn.execute(alter_password_statement(w.b, scram_sha256_verifier(b_password)))
    new = PgCredential(w.b, b_password, w.pg.host, w.pg.port, w.db, "disable")
    source.set(old, 1)
    logins: list[str] = []
    connect = psycopg.AsyncConnection.connect.__func__  # type: ignore[attr-defined]

    async def racing(cls: Any, conninfo: str = "", **kw: Any) -> Any:
        conn = await connect(cls, conninfo, **kw)
        logins.append(kw["user"])
        if len(logins) == 1:
            source.set(new, 2)  # the listener delivered a rotation meanwhile
        return conn

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(racing))
    conn = await RotatingAsyncConnection.connect("", maily_source=source)
    monkeypatch.undo()
    async with conn:
        assert await (await conn.execute("SELECT session_user")).fetchone() == (w.b,)
        assert conn.maily_generation == 2
        assert logins == [w.a, w.b] and source.relogins == 1
        assert source.stats().connections == {2: 1}  # the first login was closed


async def test_an_old_connection_found_at_checkout_is_replaced_for_the_caller(
    world: World,
) -> None:
    """A connection of a previous generation still idle in the pool (a login that finished
    as the change landed): checkout closes it and the caller gets a current one."""
    w = world
    svc = VaultService(w.settings())
    pool = await postgres_pool(svc, min_size=1, max_size=1, application_name=w.app)
    try:
        generation, credential = pool.source.snapshot()
        # the same login as a new generation, without the pool's drain: what a race leaves
        pool.source.set(credential, generation + 1)
        assert pool.rotation_stats().old_connections == 1
        async with pool.connection() as conn:
            assert conn.maily_generation == generation + 1
            assert await (await conn.execute("SELECT session_user")).fetchone() == (w.a,)
        stats = pool.rotation_stats()
        assert stats.discarded == 1 and stats.connections == {generation + 1: 1}, stats
    finally:
        await pool.close()
        await svc.close()


# ---------------------------------------------------------------------------- bad values
async def test_value_without_db_password_keeps_the_old_credential(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    svc = VaultService(w.settings())
    pool = await postgres_pool(svc, min_size=2, max_size=4, application_name=w.app)
    try:
        caplog.set_level(logging.WARNING, logger="maily_secrets.adapters")
        await w.operator_update(lambda d: {k: v for k, v in d.items() if k != "db_password"})
        await until(
            lambda: any("not usable" in r.getMessage() for r in caplog.records),
            "the listener did not deliver the new version",
        )
        (record,) = [r for r in caplog.records if "not usable" in r.getMessage()]
        assert "db_password" in record.getMessage()
        assert pool.rotation_stats().generation == 1
        await pool.drain()  # every connection anew: still the old, working credential
        async with pool.connection() as conn:
            assert await (await conn.execute("SELECT session_user")).fetchone() == (w.a,)

        # and a usable value afterwards is taken
        new = random_password()
        with w.pg.connect() as conn:  # a new password on the same role, as an operator would
            conn.execute(alter_password_statement(w.a, scram_sha256_verifier(new)))
        await w.operator_update(lambda d: {**d, "db_password": new})
        await until(lambda: pool.rotation_stats().generation == 2, "the good value was ignored")
        await until(lambda: set(pool.rotation_stats().connections) == {2}, "old connections left")
        for r in caplog.records:
            assert_absent(new, r.getMessage() + str(r.__dict__), "the adapter's logs")
    finally:
        await pool.close()
        await svc.close()


def test_pick_postgres_names_missing_fields_never_values() -> None:
    ok = pick_postgres({"db_username": "u", "db_password": "CANARYpw", "db_port": "6543"})
    assert (ok.user, ok.host, ok.port, ok.dbname, ok.sslmode) == (
        "u",
        "127.0.0.1",
        6543,
        None,
        None,
    )
    with pytest.raises(ValueError, match="lacks db_password"):
        pick_postgres({"db_username": "u", "db_password": ""})
    with pytest.raises(ValueError, match="lacks db_username, db_password"):
        pick_postgres({})
    with pytest.raises(ValueError, match="db_port is not a number") as err:
        pick_postgres({"db_username": "u", "db_password": "CANARYpw", "db_port": "x"})
    assert "CANARYpw" not in str(err.value)
    assert "CANARYpw" not in repr(ok)


async def test_reserved_arguments_are_refused(world: World) -> None:
    svc = VaultService(world.settings())
    try:
        with pytest.raises(TypeError, match="conninfo"):
            await postgres_pool(svc, conninfo="host=elsewhere")
        with pytest.raises(TypeError, match="password"):
            await postgres_pool(svc, connect_kwargs={"password": "x"})
        with pytest.raises(TypeError, match="async_creator"):
            await sqlalchemy_engine(svc, async_creator=None)
    finally:
        await svc.close()


# ---------------------------------------------------------------------------- secrecy
async def test_repr_of_the_adapters_holds_no_password(world: World) -> None:
    w = world
    svc = VaultService(w.settings())
    sync_svc = SyncVaultService(w.settings())
    pool = await postgres_pool(svc, min_size=1, max_size=2)
    engine = await sqlalchemy_engine(svc)
    sync_pool = await asyncio.to_thread(postgres_pool_sync, sync_svc, min_size=1, max_size=2)
    try:
        async with pool.connection() as conn:
            conn_repr = repr(conn)
        async with engine.connect() as sa_conn:
            sa_repr = repr(sa_conn) + repr(await sa_conn.get_raw_connection())
        credential = pool.source.snapshot()[1]
        assert isinstance(credential, PgCredential) and credential.password == w.a_password
        objects = [
            pool,
            pool.source,
            pool.feed,
            pool.rotation_stats(),
            pool.get_stats(),
            credential,
            engine,
            engine.source,
            engine.sync_engine,
            engine.sync_engine.pool,
            engine.url,
            sync_pool,
            sync_pool.source,
            sync_pool.feed,
        ]
        text = "\n".join(f"{o!r} {o!s}" for o in objects) + conn_repr + sa_repr
        assert "CANARY" not in text  # the canary inside the password
        assert_absent(w.a_password, text, "repr() of the adapters")
        # the default application name
        assert {app for _, app, _ in w.sessions()} == {"maily-app"}
    finally:
        await asyncio.to_thread(sync_pool.close)
        await asyncio.to_thread(sync_svc.close)
        await engine.dispose()
        await pool.close()
        await svc.close()
