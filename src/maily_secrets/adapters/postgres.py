"""psycopg 3 connection pools that follow a ``database`` rotation.

::

    pool = await adapters.postgres_pool(vault_service, min_size=2, max_size=20)
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")

    pool = adapters.postgres_pool_sync(sync_vault_service, max_size=10)   # threads

The pool logs in with ``db_username``/``db_password`` (and ``db_host``, ``db_port``,
``db_name``, ``db_sslmode``) of the consumer secret (default ``<mount>/data/config``, the
one the ``database`` rotator promotes to). A :class:`~._feed.CredentialFeed` watches
that secret; on a new credential (a new *generation*):

- every connection made from then on logs in with it (the pool's connection class reads
  the current credential at each connect; a login that raced with the change is redone);
- idle connections of the older generation are closed and replaced at once
  (``pool.drain()``); connections checked out at the time finish their work on the old
  login and are closed when they are returned, never while in use; a connection of an
  older generation found at checkout (a login that finished just as the change landed)
  is replaced there, the caller gets a current one;
- ``pool.rotation_stats()`` says which generation is current and how many open
  connections each generation still has, so a test or a readiness probe can tell when
  the previous login role is no longer used (the rotator then sees it idle in
  ``pg_stat_activity``).

A new version of the secret that is not usable (no ``db_username``/``db_password``, a
port that is not a number) is logged by field name and ignored: the pool keeps the
credential it has. Connections carry ``application_name`` (default ``$PGAPPNAME``, else
``maily-app``), which is what ``pg_stat_activity`` and the rotator's report of
stragglers show. ``await pool.close()`` (or ``async with pool``) also unsubscribes.
Nothing here holds the password where ``repr()`` or a log would show it.

A connection an application keeps checked out for a long time (``LISTEN``, a worker
holding one forever) keeps its old login until it is returned: return connections, or
the rotator's hard deadline ends such sessions.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ..paths import KV2Path
from ._feed import CredentialFeed

if TYPE_CHECKING:
    from ..service import VaultService
    from ..sync import SyncVaultService

__all__ = [
    "PgCredential",
    "PgCredentialSource",
    "RotatingAsyncConnection",
    "RotatingAsyncPool",
    "RotatingConnection",
    "RotatingPool",
    "RotationStats",
    "pick_postgres",
    "postgres_pool",
    "postgres_pool_sync",
    "secret_path",
]

log = logging.getLogger("maily_secrets.adapters")

DEFAULT_APPLICATION_NAME = "maily-app"
DEFAULT_DBNAME = "maily"
# the keyword the pools hand to their connection class (never a libpq parameter)
_SOURCE_KW = "maily_source"
# pool arguments the adapter sets itself
_RESERVED = frozenset({"conninfo", "kwargs", "connection_class", "open"})


# ---------------------------------------------------------------------------- the credential
@dataclass(frozen=True)
class PgCredential:
    """Where and as whom to log in (from the consumer secret); the password never in repr."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    dbname: str | None = None
    sslmode: str | None = None

    def libpq(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
        }
        if self.dbname:
            kw["dbname"] = self.dbname
        if self.sslmode:
            kw["sslmode"] = self.sslmode
        return kw


def pick_postgres(value: Mapping[str, Any]) -> PgCredential:
    """The PostgreSQL login of a consumer secret; ValueError (naming fields only) when it
    lacks one. ``db_host`` defaults to 127.0.0.1, ``db_port`` to 5432."""
    missing = [k for k in ("db_username", "db_password") if not value.get(k)]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    try:
        port = int(value.get("db_port") or 5432)
    except (TypeError, ValueError):
        raise ValueError("db_port is not a number") from None
    if not 0 < port < 65536:
        raise ValueError("db_port is out of range")
    return PgCredential(
        user=str(value["db_username"]),
        password=str(value["db_password"]),
        host=str(value.get("db_host") or "127.0.0.1"),
        port=port,
        dbname=str(value["db_name"]) if value.get("db_name") else None,
        sslmode=str(value["db_sslmode"]) if value.get("db_sslmode") else None,
    )


def secret_path(service: VaultService, secret: str) -> str:
    """``config`` -> ``<mount>/data/config``; a full KV v2 path is kept as given."""
    if KV2Path.parse(secret) is not None:
        return secret
    return f"{service.kv_mount}/data/{secret}"


