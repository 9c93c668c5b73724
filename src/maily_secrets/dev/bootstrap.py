"""Development setup on top of :mod:`maily_secrets.bootstrap`: sample secrets for a dev
server, the dev PostgreSQL target, and the per-dev-directory names of PostgreSQL roles and
the Redis ACL user (so two dev servers on one machine never touch each other's).

Used by ``mailyctl dev``, the tests and the benchmarks; never by the runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bootstrap import APP_GROUP_ROLE, APP_LOGIN_ROLES, BootstrapReport, ensure_engines
from ..paths import KV2Path
from ..targets.postgres import PostgresTarget
from ..vault.client import VaultClient


async def bootstrap_dev(
    client: VaultClient, *, kv_mount: str = "maily", transit_mount: str = "transit"
) -> BootstrapReport:
    report = BootstrapReport()
    await ensure_engines(
        client, report, kv_mount=kv_mount, transit_mount=transit_mount, samples=True
    )
    return report


DEV_PG_URL_ENV = "MAILY_DEV_PG_URL"
DEV_PG_PASSWORD_ENV = "MAILY_DEV_PG_PASSWORD"  # noqa: S105 - a variable name
DEFAULT_DEV_PG_URL = "postgresql://postgres@127.0.0.1:5432/maily"


def dev_postgres_target(env: Mapping[str, str] | None = None) -> PostgresTarget:
    """``$MAILY_DEV_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/maily``),
    the password from the URL or ``$MAILY_DEV_PG_PASSWORD``."""
    env = os.environ if env is None else env
    url = env.get(DEV_PG_URL_ENV) or DEFAULT_DEV_PG_URL
    return PostgresTarget.from_url(url, env.get(DEV_PG_PASSWORD_ENV) or None)


# ---------------------------------------------------------------------------- per dev dir
# Every dev server on a machine shares its PostgreSQL and Redis: the login roles, their
# group and the Redis ACL user of a dev server are named after its state directory, so
# that a rotation on one never touches another's, and `dev down` drops only its own.

DEV_RESOURCES_FILE = "dev-resources.json"


@dataclass(frozen=True)
class DevNames:
    """The names of one dev directory's PostgreSQL roles and Redis ACL user."""

    suffix: str

    @classmethod
    def for_dir(cls, state_dir: Path | str) -> DevNames:
        """A short stable hash of the resolved directory."""
        resolved = str(Path(state_dir).expanduser().resolve())
        return cls(hashlib.sha256(resolved.encode()).hexdigest()[:10])

    @property
    def login_roles(self) -> tuple[str, str]:
        return (f"{APP_LOGIN_ROLES[0]}_{self.suffix}", f"{APP_LOGIN_ROLES[1]}_{self.suffix}")

    @property
    def group(self) -> str:
        return f"{APP_GROUP_ROLE}_{self.suffix}"

    @property
    def redis_user(self) -> str:
        return f"maily_{self.suffix}"

    @property
    def redis_users(self) -> tuple[str, str]:
        """The two alternating ACL users (``ensure_redis_rotation`` makes the second)."""
        from ..targets.redis import second_acl_user  # redis-py only when used

        return (self.redis_user, second_acl_user(self.redis_user))

    def rotation_options(self) -> dict[str, dict[str, Any]]:
        """What a dev rotation config sets, per secret type."""
        return {
            "database": {"login_roles": list(self.login_roles), "group": self.group},
            "redis": {"acl_users": list(self.redis_users)},
        }


async def ensure_dev_names(
    client: VaultClient, names: DevNames, report: BootstrapReport, *, kv_mount: str = "maily"
) -> None:
    """Point ``db_username`` of ``<mount>/data/config`` at this dev dir's first login
    role, unless it names one of them already (a rotation may have flipped it)."""
    path = KV2Path(kv_mount, "config")
    cfg = (await client.kv.read(path)).data
    if cfg.get("db_username") in names.login_roles:
        return
    await client.kv.update(path, lambda d: {**d, "db_username": names.login_roles[0]})
    report.add(f"secret {path.data} (db_username {names.login_roles[0]})", True)


def record_dev_resources(path: Path, **parts: Any) -> None:
    """Remember (0600, no secret) what a dev server creates outside its directory, before
    creating it, so that `dev down` can remove exactly that."""
    doc = load_dev_resources(path)
    doc.update(parts)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def load_dev_resources(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def postgres_record(target: PostgresTarget, names: DevNames) -> dict[str, Any]:
    return {
        "host": target.host,
        "port": target.port,
        "user": target.user,
        "dbname": target.dbname,
        "roles": [*names.login_roles, names.group],
    }


async def drop_postgres_roles(target: PostgresTarget, roles: Sequence[str]) -> list[str]:
    """``DROP OWNED BY`` (in ``target``'s database) and ``DROP ROLE`` the given roles,
    those that exist. Returns the roles dropped."""
    import psycopg
    from psycopg import sql

    conn = await psycopg.AsyncConnection.connect(**target.connect_kwargs(), autocommit=True)
    async with conn:
        cur = await conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND NOT rolsuper",
            (list(roles),),
        )
        present = [str(r[0]) for r in await cur.fetchall()]
        if not present:
            return []
        idents = sql.SQL(", ").join(sql.Identifier(r) for r in present)
        async with conn.transaction():
            await conn.execute(sql.SQL("DROP OWNED BY {}").format(idents))
            for role in present:
                await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    return present


async def drop_dev_database(target: PostgresTarget) -> str:
    """Drop ``target``'s database when a dev clean-up may: it carries the mark of
    :func:`~maily_secrets.bootstrap.prepare_postgres` (we made it), no other dev
    directory's group role is left (their login roles work in it) and nobody is connected.
    Returns what happened, one line (no secret)."""
    import psycopg
    from psycopg import sql

    from ..bootstrap import CREATED_DATABASE_COMMENT

    db = target.dbname
    admin = target.connect_kwargs("postgres")
    conn = await psycopg.AsyncConnection.connect(**admin, autocommit=True)
    async with conn:
        cur = await conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (db,),
        )
        row = await cur.fetchone()
        if row is None:
            return f"database {db} not there"
        if row[0] != CREATED_DATABASE_COMMENT:
            return f"database {db} kept (not made by dev up)"
        cur = await conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE %s",
            (APP_GROUP_ROLE.replace("_", r"\_") + r"\_%",),
        )
        others = int((await cur.fetchone() or (0,))[0])
        if others:
            return f"database {db} kept (other dev directories use it: {others})"
        try:
            await conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(db)))
        except psycopg.errors.ObjectInUse:
            return f"database {db} kept (sessions are connected to it)"
    return f"database {db} dropped"


async def drop_redis_user(host: str, port: int, user: str) -> bool:
    """``ACL DELUSER`` of ``user`` and of its partner ``<user>_b`` (the pair of alternating
    users ``ensure_redis_rotation`` made), as the default user of a dev Redis, then
    ``ACL SAVE`` when Redis has an ACL file. True if a user existed."""
    import redis.asyncio as aioredis

    from ..targets.redis import second_acl_user

    if user == "default":
        raise ValueError("refusing to delete Redis' default user")
    conn = aioredis.Redis(host=host, port=port, socket_connect_timeout=3, socket_timeout=3)
    try:
        removed = int(
            await conn.execute_command("ACL", "DELUSER", user, second_acl_user(user))  # type: ignore[no-untyped-call]
        )
        if removed:
            with contextlib.suppress(aioredis.ResponseError):
                await conn.execute_command("ACL", "SAVE")  # type: ignore[no-untyped-call]
        return removed > 0
    finally:
        await conn.aclose()
