"""A SQLAlchemy ``AsyncEngine`` (``postgresql+psycopg``) that follows a ``database`` rotation.

::

    engine = await adapters.sqlalchemy_engine(vault_service, pool_size=5, max_overflow=10)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    await engine.dispose()          # closes the connections and unsubscribes

The same semantics as :func:`~.postgres.postgres_pool`: the engine's ``async_creator``
logs every new connection in with the current credential of the consumer secret (default
``<mount>/data/config``) and remembers its generation; after a change

- a connection of an older generation is invalidated when it is checked in (its work
  is done) and replaced at checkout if one is still found idle: the pool reconnects it
  with the current credential and hands it to the caller, who never sees an error;
- the connections idle in the pool at the time of the change are cycled at once (each
  checked out and in: the old ones are replaced), so the previous login role is left with
  no session even when the application is quiet;
- ``engine.rotation_stats()`` says which generation is current and how many open
  connections each generation has.

``application_name`` as with the pool (default ``$PGAPPNAME``, else ``maily-app``).
Engine arguments (``pool_size``, ``max_overflow``, ``pool_pre_ping``, ``echo``...) pass
through; the URL, ``creator`` and ``async_creator`` are the adapter's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from ._feed import CredentialFeed
from .postgres import (
    PgCredential,
    PgCredentialSource,
    RotatingAsyncConnection,
    RotationStats,
    pick_postgres,
    secret_path,
)

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIConnection

    from ..service import VaultService

__all__ = ["RotatingAsyncEngine", "sqlalchemy_engine"]

log = logging.getLogger("maily_secrets.adapters")

URL = "postgresql+psycopg://"
_RESERVED = frozenset({"url", "creator", "async_creator", "module"})


def _generation(dbapi_connection: DBAPIConnection | None) -> int | None:
    """The credential generation of a pooled connection (None: not one of ours)."""
    if dbapi_connection is None:
        return None
    driver = getattr(dbapi_connection, "driver_connection", None)
    if isinstance(driver, RotatingAsyncConnection):
        return driver.maily_generation
    return None


class RotatingAsyncEngine(AsyncEngine):
    """An ``AsyncEngine`` whose connections follow the credential of a secret."""

    def __init__(
        self,
        sync_engine: Engine,
        *,
        source: PgCredentialSource,
        feed: CredentialFeed[PgCredential],
    ) -> None:
        super().__init__(sync_engine)
        self.source = source
        self.feed = feed
        event.listen(sync_engine, "checkout", self._on_checkout)
        event.listen(sync_engine, "checkin", self._on_checkin)

    def __repr__(self) -> str:
        return (
            f"<RotatingAsyncEngine {self.sync_engine.url!r} secret={self.feed.path!r}"
            f" generation={self.source.generation}>"
        )

    def rotation_stats(self) -> RotationStats:
        return self.source.stats()

    # -- pool events (run in the engine's greenlet, on the event loop) ---------------
    def _on_checkout(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        gen = _generation(dbapi_connection)
        if gen is not None and self.source.is_stale(gen):
            # the pool invalidates it and reconnects (with the current credential) before
            # the caller gets it: no error reaches the application
            self.source.note_discarded()
            raise exc.DisconnectionError("connection of a previous credential generation")

    def _on_checkin(
        self, dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry
    ) -> None:
        gen = _generation(dbapi_connection)
        if gen is None or not self.source.is_stale(gen):
            return
        self.source.note_discarded()
        try:
            record.invalidate()  # closed now; the next checkout of this slot reconnects
        except Exception as err:  # e.g. checked in by the garbage collector: no greenlet
            log.debug("%s: closing an old connection at checkin: %s", self.source.name, err)
            record.invalidate(soft=True)

    # -- a change of credential --------------------------------------------------------
    async def _credential_changed(self, credential: PgCredential, generation: int) -> None:
        self.source.set(credential, generation)
        await self._cycle_idle()
        log.info(
            "%s: new connections log in as %s (generation %d)",
            self.source.name,
            credential.user,
            generation,
            extra={"adapter": self.source.name, "generation": generation},
        )

    async def _cycle_idle(self) -> None:
        """Check every idle connection out and in once: old ones are replaced."""
        pool = self.sync_engine.pool
        checkedin = getattr(pool, "checkedin", None)
        if checkedin is None:
            return
        for _ in range(int(checkedin())):
            if not checkedin():
                break
            try:
                async with self.connect():
                    pass
            except Exception as err:  # the next checkout replaces it anyway
                log.warning(
                    "%s: could not replace an idle connection: %s",
                    self.source.name,
                    type(err).__name__,
                )
                break

    async def dispose(self, close: bool = True) -> None:
        """Close the pool's connections (``close``) and stop following the secret."""
        try:
            await self.feed.close()
        finally:
            await super().dispose(close=close)


async def sqlalchemy_engine(
    service: VaultService,
    *,
    secret: str = "config",  # noqa: S107 - the name of the secret, not a value
    application_name: str | None = None,
    dbname: str | None = None,
    connect_kwargs: Mapping[str, Any] | None = None,
    **engine_kwargs: Any,
) -> RotatingAsyncEngine:
    """An ``AsyncEngine`` (``postgresql+psycopg``, async) logged in with the secret's
    credential and following its rotations; ``engine_kwargs`` go to
    ``create_async_engine`` (``pool_size``, ``max_overflow``, ``pool_recycle``...)."""
    reserved = sorted(set(engine_kwargs) & _RESERVED)
    if reserved:
        raise TypeError(f"sqlalchemy_engine sets {', '.join(reserved)} itself")
    source = PgCredentialSource(
        name="sqlalchemy_engine",
        application_name=application_name,
        dbname=dbname,
        connect_kwargs=connect_kwargs,
    )
    feed = CredentialFeed(service, secret_path(service, secret), pick_postgres, name=source.name)
    credential = await feed.start()
    source.set(credential, feed.generation)

    async def creator() -> RotatingAsyncConnection:
        return await RotatingAsyncConnection.connect("", maily_source=source)

    try:
        base = create_async_engine(URL, async_creator=creator, **engine_kwargs)
        engine = RotatingAsyncEngine(base.sync_engine, source=source, feed=feed)
    except BaseException:
        await feed.close()
        raise
    feed.on_change(engine._credential_changed)  # nothing awaited since start
    return engine
