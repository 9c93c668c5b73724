"""Blocking twins of :class:`~maily_secrets.service.VaultService` for code without an event loop.

Django views, Celery tasks, management commands and scripts call the same methods,
without ``await``::

    from maily_secrets.sync import vault_service

    config = vault_service.get_config()
    ct = vault_service.encrypt_data("maily-enc-key", "text")

Every :class:`SyncVaultService` of a process runs its async service on **one**
background event loop: a daemon thread (``maily-secrets-loop``), started on the first
call (never at import), thread-safe. A call submits the coroutine with
:func:`asyncio.run_coroutine_threadsafe` and blocks the calling thread until it is done,
so any number of threads share one connection pool, one cache and one token; the async
service is only ever touched by the loop's thread. Errors are the same typed errors
(:class:`~maily_secrets.errors.SecretNotFound`, ...), raised in the calling thread.

- ``timeout=`` bounds each call (on top of the HTTP timeout and retries of the
  settings): on expiry the work is cancelled on the loop and
  :class:`~maily_secrets.errors.VaultUnavailable` is raised
  (:class:`~maily_secrets.errors.OutcomeUnknown` for a write).
- Listener callbacks run as with the async service: plain functions on the listeners'
  pool of daemon threads (they may call this API), coroutine functions on the loop.
- At interpreter exit every service that is still open is closed on the loop (leases
  revoked, snapshot flushed, connections closed), then the loop stops: before the
  standard library shuts down its thread pools, so the close can still use them.
- Calling from a thread that runs an event loop raises :class:`CalledFromEventLoop`
  (use ``await`` and the async service there; waiting would block that loop).
- ``fork()``: create the service in the process that uses it (Celery's
  ``worker_process_init``, gunicorn's ``post_fork``). A service first used in a parent
  raises :class:`UsedAfterFork` in a forked child, until :meth:`SyncVaultService.reset_after_fork`
  gives the child a fresh one (the parent's connections and token are left alone). A
  service created but not used before the fork (like the module's ``vault_service``) is
  simply used in the child.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before ours
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from .callbacks import callback_name
from .errors import OutcomeUnknown, VaultError, VaultUnavailable
from .service import VaultService

if TYPE_CHECKING:
    # annotations only: jwt/cryptography and the lease container load when first used
    from .cache import Entry
    from .clock import Clock
    from .health import Health
    from .jwt_keys import SigningKey
    from .leases import EventKind, Listener
    from .listeners import SecretCallback, Subscription
    from .observe import Observer
    from .paths import KV2Path
    from .settings import VaultSettings
    from .vault.client import VaultClient
    from .vault.database import DatabaseCredentials

__all__ = [
    "CalledFromEventLoop",
    "SyncSubscription",
    "SyncUsageError",
    "SyncVaultService",
    "UsedAfterFork",
    "vault_service",
]

log = logging.getLogger("maily_secrets.sync")

T = TypeVar("T")

#: How long the exit hook waits for each service's ``close()`` and for the loop to stop.
EXIT_TIMEOUT = 10.0


class SyncUsageError(VaultError, RuntimeError):
    """The sync API was called where it cannot work (see the subclasses)."""


class CalledFromEventLoop(SyncUsageError):
    """A blocking method was called from a thread that runs an event loop."""


class UsedAfterFork(SyncUsageError):
    """A service first used in a parent process was called in a forked child."""


class _LoopThread:
    """The one background event loop of this process, started on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._inherited: list[object] = []  # a parent's loop: kept, never closed here
        self.exiting = False

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self.exiting:
                raise SyncUsageError("maily_secrets.sync is shut down: the interpreter is exiting")
            if self._loop is None:
                self._loop = self._start()
            return self._loop

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="maily-secrets-loop", daemon=True)
        self._thread.start()
        ready.wait()
        return loop

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def after_fork_in_child(self) -> None:
        # the loop's thread did not survive the fork; its lock may be held by a thread
        # that no longer exists. Keep the parent's objects referenced: finalizing them
        # here would close (or warn about) what the parent still uses.
        self._inherited.append((self._loop, self._thread))
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._pid = os.getpid()

    def stop(self, services: Iterable[SyncVaultService]) -> None:
        """Close ``services`` on the loop, cancel what is left, stop the loop (at exit)."""
        with self._lock:
            self.exiting = True  # later calls raise SyncUsageError instead of using a dead loop
            loop, thread = self._loop, self._thread
            self._loop = None
        if loop is None or thread is None or not thread.is_alive():
            return
        for svc in services:
            svc._close_at_exit(loop)
        try:
            asyncio.run_coroutine_threadsafe(_finish(loop), loop).result(EXIT_TIMEOUT)
        except Exception as exc:
            log.warning("maily_secrets.sync: stopping the loop: %s", type(exc).__name__)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(EXIT_TIMEOUT)


