"""The ``database`` rotator: two login roles, zero downtime, against real servers.

Real OpenBao (``bao``/``root``) and the private PostgreSQL cluster that checks
passwords with SCRAM (``tests.pg``). Every test has its own KV v2 mount
(``rot-db-<hex>/``, check-and-set required) and its own roles (``app_<hex>``,
``app_<hex>_b``, group ``grp_<hex>``, rotator admin ``rot_<hex>``: CREATEROLE, not a
superuser), so tests see neither each other nor other modules' ``maily/``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from maily_secrets.bootstrap import PostgresSetupError, ensure_postgres_login_roles
from maily_secrets.errors import CheckAndSetConflict
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.base import (
    RotationContext,
    RotationError,
    RotatorConfigError,
    rotator_for,
)
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.rotators.postgres import PostgresTwoRoleRotator
from maily_secrets.targets import random_password
from maily_secrets.targets.postgres import alter_password_statement, scram_sha256_verifier
from maily_secrets.vault.client import VaultClient
from maily_secrets.vault.kv import KV2

from .conftest import Bao
from .kit.rotation import hexid, rotate, rotation_ctx
from .pg import PgServer, pg
from .secrecy import assert_absent

__all__ = ["pg"]  # the session fixture, imported for pytest

ADMIN_SECRET = "rotator/postgres-admin"
TIMINGS: list[float] = []


# ---------------------------------------------------------------------------- the world
@dataclass
class World:
    pg: PgServer
    bao: Bao
    root: VaultClient
    client: VaultClient  # kv_mount = mount
    mount: str
    a: str  # the login role in use at first
    b: str
    group: str
    rotator_role: str
    a_password: str
    options: dict[str, Any]
    passwords: list[str] = field(default_factory=list)  # every one the test made

    @property
    def config(self) -> KV2Path:
        return KV2Path(self.mount, "config")

    @property
    def admin(self) -> KV2Path:
        return KV2Path(self.mount, ADMIN_SECRET)

    def ctx(self, **options: Any) -> RotationContext:
        return rotation_ctx("database", self.client, "config", options={**self.options, **options})

    async def login(self, user: str, password: str) -> bool:
        return await self.pg.try_login_async(user, password)

    async def current(self) -> tuple[dict[str, Any], int]:
        v = await self.client.kv.read(self.config)
        return v.data, v.version

    def superuser(self, statement: sql.Composed | str) -> None:
        with self.pg.connect() as conn:
            conn.execute(statement)


@pytest.fixture
async def world(pg: PgServer, bao: Bao, root: VaultClient) -> AsyncIterator[World]:
    h = hexid()
    a, b, group, rot = f"app_{h}", f"app_{h}_b", f"grp_{h}", f"rot_{h}"
    rot_password, a_password = random_password(), random_password()
    # the rotator's admin: may manage roles, is not a superuser
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(rot)))
        conn.execute(alter_password_statement(rot, scram_sha256_verifier(rot_password)))
    await ensure_postgres_login_roles(
        pg.conninfo(), roles=(a, b), group=group, passwords={a: a_password}, rotator=rot
    )
    mount = f"rot-db-{h}"
    await root.write(f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
    await root.kv.configure(mount)
    admin = {
        "host": pg.host,
        "port": pg.port,
        "dbname": pg.dbname,
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
            "db_username": a,
            "db_password": a_password,
            "jwt_secret": random_password(48),
            "redis_password": random_password(),
        },
        cas=0,
    )
    options = {"admin_secret": ADMIN_SECRET, "login_roles": [a, b], "group": group}
    async with bao.client(kv_mount=mount) as client:
        w = World(pg, bao, root, client, mount, a, b, group, rot, a_password, options)
        w.passwords += [rot_password, a_password]
        try:
            yield w
        finally:
            for role in (a, b, group, rot):
                pg.drop_role(role)
            await root.delete(f"sys/mounts/{mount}")


# ---------------------------------------------------------------------------- SCRAM
def test_verifier_is_what_postgresql_itself_stores(pg: PgServer) -> None:
    """Same password and salt: byte for byte the verifier the server computes."""
    role, password = f"scram_{hexid()}", random_password()
    with pg.connect() as conn:
        # a throw-away role: here the server hashes the plaintext itself, to compare
        conn.execute(
            sql.SQL("CREATE ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    try:
        stored = str(pg.query("SELECT rolpassword FROM pg_authid WHERE rolname = %s", role)[0][0])
    finally:
        pg.drop_role(role)
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", stored)
    assert m, "PostgreSQL did not store a SCRAM verifier"
    salt = base64.b64decode(m.group(2))
    assert scram_sha256_verifier(password, salt=salt, iterations=int(m.group(1))) == stored

    mine = scram_sha256_verifier(password)
    assert re.fullmatch(
        r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}", mine
    )
    assert password not in mine
    assert mine != scram_sha256_verifier(password)  # a fresh salt each time
    with pytest.raises(ValueError, match="ASCII"):
        scram_sha256_verifier("pässword")
    with pytest.raises(ValueError, match="SCRAM"):
        alter_password_statement("r", password)


# ---------------------------------------------------------------------------- setup
async def test_login_roles_setup_is_idempotent_and_grants_are_shared(world: World) -> None:
    w = world
    report = await ensure_postgres_login_roles(
        w.pg.conninfo(), roles=(w.a, w.b), group=w.group, rotator=w.rotator_role
    )
    assert report.created == [], report.created
    assert len(report.unchanged) == 5  # group, grants, two login roles, rotator

    rows = w.pg.query(
        "SELECT r.rolname, r.rolcanlogin, r.rolinherit, pg_has_role(r.oid, %s, 'USAGE')"
        " FROM pg_roles r WHERE r.rolname = ANY(%s) ORDER BY 1",
        w.group,
        [w.a, w.b, w.group],
    )
    assert rows == sorted(
        [(w.a, True, True, True), (w.b, True, True, True), (w.group, False, True, True)]
    )
    # b has no password yet: it cannot log in until a rotation gives it one
    assert await w.login(w.a, w.a_password)
    assert not await w.login(w.b, w.a_password)

    # what a's sessions create belongs to the group: b may use, alter and drop it
    table = f"t_{hexid()}"
    with psycopg.connect(**w.pg.conninfo(w.a, w.a_password), autocommit=True) as conn:
        who = conn.execute("SELECT session_user, current_user").fetchone()
        assert who == (w.a, w.group)
        conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(table)))
    owner = w.pg.query("SELECT tableowner FROM pg_tables WHERE tablename = %s", table)
    assert owner == [(w.group,)]
    pending, _ = await rotate(PostgresTwoRoleRotator(), w.ctx())
    with psycopg.connect(**w.pg.conninfo(w.b, pending["password"]), autocommit=True) as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(table)))
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN y int").format(sql.Identifier(table)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))

    with pytest.raises(PostgresSetupError):
        await ensure_postgres_login_roles(w.pg.conninfo(), roles=(w.a, w.a), group=w.group)


# ---------------------------------------------------------------------------- rotation
async def test_step_by_step_rotation_flips_between_the_two_roles(world: World) -> None:
    w = world
    rot = rotator_for("database")
    assert isinstance(rot, PostgresTwoRoleRotator) and rot.two_slots
    ctx = w.ctx()
    before, v1 = await w.current()

    await rot.check(ctx)
    assert await rot.describe(ctx) == (
        f"set a new password on {w.b}, then point db_username at it (currently {w.a})"
    )
    started = time.monotonic()
    p1 = await rot.create_pending(ctx)
    w.passwords.append(p1["password"])
    assert p1["role"] == w.b and p1["previous_role"] == w.a
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", p1["password"])

    await rot.apply(ctx, p1)
    # zero downtime: the credential in use and the new one both log in
    assert await w.login(w.a, w.a_password)
    assert await w.login(w.b, p1["password"])
    assert (await w.current())[1] == v1  # nothing promoted yet
    await rot.apply(ctx, p1)  # idempotent (a resumed step)
    assert await w.login(w.b, p1["password"])

    await rot.verify(ctx, p1)
    v2 = await rot.promote(ctx, p1)
    TIMINGS.append(time.monotonic() - started)
    after, version = await w.current()
    assert version == v2 == v1 + 1
    assert (after["db_username"], after["db_password"]) == (w.b, p1["password"])
    rest = ("db_username", "db_password")
    assert {k: v for k, v in after.items() if k not in rest} == {
        k: v for k, v in before.items() if k not in rest
    }
    assert await rot.promote(ctx, p1) == v2  # idempotent: no new version
    assert await w.client.kv.current_version(w.config) == v2
    assert await w.login(w.a, w.a_password)  # the previous role: still valid (grace)

    # the second rotation flips back to a, with a new password
    assert await rot.describe(ctx) == (
        f"set a new password on {w.a}, then point db_username at it (currently {w.b})"
    )
    started = time.monotonic()
    p2, v3 = await rotate(rot, ctx)
    TIMINGS.append(time.monotonic() - started)
    w.passwords.append(p2["password"])
    assert (p2["role"], p2["previous_role"]) == (w.a, w.b)
    assert v3 == v2 + 1
    assert await w.login(w.a, p2["password"])
    assert not await w.login(w.a, w.a_password)  # replaced by this rotation
    assert await w.login(w.b, p1["password"])  # the previous one: valid until the next

    # a third one cuts off the first rotation's credential, as designed (two slots)
    p3, _ = await rotate(rot, ctx)
    w.passwords.append(p3["password"])
    assert not await w.login(w.b, p1["password"])
    assert await w.login(w.b, p3["password"]) and await w.login(w.a, p2["password"])

    # KV history keeps every version of the consumer secret
    history = [(await w.client.kv.read(w.config, version=n)).data for n in range(1, v3 + 2)]
    assert [(h["db_username"], h["db_password"]) for h in history] == [
        (w.a, w.a_password),
        (w.b, p1["password"]),
        (w.a, p2["password"]),
        (w.b, p3["password"]),
    ]
    assert all(h["jwt_secret"] == before["jwt_secret"] for h in history)


async def test_plaintext_never_reaches_the_server_log(world: World, caplog: Any) -> None:
    w = world
    w.superuser("ALTER SYSTEM SET log_statement = 'all'")
    w.superuser("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 10
        while w.pg.query("SHOW log_statement") != [("all",)]:
            assert time.monotonic() < deadline, "log_statement = all did not take effect"
            await asyncio.sleep(0.05)
        start = w.pg.logfile.stat().st_size
        caplog.set_level(logging.DEBUG)
        rot = PostgresTwoRoleRotator()
        ctx = w.ctx()
        pending, _ = await rotate(rot, ctx)
        w.passwords.append(pending["password"])
        # and a rollback (a random password on the idle role)
        p2 = await rot.create_pending(ctx)
        w.passwords.append(p2["password"])
        await rot.apply(ctx, p2)
        await rot.rollback(ctx, p2)
    finally:
        w.superuser("ALTER SYSTEM RESET log_statement")
        w.superuser("SELECT pg_reload_conf()")
    log = w.pg.logfile.read_text(errors="replace")[start:]
    # the statements were logged, with the verifier only
    assert log.count("ALTER ROLE") >= 3, "statement logging was not on"
    assert len(re.findall(r"SCRAM-SHA-256\$4096:", log)) >= 3
    for p in w.passwords:
        assert_absent(p, log, "the PostgreSQL server log")
        assert_absent(p, caplog.text, "our own logs")
    assert_absent(pending["password"], w.bao.audit_log.read_text(), "the OpenBao audit log")


# ---------------------------------------------------------------------------- failures
def corrupting_rotator() -> PostgresTwoRoleRotator:
    """Verifies a password other than the one applied: verification must fail.

    (Not a subclass: ``Rotator.__init_subclass__`` would register it as ``database``.)
    """
    rot = PostgresTwoRoleRotator()
    verify = rot.verify

    async def corrupt(ctx: RotationContext, pending: dict[str, Any]) -> None:
        await verify(ctx, {**pending, "password": pending["password"][::-1]})

    rot.verify = corrupt  # type: ignore[method-assign]
    return rot


async def failed_verification(
    w: World, rot: PostgresTwoRoleRotator, between: Callable[[dict[str, Any]], None] | None
) -> tuple[dict[str, Any], RotationError]:
    ctx = w.ctx()
    pending = await rot.create_pending(ctx)
    w.passwords.append(pending["password"])
    await rot.apply(ctx, pending)
    if between is not None:
        between(pending)
    with pytest.raises(RotationError) as err:
        await rot.verify(ctx, pending)
    await rot.rollback(ctx, pending)
    return pending, err.value


async def test_failed_verification_rolls_back(world: World) -> None:
    w = world
    data, version = await w.current()
    pending, err = await failed_verification(w, corrupting_rotator(), None)
    msg = str(err)
    assert "verify" in msg and w.b in msg and w.pg.host in msg
    assert "password authentication failed" in msg
    for p in (pending["password"], pending["password"][::-1], w.a_password):
        assert_absent(p, msg, "the error message")
    # the pending password is gone; the credential in use is unchanged and works
    assert not await w.login(w.b, pending["password"])
    assert await w.current() == (data, version)
    assert await w.login(w.a, w.a_password)


async def test_verification_fails_without_login_and_the_next_apply_repairs_it(
    world: World,
) -> None:
    w = world
    _, version = await w.current()
    nologin = sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(w.b))
    _, err = await failed_verification(w, PostgresTwoRoleRotator(), lambda p: w.superuser(nologin))
    assert "not permitted to log in" in str(err) and w.b in str(err)
    assert (await w.current())[1] == version
    assert await w.login(w.a, w.a_password)
    # the next rotation makes b a LOGIN role again
    pending, _ = await rotate(PostgresTwoRoleRotator(), w.ctx())
    assert await w.login(w.b, pending["password"])


async def test_membership_is_repaired_and_verified(world: World) -> None:
    w = world
    w.superuser(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(w.group), sql.Identifier(w.b)))
    pending, _ = await rotate(PostgresTwoRoleRotator(), w.ctx())  # apply grants it again
    assert w.pg.query("SELECT pg_has_role(%s, %s, 'USAGE')", w.b, w.group) == [(True,)]

    # revoked between apply and verify: verification notices
    rot = PostgresTwoRoleRotator()
    ctx = w.ctx()
    p2 = await rot.create_pending(ctx)
    await rot.apply(ctx, p2)
    w.superuser(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(w.group), sql.Identifier(w.a)))
    with pytest.raises(RotationError, match="does not inherit"):
        await rot.verify(ctx, p2)
    await rot.rollback(ctx, p2)
    assert await w.login(w.b, pending["password"])


async def test_rollback_never_touches_the_role_in_use(world: World) -> None:
    w = world
    rot = PostgresTwoRoleRotator()
    ctx = w.ctx()
    pending, version = await rotate(rot, ctx)
    with pytest.raises(RotationError, match="in use"):
        await rot.rollback(ctx, pending)
    with pytest.raises(RotationError, match="in use"):
        await rot.apply(ctx, {**pending, "password": random_password()})
    assert await w.login(w.b, pending["password"])
    await rot.apply(ctx, pending)  # the same, promoted pending: a no-op
    assert await w.login(w.b, pending["password"])
    assert (await w.current())[1] == version


async def test_promote_refuses_a_consumer_secret_changed_under_it(world: World) -> None:
    w = world
    rot = PostgresTwoRoleRotator()
    ctx = w.ctx()
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await rot.verify(ctx, pending)

    def elsewhere(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "db_username": "somebody_else"}

    version = await w.root.kv.update(w.config, elsewhere)
    with pytest.raises(RotationError, match="changed to 'somebody_else'"):
        await rot.promote(ctx, pending)
    assert (await w.current())[1] == version


# ---------------------------------------------------------------------------- check
async def assert_unchanged(w: World, version: int) -> None:
    assert (await w.current())[1] == version
    assert await w.login(w.a, w.a_password)
    assert not await w.login(w.b, w.a_password)


async def test_check_reports_what_is_wrong_and_changes_nothing(world: World) -> None:
    w = world
    rot = PostgresTwoRoleRotator()
    _, version = await w.current()

    # the admin secret is missing (another path) and the login roles are one
    ctx = w.ctx(admin_secret="rotator/nowhere", login_roles=[w.a])
    with pytest.raises(RotatorConfigError) as err:
        await rot.check(ctx)
    assert "login_roles" in str(err.value)
    ctx = w.ctx(admin_secret="rotator/nowhere")
    with pytest.raises(RotatorConfigError, match=f"{w.mount}/data/rotator/nowhere does not exist"):
        await rot.check(ctx)
    with pytest.raises(RotatorConfigError, match="does not exist"):
        await rot.apply(ctx, {"role": w.b, "password": random_password(), "previous_role": w.a})

    # db_username is not one of the login roles, and the admin secret lacks fields
    admin = await w.client.kv.read(w.admin)
    await w.root.kv.write(
        w.admin, {k: v for k, v in admin.data.items() if k not in ("password", "host")}, cas=1
    )
    await w.root.kv.update(w.config, lambda d: {**d, "db_username": "postgres"})
    with pytest.raises(RotatorConfigError) as err:
        await rot.check(w.ctx())
    msg = str(err.value)
    assert "lacks host, password" in msg
    assert "db_username" in msg and "'postgres'" in msg and w.a in msg and w.b in msg
    with pytest.raises(RotatorConfigError, match="not one of the login roles"):
        await rot.create_pending(w.ctx())
    assert (await w.current())[0]["db_username"] == "postgres"
    await w.root.kv.update(w.config, lambda d: {**d, "db_username": w.a})
    _, version = await w.current()
    await assert_unchanged(w, version)

    # a wrong admin password: check connects and says so, without the value
    wrong = random_password()
    await w.root.kv.write(w.admin, {**admin.data, "password": wrong}, cas=2)
    with pytest.raises(RotatorConfigError) as err:
        await rot.check(w.ctx())
    assert "cannot connect" in str(err.value) and w.rotator_role in str(err.value)
    assert_absent(wrong, str(err.value), "the error")

    # a login role missing on the server
    await w.root.kv.write(w.admin, admin.data, cas=3)
    await rot.check(w.ctx())
    w.pg.drop_role(w.b)
    with pytest.raises(RotatorConfigError, match=f"{w.b} missing"):
        await rot.check(w.ctx())
    await assert_unchanged(w, version)


# ---------------------------------------------------------------------------- concurrency
async def test_promote_keeps_a_concurrent_writers_change(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While promote runs, another type updates another key of the same secret."""
    w = world
    rot = PostgresTwoRoleRotator()
    ctx = w.ctx()
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await rot.verify(ctx, pending)
    _, v1 = await w.current()

    new_jwt = random_password(48)
    original_write = KV2.write
    conflicts: list[int] = []

    async def write(self: KV2, path: Any, data: Any, *, cas: int) -> int:
        if self._c is w.client and not conflicts:
            # the other writer gets in between promote's read and its write
            await w.root.kv.update(w.config, lambda d: {**d, "jwt_secret": new_jwt})
            try:
                return await original_write(self, path, data, cas=cas)
            except CheckAndSetConflict:
                conflicts.append(cas)
                raise
        return await original_write(self, path, data, cas=cas)

    monkeypatch.setattr(KV2, "write", write)
    v = await rot.promote(ctx, pending)
    monkeypatch.undo()
    assert conflicts == [v1]  # the first attempt lost the race and was retried
    data, version = await w.current()
    assert version == v == v1 + 2
    assert data["jwt_secret"] == new_jwt
    assert (data["db_username"], data["db_password"]) == (w.b, pending["password"])

    # and many writers at once, with the second rotation's promote among them
    p2 = await rot.create_pending(ctx)
    await rot.apply(ctx, p2)
    await rot.verify(ctx, p2)
    others = {f"other_{i}": random_password() for i in range(8)}

    async def other(k: str, val: str) -> int:
        return await w.root.kv.update(w.config, lambda d: {**d, k: val}, attempts=50)

    await asyncio.gather(rot.promote(ctx, p2), *(other(k, val) for k, val in others.items()))
    data, _ = await w.current()
    assert (data["db_username"], data["db_password"]) == (w.a, p2["password"])
    assert all(data[k] == val for k, val in others.items())
    assert data["jwt_secret"] == new_jwt


