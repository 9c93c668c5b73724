"""Dynamic and static PostgreSQL credentials, end to end.

Real OpenBao (``bao``/``private_bao``) and a private PostgreSQL cluster that
checks passwords with SCRAM (``tests.pg``): the machine's own PostgreSQL trusts
everybody, so it could not show that a password works, or that a revoked one
does not.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from maily_secrets import logs
from maily_secrets.bootstrap import ensure_database, prepare_postgres
from maily_secrets.errors import VaultRequestError
from maily_secrets.leases import LeaseContainer, LeaseEvent
from maily_secrets.service import VaultService
from maily_secrets.targets.postgres import PostgresTarget
from maily_secrets.vault.client import VaultClient
from maily_secrets.vault.database import (
    Database,
    DatabaseCredentials,
    postgres_creation_statements,
)

from .conftest import Bao
from .kit.leases import LeaseEvents
from .pg import PgServer, pg
from .secrecy import assert_absent

__all__ = ["pg"]  # the session fixture, imported for pytest


# ---------------------------------------------------------------------------- helpers
def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def engine(
    client: VaultClient,
    pg: PgServer,
    *,
    default_ttl: int = 60,
    max_ttl: int = 120,
    role: str = "app",
) -> tuple[Database, str]:
    """A fresh database mount wired to the private cluster, with dynamic role ``role``."""
    db = Database(client, unique("db"))
    assert await db.enable() is True
    await db.configure_postgres(
        "pg",
        connection_url=pg.vault_connection_url(),
        username=pg.superuser,
        password=pg.password,
        allowed_roles=[role, "static-*"],
    )
    await db.create_role(
        role,
        db_name="pg",
        creation_statements=postgres_creation_statements(pg.dbname),
        default_ttl=default_ttl,
        max_ttl=max_ttl,
    )
    return db, role


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every ``maily_secrets.*`` record at DEBUG, even after ``logs.configure()`` stopped
    propagation in this session."""
    logger = logging.getLogger("maily_secrets")
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # caplog's handler is attached here: no second copy via root
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    fmt = logs.JsonFormatter()
    return "\n".join(f"{r.getMessage()} {fmt.format(r)} {vars(r)!r}" for r in caplog.records)


def password(creds: DatabaseCredentials) -> str:
    return creds.password.get_secret_value()


async def expire_time(client: VaultClient, lease_id: str) -> str:
    r = await client.request("PUT", "sys/leases/lookup", json_body={"lease_id": lease_id})
    return str((r.data or {})["expire_time"])


# ---------------------------------------------------------------------------- the cluster
def test_private_cluster_checks_passwords(pg: PgServer) -> None:
    assert pg.try_login(pg.superuser, pg.password)
    assert not pg.try_login(pg.superuser, pg.password + "x")
    assert not pg.try_login("nobody", pg.password)
    # the password never was in a command line, and the directory is the server's own
    pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    assert_absent(pg.password, Path(f"/proc/{pid}/cmdline").read_bytes().decode(), "argv")
    assert_absent(pg.password, repr(pg), "repr(PgServer)")
    assert pg.datadir.stat().st_mode & 0o077 == 0
    assert not (pg.base / "pwfile").exists()
    hba = (pg.datadir / "pg_hba.conf").read_text()
    assert "trust" not in hba and "scram-sha-256" in hba


# ---------------------------------------------------------------------------- engine
async def test_dynamic_credentials_log_in_and_are_revoked(
    root: VaultClient, pg: PgServer, captured: pytest.LogCaptureFixture
) -> None:
    db, role = await engine(root, pg)
    assert await db.enable() is False  # idempotent
    creds = await db.credentials(role)
    try:
        assert creds.renewable and creds.lease_duration == 60
        assert creds.lease_id.startswith(f"{db.mount}/creds/{role}/")
        assert pg.try_login(creds.username, password(creds))
        assert not pg.try_login(creds.username, password(creds)[:-1] + "#")
        for text in (repr(creds), str(creds), f"{creds}"):
            assert_absent(password(creds), text, "the credentials' repr")
            assert creds.username in text
        # the app may use the database: create, write, read
        with pg.connect(**creds.conninfo()) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t_app (id int)")
            conn.execute("INSERT INTO t_app VALUES (1)")
            assert conn.execute("SELECT count(*) FROM t_app").fetchone() == (1,)
    finally:
        await root.request("PUT", "sys/leases/revoke", json_body={"lease_id": creds.lease_id})
    assert not pg.try_login(creds.username, password(creds))
    assert not pg.role_exists(creds.username)
    # what it created survives it, owned by the connection's admin user
    assert pg.query("SELECT tableowner FROM pg_tables WHERE tablename = 't_app'") == [
        (pg.superuser,)
    ]
    pg.query("DROP TABLE t_app")
    assert_absent(password(creds), log_text(captured), "logs")