async def _finish(loop: asyncio.AbstractEventLoop) -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks(loop) if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


_RUNNER = _LoopThread()
_LIVE: weakref.WeakSet[SyncVaultService] = weakref.WeakSet()


def _at_exit() -> None:
    pid = os.getpid()
    _RUNNER.stop([s for s in list(_LIVE) if s._pid == pid])


def _after_fork_in_child() -> None:
    _RUNNER.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
# threading's exit hooks run before the standard library's thread pools are shut down
# (their hook was registered earlier, by the import above, and these run last-first);
# atexit hooks run after, when the loop could no longer hand work to a thread.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_at_exit)
else:  # pragma: no cover - every CPython we support has it
    atexit.register(_at_exit)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class SyncSubscription:
    """What :meth:`SyncVaultService.register_secret_listener` returns; ``cancel()`` removes it."""

    __slots__ = ("_owner", "_sub")

    def __init__(self, owner: SyncVaultService, sub: Subscription) -> None:
        self._owner = owner
        self._sub = sub

    @property
    def path(self) -> str:
        return self._sub.path

    @property
    def callback(self) -> SecretCallback:
        return self._sub.callback

    def cancel(self) -> None:
        self._owner._run(self._sub.cancel())

    def __repr__(self) -> str:
        return f"<SyncSubscription {self.path!r} {callback_name(self.callback)}>"