# ---------------------------------------------------------------------------- the engine
async def test_engine_rotates_the_database_type(world: World, tmp_path: Path) -> None:
    from maily_secrets.rotation import engine as engine_mod

    w = world
    doc = {
        "defaults": {"environment": "development", "intervals": {"database": "30d"}},
        "types": {"database": {"secret": "config", "grace": "1h", "options": w.options}},
        "environments": {"development": {"vault": {"kv_mount": w.mount}}},
    }
    path = tmp_path / "rotation.yaml"
    path.write_text(yaml.safe_dump(doc))
    engine = engine_mod.RotationEngine(RotationConfig.load(path), "development", client=w.client)

    plan = await engine.run(["database"], dry_run=True)
    assert plan.results[0].reason == (
        f"set a new password on {w.b}, then point db_username at it (currently {w.a})"
    )
    started = time.monotonic()
    report = await engine.run(["database"])
    TIMINGS.append(time.monotonic() - started)
    res = report.results[0]
    assert (res.status, res.step) == ("rotated", "finished"), res.reason
    data, version = await w.current()
    assert data["db_username"] == w.b and res.version == version
    assert await w.login(w.b, data["db_password"]) and await w.login(w.a, w.a_password)

    # two slots: a second rotation within the grace period would cut off holders of a
    again = await engine.run(["database"])
    assert again.results[0].status == "skipped" and "grace" in again.results[0].reason
    assert await w.login(w.a, w.a_password)
    forced = await engine.run(["database"], force=True)
    assert forced.results[0].status == "rotated", forced.results[0].reason
    data, _ = await w.current()
    assert data["db_username"] == w.a and not await w.login(w.a, w.a_password)
    assert await w.login(w.a, data["db_password"])


