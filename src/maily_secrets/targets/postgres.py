"""PostgreSQL, where the ``database`` credentials live: where to connect as whom
(:class:`PostgresTarget`), a login role's password set as a SCRAM-SHA-256 verifier
computed here, its group membership, a test login, and the sessions open as a role
(``pg_stat_activity``).

psycopg is imported when a function needs it, so that importing this module (the dev
bootstrap does) loads no driver.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from pydantic import SecretStr

from . import scrubbed_line

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

SCRAM_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16


@dataclass(frozen=True)
class PostgresTarget:
    """Where Vault reaches PostgreSQL, as which admin user. Prints no password."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: SecretStr | None = field(default=None, repr=False)
    dbname: str = "maily"
    sslmode: str | None = None

    @classmethod
    def from_url(cls, url: str, password: str | None = None) -> PostgresTarget:
        """From a libpq URL or ``key=value`` string; ``password`` overrides the URL's."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            d = conninfo_to_dict(url)
        except Exception:
            raise ValueError("not a valid PostgreSQL connection URL") from None
        pw = password if password is not None else d.get("password")
        return cls(
            host=str(d.get("host") or "127.0.0.1"),
            port=int(d.get("port") or 5432),
            user=str(d.get("user") or "postgres"),
            password=SecretStr(str(pw)) if pw else None,
            dbname=str(d.get("dbname") or "maily"),
            sslmode=str(d["sslmode"]) if d.get("sslmode") else None,
        )

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def vault_connection_url(self) -> str:
        """The templated URL for Vault: credentials only as ``{{username}}``/``{{password}}``."""
        userinfo = "{{username}}:{{password}}" if self.password else "{{username}}"
        params: dict[str, str] = {}
        if self.sslmode:
            params["sslmode"] = self.sslmode
        if self.host.startswith("/"):  # a unix socket directory
            params["host"] = self.host
            where = ""
        else:
            where = f"{self.host}:{self.port}"
            if ":" in self.host:
                where = f"[{self.host}]:{self.port}"
        query = "?" + urlencode(params) if params else ""
        return f"postgresql://{userinfo}@{where}/{quote(self.dbname, safe='')}{query}"

    def connect_kwargs(self, dbname: str | None = None) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.dbname,
            "connect_timeout": 3,
        }
        if self.password is not None:
            kw["password"] = self.password.get_secret_value()
        if self.sslmode:
            kw["sslmode"] = self.sslmode
        return kw


# ---------------------------------------------------------------------------- SCRAM
def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64), which
    ``ALTER ROLE ... PASSWORD`` accepts as is: the server never sees the password.

    PostgreSQL SASLprep-normalises a password first; for ASCII that is the identity,
    so only ASCII passwords are accepted here (generated ones always are).
    """
    if not password.isascii():
        raise ValueError("only ASCII passwords can be hashed client-side")
    if iterations < 1:
        raise ValueError("iterations must be positive")
    salt = os.urandom(SCRAM_SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def alter_password_statement(role: str, verifier: str, *, login: bool = True) -> sql.Composed:
    """``ALTER ROLE <role> WITH [LOGIN INHERIT] PASSWORD '<verifier>'``."""
    from psycopg import sql

    if not verifier.startswith("SCRAM-SHA-256$"):
        # never send something that might be a plaintext password
        raise ValueError("not a SCRAM-SHA-256 verifier")
    attrs = sql.SQL("LOGIN INHERIT ") if login else sql.SQL("")
    return sql.SQL("ALTER ROLE {} WITH {}PASSWORD {}").format(
        sql.Identifier(role), attrs, sql.Literal(verifier)
    )


def grant_membership_statement(group: str, role: str, server_version: int) -> sql.Composed:
    """``GRANT <group> TO <role>``, inheriting its privileges on every version."""
    from psycopg import sql

    stmt = sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role))
    if server_version >= 160000:  # inheritance is per grant since PostgreSQL 16
        stmt = sql.SQL("{} WITH INHERIT TRUE").format(stmt)
    return stmt


def scrub(text: str, *values: str | None) -> str:
    """First line of an error text without any of ``values`` (at most 300 characters)."""
    return scrubbed_line(text, *values)[:300]


async def membership(
    conn: psycopg.AsyncConnection[Any], role: str, group: str
) -> tuple[bool, bool] | None:
    """(``role`` is a member of ``group``, with inheritance); None when ``group`` is missing."""
    cur = await conn.execute(
        "SELECT m.roleid IS NOT NULL, pg_has_role(r.oid, g.oid, 'USAGE')"
        " FROM pg_roles g JOIN pg_roles r ON r.rolname = %s"
        " LEFT JOIN pg_auth_members m ON m.roleid = g.oid AND m.member = r.oid"
        " WHERE g.rolname = %s",
        (role, group),
    )
    row = await cur.fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]))


async def open_sessions(
    conn: psycopg.AsyncConnection[Any], role: str
) -> list[tuple[int, str, str | None]]:
    """Sessions open as ``role``: (count, application_name, client_addr), busiest first.

    ``client_addr`` is ``local`` for a unix socket; None when it is hidden from the admin
    (another role's sessions, without ``pg_read_all_stats``).
    """
    cur = await conn.execute(
        "SELECT count(*), coalesce(application_name, ''),"
        " CASE WHEN client_addr IS NOT NULL THEN host(client_addr)"
        "      WHEN client_port = -1 THEN 'local' END"  # NULL: hidden from this admin
        " FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()"
        " GROUP BY 2, 3 ORDER BY 1 DESC, 2, 3",
        (role,),
    )
    return [(int(r[0]), str(r[1]), r[2]) for r in await cur.fetchall()]


async def may_end_sessions(conn: psycopg.AsyncConnection[Any], role: str) -> bool:
    """Whether this connection's user may ``pg_terminate_backend`` the sessions of ``role``:
    a superuser, a member of ``pg_signal_backend``, or one with ``role``'s privileges."""
    cur = await conn.execute(
        "SELECT r.rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'USAGE')"
        " OR coalesce(pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = %s),"
        " 'USAGE'), false)"
        " FROM pg_roles r WHERE r.rolname = current_user",
        (role,),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def end_sessions(conn: psycopg.AsyncConnection[Any], role: str) -> int:
    """``pg_terminate_backend`` every session of ``role`` (waiting up to 5 s for each to
    end): how many ended. Check :func:`may_end_sessions` first."""
    cur = await conn.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
        " FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
        (role,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def describe_sessions(sessions: list[tuple[int, str, str | None]]) -> str:
    total = sum(n for n, _, _ in sessions)
    if not total:
        return "no sessions were open"
    parts = [
        f"{n} x application_name={app or '(none)'!s} client_addr="
        f"{addr if addr is not None else '(hidden: grant pg_read_all_stats to the rotator)'}"
        for n, app, addr in sessions[:10]
    ]
    more = f"; and {len(sessions) - 10} more groups" if len(sessions) > 10 else ""
    return (
        f"{total} session(s) were still open with it and keep running until they"
        f" disconnect: {'; '.join(parts)}{more}"
    )


def can_log_in(target: PostgresTarget, user: str, password: str) -> bool:
    """Blocking: whether ``user`` logs in with ``password`` where ``target`` points."""
    import psycopg

    try:
        with psycopg.connect(
            host=target.host,
            port=target.port,
            dbname=target.dbname,
            user=user,
            password=password,
            connect_timeout=3,
        ):
            return True
    except psycopg.Error:
        return False