async def test_connection_errors_name_no_password(root: VaultClient, pg: PgServer) -> None:
    db = Database(root, unique("db"))
    await db.enable()
    with pytest.raises(ValueError, match="literal password"):
        await db.configure_postgres(
            "pg",
            f"postgresql://postgres:{pg.password}@127.0.0.1:{pg.port}/postgres",
            "postgres",
            None,
            ["*"],
        )
    wrong = "Wrong-" + uuid.uuid4().hex
    with pytest.raises(VaultRequestError) as info:
        await db.configure_postgres(
            "pg", pg.vault_connection_url(), pg.superuser, SecretStr(wrong), ["*"]
        )
    assert "password authentication failed" in str(info.value)
    assert_absent(wrong, f"{info.value} {info.value.detail}", "the error")


async def test_static_role_rotates_the_password(root: VaultClient, pg: PgServer) -> None:
    db, _ = await engine(root, pg)
    user = unique("static_user").replace("-", "_")
    pg.query(f"CREATE ROLE {user} LOGIN PASSWORD 'initial-password'")
    try:
        assert pg.try_login(user, "initial-password")
        await db.create_static_role("static-app", db_name="pg", username=user)
        first = await db.static_credentials("static-app")
        assert first.username == user and first.rotation_period == 86400
        assert_absent(first.password.get_secret_value(), repr(first), "repr")
        assert not pg.try_login(user, "initial-password")  # rotated at creation
        assert pg.try_login(user, first.password.get_secret_value())

        await db.rotate_role("static-app")
        second = await db.static_credentials("static-app")
        assert second.password != first.password
        assert not pg.try_login(user, first.password.get_secret_value())
        assert pg.try_login(user, second.password.get_secret_value())
        await db.delete_static_role("static-app")
    finally:
        pg.query(f"DROP ROLE IF EXISTS {user}")


# ---------------------------------------------------------------------------- leases
async def test_lease_is_renewed_rotated_before_max_ttl_and_revoked_on_close(
    root: VaultClient, pg: PgServer, captured: pytest.LogCaptureFixture
) -> None:
    db, role = await engine(root, pg, default_ttl=3, max_ttl=8)
    container = LeaseContainer(root)
    sync_events = LeaseEvents()
    async_events: list[str] = []

    async def async_listener(event: LeaseEvent[Any]) -> None:
        await asyncio.sleep(0)
        async_events.append(event.kind)

    container.add_listener(sync_events)
    container.add_listener(async_listener)
    t0 = time.monotonic()
    handle = await container.database_credentials(role, mount=db.mount)
    try:
        first: DatabaseCredentials = handle.secret
        assert sync_events.kinds() == ["created"] and async_events == ["created"]
        assert pg.try_login(first.username, password(first))
        assert not pg.try_login(first.username, "not-" + password(first))
        initial_expiry = await expire_time(root, first.lease_id)

        # renewed at ~2/3 of 3 s: Vault's expiry of the same lease moved
        renewed = (await sync_events.wait("renewed", within=4))[0]
        assert 1.5 < time.monotonic() - t0 < 3.0
        assert renewed.secret is first and renewed.lease is not None
        assert renewed.previous_lease is not None
        assert renewed.lease.expires_at > renewed.previous_lease.expires_at
        assert renewed.lease.lease_id == first.lease_id
        assert await expire_time(root, first.lease_id) > initial_expiry
        assert pg.try_login(first.username, password(first))

        # max_ttl (8 s) caps a renewal: new credentials BEFORE the old ones expire
        rotated = (await sync_events.wait("rotated", within=8))[0]
        elapsed = time.monotonic() - t0
        assert elapsed < 7.5, elapsed
        second: DatabaseCredentials = rotated.secret
        assert rotated.previous is first and handle.secret is second
        assert second.username != first.username and second.lease_id != first.lease_id
        kinds = sync_events.kinds()
        assert kinds.index("expiring") < kinds.index("rotated")
        assert "expired" not in kinds and "error" not in kinds
        assert pg.try_login(second.username, password(second))
        # the old user still works until its lease runs out: a pool can drain
        assert pg.try_login(first.username, password(first))
        for text in (repr(handle), repr(rotated), str(rotated)):
            for p in (password(first), password(second)):
                assert_absent(p, text, "reprs")
        old_lease = rotated.previous_lease
        assert old_lease is not None
    finally:
        # close() revokes every lease still alive; the old one (max_ttl 8 s) may have
        # ended by itself by now (a loaded machine), and is then not revoked again
        old_alive = old_lease.remaining() > 1.0 if "old_lease" in locals() else True
        await container.close()

    revoked = {e.secret.username for e in sync_events.of("revoked")}
    assert second.username in revoked
    assert revoked <= {first.username, second.username}
    if old_alive:
        assert first.username in revoked
    for creds in (first, second):
        assert not pg.try_login(creds.username, password(creds))
        assert not pg.role_exists(creds.username)
    assert async_events == sync_events.kinds()  # both kinds of listener saw everything
    text = log_text(captured)
    assert "lease renewed" in text and "lease rotated" in text
    for p in (password(first), password(second)):
        assert_absent(p, text, "logs")