async def test_at_grace_retires_when_the_grace_ends_and_names_the_straggler(
    world: World, tmp_path: Path, caplog: Any
) -> None:
    """retire: at_grace. After the grace (and not before) the previous login role's
    password stops working although a session still uses it; the run's report and its
    notification name that session (application_name, address)."""
    from datetime import UTC, datetime

    from maily_secrets.rotation.engine import RotationEngine
    from maily_secrets.rotation.state import StateStore

    w = world
    w.superuser(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(w.rotator_role)))
    path = _config(tmp_path, w, retire="at_grace")
    t = [datetime.now(UTC)]  # the engine's time: due dates and the grace period
    engine = RotationEngine(
        RotationConfig.load(path), "development", client=w.client, now=lambda: t[0]
    )
    first = (await engine.run(["database"])).results[0]
    assert first.status == "rotated", first.reason
    data, _ = await w.current()
    assert data["db_username"] == w.b
    w.passwords.append(data["db_password"])
    # a client that still uses the previous role (e.g. a pod that did not re-read Vault)
    legacy = await psycopg.AsyncConnection.connect(
        **w.pg.conninfo(w.a, w.a_password), application_name="legacy-worker", autocommit=True
    )
    try:
        t[0] += timedelta(minutes=30)  # within the grace: nothing is retired
        within = (await engine.run(["database"], due_only=True)).results[0]
        assert within.status == "skipped" and within.notes == []
        assert await w.login(w.a, w.a_password)

        t[0] += timedelta(minutes=31)  # the grace is over: the (daily) --due run retires
        caplog.set_level(logging.DEBUG)
        run = await engine.run(["database"], due_only=True)
        after = run.results[0]
        assert after.status == "skipped" and "not due" in after.reason, after
        note, straggler = after.notes
        assert f"retired previous login role {w.a}" in note
        assert "1 session(s)" in note and "application_name=legacy-worker" in note
        assert "client_addr=127.0.0.1" in note
        assert f"{w.a} retired while in use" in straggler
        assert "1 x legacy-worker from 127.0.0.1" in straggler
        assert after.stragglers == [
            {
                "credential": w.a,
                "rotation_id": first.rotation_id,
                "count": 1,
                "application": "legacy-worker",
                "address": "127.0.0.1",
                "detail": "",
            }
        ]
        from maily_secrets.rotation.notify import email_body, webhook_payload

        body = email_body(run)
        assert "Still using a previous credential:" in body
        assert f"database: 1 x application legacy-worker from 127.0.0.1 still used {w.a}" in body
        assert "legacy-worker from 127.0.0.1" in json.dumps(webhook_payload(run))
        assert not await w.login(w.a, w.a_password)  # old code: valid for the whole interval
        assert await w.login(w.b, data["db_password"])  # the role in use is untouched
        cur = await legacy.execute("SELECT 1")  # open sessions are reported, not killed
        assert await cur.fetchone() == (1,)
    finally:
        await legacy.close()
    state, _ = await StateStore(w.client, w.mount).read("database")
    assert state is not None and state.retiring == []
    for text in [r.getMessage() + str(r.__dict__) for r in caplog.records] + [note]:
        for secret in w.passwords:
            assert_absent(secret, text, "logs and report")
    # never the role in use, even if a record names it (a later rotation flipped back)
    rot = PostgresTwoRoleRotator()
    kept = await rot.retire(w.ctx(), {"role": w.b})
    assert kept is not None and "in use again" in kept
    assert await w.login(w.b, data["db_password"])