# ---------------------------------------------------------------------------- shared state
@dataclass(frozen=True)
class RotationStats:
    """What a pool holds: the current generation and open connections per generation."""

    generation: int
    connections: dict[int, int]  # generation -> open connections
    relogins: int  # logins redone because the credential changed while they ran
    discarded: int  # connections of an older generation replaced at checkout or checkin

    @property
    def old_connections(self) -> int:
        """Open connections logged in with a credential older than the current one."""
        return sum(n for g, n in self.connections.items() if g < self.generation)

    @property
    def open_connections(self) -> int:
        return sum(self.connections.values())


class PgCredentialSource:
    """The current credential and its generation (swapped as one tuple: thread-safe),
    the libpq parameters of a new connection, and the connections made from it."""

    def __init__(
        self,
        *,
        name: str,
        application_name: str | None,
        dbname: str | None,
        connect_kwargs: Mapping[str, Any] | None,
    ) -> None:
        self.name = name
        self.application_name = (
            application_name or os.environ.get("PGAPPNAME") or DEFAULT_APPLICATION_NAME
        )
        self._dbname = dbname
        extra = dict(connect_kwargs or {})
        clash = sorted(set(extra) & {"host", "port", "user", "password", "dbname", "sslmode"})
        if clash:
            raise TypeError(
                f"connect_kwargs may not set {', '.join(clash)}: they come from the secret"
            )
        self._extra = extra
        self._snap: tuple[int, PgCredential] | None = None
        self._open: weakref.WeakSet[psycopg.BaseConnection[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.relogins = 0
        self.discarded = 0
        self._after_change: list[Callable[[int], None]] = []

    def __repr__(self) -> str:
        gen = self._snap[0] if self._snap else 0
        return f"<PgCredentialSource {self.name} generation={gen}>"

    # -- the credential ----------------------------------------------------------
    def set(self, credential: PgCredential, generation: int) -> None:
        self._snap = (generation, credential)
        for hook in list(self._after_change):
            hook(generation)

    def after_change(self, hook: Callable[[int], None]) -> None:
        self._after_change.append(hook)

    @property
    def generation(self) -> int:
        return self._snap[0] if self._snap else 0

    def snapshot(self) -> tuple[int, PgCredential]:
        snap = self._snap
        if snap is None:
            raise RuntimeError(f"{self.name}: no credential yet")
        return snap

    @property
    def user(self) -> str:
        """The login role new connections use (a name, not a secret)."""
        return self.snapshot()[1].user

    def connect_kwargs(self, credential: PgCredential, given: Mapping[str, Any]) -> dict[str, Any]:
        """libpq parameters: ours, then the pool's (``connect_timeout``), then the
        credential's, which always win."""
        kw: dict[str, Any] = {"application_name": self.application_name, **self._extra}
        kw.update(given)
        kw.update(credential.libpq())
        dbname = self._dbname or credential.dbname or DEFAULT_DBNAME
        kw["dbname"] = dbname
        return kw

    # -- the connections ---------------------------------------------------------
    def track(self, conn: psycopg.BaseConnection[Any]) -> None:
        with self._lock:
            self._open.add(conn)

    def is_stale(self, generation: int) -> bool:
        return generation < self.generation

    def note_discarded(self) -> None:
        with self._lock:
            self.discarded += 1

    def note_relogin(self) -> None:
        with self._lock:
            self.relogins += 1

    def stats(self) -> RotationStats:
        with self._lock:
            conns = list(self._open)
            relogins, discarded = self.relogins, self.discarded
        counts = Counter(
            getattr(c, "maily_generation", 0) for c in conns if not c.closed and not c.broken
        )
        return RotationStats(self.generation, dict(sorted(counts.items())), relogins, discarded)


# ---------------------------------------------------------------------------- connections
_RELOGINS = 3  # at most this many logins in a row raced with a change before we keep one


class RotatingAsyncConnection(psycopg.AsyncConnection[TupleRow]):
    """An ``AsyncConnection`` that logs in with the current credential of a
    :class:`PgCredentialSource` (given as ``maily_source=``) and remembers its generation."""

    maily_generation: int = 0

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        source: PgCredentialSource | None = kwargs.pop(_SOURCE_KW, None)
        if source is None:
            return await super().connect(conninfo, **kwargs)
        for attempt in range(_RELOGINS):
            gen, cred = source.snapshot()
            conn = await super().connect(conninfo, **source.connect_kwargs(cred, kwargs))
            if source.generation == gen or attempt == _RELOGINS - 1:
                conn.maily_generation = gen
                source.track(conn)
                return conn
            source.note_relogin()  # the credential changed while we logged in
            await conn.close()
        raise AssertionError("unreachable")  # pragma: no cover


class RotatingConnection(psycopg.Connection[TupleRow]):
    """The blocking twin of :class:`RotatingAsyncConnection` (for :class:`RotatingPool`)."""

    maily_generation: int = 0

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        source: PgCredentialSource | None = kwargs.pop(_SOURCE_KW, None)
        if source is None:
            return super().connect(conninfo, **kwargs)
        for attempt in range(_RELOGINS):
            gen, cred = source.snapshot()
            conn = super().connect(conninfo, **source.connect_kwargs(cred, kwargs))
            if source.generation == gen or attempt == _RELOGINS - 1:
                conn.maily_generation = gen
                source.track(conn)
                return conn
            source.note_relogin()
            conn.close()
        raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------- pools
def _pool_args(pool_kwargs: dict[str, Any]) -> None:
    reserved = sorted(set(pool_kwargs) & _RESERVED)
    if reserved:
        raise TypeError(
            f"postgres_pool sets {', '.join(reserved)} itself (connection parameters come"
            " from the secret; use connect_kwargs= for other libpq parameters)"
        )


class RotatingAsyncPool(AsyncConnectionPool[RotatingAsyncConnection]):
    """An ``AsyncConnectionPool`` whose connections follow the credential of a secret."""

    def __init__(
        self,
        source: PgCredentialSource,
        feed: CredentialFeed[PgCredential],
        *,
        check: Callable[[RotatingAsyncConnection], Any] | None = None,
        **pool_kwargs: Any,
    ) -> None:
        self.source = source
        self.feed = feed
        self._user_check = check
        super().__init__(
            "",
            connection_class=RotatingAsyncConnection,
            kwargs={_SOURCE_KW: source},
            check=self._check_generation,
            open=False,
            **pool_kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"<RotatingAsyncPool {self.name!r} secret={self.feed.path!r}"
            f" generation={self.source.generation}>"
        )

    def rotation_stats(self) -> RotationStats:
        return self.source.stats()

    async def _check_generation(self, conn: RotatingAsyncConnection) -> None:
        if self.source.is_stale(conn.maily_generation):
            # closed, the pool replaces it and gives the caller another (no delay the
            # first time); only a connection of a login that raced with a change gets here
            self.source.note_discarded()
            await conn.close()
            raise psycopg.OperationalError("connection of a previous credential generation")
        if self._user_check is not None:
            await self._user_check(conn)

    async def _credential_changed(self, credential: PgCredential, generation: int) -> None:
        self.source.set(credential, generation)
        before = self.source.stats()
        await self.drain()  # idle ones now; those in use when they are returned
        log.info(
            "%s: new connections log in as %s (generation %d); %d connection(s) of older"
            " generations drain as they are returned",
            self.source.name,
            credential.user,
            generation,
            before.old_connections,
            extra={"adapter": self.source.name, "generation": generation},
        )

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - the pool's own
        """Close every connection and stop following the secret."""
        try:
            await self.feed.close()
        finally:
            await super().close(timeout)


class RotatingPool(ConnectionPool[RotatingConnection]):
    """A ``ConnectionPool`` (threads) whose connections follow the credential of a secret;
    the secret is watched by a :class:`~maily_secrets.sync.SyncVaultService`."""

    def __init__(
        self,
        source: PgCredentialSource,
        feed: CredentialFeed[PgCredential],
        service: SyncVaultService,
        *,
        check: Callable[[RotatingConnection], None] | None = None,
        **pool_kwargs: Any,
    ) -> None:
        self.source = source
        self.feed = feed
        self._service = service
        self._following = True
        self._user_check = check
        super().__init__(
            "",
            connection_class=RotatingConnection,
            kwargs={_SOURCE_KW: source},
            check=self._check_generation,
            open=False,
            **pool_kwargs,
        )
        source.after_change(self._drain_soon)

    def __repr__(self) -> str:
        return (
            f"<RotatingPool {self.name!r} secret={self.feed.path!r}"
            f" generation={self.source.generation}>"
        )

    def rotation_stats(self) -> RotationStats:
        return self.source.stats()

    def _check_generation(self, conn: RotatingConnection) -> None:
        if self.source.is_stale(conn.maily_generation):
            self.source.note_discarded()
            conn.close()
            raise psycopg.OperationalError("connection of a previous credential generation")
        if self._user_check is not None:
            self._user_check(conn)

    def _drain_soon(self, generation: int) -> None:
        # called on the service's event loop thread: closing connections blocks, so
        # a short-lived thread of its own does it
        def drain() -> None:
            if not self.closed:
                try:
                    self.drain()
                except Exception as exc:  # the pool closed meanwhile
                    log.debug("%s: drain after a change: %s", self.source.name, exc)

        threading.Thread(target=drain, name="maily-pg-drain", daemon=True).start()
        log.info(
            "%s: new connections log in as %s (generation %d)",
            self.source.name,
            self.source.user,
            generation,
            extra={"adapter": self.source.name, "generation": generation},
        )

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection and stop following the secret."""
        try:
            if self._following:
                self._following = False
                self._service.run_async(lambda _s: self.feed.close())
        finally:
            super().close(timeout)


# ---------------------------------------------------------------------------- factories
async def postgres_pool(
    service: VaultService,
    *,
    secret: str = "config",  # noqa: S107 - the name of the secret, not a value
    min_size: int = 2,
    max_size: int | None = 20,
    max_lifetime: float = 30 * 60.0,
    application_name: str | None = None,
    dbname: str | None = None,
    connect_kwargs: Mapping[str, Any] | None = None,
    open_timeout: float = 30.0,
    **pool_kwargs: Any,
) -> RotatingAsyncPool:
    """An open ``psycopg_pool.AsyncConnectionPool`` logged in with the secret's credential
    and following its rotations.

    ``secret``: a name under the service's mount (``config``) or a KV v2 path.
    ``dbname`` overrides the secret's ``db_name`` (default ``maily``);
    ``connect_kwargs``: other libpq parameters / psycopg connect options (not the
    credential's). Other keyword arguments go to ``AsyncConnectionPool`` (``timeout``,
    ``max_idle``, ``configure``, ``reset``, ``check``, ``name``...). Waits until
    ``min_size`` connections are open (``open_timeout``): a credential that does not
    log in fails here, not at the first query.
    """
    _pool_args(pool_kwargs)
    source = PgCredentialSource(
        name=pool_kwargs.get("name") or "postgres_pool",
        application_name=application_name,
        dbname=dbname,
        connect_kwargs=connect_kwargs,
    )
    feed = CredentialFeed(service, secret_path(service, secret), pick_postgres, name=source.name)
    credential = await feed.start()
    source.set(credential, feed.generation)
    try:
        pool = RotatingAsyncPool(
            source,
            feed,
            min_size=min_size,
            max_size=max_size,
            max_lifetime=max_lifetime,
            **pool_kwargs,
        )
    except BaseException:
        await feed.close()
        raise
    feed.on_change(pool._credential_changed)  # nothing awaited since start: no change missed
    try:
        await pool.open(wait=True, timeout=open_timeout)
    except BaseException:
        await pool.close()
        raise
    return pool


def postgres_pool_sync(
    sync_service: SyncVaultService,
    *,
    secret: str = "config",  # noqa: S107 - the name of the secret, not a value
    min_size: int = 2,
    max_size: int | None = 20,
    max_lifetime: float = 30 * 60.0,
    application_name: str | None = None,
    dbname: str | None = None,
    connect_kwargs: Mapping[str, Any] | None = None,
    open_timeout: float = 30.0,
    **pool_kwargs: Any,
) -> RotatingPool:
    """:func:`postgres_pool` for threads: an open ``psycopg_pool.ConnectionPool``.

    The secret is watched on the service's background loop; a change swaps the
    credential there and drains the pool from a thread of its own.
    """
    _pool_args(pool_kwargs)
    source = PgCredentialSource(
        name=pool_kwargs.get("name") or "postgres_pool_sync",
        application_name=application_name,
        dbname=dbname,
        connect_kwargs=connect_kwargs,
    )

    async def start(service: VaultService) -> CredentialFeed[PgCredential]:
        feed = CredentialFeed(
            service, secret_path(service, secret), pick_postgres, name=source.name
        )
        credential = await feed.start()
        source.set(credential, feed.generation)
        feed.on_change(source.set)
        return feed

    feed = sync_service.run_async(start)
    try:
        pool = RotatingPool(
            source,
            feed,
            sync_service,
            min_size=min_size,
            max_size=max_size,
            max_lifetime=max_lifetime,
            **pool_kwargs,
        )
    except BaseException:
        sync_service.run_async(lambda _s: feed.close())
        raise
    try:
        pool.open(wait=True, timeout=open_timeout)
    except BaseException:
        pool.close()
        raise
    return pool
