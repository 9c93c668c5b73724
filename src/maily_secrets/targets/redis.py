"""Redis, where the ``redis`` credentials live: the application's ACL user(s), their
password hashes (``ACL GETUSER`` / ``ACL SETUSER #<sha256>``), creating them, who is
connected as which user (``CLIENT LIST``), and one connection as a user (a login to
verify, or the rotator's admin).

Passwords only ever reach Redis as their SHA-256, which is all Redis stores anyway.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from . import scrubbed_line

DEFAULT_ACL_USER = "maily"
#: the second of two alternating users is named after the first: ``maily`` -> ``maily_b``
SECOND_USER_SUFFIX = "_b"
DEFAULT_KEYS = ("maily:*",)
DEFAULT_CHANNELS = ("maily:*",)
DEFAULT_COMMANDS = ("+@all", "-@dangerous")
ACL_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def password_sha256(password: str) -> str:
    """The SHA-256 (lowercase hex) Redis keeps for a password: ``ACL SETUSER u #<it>``."""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def password_rule(op: str, digest: str) -> str:
    """``#<sha256>`` (add) or ``!<sha256>`` (remove); never anything that may be a password."""
    if op not in ("#", "!") or not SHA256_HEX.fullmatch(digest):
        raise ValueError("not a SHA-256 password hash")
    return f"{op}{digest}"


def scrub(text: str, *values: str | None) -> str:
    """First line of an error text without any of ``values`` (at most 300 characters)."""
    # a password hash is no password, but it does not belong in a message either
    return re.sub(r"[#!]?[0-9a-f]{64}", "<sha256>", scrubbed_line(text, *values))[:300]


async def redis_command(conn: aioredis.Redis, *args: str) -> Any:
    """One Redis command (redis-py's ``execute_command`` is untyped)."""
    return await conn.execute_command(*args)  # type: ignore[no-untyped-call]