# ---------------------------------------------------------------------------- retire policy
def _config(tmp_path: Path, w: World, **type_fields: Any) -> Path:
    """A rotation config of the world's database type (grace 1h) with ``type_fields``."""
    fields = {"secret": "config", "grace": "1h", "options": w.options, **type_fields}
    doc = {
        "defaults": {"environment": "development", "intervals": {"database": "30d"}},
        "types": {"database": fields},
        "environments": {"development": {"vault": {"kv_mount": w.mount}}},
    }
    path = tmp_path / f"rotation-{hexid()}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _session(w: World, user: str, password: str, app: str) -> psycopg.AsyncConnection[Any]:
    """A client's session (e.g. a pod that did not re-read Vault) named ``app``."""
    return await psycopg.AsyncConnection.connect(
        **w.pg.conninfo(user, password), application_name=app, autocommit=True
    )


def _grant_stats(w: World) -> None:
    """So that the rotator's admin sees other roles' client addresses."""
    w.superuser(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(w.rotator_role)))


async def _retiring(w: World) -> list[Any]:
    from maily_secrets.rotation.state import StateStore

    state, _ = await StateStore(w.client, w.mount).read("database")
    assert state is not None
    return list(state.retiring)


async def test_when_idle_waits_while_an_old_session_is_open_and_retires_once_it_closes(
    world: World, tmp_path: Path
) -> None:
    """``rotate --wait-retire``: the engine watches the previous role's sessions every few
    seconds of its (manual) clock, holding the lock; while a session of the old role is
    open, it keeps waiting (past min_grace), and retires as soon as that session closes."""
    from datetime import UTC, datetime

    from maily_secrets.clock import ManualClock
    from maily_secrets.rotation.engine import RotationEngine

    w = world
    _grant_stats(w)
    clock = ManualClock(wall_start=datetime.now(UTC).timestamp())
    engine = RotationEngine(
        RotationConfig.load(_config(tmp_path, w, min_grace="1m")),
        "development",
        client=w.client,
        clock=clock,
    )
    legacy = await _session(w, w.a, w.a_password, "legacy-worker")
    task = asyncio.create_task(engine.run(["database"], wait_retire=timedelta(minutes=30)))

    async def asleep() -> None:
        """Until the run sleeps on its clock (the lock heartbeat and the settle loop)."""
        async with asyncio.timeout(60):
            while clock.sleepers < 2 and not task.done():  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.01)

    async def step(seconds: float) -> None:
        await asleep()
        await clock.advance(seconds)

    try:
        elapsed = 0
        while elapsed < 3 * 60:  # min_grace (1m) is long past: it is the session that holds it
            await step(5)
            elapsed += 5
        await asleep()
        assert not task.done()
        assert await w.login(w.a, w.a_password)  # not retired: legacy-worker is still there
        (item,) = await _retiring(w)
        users = item.observed["previous"]["users"]
        assert item.observed["previous"]["credential"] == w.a
        assert [(u["application"], u["address"], u["count"]) for u in users] == [
            ("legacy-worker", "127.0.0.1", 1)
        ]
        assert item.promoted_at is not None and item.retired_at is None
    finally:
        await legacy.close()
    while not task.done():  # the session closed: retired at the next look
        await step(5)
        elapsed += 5
    report = await task
    res = report.results[0]
    assert res.status == "rotated", res.reason
    assert any(f"retired previous login role {w.a}" in n for n in res.notes), res.notes
    assert any("no sessions were open" in n for n in res.notes), res.notes
    assert res.stragglers == []  # it was idle when retired
    assert elapsed < 30 * 60  # retired by the settle loop, not by the end of the wait
    assert not await w.login(w.a, w.a_password)
    data, _ = await w.current()
    assert await w.login(w.b, data["db_password"])
    assert await _retiring(w) == []
    # retired early (idle), so a second rotation within the grace cuts off nobody: allowed
    again = (await engine.run(["database"])).results[0]
    assert again.status == "rotated", again.reason
    flipped, _ = await w.current()
    assert flipped["db_username"] == w.a and await w.login(w.b, data["db_password"])


