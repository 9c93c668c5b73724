"""Database secrets engine (PostgreSQL plugin): connections, roles, credentials.

    db = Database(client)                      # mount "database"
    await db.enable()
    await db.configure_postgres(
        "maily-postgres",
        connection_url="postgresql://{{username}}:{{password}}@db:5432/maily",
        username="vault_admin", password=admin_password, allowed_roles=["maily-app"],
    )
    await db.create_role("maily-app", db_name="maily-postgres",
                         creation_statements=postgres_creation_statements("maily"))
    creds = await db.credentials("maily-app")  # a lease: renew it, or use leases.py

Passwords only ever travel in JSON request bodies; they are never logged, and
the credential objects print ``**********`` in their place.  To keep a lease
alive and have fresh credentials before the old ones expire, hand
:meth:`Database.credentials` to :class:`maily_secrets.leases.LeaseContainer`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from ..errors import SecretNotFound, VaultError
from ..paths import validate_path
from .requester import list_keys

if TYPE_CHECKING:
    from .requester import Requester

log = logging.getLogger("maily_secrets.database")

POSTGRES_PLUGIN = "postgresql-database-plugin"

Duration = int | str  # seconds, or a Vault duration such as "1h"

#: Creates a dynamic user that expires with its lease (Vault renews ``VALID UNTIL``).
POSTGRES_CREATE_USER = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
)

#: Ends the user's sessions, hands what it created to the connection's admin user
#: (so that no table disappears with it), drops its privileges and the role.
POSTGRES_REVOCATION_STATEMENTS: tuple[str, ...] = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    'REASSIGN OWNED BY "{{name}}" TO CURRENT_USER;',
    'DROP OWNED BY "{{name}}";',
    'DROP ROLE IF EXISTS "{{name}}";',
)

#: The plugin's own default, spelled out: a renewal moves the role's expiry too.
POSTGRES_RENEW_STATEMENTS: tuple[str, ...] = (
    "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';",
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


def _quote_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"{name!r} is not a plain PostgreSQL identifier")
    return '"' + name + '"'


def postgres_creation_statements(
    database: str, schema: str = "public", *, readonly: bool = False
) -> list[str]:
    """A dynamic application user: log in to ``database``, use (and create in) ``schema``,
    read and write its tables and sequences (``readonly``: read only)."""
    db, sch = _quote_ident(database), _quote_ident(schema)
    user = '"{{name}}"'
    if readonly:
        return [
            POSTGRES_CREATE_USER,
            f"GRANT CONNECT ON DATABASE {db} TO {user};",
            f"GRANT USAGE ON SCHEMA {sch} TO {user};",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {sch} TO {user};",
            f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA {sch} TO {user};",
        ]
    return [
        POSTGRES_CREATE_USER,
        f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {user};",
        f"GRANT USAGE, CREATE ON SCHEMA {sch} TO {user};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"
        f" ON ALL TABLES IN SCHEMA {sch} TO {user};",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {sch} TO {user};",
    ]


@dataclass(frozen=True, slots=True)
class DatabaseCredentials:
    """Dynamic credentials with their lease. ``password`` is a :class:`SecretStr`."""

    username: str
    password: SecretStr
    lease_id: str
    lease_duration: int
    renewable: bool
    role: str = ""

    def __str__(self) -> str:
        return f"DatabaseCredentials(username={self.username!r}, password=**********)"

    @property
    def secret_values(self) -> tuple[str, ...]:
        """What must never appear in a log line (for scrubbing)."""
        return (self.password.get_secret_value(),)

    def conninfo(self, **params: Any) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (holds the password: do not log it)."""
        return {**params, "user": self.username, "password": self.password.get_secret_value()}


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """The current password of a static role (no lease: Vault rotates it itself)."""

    username: str
    password: SecretStr
    ttl: int  # seconds until Vault's next rotation
    rotation_period: int
    last_vault_rotation: str = ""
    role: str = ""

    def __str__(self) -> str:
        return f"StaticCredentials(username={self.username!r}, password=**********)"

    @property
    def secret_values(self) -> tuple[str, ...]:
        return (self.password.get_secret_value(),)


