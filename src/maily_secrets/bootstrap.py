"""Idempotent bootstrap of a Vault server for Maily: mounts, transit key, sample secrets,
and (``ensure_database``) dynamic PostgreSQL credentials.

Run it as often as you like: mounts and keys are created only when missing, and
sample secrets are written with check-and-set version 0 (create-only) or only
fill in keys that are missing, so existing values are never overwritten.
Sample secret values are generated at random, never fixed strings.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import SecretNotFound, VaultError
from .paths import KV2Path
from .targets import random_password as random_password  # re-exported (dev tools)
from .targets.postgres import PostgresTarget as PostgresTarget  # re-exported (cli/dev.py)
from .targets.postgres import can_log_in
from .vault.client import VaultClient

log = logging.getLogger("maily_secrets.bootstrap")

TRANSIT_KEY = "maily-enc-key"


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
    transit = client.transit(mount)
    # A typo in a key name must be an error, not a new key: no upsert on encrypt.
    if not await transit.upsert_disabled():
        await transit.disable_upsert()
        report.add(f"{mount}/config/keys disable_upsert", True)
    else:
        report.add(f"{mount}/config/keys disable_upsert", False)
    try:
        await client.read(f"{mount}/keys/{key}")
        report.add(f"transit key {key}", False)
    except SecretNotFound:
        await client.write(f"{mount}/keys/{key}", {"type": "aes256-gcm96"})
        report.add(f"transit key {key}", True)


async def ensure_engines(
    client: VaultClient,
    report: BootstrapReport,
    *,
    kv_mount: str = "maily",
    transit_mount: str = "transit",
    samples: bool = False,
) -> None:
    """KV v2 at ``kv_mount`` (cas_required), transit with ``maily-enc-key`` (no upsert)
    and, with ``samples``, the guide's secrets with random values (create-only)."""
    await ensure_kv2_mount(client, kv_mount, report)
    await ensure_transit(client, transit_mount, TRANSIT_KEY, report)
    for name, data in sample_secrets().items() if samples else ():
        await ensure_secret(client, KV2Path(kv_mount, name), data, report)


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


# ---------------------------------------------------------------------------- database
# Dynamic PostgreSQL users for Maily: the database secrets engine at ``database/``, a
# connection ``maily-postgres`` and a role ``maily-app`` (1h leases, at most 24h).

DB_MOUNT = "database"
DB_CONNECTION = "maily-postgres"
DB_APP_ROLE = "maily-app"


#: the comment on a database ``prepare_postgres`` created (``COMMENT ON DATABASE``)
CREATED_DATABASE_COMMENT = "created by maily-secrets (prepare_postgres)"


def prepare_postgres(target: PostgresTarget, *, create_database: bool = True) -> str | None:
    """Check that PostgreSQL answers and takes the admin credentials, and create the
    database when missing (commented :data:`CREATED_DATABASE_COMMENT`, so that a clean-up
    drops only a database made here).  ``None`` when ready, else why not (no secret in it).

    Blocking (psycopg, 3 s connect timeout): call it outside the event loop.
    """
    import psycopg
    from psycopg import sql

    secret = target.password.get_secret_value() if target.password else ""

    def why(exc: BaseException) -> str:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        text = " ".join(lines[0].split())
        if secret:
            text = text.replace(secret, "******")
        return text[:300]

    try:
        with psycopg.connect(**target.connect_kwargs(), autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.OperationalError as exc:
        missing = f'database "{target.dbname}" does not exist' in str(exc)
        if not (missing and create_database):
            return why(exc)
    try:
        with psycopg.connect(**target.connect_kwargs("postgres"), autocommit=True) as conn:
            db = sql.Identifier(target.dbname)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(db))
            # the mark that lets `dev down` tell a database we made from one we found
            mark = sql.Literal(CREATED_DATABASE_COMMENT)
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, mark))
        log.info("database created", extra={"dbname": target.dbname})
        return None
    except psycopg.Error as exc:
        return f"cannot create database {target.dbname!r}: {why(exc)}"