async def test_when_idle_past_the_grace_keeps_waiting_and_names_the_straggler(
    world: World, tmp_path: Path
) -> None:
    """The default policy on the daily ``--due`` run: a session of the old role open past
    the grace is named in the report (application_name, address) and not cut off;
    ``secrets retire`` retires once it is gone."""
    from datetime import UTC, datetime

    from maily_secrets.rotation.engine import RotationEngine

    w = world
    _grant_stats(w)
    t = [datetime.now(UTC)]
    engine = RotationEngine(
        RotationConfig.load(_config(tmp_path, w)), "development", client=w.client, now=lambda: t[0]
    )
    first = (await engine.run(["database"])).results[0]
    assert first.status == "rotated", first.reason
    legacy = await _session(w, w.a, w.a_password, "legacy-worker")
    try:
        t[0] += timedelta(minutes=61)  # the grace (1h) is over
        res = (await engine.run(["database"], due_only=True)).results[0]
        assert res.status == "skipped" and "not due" in res.reason
        (note,) = res.notes
        assert f"{w.a} still in use" in note and "grace ended" in note
        assert "1 x legacy-worker from 127.0.0.1" in note and "no hard deadline" in note
        assert [(s["application"], s["address"]) for s in res.stragglers] == [
            ("legacy-worker", "127.0.0.1")
        ]
        (decision,) = res.retirement
        assert decision["action"] == "wait"
        assert await w.login(w.a, w.a_password)
        cur = await legacy.execute("SELECT 1")
        assert await cur.fetchone() == (1,)

        still = (await engine.retire_due(["database"])).results[0]
        assert still.status == "skipped" and "legacy-worker" in still.reason
    finally:
        await legacy.close()
    done = (await engine.retire_due(["database"])).results[0]
    assert done.status == "retired" and "nothing uses it" in done.reason, done.reason
    assert not await w.login(w.a, w.a_password)
    assert await _retiring(w) == []