class SyncVaultService:
    """The methods of :class:`~maily_secrets.service.VaultService`, blocking, thread-safe.

    Construction does no I/O and starts no thread. ``timeout`` (seconds, default none)
    bounds each call. ``close()`` (or ``with SyncVaultService() as svc:``) releases
    everything; a closed service may be used again. Services still open at interpreter
    exit are closed then.
    """

    def __init__(
        self,
        settings: VaultSettings | None = None,
        *,
        client: VaultClient | None = None,
        clock: Clock | None = None,
        observer: Observer | None = None,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        self._given = (settings, client, clock, observer)
        self._service = VaultService(settings, client=client, clock=clock, observer=observer)
        self.timeout = timeout
        self._pid: int | None = None  # the process that first used it
        _LIVE.add(self)

    def __repr__(self) -> str:
        state = "unused" if self._pid is None else f"pid={self._pid}"
        return f"<SyncVaultService {state} timeout={self.timeout}>"

    # ------------------------------------------------------------------ the machinery
    def _check(self) -> None:
        if _running_loop() is not None:
            raise CalledFromEventLoop(
                "a blocking maily_secrets.sync method was called from a thread that runs an"
                " asyncio event loop, which it would block; there, use the async service:"
                " `await vault_service.get_config()` (maily_secrets.service.VaultService)"
            )
        pid = os.getpid()
        if self._pid is None:
            self._pid = pid
        elif self._pid != pid:
            raise UsedAfterFork(
                f"this SyncVaultService was first used in process {self._pid} and this is"
                f" its forked child {pid}: create services after the fork (Celery:"
                " worker_process_init, gunicorn: post_fork) or call reset_after_fork()"
            )

    def _loop(self) -> asyncio.AbstractEventLoop:
        self._check()
        return _RUNNER.loop()

    def _fresh(self, path: str | None) -> dict[str, Any] | None:
        """A fresh cache hit, copied out in the calling thread: no hop to the loop
        (:meth:`VaultService.fresh_hit`: counted and logged as the async service does)."""
        self._check()  # the same refusals as every other call, hit or miss
        return self._service.fresh_hit(path) if path is not None else None

    def _std_path(self, i: int) -> str | None:
        paths = self._service.standard_paths  # known after the first read of the three
        return paths[i] if paths is not None else None

    def _run(self, coro: Coroutine[Any, Any, T], *, write: bool = False) -> T:
        """Run ``coro`` on the loop and wait for it in this thread."""
        try:
            loop = self._loop()
        except BaseException:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise
        what = getattr(coro, "__qualname__", "call")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result(self.timeout)
        except TimeoutError:
            if fut.done():
                raise  # the coroutine's own TimeoutError
            fut.cancel()
            kind = OutcomeUnknown if write else VaultUnavailable
            raise kind(
                f"{what}() did not complete within {self.timeout}s"
                + ("; the write may have been applied" if write else "")
            ) from None
        except BaseException:
            fut.cancel()  # KeyboardInterrupt in the waiting thread: stop the work too
            raise

    def run_async(self, fn: Callable[[VaultService], Awaitable[T]]) -> T:
        """Run ``await fn(async_service)`` on the loop: for what has no twin here.

        ``svc.run_async(lambda s: s.leases.release("database/creds/maily-app"))``. ``fn`` is called
        on the loop's thread; what it returns must not be used from another loop.
        """

        async def call() -> T:
            return await fn(self._service)

        return self._run(call())

    def reset_after_fork(self) -> None:
        """In a forked child: drop what the parent's service held and start afresh.

        The parent's connections, token and leases are left untouched (they are the
        parent's; closing them here would break it). Listeners registered in the parent
        are not carried over: register them again.
        """
        if self._pid is None or self._pid == os.getpid():
            return
        settings, client, clock, observer = self._given
        if client is not None:
            raise UsedAfterFork(
                "a SyncVaultService built on a given VaultClient cannot be reset after fork;"
                " build a new client and service in the child"
            )
        _RUNNER._inherited.append(self._service)
        self._service = VaultService(settings, clock=clock, observer=observer)
        self._pid = None

    def _close_at_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._service.close(), loop).result(EXIT_TIMEOUT)
        except Exception as exc:
            log.warning("vault_service.close() at exit failed (%s)", type(exc).__name__)

    # ------------------------------------------------------------------ wiring
    @property
    def settings(self) -> VaultSettings:
        return self._service.settings

    @property
    def clock(self) -> Clock:
        return self._service.clock

    @property
    def kv_mount(self) -> str:
        return self._service.kv_mount

    # ------------------------------------------------------------------ reads
    def get_config(self) -> dict[str, Any]:
        """Core configuration: ``<mount>/data/config``."""
        hit = self._fresh(self._std_path(0))
        return hit if hit is not None else self._run(self._service.get_config())

    def get_api_keys(self) -> dict[str, Any]:
        """API keys for external services: ``<mount>/data/api-keys``."""
        hit = self._fresh(self._std_path(1))
        return hit if hit is not None else self._run(self._service.get_api_keys())

    def get_credentials(self, service: str) -> dict[str, Any]:
        """The credentials mapping of one service from ``<mount>/data/credentials``."""
        return self._run(self._service.get_credentials(service))

    def get_secret(self, path: str) -> dict[str, Any]:
        """Any secret by its API path (``maily/data/config``); KV v2 data is unwrapped."""
        hit = self._fresh(path) if type(path) is str else None  # only valid paths are cached
        return hit if hit is not None else self._run(self._service.get_secret(path))

    def get_secret_version(self, path: str) -> int | None:
        """The KV v2 version of the cached value of ``path`` (reads it if needed)."""
        return self._run(self._service.get_secret_version(path))

    def read_data(self, path: str) -> dict[str, Any] | None:
        """The ``data`` of any API path as Vault returns it, uncached."""
        return self._run(self._service.read_data(path))

    # ------------------------------------------------------------------ health
    def require(self, *paths: str) -> None:
        """Declare secrets this process cannot serve without (see :meth:`readiness`)."""
        self._service.require(*paths)

    def readiness(self) -> Health:
        """Whether every required secret can be served within the staleness bound."""
        return self._run(self._service.readiness())

    def liveness(self) -> Health:
        """Whether every background task the service started still runs (no I/O)."""
        return self._service.liveness()

    def health(self) -> Health:
        """Readiness and liveness together (``.ready``, ``.live``, ``.ok``)."""
        return self._run(self._service.health())

    def invalidate(self, path: str | None = None) -> None:
        """Drop ``path`` (or everything) from the in-memory cache."""

        async def drop() -> None:
            self._service.invalidate(path)

        self._run(drop())

    # ------------------------------------------------------------------ listeners
    def register_secret_listener(
        self,
        path: str,
        callback: SecretCallback,
        *,
        interval: float | None = None,
        timeout: float | None = None,
    ) -> SyncSubscription:
        """Call ``callback(new_value)`` whenever the secret at ``path`` changes.

        As :meth:`VaultService.register_secret_listener`: a plain function runs on the
        listeners' pool of daemon threads (it may call this API), a coroutine function
        on the background loop (it must not block, and must use the async service).
        """
        sub = self._run(
            self._service.register_secret_listener(
                path, callback, interval=interval, timeout=timeout
            )
        )
        return SyncSubscription(self, sub)

    def unregister_secret_listener(self, path: str, callback: SecretCallback) -> bool:
        """Remove one registration of ``callback`` on ``path``; False if there was none."""
        return self._run(self._service.unregister_secret_listener(path, callback))

    # ------------------------------------------------------------------ transit
    def encrypt_data(
        self, key: str, data: str | bytes, *, context: str | bytes | None = None
    ) -> str:
        """Encrypt ``data`` with the transit key ``key``; returns ``vault:vN:...``."""
        return self._run(self._service.encrypt_data(key, data, context=context))

    @overload
    def decrypt_data(
        self,
        key: str,
        ciphertext: str,
        *,
        context: str | bytes | None = ...,
        as_bytes: Literal[False] = ...,
    ) -> str: ...

    @overload
    def decrypt_data(
        self,
        key: str,
        ciphertext: str,
        *,
        context: str | bytes | None = ...,
        as_bytes: Literal[True],
    ) -> bytes: ...

    def decrypt_data(
        self,
        key: str,
        ciphertext: str,
        *,
        context: str | bytes | None = None,
        as_bytes: bool = False,
    ) -> str | bytes:
        """Decrypt a ciphertext of ``key`` (``str`` by default, ``bytes`` with ``as_bytes``)."""
        if as_bytes:
            return self._run(
                self._service.decrypt_data(key, ciphertext, context=context, as_bytes=True)
            )
        return self._run(self._service.decrypt_data(key, ciphertext, context=context))

    def encrypt_many(
        self,
        key: str,
        items: Iterable[str | bytes],
        *,
        context: str | bytes | Sequence[str | bytes] | None = None,
    ) -> list[str]:
        """Encrypt many values in batches, in order."""
        return self._run(self._service.encrypt_many(key, list(items), context=context))

    def decrypt_many(
        self,
        key: str,
        ciphertexts: Iterable[str],
        *,
        context: str | bytes | Sequence[str | bytes] | None = None,
    ) -> list[bytes]:
        """Decrypt many ciphertexts in batches; returns bytes, in order."""
        return self._run(self._service.decrypt_many(key, list(ciphertexts), context=context))

    def rewrap_many(
        self,
        key: str,
        ciphertexts: Iterable[str],
        *,
        context: str | bytes | Sequence[str | bytes] | None = None,
    ) -> list[str]:
        """Re-encrypt ciphertexts with the key's latest version (after a rotation)."""
        return self._run(self._service.rewrap_many(key, list(ciphertexts), context=context))

    # ------------------------------------------------------------------ dynamic secrets
    def get_database_credentials(
        self, role: str, *, mount: str = "database"
    ) -> DatabaseCredentials:
        """Dynamic PostgreSQL credentials of a Vault database role, kept alive on the loop."""
        return self._run(self._service.get_database_credentials(role, mount=mount))

    def add_lease_listener(
        self, listener: Listener, events: Iterable[EventKind] | None = None
    ) -> Callable[[], None]:
        """``vault_service.leases.add_listener`` of the async service; returns its remover."""
        kinds = list(events) if events is not None else None

        async def add() -> Callable[[], None]:
            return self._service.leases.add_listener(listener, kinds)

        remove = self._run(add())

        def remove_listener() -> None:
            async def rm() -> None:
                remove()

            self._run(rm())

        return remove_listener

    # ------------------------------------------------------------------ JWT key set
    def get_jwt_signing_key(self) -> SigningKey:
        """The key to sign new tokens with (``.secret``, ``.kid``)."""
        return self._run(self._service.get_jwt_signing_key())

    def get_jwt_verification_keys(self, *, kid: str | None = None) -> dict[str, str]:
        """``{kid: secret}`` of every key that verifies now."""
        return self._run(self._service.get_jwt_verification_keys(kid=kid))

    # ------------------------------------------------------------------ writes
    def put_secret(self, path: str, data: dict[str, Any], *, cas: int) -> int:
        """Write a new version of a KV v2 secret if its current version is ``cas``."""
        return self._run(self._service.put_secret(path, data, cas=cas), write=True)

    def update_secret(self, path: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        """Read-modify-write with check-and-set, retried on conflict (no lost update).

        ``change`` runs on the loop's thread: keep it a quick, pure function.
        """
        return self._run(self._service.update_secret(path, change), write=True)

    # --- the SecretSource methods, for completeness
    def read_entry(self, path: str) -> Entry:
        """Read ``path`` from Vault now, bypassing the cache (KV v2 data with its version)."""
        return self._run(self._service.read_entry(path))

    def current_version(self, path: KV2Path) -> int:
        """The current version of a KV v2 secret (0 when it does not exist)."""
        return self._run(self._service.current_version(path))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop listeners and leases (revoking them), flush the snapshot, close connections.

        Safe to call twice; the service may be used again afterwards. The background loop
        keeps running for the other services of the process (it stops at exit).
        """
        if self._pid is None:
            return  # never used: nothing to release
        self._run(self._service.close())

    def __enter__(self) -> SyncVaultService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The process's default service, configured from the environment on first use
#: (``VAULT_ADDR``, ``VAULT_TOKEN``, ...). Importing this module does no I/O.
vault_service = SyncVaultService()