def _same_statements(a: Any, b: Sequence[str]) -> bool:
    return [str(x).strip() for x in (a or [])] == [x.strip() for x in b]


async def ensure_database(
    client: VaultClient,
    postgres: PostgresTarget | str,
    report: BootstrapReport | None = None,
    *,
    mount: str = DB_MOUNT,
    connection: str = DB_CONNECTION,
    role: str = DB_APP_ROLE,
    default_ttl: int = 3600,
    max_ttl: int = 86400,
    creation_statements: Sequence[str] | None = None,
    force: bool = False,
) -> BootstrapReport:
    """Mount the database engine, configure ``connection`` to ``postgres`` and the
    dynamic role ``role`` (read/write on the database's ``public`` schema).

    Idempotent: an existing connection with the same URL, user and allowed role is
    left alone (its password, possibly rotated by Vault since, is not overwritten
    unless ``force``); the role is rewritten only when it differs.
    """
    from .vault.database import (
        POSTGRES_PLUGIN,
        POSTGRES_RENEW_STATEMENTS,
        POSTGRES_REVOCATION_STATEMENTS,
        Database,
        postgres_creation_statements,
    )

    report = report if report is not None else BootstrapReport()
    target = PostgresTarget.from_url(postgres) if isinstance(postgres, str) else postgres
    db = Database(client, mount)
    report.add(f"mount {db.mount}/ (database)", await db.enable())

    url = target.vault_connection_url()
    cur = await db.read_connection(connection)
    details = (cur or {}).get("connection_details") or {}
    allowed = [str(r) for r in (cur or {}).get("allowed_roles") or []]
    same = (
        cur is not None
        and cur.get("plugin_name") == POSTGRES_PLUGIN
        and details.get("connection_url") == url
        and details.get("username") == target.user
        and (role in allowed or "*" in allowed)
    )
    what = f"database connection {connection} ({target.describe()})"
    if same and not force:
        report.add(what, False)
    else:
        await db.configure_postgres(
            connection,
            connection_url=url,
            username=target.user,
            password=target.password,
            allowed_roles=sorted({*allowed, role}),
        )
        report.add(what, True)

    statements = list(creation_statements or postgres_creation_statements(target.dbname))
    want: dict[str, Any] = {
        "db_name": connection,
        "default_ttl": default_ttl,
        "max_ttl": max_ttl,
    }
    have = await db.read_role(role)
    role_same = (
        have is not None
        and all(have.get(k) == v for k, v in want.items())
        and _same_statements(have.get("creation_statements"), statements)
        and _same_statements(have.get("revocation_statements"), POSTGRES_REVOCATION_STATEMENTS)
        and _same_statements(have.get("renew_statements"), POSTGRES_RENEW_STATEMENTS)
    )
    what = f"database role {role} (ttl {default_ttl}s, max {max_ttl}s)"
    if role_same:
        report.add(what, False)
    else:
        await db.create_role(
            role,
            db_name=connection,
            creation_statements=statements,
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )
        report.add(what, True)
    return report


# ---------------------------------------------------------------------------- login roles
# Two login roles for zero-downtime password rotation (``rotation/rotators/postgres.py``):
# both are INHERIT members of one NOLOGIN group role that holds every grant, so they
# can do exactly the same things, by construction.

APP_LOGIN_ROLES = ("maily_app", "maily_app_b")
APP_GROUP_ROLE = "maily_app_group"


class PostgresSetupError(RuntimeError):
    """The login roles cannot be set up as asked (the message names roles, never values)."""