async def test_never_never_retires(world: World, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from maily_secrets.rotation.engine import RotationEngine

    w = world
    t = [datetime.now(UTC)]
    engine = RotationEngine(
        RotationConfig.load(_config(tmp_path, w, retire="never")),
        "development",
        client=w.client,
        now=lambda: t[0],
    )
    assert (await engine.run(["database"])).results[0].status == "rotated"
    for days in (1, 29, 365):  # idle all along: still kept
        t[0] += timedelta(days=days)
        res = (await engine.retire_due(["database"])).results[0]
        assert res.status == "skipped" and "retire: never" in res.reason, res.reason
        assert await w.login(w.a, w.a_password)
    (item,) = await _retiring(w)
    assert item.observed["previous"]["total"] == 0


async def test_hard_deadline_ends_the_old_roles_session(world: World, tmp_path: Path) -> None:
    """Past ``hard_deadline`` the old role is retired although used, and its session is
    ended (pg_terminate_backend); without pg_signal_backend the admin gets a clear error
    first (its password is unknown by then) and the retirement is retried."""
    from datetime import UTC, datetime

    from maily_secrets.rotation.engine import RotationEngine

    w = world
    t = [datetime.now(UTC)]
    engine = RotationEngine(
        RotationConfig.load(_config(tmp_path, w, hard_deadline="2h")),
        "development",
        client=w.client,
        now=lambda: t[0],
    )
    assert (await engine.run(["database"])).results[0].status == "rotated"
    legacy = await _session(w, w.a, w.a_password, "legacy-worker")
    try:
        t[0] += timedelta(minutes=90)  # past the grace, before the deadline: waiting
        res = (await engine.retire_due(["database"])).results[0]
        assert res.status == "skipped" and "until the hard deadline" in res.reason, res.reason
        assert await w.login(w.a, w.a_password)

        t[0] += timedelta(minutes=31)  # past the deadline; the admin may not end sessions
        w.superuser(
            sql.SQL("REVOKE pg_signal_backend FROM {}").format(sql.Identifier(w.rotator_role))
        )
        res = (await engine.retire_due(["database"])).results[0]
        assert res.status == "skipped"
        (error,) = [n for n in res.notes if "failed (will retry)" in n]
        assert "may not end the sessions" in error and "pg_signal_backend" in error
        assert not await w.login(w.a, w.a_password)  # the password was made unknown first
        assert await (await legacy.execute("SELECT 1")).fetchone() == (1,)
        assert len(await _retiring(w)) == 1

        w.superuser(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(w.rotator_role)))
        res = (await engine.retire_due(["database"])).results[0]
        assert res.status == "retired" and "hard deadline" in res.reason, res.reason
        assert any("1 of its session(s) were ended" in n for n in res.notes), res.notes
        with pytest.raises(psycopg.OperationalError):
            await legacy.execute("SELECT 1")
    finally:
        await legacy.close()
    assert await _retiring(w) == []
    data, _ = await w.current()
    assert await w.login(w.b, data["db_password"])