async def test_listeners_are_isolated_sync_and_async(
    root: VaultClient, pg: PgServer, captured: pytest.LogCaptureFixture
) -> None:
    db, role = await engine(root, pg)
    container = LeaseContainer(root)
    seen: list[tuple[str, str]] = []

    def broken(event: LeaseEvent[Any]) -> None:
        # the worst case: the exception text carries the password
        raise RuntimeError(f"cannot use {event.secret.conninfo()}")

    async def broken_async(event: LeaseEvent[Any]) -> None:
        raise ValueError(password(event.secret))

    def sync_listener(event: LeaseEvent[Any]) -> None:
        seen.append(("sync", event.kind))

    async def async_listener(event: LeaseEvent[Any]) -> None:
        await asyncio.sleep(0.01)
        seen.append(("async", event.kind))

    container.add_listener(broken)
    container.add_listener(broken_async)
    container.add_listener(sync_listener)
    container.add_listener(async_listener)
    only_revoked: list[str] = []
    container.add_listener(lambda e: only_revoked.append(e.kind), events=["revoked"])
    removed: list[str] = []
    remove = container.add_listener(lambda e: removed.append(e.kind))
    remove()
    with pytest.raises(ValueError, match="unknown lease event"):
        container.add_listener(sync_listener, events=["bogus"])  # type: ignore[list-item]

    handle = await container.database_credentials(role, mount=db.mount)
    creds: DatabaseCredentials = handle.secret
    # the same request again: the same lease, no second "created"
    assert await container.database_credentials(role, mount=db.mount) is handle
    await container.close()

    assert seen == [
        ("sync", "created"),
        ("async", "created"),
        ("sync", "revoked"),
        ("async", "revoked"),
    ]
    assert only_revoked == ["revoked"] and removed == []
    failures = [r for r in captured.records if r.getMessage() == "lease listener failed"]
    assert len(failures) == 4
    assert {getattr(r, "error", "").split(":")[0] for r in failures} == {
        "RuntimeError",
        "ValueError",
    }
    assert_absent(password(creds), log_text(captured), "logs")
    assert not pg.role_exists(creds.username)


async def test_renewal_retries_with_backoff_while_vault_is_down(
    private_bao: Bao, pg: PgServer
) -> None:
    async with private_bao.client(max_retries=0) as client:
        db, role = await engine(client, pg, default_ttl=3, max_ttl=60)
        container = LeaseContainer(client, retry_base_delay=0.2, retry_max_delay=0.8)
        events = LeaseEvents()
        container.add_listener(events)
        handle = await container.database_credentials(role, mount=db.mount)
        creds: DatabaseCredentials = handle.secret
        try:
            private_bao.server.stop()  # Vault is gone before the first renewal (at 2 s)
            errors = await events.wait("error", within=4, count=3)
            assert all("VaultUnavailable" in e.error for e in errors)
            await events.wait("expired", within=4)
            n = len(events.of("error"))
            assert n < 25, n  # backoff, not a busy loop
            # still trying to get new credentials after expiry (with capped backoff)
            await events.wait("error", within=3, count=n + 1)
            started = time.monotonic()
            await container.close()  # cannot revoke: reports it, does not hang
            assert time.monotonic() - started < 5
            assert "revoked" not in events.kinds()
        finally:
            await container.close(revoke=False)
            pg.drop_role(creds.username)