async def ensure_postgres_login_roles(
    admin_conninfo: PostgresTarget | str | Mapping[str, Any],
    roles: Sequence[str] = APP_LOGIN_ROLES,
    group: str = APP_GROUP_ROLE,
    dbname: str | None = None,
    *,
    schema: str = "public",
    set_role: bool = True,
    passwords: Mapping[str, str] | None = None,
    rotator: str | None = None,
    report: BootstrapReport | None = None,
) -> BootstrapReport:
    """Create (or complete) the group role and the login roles; idempotent.

    * ``group``: ``NOLOGIN``; ``CONNECT, TEMPORARY`` on ``dbname`` (default: the one of
      ``admin_conninfo``), ``USAGE, CREATE`` on ``schema``, read/write on its tables and
      sequences, and the same by default on those the admin creates later;
    * each of ``roles``: ``LOGIN INHERIT``, member of ``group`` (with ``INHERIT TRUE``
      on PostgreSQL 16+); with ``set_role`` its sessions start as ``SET ROLE group``
      (``ALTER ROLE ... SET role``), so what the application creates is owned by the
      group and both login roles may alter or drop it. A new login role has no
      password (it cannot log in) until ``passwords`` or a rotation gives it one;
    * ``passwords``: role -> password to set now, sent as a SCRAM-SHA-256 verifier
      computed here (the plaintext never reaches the server); always applied;
    * ``rotator``: the rotator's admin role: given ``CREATEROLE`` and, on PostgreSQL 16+,
      ``ADMIN OPTION`` (without inheriting or SET) on the group and the login roles,
      which it needs to change their passwords without being a superuser, and
      ``pg_signal_backend``, to end the previous role's sessions at a hard deadline.

    Everything happens in one transaction. Raises :class:`PostgresSetupError` when a
    login role is a superuser, or ``psycopg.Error`` when the server refuses.
    """
    import psycopg
    from psycopg import sql

    from .targets.postgres import (
        alter_password_statement,
        grant_membership_statement,
        membership,
        scram_sha256_verifier,
    )

    report = report if report is not None else BootstrapReport()
    if isinstance(admin_conninfo, PostgresTarget):
        kw = admin_conninfo.connect_kwargs(dbname)
    else:
        from psycopg.conninfo import conninfo_to_dict

        kw = (
            dict(conninfo_to_dict(admin_conninfo))
            if isinstance(admin_conninfo, str)
            else dict(admin_conninfo)
        )
        if dbname:
            kw["dbname"] = dbname
        kw.setdefault("connect_timeout", 5)
    roles = list(roles)
    if len(set(roles)) != len(roles) or group in roles or not roles:
        raise PostgresSetupError("the login roles must be distinct and differ from the group")
    unknown = set(passwords or {}) - set(roles)
    if unknown:
        raise PostgresSetupError(f"passwords given for roles not set up: {sorted(unknown)}")
    ident = sql.Identifier
    conn = await psycopg.AsyncConnection.connect(**kw, autocommit=True)
    async with conn:
        version = conn.info.server_version
        db = str((await (await conn.execute("SELECT current_database()")).fetchone() or [""])[0])

        async def one(query: str, *args: Any) -> Any:
            row = await (await conn.execute(query, args or None)).fetchone()
            return None if row is None else row[0]

        async with conn.transaction():
            # the group
            can_login = await one("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", group)
            if can_login is None:
                await conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(group)))
            elif can_login:
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident(group)))
            report.add(f"group role {group} (NOLOGIN)", can_login is not False)

            # its grants
            tables = sql.SQL("SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER")
            row = await (
                await conn.execute(
                    "SELECT has_database_privilege(%(g)s, %(d)s, 'CONNECT')"
                    " AND has_database_privilege(%(g)s, %(d)s, 'TEMPORARY')"
                    " AND has_schema_privilege(%(g)s, %(s)s, 'USAGE')"
                    " AND has_schema_privilege(%(g)s, %(s)s, 'CREATE')"
                    " AND NOT EXISTS (SELECT 1 FROM pg_tables t WHERE t.schemaname = %(s)s"
                    "  AND NOT (has_table_privilege(%(g)s,"
                    "   format('%%I.%%I', t.schemaname, t.tablename), 'SELECT')"
                    "  AND has_table_privilege(%(g)s,"
                    "   format('%%I.%%I', t.schemaname, t.tablename), 'DELETE')))",
                    {"g": group, "d": db, "s": schema},
                )
            ).fetchone()
            granted_before = bool(row and row[0])
            for stmt in (
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                    ident(db), ident(group)
                ),
                sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(
                    ident(schema), ident(group)
                ),
                sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(
                    tables, ident(schema), ident(group)
                ),
                sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                    ident(schema), ident(group)
                ),
                sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT {} ON TABLES TO {}").format(
                    ident(schema), tables, ident(group)
                ),
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE, SELECT, UPDATE"
                    " ON SEQUENCES TO {}"
                ).format(ident(schema), ident(group)),
            ):
                await conn.execute(stmt)
            report.add(f"grants of {group} on {db}.{schema}", not granted_before)

            # the login roles
            for role in roles:
                row = await (
                    await conn.execute(
                        "SELECT rolsuper, rolcanlogin, rolinherit FROM pg_roles WHERE rolname = %s",
                        (role,),
                    )
                ).fetchone()
                changed = row is None
                if row is None:
                    await conn.execute(sql.SQL("CREATE ROLE {} LOGIN INHERIT").format(ident(role)))
                elif row[0]:
                    raise PostgresSetupError(f"login role {role} is a superuser; refusing")
                elif not (row[1] and row[2]):
                    await conn.execute(sql.SQL("ALTER ROLE {} LOGIN INHERIT").format(ident(role)))
                    changed = True
                member = await membership(conn, role, group)
                if not (member and all(member)):
                    await conn.execute(grant_membership_statement(group, role, version))
                    changed = True
                if set_role:
                    setting = f"role={group}"
                    have = await one(
                        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r"
                        " ON r.oid = s.setrole WHERE r.rolname = %s AND s.setdatabase = 0",
                        role,
                    )
                    if setting not in (have or []):
                        await conn.execute(
                            sql.SQL("ALTER ROLE {} SET role = {}").format(
                                ident(role), sql.Literal(group)
                            )
                        )
                        changed = True
                report.add(f"login role {role} (member of {group})", changed)
                if passwords and role in passwords:
                    verifier = scram_sha256_verifier(passwords[role])
                    await conn.execute(alter_password_statement(role, verifier, login=False))
                    report.add(f"password of {role}", True)

            # the rotator's admin
            if rotator:
                ok = await one(
                    "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = %s", rotator
                )
                if ok is None:
                    raise PostgresSetupError(f"rotator role {rotator} does not exist")
                changed = not ok
                if not ok:
                    await conn.execute(sql.SQL("ALTER ROLE {} CREATEROLE").format(ident(rotator)))
                if version >= 160000:
                    for target in (group, *roles):
                        has = await one(
                            "SELECT m.admin_option FROM pg_auth_members m"
                            " JOIN pg_roles r ON r.oid = m.roleid"
                            " JOIN pg_roles u ON u.oid = m.member"
                            " WHERE r.rolname = %s AND u.rolname = %s",
                            target,
                            rotator,
                        )
                        if not has:
                            await conn.execute(
                                sql.SQL(
                                    "GRANT {} TO {} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE"
                                ).format(ident(target), ident(rotator))
                            )
                            changed = True
                # a hard deadline ends the previous role's sessions (pg_terminate_backend)
                if not await one("SELECT pg_has_role(%s, 'pg_signal_backend', 'MEMBER')", rotator):
                    await conn.execute(
                        sql.SQL("GRANT pg_signal_backend TO {}").format(ident(rotator))
                    )
                    changed = True
                report.add(f"rotator role {rotator} (may set the login roles' passwords)", changed)
    return report