async def test_status_json_shows_the_users_of_both_roles(world: World, tmp_path: Path) -> None:
    """``secrets status --json`` (a child process, as a user runs it): per type with
    something retiring, the sessions of the new and of the previous login role."""
    from maily_secrets.rotation.engine import RotationEngine

    from .kit.cli import mailyctl_env, run_mailyctl

    w = world
    _grant_stats(w)
    path = _config(tmp_path, w)
    engine = RotationEngine(RotationConfig.load(path), "development", client=w.client)
    assert (await engine.run(["database"])).results[0].status == "rotated"
    data, _ = await w.current()
    w.passwords.append(data["db_password"])
    legacy = await _session(w, w.a, w.a_password, "legacy-worker")
    api = [await _session(w, w.b, data["db_password"], "new-api") for _ in range(2)]
    env = mailyctl_env(
        VAULT_ADDR=w.bao.addr,
        VAULT_TOKEN=w.bao.token,
        VAULT_AUTH_METHOD="token",
        MAILY_ROTATION_CONFIG=str(path),
    )
    try:
        proc = await asyncio.to_thread(run_mailyctl, "secrets", "status", "--json", env=env)
        table = await asyncio.to_thread(run_mailyctl, "secrets", "status", env=env)
    finally:
        await legacy.close()
        for c in api:
            await c.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout)["types"]
    adoption = row["adoption"]
    assert adoption["retire"] == "when_idle"
    current = adoption["current"]
    assert current["credential"] == w.b and current["total"] == 2
    assert [(u["application"], u["address"]) for u in current["users"]] == [
        ("new-api", "127.0.0.1")
    ]
    (prev,) = adoption["previous"]
    assert prev["usage"]["credential"] == w.a and prev["usage"]["total"] == 1
    assert prev["usage"]["users"][0]["application"] == "legacy-worker"
    assert prev["action"] == "wait" and prev["error"] == ""
    assert table.returncode == 0, table.stderr[-2000:]
    # piped: the table stays one line per type on stdout, who uses what goes to stderr
    assert len(table.stdout.splitlines()) == 3, table.stdout
    assert f"current   {w.b}: 2 in use: 2 x new-api from 127.0.0.1" in table.stderr
    assert f"previous  {w.a}: 1 in use: 1 x legacy-worker from 127.0.0.1" in table.stderr
    for text in (proc.stdout, proc.stderr, table.stdout, table.stderr):
        for secret in w.passwords:
            assert_absent(secret, text, "status output")


