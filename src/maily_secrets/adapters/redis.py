"""A redis-py asyncio client that follows the ``redis`` rotation.

    redis = await adapters.redis_client(vault_service)          # maily/data/config
    await redis.set("maily:k", "v")
    redis.stats()       # generation, connections per generation, opened, drained
    await redis.aclose()                                       # also unsubscribes

The client's pool reads ``redis_host``, ``redis_port``, ``redis_username`` and
``redis_password`` of the secret (through a :class:`~._feed.CredentialFeed`, so a
rotation reaches it by the secret listener). Every connection authenticates with the
credential that is current when it connects, and remembers its generation; after a
change

- idle connections of an older generation are closed at once (under the pool's lock:
  nobody is using them);
- connections in use finish what they are doing (a command, a pipeline, a
  transaction) and are closed when they are released to the pool;
- the next command opens a new connection with the new user/password.

Each connection names itself (``CLIENT SETNAME``, default ``maily:<program>``), so the
rotator's ``usage()`` (``CLIENT LIST``) can say which application still uses the
previous ACL user. Connections that a caller holds on to for good (``pubsub()``,
``monitor()``, a ``client()`` of its own) are not drained until they are given back.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool, SSLConnection
from redis.credentials import CredentialProvider

from ._feed import CredentialFeed

if TYPE_CHECKING:
    from ..service import VaultService

__all__ = ["RedisAdapterStats", "RedisCredential", "RotatingRedis", "redis_client"]

#: what the secret provides; passing these to redis_client is an error
_FROM_SECRET = ("host", "port", "username", "password", "credential_provider")
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True)
class RedisCredential:
    """Where and as whom to connect (the password is never shown)."""

    host: str
    port: int
    username: str | None
    password: SecretStr = field(repr=False)


def pick_redis_credential(data: Mapping[str, Any]) -> RedisCredential:
    """``redis_*`` of a secret; ValueError (naming the field) when it is not usable."""
    host, password = data.get("redis_host"), data.get("redis_password")
    if not host:
        raise ValueError("redis_host is missing")
    if not password:
        raise ValueError("redis_password is missing")
    try:
        port = int(data.get("redis_port") or 6379)
    except (TypeError, ValueError):
        raise ValueError("redis_port is not a number") from None
    if not 0 < port < 65536:
        raise ValueError("redis_port is not a port number")
    user = data.get("redis_username") or None
    return RedisCredential(str(host), port, str(user) if user else None, SecretStr(str(password)))


def default_client_name() -> str:
    """``maily:<program>`` (CLIENT SETNAME allows no spaces)."""
    prog = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "python"
    return _NAME_SAFE.sub("_", f"maily:{prog or 'python'}")[:64]


class _Credentials(CredentialProvider):
    """The user/password one connection logs in with (a snapshot; no repr of it)."""

    def __init__(self, cred: RedisCredential) -> None:
        self._cred = cred

    def __repr__(self) -> str:
        return f"<credentials of {self._cred.username or 'default'}>"

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self._cred.password.get_secret_value()
        if self._cred.username:
            return (self._cred.username, password)
        return (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


class FollowingConnection(Connection):
    """A connection that, each time it (re)connects, takes the pool's current credential
    and endpoint and records their generation."""

    maily_generation: int = 0
    maily_pool: FollowingPool | None = None

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        pool = self.maily_pool
        if not self.is_connected and pool is not None:
            cred, generation = pool.issue()
            self.host, self.port = cred.host, cred.port
            self.credential_provider = _Credentials(cred)
            self.maily_generation = generation
        await super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    """:class:`FollowingConnection` over TLS."""


@dataclass(frozen=True)
class RedisAdapterStats:
    """What the pool holds and has done, per credential generation."""

    generation: int  # the current credential's
    connected: dict[int, int]  # open connections per generation
    in_use: int
    idle: int
    opened: dict[int, int]  # logins per generation (connects and reconnects)
    drained: dict[int, int]  # connections closed because their generation was old

    @property
    def old_connections(self) -> int:
        """Open connections of an older generation (0: drained)."""
        return sum(n for g, n in self.connected.items() if g != self.generation)


class FollowingPool(ConnectionPool):
    """A connection pool whose new connections use the feed's current credential and
    whose connections of an older generation are closed when idle or released."""

    def __init__(self, feed: CredentialFeed[RedisCredential], **kwargs: Any) -> None:
        ssl = bool(kwargs.pop("ssl", False))
        kwargs.setdefault(
            "connection_class", FollowingSSLConnection if ssl else FollowingConnection
        )
        super().__init__(**kwargs)
        self._feed = feed
        self._opened: Counter[int] = Counter()
        self._drained: Counter[int] = Counter()

    def __repr__(self) -> str:
        return f"<FollowingPool {self._feed.path!r} generation={self._feed.generation}>"

    def issue(self) -> tuple[RedisCredential, int]:
        """The credential a connection logs in with now, and its generation."""
        cred, generation = self._feed.current, self._feed.generation
        self._opened[generation] += 1
        return cred, generation

    def make_connection(self) -> AbstractConnection:
        conn: AbstractConnection = super().make_connection()  # type: ignore[no-untyped-call]
        if isinstance(conn, FollowingConnection):
            conn.maily_pool = self
        return conn

    def _stale(self, conn: AbstractConnection) -> bool:
        return conn.is_connected and getattr(conn, "maily_generation", 0) != self._feed.generation

    async def release(self, connection: AbstractConnection) -> None:
        if self._stale(connection):
            # ConnectionPool.release disconnects it under its lock; it is not handed out
            # again before it reconnects with the current credential
            connection.mark_for_reconnect()  # type: ignore[no-untyped-call]
            self._drained[getattr(connection, "maily_generation", 0)] += 1
        await super().release(connection)

    async def changed(self, cred: RedisCredential, generation: int) -> None:
        """A new credential: close the idle connections of older generations now."""
        async with self._lock:
            for conn in list(self._available_connections):
                if self._stale(conn):
                    self._drained[getattr(conn, "maily_generation", 0)] += 1
                    await conn.disconnect()

    def stats(self) -> RedisAdapterStats:
        connected: Counter[int] = Counter()
        for conn in (*self._available_connections, *self._in_use_connections):
            if conn.is_connected:
                connected[getattr(conn, "maily_generation", 0)] += 1
        return RedisAdapterStats(
            generation=self._feed.generation,
            connected=dict(connected),
            in_use=len(self._in_use_connections),
            idle=sum(1 for c in self._available_connections if c.is_connected),
            opened=dict(self._opened),
            drained=dict(self._drained),
        )


class RotatingRedis(aioredis.Redis):
    """``redis.asyncio.Redis`` on a :class:`FollowingPool`; ``aclose()`` also
    unsubscribes from the secret."""

    feed: CredentialFeed[RedisCredential]

    def __repr__(self) -> str:
        return f"<RotatingRedis {self.connection_pool!r}>"

    @property
    def generation(self) -> int:
        return self.feed.generation

    def stats(self) -> RedisAdapterStats:
        pool = self.connection_pool
        assert isinstance(pool, FollowingPool)
        return pool.stats()

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.feed.close()
        await super().aclose(close_connection_pool)


def _secret_path(service: VaultService, secret: str) -> str:
    if "/data/" in secret:
        return secret  # an API path already: maily/data/config
    return f"{service.settings.kv_mount}/data/{secret.strip('/')}"


async def redis_client(
    service: VaultService,
    *,
    secret: str = "config",  # noqa: S107 - a secret's name
    client_name: str | None = None,
    **kwargs: Any,
) -> RotatingRedis:
    """A ``redis.asyncio.Redis`` that follows the rotation of ``secret`` (its
    ``redis_host``, ``redis_port``, ``redis_username``, ``redis_password``).

    ``client_name``: the name every connection gives itself (``CLIENT SETNAME``;
    default ``maily:<program>``). Other keyword arguments go to the connection pool
    (``max_connections``, ``db``, ``socket_timeout``, ``decode_responses``, ``ssl``,
    ``retry``, ``health_check_interval``...); where and as whom to connect comes from
    the secret only. The secret is read before this returns: unreadable or unusable,
    it raises (no credential, no client).
    """
    given = sorted(k for k in _FROM_SECRET if k in kwargs)
    if given:
        raise TypeError(f"redis_client: {', '.join(given)} come(s) from the secret")
    name = _NAME_SAFE.sub("_", client_name)[:64] if client_name else default_client_name()
    feed: CredentialFeed[RedisCredential] = CredentialFeed(
        service, _secret_path(service, secret), pick_redis_credential, name="redis_client"
    )
    await feed.start()
    try:
        pool = FollowingPool(feed, client_name=name, **kwargs)
        feed.on_change(pool.changed)
        client = RotatingRedis(connection_pool=pool)
        client.auto_close_connection_pool = True  # aclose() closes the pool too
    except BaseException:
        await feed.close()
        raise
    client.feed = feed
    return client