async def ensure_database_rotation(
    client: VaultClient,
    target: PostgresTarget,
    report: BootstrapReport,
    *,
    kv_mount: str = "maily",
    admin_secret: str = "rotator/postgres-admin",  # noqa: S107 - a path
    roles: Sequence[str] = APP_LOGIN_ROLES,
    group: str = APP_GROUP_ROLE,
) -> None:
    """What the ``database`` rotator needs, for a dev server: idempotent.

    The two login roles ``roles`` and their ``group`` on ``target`` (the role named by
    ``db_username`` in ``<mount>/data/config`` gets that secret's password, so the
    configuration really logs in), and the rotator's admin credentials in Vault at
    ``<mount>/data/<admin_secret>`` (written only when absent).
    """
    cfg = (await client.kv.read(KV2Path(kv_mount, "config"))).data
    roles = tuple(roles)
    active = str(cfg.get("db_username") or roles[0])
    if active not in roles:
        raise PostgresSetupError(
            f"db_username {active!r} in {kv_mount}/data/config is not one of {', '.join(roles)}"
        )
    password = str(cfg["db_password"])
    # set the active role's password only when the config's does not log in already
    # (so that a second run changes nothing)
    works = await asyncio.to_thread(can_log_in, target, active, password)
    await ensure_postgres_login_roles(
        target,
        roles,
        group,
        passwords=None if works else {active: password},
        report=report,
    )
    path = KV2Path(kv_mount, admin_secret)
    if await client.kv.current_version(path) == 0:
        admin = {
            "host": target.host,
            "port": target.port,
            "dbname": target.dbname,
            "username": target.user,
            # a server that trusts loopback ignores it; one that checks needs the real one
            "password": target.password.get_secret_value()
            if target.password
            else random_password(),
        }
        await client.kv.write(path, admin, cas=0)
        report.add(f"secret {path.data} (rotator's PostgreSQL admin)", True)
    else:
        report.add(f"secret {path.data} (rotator's PostgreSQL admin)", False)