class _PausingRotator(PostgresTwoRoleRotator):
    """The real rotator, pausing before each step until the app made more logins.

    So that the >= 500 logins really happen *while* the rotation runs, spread over
    every step (create, apply, verify, promote), not before or after it.
    """

    type_name = "database-pausing-test"
    pause: Any = None

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        await self.pause()
        return await super().create_pending(ctx)

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        await self.pause()
        await super().apply(ctx, pending)
        await self.pause()

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        await super().verify(ctx, pending)
        await self.pause()

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        version = await super().promote(ctx, pending)
        await self.pause()
        return version


async def test_zero_failed_logins_while_the_engine_rotates(world: World, tmp_path: Path) -> None:
    """>= 500 new logins during a rotation, each with whatever credential the service holds."""
    from maily_secrets.rotation.engine import RotationEngine
    from maily_secrets.service import VaultService

    w = world
    doc = {
        "defaults": {"environment": "development", "intervals": {"database": "30d"}},
        "types": {
            "database": {
                "secret": "config",
                "rotator": _PausingRotator.type_name,
                "grace": "1h",
                "options": w.options,
            }
        },
        "environments": {"development": {"vault": {"kv_mount": w.mount}}},
    }
    path = tmp_path / "rotation.yaml"
    path.write_text(yaml.safe_dump(doc))
    engine = RotationEngine(RotationConfig.load(path), "development", client=w.client)
    svc = VaultService(w.bao.settings(kv_mount=w.mount, cache_ttl=0.05))
    logins: list[tuple[str, bool]] = []
    progressed = asyncio.Condition()
    stop = asyncio.Event()

    async def pause() -> None:  # wait for 100 more logins (5 pauses: >= 500 during the run)
        target = len(logins) + 100
        async with progressed:
            await progressed.wait_for(lambda: len(logins) >= target)

    _PausingRotator.pause = staticmethod(pause)

    async def app_worker() -> None:
        while not stop.is_set():
            cfg = await svc.get_config()
            ok = await w.login(cfg["db_username"], cfg["db_password"])
            logins.append((cfg["db_username"], ok))
            async with progressed:
                progressed.notify_all()

    workers = [asyncio.create_task(app_worker()) for _ in range(4)]
    try:
        start = len(logins)
        report = await asyncio.wait_for(engine.run(["database"]), 120)
        during = len(logins) - start
        assert report.results[0].status == "rotated", report.results[0].reason
        stop.set()
        await asyncio.gather(*workers)
    finally:
        stop.set()
        for t in workers:
            t.cancel()
        await svc.close()
    failures = [u for u, ok in logins if not ok]
    users = {u for u, _ in logins}
    print(f"\n{during} logins while a database rotation ran, {len(failures)} failed")
    assert during >= 500
    assert failures == []
    assert users == {w.a, w.b}  # both credentials were really used, before and after


def test_report_timings() -> None:
    """Not a check: prints the measured time per rotation (see -s / -rA)."""
    if TIMINGS:
        print(
            f"\ndatabase rotation: {len(TIMINGS)} timed, "
            f"min {min(TIMINGS) * 1000:.0f} ms, max {max(TIMINGS) * 1000:.0f} ms"
        )