def _check_connection_url(url: str) -> None:
    """Refuse a connection URL with a literal password: it would be stored and shown."""
    try:
        parts = urlsplit(url)
        literal = parts.password
    except ValueError:
        literal = None
    if literal and literal != "{{password}}":
        raise ValueError(
            "connection_url contains a literal password; write"
            " postgresql://{{username}}:{{password}}@host:port/db and pass password= instead"
        )


def _duration(value: Duration | None) -> Duration | None:
    if value is None or isinstance(value, str):
        return value
    if value < 0:
        raise ValueError("a TTL cannot be negative")
    return int(value)


class Database:
    """The database secrets engine mounted at ``mount``."""

    def __init__(self, client: Requester, mount: str = "database") -> None:
        self._c = client
        self.mount = mount.strip("/")
        validate_path(self.mount)

    def _p(self, *parts: str) -> str:
        return validate_path("/".join([self.mount, *parts]))

    async def _post(self, path: str, data: Mapping[str, Any] | None = None) -> None:
        await self._c.request("POST", path, json_body=data or {})

    # ------------------------------------------------------------------ engine
    async def is_enabled(self) -> bool:
        mounts = (await self._c.request("GET", "sys/mounts")).data or {}
        cur = mounts.get(f"{self.mount}/")
        if cur is None:
            return False
        if cur.get("type") != "database":
            raise VaultError(
                f"mount {self.mount}/ exists but is a {cur.get('type')!r} engine, not database",
                path=f"sys/mounts/{self.mount}",
            )
        return True

    async def enable(self, description: str = "Maily database credentials") -> bool:
        """Mount the engine unless it is there already; True when it was mounted now."""
        if await self.is_enabled():
            return False
        await self._post(
            f"sys/mounts/{self.mount}", {"type": "database", "description": description}
        )
        log.info("database engine mounted", extra={"mount": self.mount})
        return True

    # ------------------------------------------------------------------ connections
    async def configure_postgres(
        self,
        name: str,
        connection_url: str,
        username: str,
        password: str | SecretStr | None,
        allowed_roles: Sequence[str],
        *,
        verify_connection: bool = True,
        password_authentication: str = "scram-sha-256",  # noqa: S107 - a method name
        max_open_connections: int | None = None,
        root_rotation_statements: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write connection ``name``. ``connection_url`` must use ``{{username}}`` and
        ``{{password}}`` placeholders; the password goes in the JSON body only."""
        _check_connection_url(connection_url)
        body: dict[str, Any] = {
            "plugin_name": POSTGRES_PLUGIN,
            "connection_url": connection_url,
            "username": username,
            "allowed_roles": list(allowed_roles),
            "verify_connection": verify_connection,
            "password_authentication": password_authentication,
        }
        if password is not None:
            body["password"] = (
                password.get_secret_value() if isinstance(password, SecretStr) else password
            )
        if max_open_connections is not None:
            body["max_open_connections"] = max_open_connections
        if root_rotation_statements is not None:
            body["root_rotation_statements"] = list(root_rotation_statements)
        if extra:
            body.update(extra)
        await self._post(self._p("config", name), body)
        log.info(
            "database connection configured",
            extra={"mount": self.mount, "connection": name, "db_user": username},
        )

    async def read_connection(self, name: str) -> dict[str, Any] | None:
        """The connection's configuration (Vault never returns its password); None if absent."""
        try:
            return (await self._c.request("GET", self._p("config", name))).data or {}
        except SecretNotFound:
            return None

    async def delete_connection(self, name: str) -> None:
        await self._c.request("DELETE", self._p("config", name))

    async def reset_connection(self, name: str) -> None:
        await self._post(self._p("reset", name))

    async def rotate_root(self, name: str) -> None:
        """Let Vault change the connection user's password: afterwards only Vault knows it."""
        await self._post(self._p("rotate-root", name))
        log.info("database root credentials rotated", extra={"connection": name})

    # ------------------------------------------------------------------ dynamic roles
    async def create_role(
        self,
        name: str,
        db_name: str,
        creation_statements: Sequence[str],
        revocation_statements: Sequence[str] | None = POSTGRES_REVOCATION_STATEMENTS,
        default_ttl: Duration = 3600,
        max_ttl: Duration = 86400,
        *,
        renew_statements: Sequence[str] | None = POSTGRES_RENEW_STATEMENTS,
        rollback_statements: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Create or update dynamic role ``name`` on connection ``db_name``."""
        body: dict[str, Any] = {
            "db_name": db_name,
            "creation_statements": list(creation_statements),
            "default_ttl": _duration(default_ttl),
            "max_ttl": _duration(max_ttl),
        }
        if revocation_statements is not None:
            body["revocation_statements"] = list(revocation_statements)
        if renew_statements is not None:
            body["renew_statements"] = list(renew_statements)
        if rollback_statements is not None:
            body["rollback_statements"] = list(rollback_statements)
        if extra:
            body.update(extra)
        await self._post(self._p("roles", name), body)
        log.info("database role written", extra={"role": name, "connection": db_name})

    async def read_role(self, name: str) -> dict[str, Any] | None:
        try:
            return (await self._c.request("GET", self._p("roles", name))).data or {}
        except SecretNotFound:
            return None

    async def delete_role(self, name: str) -> None:
        await self._c.request("DELETE", self._p("roles", name))

    async def list_roles(self) -> list[str]:
        return await list_keys(self._c, self._p("roles"))

    async def credentials(self, role: str) -> DatabaseCredentials:
        """New dynamic credentials (a new database user) with their lease."""
        r = await self._c.request("GET", self._p("creds", role))
        body = r.body or {}
        data = r.data or {}
        username, password = data.get("username"), data.get("password")
        if not username or not password or not body.get("lease_id"):
            raise VaultError(
                f"{self._p('creds', role)!r} returned no credentials with a lease",
                path=self._p("creds", role),
            )
        creds = DatabaseCredentials(
            username=str(username),
            password=SecretStr(str(password)),
            lease_id=str(body["lease_id"]),
            lease_duration=int(body.get("lease_duration") or 0),
            renewable=bool(body.get("renewable")),
            role=role,
        )
        log.info(
            "database credentials issued",
            extra={
                "role": role,
                "db_user": creds.username,
                "lease_id": creds.lease_id,
                "lease_duration": creds.lease_duration,
            },
        )
        return creds

    # ------------------------------------------------------------------ static roles
    async def create_static_role(
        self,
        name: str,
        db_name: str,
        username: str,
        rotation_period: Duration = 86400,
        rotation_statements: Sequence[str] | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Manage the existing database user ``username``: Vault rotates its password
        at once (so the old one stops working) and every ``rotation_period``."""
        body: dict[str, Any] = {
            "db_name": db_name,
            "username": username,
            "rotation_period": _duration(rotation_period),
        }
        if rotation_statements is not None:
            body["rotation_statements"] = list(rotation_statements)
        if extra:
            body.update(extra)
        await self._post(self._p("static-roles", name), body)
        log.info("database static role written", extra={"role": name, "db_user": username})

    async def read_static_role(self, name: str) -> dict[str, Any] | None:
        try:
            return (await self._c.request("GET", self._p("static-roles", name))).data or {}
        except SecretNotFound:
            return None

    async def delete_static_role(self, name: str) -> None:
        await self._c.request("DELETE", self._p("static-roles", name))

    async def rotate_role(self, name: str) -> None:
        """Rotate a static role's password now."""
        await self._post(self._p("rotate-role", name))
        log.info("database static role rotated", extra={"role": name})

    async def static_credentials(self, role: str) -> StaticCredentials:
        r = await self._c.request("GET", self._p("static-creds", role))
        data = r.data or {}
        if not data.get("username") or not data.get("password"):
            raise VaultError(
                f"{self._p('static-creds', role)!r} returned no credentials",
                path=self._p("static-creds", role),
            )
        return StaticCredentials(
            username=str(data["username"]),
            password=SecretStr(str(data["password"])),
            ttl=int(data.get("ttl") or 0),
            rotation_period=int(data.get("rotation_period") or 0),
            last_vault_rotation=str(data.get("last_vault_rotation") or ""),
            role=role,
        )