async def ensure_redis_rotation(
    client: VaultClient,
    report: BootstrapReport,
    *,
    kv_mount: str = "maily",
    user: str = "maily",
    second_user: str | None = None,
) -> str | None:
    """What the ``redis`` rotator needs, for a dev server: the application's two
    alternating ACL users (``user`` and ``second_user``, default ``<user>_b``), with the
    same permissions.

    Connects to ``redis_host``/``redis_port`` of ``<mount>/data/config`` as the default
    user (a dev Redis without a password), creates the users that are missing (the one
    ``redis_username`` names, else ``user``, with the config's ``redis_password`` added
    as a hash; the other without a password, idle until a rotation gives it one) and
    records ``redis_username`` unless it names one of them already (a rotation may have
    flipped it). Returns why it was skipped, or None.
    """
    import redis.asyncio as aioredis

    from .targets.redis import ensure_redis_acl_user, second_acl_user

    users = (user, second_user or second_acl_user(user))
    path = KV2Path(kv_mount, "config")
    cfg = (await client.kv.read(path)).data
    active = cfg.get("redis_username") if cfg.get("redis_username") in users else user
    conn = aioredis.Redis(
        host=str(cfg.get("redis_host") or "127.0.0.1"),
        port=int(cfg.get("redis_port") or 6379),
        socket_connect_timeout=3,
        socket_timeout=3,
    )
    try:
        created = {
            u: await ensure_redis_acl_user(
                conn, u, password=str(cfg["redis_password"]) if u == active else None
            )
            for u in users
        }
    except (OSError, aioredis.RedisError) as exc:
        return f"{type(exc).__name__}: Redis at {cfg.get('redis_host')}:{cfg.get('redis_port')}"
    finally:
        await conn.aclose()
    for u in users:
        report.add(f"Redis ACL user {u}", created[u])
    if cfg.get("redis_username") != active:
        await client.kv.update(path, lambda d: {**d, "redis_username": active})
        report.add(f"secret {path.data} (+redis_username)", True)
    return None