# ---------------------------------------------------------------------------- bootstrap
async def test_ensure_database_is_idempotent(
    root: VaultClient, pg: PgServer, captured: pytest.LogCaptureFixture
) -> None:
    dbname = unique("maily_boot").replace("-", "_")
    target = PostgresTarget(
        host=pg.host,
        port=pg.port,
        user=pg.superuser,
        password=SecretStr(pg.password),
        dbname=dbname,
        sslmode="disable",
    )
    assert_absent(pg.password, repr(target), "repr(PostgresTarget)")
    assert "{{password}}" in target.vault_connection_url()
    assert pg.password not in target.vault_connection_url()

    # a wrong password or a dead server: a reason, without the password
    wrong = PostgresTarget(
        host=pg.host, port=pg.port, password=SecretStr("nope-" + pg.password), dbname=dbname
    )
    reason = prepare_postgres(wrong)
    assert reason is not None and "password authentication failed" in reason
    assert_absent(pg.password, reason, "the reason")
    assert prepare_postgres(PostgresTarget(port=1, dbname=dbname)) is not None
    # the database is created when missing, once
    assert prepare_postgres(target) is None
    assert prepare_postgres(target) is None
    assert pg.query("SELECT 1 FROM pg_database WHERE datname = %s", dbname) == [(1,)]

    mount = unique("db")
    first = await ensure_database(root, target, mount=mount)
    assert len(first.created) == 3 and first.unchanged == []
    second = await ensure_database(root, target, mount=mount)
    assert second.created == [] and len(second.unchanged) == 3

    db = Database(root, mount)
    creds = await db.credentials("maily-app")
    try:
        assert creds.lease_duration == 3600
        with pg.connect(**creds.conninfo(), dbname=dbname) as conn:
            conn.execute("CREATE TABLE mail (id serial PRIMARY KEY, subject text)")
            conn.execute("INSERT INTO mail (subject) VALUES ('hi')")
            assert conn.execute("SELECT subject FROM mail").fetchall() == [("hi",)]
    finally:
        await root.request("PUT", "sys/leases/revoke", json_body={"lease_id": creds.lease_id})
    assert not pg.role_exists(creds.username)

    # a changed TTL is applied, the rest stays
    third = await ensure_database(root, target, mount=mount, default_ttl=600)
    assert third.created == ["database role maily-app (ttl 600s, max 86400s)"]
    assert_absent(pg.password, log_text(captured), "logs")


def test_target_from_url() -> None:
    t = PostgresTarget.from_url("postgresql://admin:s3cret@db.example:6543/app?sslmode=require")
    assert (t.host, t.port, t.user, t.dbname, t.sslmode) == (
        "db.example",
        6543,
        "admin",
        "app",
        "require",
    )
    assert t.password is not None and t.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(t) and "s3cret" not in t.vault_connection_url()
    assert t.vault_connection_url() == (
        "postgresql://{{username}}:{{password}}@db.example:6543/app?sslmode=require"
    )
    d = PostgresTarget.from_url("postgresql://postgres@127.0.0.1:5432/maily")
    assert d.password is None
    assert d.vault_connection_url() == "postgresql://{{username}}@127.0.0.1:5432/maily"


async def test_a_lease_revoked_behind_our_back_is_replaced(root: VaultClient, pg: PgServer) -> None:
    db, role = await engine(root, pg, default_ttl=3, max_ttl=60)
    container = LeaseContainer(root)
    events = LeaseEvents()
    container.add_listener(events)
    handle = await container.database_credentials(role, mount=db.mount)
    first: DatabaseCredentials = handle.secret
    try:
        await root.request("PUT", "sys/leases/revoke", json_body={"lease_id": first.lease_id})
        assert not pg.try_login(first.username, password(first))
        rotated = (await events.wait("rotated", within=5))[0]
        assert events.kinds()[:4] == ["created", "error", "expiring", "rotated"]
        assert "lease not found" in events.of("error")[0].error
        second: DatabaseCredentials = rotated.secret
        assert second.username != first.username
        assert pg.try_login(second.username, password(second))
    finally:
        await container.close()
    assert not pg.role_exists(second.username)


async def test_any_leased_path_and_lazy_start(root: VaultClient, pg: PgServer) -> None:
    db, role = await engine(root, pg)
    tasks_before = asyncio.all_tasks()
    container = LeaseContainer(root)  # construction starts nothing
    assert asyncio.all_tasks() == tasks_before and container.leases == {}
    handle = await container.request_path(f"{db.mount}/creds/{role}")
    secret = handle.secret
    pw = str(secret.data["password"])
    assert pg.try_login(str(secret.data["username"]), pw)
    assert_absent(pw, repr(secret) + repr(handle), "reprs")
    assert "password" in repr(secret)  # the key names only
    assert handle.task is not None and not handle.task.done()
    await container.close()
    assert handle.task is None and handle.state == "revoked"
    assert not pg.try_login(str(secret.data["username"]), pw)


async def test_vault_service_get_database_credentials(
    bao: Bao, root: VaultClient, pg: PgServer
) -> None:
    """The facade: one user per role while it lives, revoked by close()."""
    db, role = await engine(root, pg)
    svc = VaultService(bao.settings())
    creds = await svc.get_database_credentials(role, mount=db.mount)
    assert await pg.try_login_async(creds.username, password(creds))
    again = await svc.get_database_credentials(role, mount=db.mount)
    assert again.username == creds.username  # the same live user, not a new one per call
    assert_absent(password(creds), repr(creds), "the credentials repr")
    await svc.close()
    assert not await pg.try_login_async(creds.username, password(creds))
    assert not pg.role_exists(creds.username)