def _text(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class AclUser:
    """What ``ACL GETUSER`` says about a user (no secret: passwords are hashes)."""

    name: str
    flags: frozenset[str]
    password_hashes: frozenset[str] = field(repr=False)

    @property
    def nopass(self) -> bool:
        return "nopass" in self.flags

    @property
    def enabled(self) -> bool:
        return "on" in self.flags


def _parse_getuser(name: str, raw: object) -> AclUser | None:
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        doc = {_text(k): v for k, v in raw.items()}
    elif isinstance(raw, (list, tuple)):  # RESP2: a flat list of field, value
        doc = {_text(raw[i]): raw[i + 1] for i in range(0, len(raw) - 1, 2)}
    else:
        # a RedisError like any other bad answer: callers already translate those
        raise RedisError(f"unexpected ACL GETUSER answer for {name}")

    def items(v: object) -> list[str]:
        if isinstance(v, (list, tuple, set, frozenset)):
            return [_text(x) for x in v]
        if v in (None, b"", ""):
            return []
        return _text(v).split()

    return AclUser(
        name=name,
        flags=frozenset(items(doc.get("flags"))),
        password_hashes=frozenset(items(doc.get("passwords"))),
    )


async def get_acl_user(conn: aioredis.Redis, user: str) -> AclUser | None:
    """The user's flags and password hashes; None when it does not exist."""
    return _parse_getuser(user, await redis_command(conn, "ACL", "GETUSER", user))


async def ensure_redis_acl_user(
    conn: aioredis.Redis,
    user: str = DEFAULT_ACL_USER,
    *,
    keys: Iterable[str] = DEFAULT_KEYS,
    channels: Iterable[str] = DEFAULT_CHANNELS,
    commands: Iterable[str] = DEFAULT_COMMANDS,
    password: str | None = None,
    update_permissions: bool = False,
) -> bool:
    """Create the application's ACL user when it is missing; True when it was created.

    ``conn`` is an admin connection (``+acl``). The new user is enabled with the
    given key patterns (``~maily:*``), Pub/Sub channel patterns (``&maily:*``) and
    command rules (``+@all -@dangerous``: everything but the administrative and
    slow-on-big-data commands such as ``KEYS``, ``FLUSHALL``, ``CONFIG``, ``DEBUG``).
    ``password`` (optional) is added as a hash, e.g. the password the consumer
    secret holds today, so clients can switch to the user without a new password.
    An existing user keeps its permissions unless ``update_permissions``; its
    passwords are never removed. Nothing is persisted (see ``persist``).
    """
    if not ACL_USER_NAME.fullmatch(user) or user == "default":
        raise ValueError(f"not a usable ACL user name for the application: {user!r}")
    current = await get_acl_user(conn, user)
    rules: list[str] = []
    if current is None or update_permissions:
        rules += ["resetkeys", "resetchannels", "-@all"]
        rules += [f"~{k}" for k in keys]
        rules += [f"&{c}" for c in channels]
        rules += list(commands)
    if current is None:
        rules = ["on", "resetpass", *rules]
    if password is not None:
        digest = password_sha256(password)
        if current is None or digest not in current.password_hashes:
            rules.append(password_rule("#", digest))
    if rules:
        await redis_command(conn, "ACL", "SETUSER", user, *rules)
    return current is None


def second_acl_user(user: str) -> str:
    """The partner of ``user`` in a pair of alternating ACL users (``maily`` -> ``maily_b``)."""
    return f"{user}{SECOND_USER_SUFFIX}"


@dataclass(frozen=True)
class RedisClient:
    """One line of ``CLIENT LIST`` (what identifies a client; nothing secret)."""

    id: str
    user: str
    name: str
    addr: str  # host:port of the client
    age: int  # seconds connected

    @property
    def host(self) -> str:
        """The client's address without its port (IPv6 addresses keep their colons)."""
        host, sep, port = self.addr.rpartition(":")
        return host if sep and port.isdigit() else self.addr


def parse_client_list(raw: object) -> list[RedisClient]:
    """``CLIENT LIST`` (one ``key=value ...`` line per client) as :class:`RedisClient`."""
    text = _text(raw) if not isinstance(raw, (list, tuple)) else "\n".join(map(_text, raw))
    out: list[RedisClient] = []
    for line in text.splitlines():
        fields = dict(p.split("=", 1) for p in line.split(" ") if "=" in p)
        if "id" not in fields:
            continue
        try:
            age = int(fields.get("age", "0"))
        except ValueError:
            age = 0
        out.append(
            RedisClient(
                id=fields["id"],
                user=fields.get("user", ""),
                name=fields.get("name", ""),
                addr=fields.get("addr", ""),
                age=age,
            )
        )
    return out


async def client_list(conn: aioredis.Redis) -> list[RedisClient]:
    """Every client connected to the server (the admin needs ``+client``)."""
    return parse_client_list(await redis_command(conn, "CLIENT", "LIST"))


def group_clients(clients: Iterable[RedisClient]) -> list[tuple[int, str, str, int]]:
    """(count, client name, address without port, oldest age in s), most first."""
    groups: dict[tuple[str, str], list[int]] = {}
    for c in clients:
        groups.setdefault((c.name, c.host), []).append(c.age)
    rows = [(len(ages), name, host, max(ages)) for (name, host), ages in groups.items()]
    return sorted(rows, key=lambda r: (-r[0], r[1], r[2]))


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


def connect(
    target: RedisTarget, username: str | None, password: str | None, *, timeout: float
) -> aioredis.Redis:
    """One connection (no retry: a refused login must show at once) as ``username``."""
    return aioredis.Redis(
        host=target.host,
        port=target.port,
        username=username,
        password=password,
        ssl=target.tls,
        socket_connect_timeout=timeout,
        socket_timeout=max(timeout, 10.0),
        single_connection_client=True,
        retry=Retry(NoBackoff(), 0),
    )
