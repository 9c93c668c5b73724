"""``VaultService``: the facade the guide documents.

    from apps.api.services.vault_service import vault_service
    config = await vault_service.get_config()

Constructing a service does no I/O and starts no task; the HTTP session, the
login and the snapshot are all set up on first use, inside the running loop.
``close()`` releases everything; a closed service may be used again (it then
starts afresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from .access import AccessLog
from .cache import CacheStatus, Entry, SecretCache, json_copy
from .clock import SYSTEM_CLOCK, Clock
from .errors import (
    AuthFailed,
    ConfigurationError,
    DecryptedNotText,
    InvalidPath,
    PermissionDenied,
    SecretNotFound,
    VaultError,
    VaultUnavailable,
)
from .health import Check, Health
from .observe import NOOP, Observer
from .paths import KV2Path, ValidPath, checked, validate_path
from .settings import VaultSettings
from .supervise import supervised
from .vault.client import VaultClient
from .vault.kv import live_data

if TYPE_CHECKING:
    # what a read does not use loads where it is first needed (function-level imports):
    # jwt/cryptography, the lease container, listeners, transit, the snapshot, the file
    # source. A process that only reads holds less (bench/bench_memory.py).
    from .changes import CredentialsReader, Publisher
    from .filesource import FileSecret
    from .jwt_keys import SigningKey
    from .jwt_keyset import JwtKeySet
    from .leases import LeaseContainer
    from .listeners import ListenerRegistry, SecretCallback, Subscription
    from .snapshot import SnapshotStore
    from .vault.database import DatabaseCredentials
    from .vault.transit import Transit

log = logging.getLogger("maily_secrets.service")
access_log = logging.getLogger("maily_secrets.access")

_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (SecretNotFound, "not_found"),
    (PermissionDenied, "denied"),
    (InvalidPath, "invalid_path"),
    (AuthFailed, "auth_failed"),
    (VaultUnavailable, "unavailable"),
    (VaultError, "error"),
)


def _outcome(exc: BaseException) -> str:
    for kind, name in _OUTCOMES:
        if isinstance(exc, kind):
            return name
    return "error"


class VaultService:
    """Cached, resilient access to Maily's secrets in Vault.

    It is the :class:`~maily_secrets.source.SecretSource` of its listeners and of its
    JWT key set (:meth:`read_entry`, :meth:`current_version`, :meth:`read_data`,
    :meth:`get_secret`, :attr:`cache`, :attr:`clock`).
    """

    def __init__(
        self,
        settings: VaultSettings | None = None,
        *,
        client: VaultClient | None = None,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        """``observer``: what is told of every read, request, change and lease, e.g.
        ``maily_secrets.metrics.ServiceMetrics(registry)`` (default: nobody)."""
        self._given_settings = settings
        self.observer: Observer = observer or NOOP
        self._required: dict[str, None] = {}
        self._given_client = client  # not ours: close() leaves it open
        self.clock: Clock = clock or (client.clock if client is not None else SYSTEM_CLOCK)
        self._settings: VaultSettings | None = None
        self._client: VaultClient | None = None
        self._cache: SecretCache | None = None
        self._snapshot: SnapshotStore | None = None
        self._snapshot_entries: dict[str, dict[str, Any]] | None = None
        self._snapshot_dirty = False
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_wake: asyncio.Event | None = None
        self._warned_stale: set[str] = set()
        self._std_paths: tuple[str, str, str] | None = None  # see standard_paths
        self._listener_registry: ListenerRegistry | None = None
        self._publisher: Publisher | None = None  # the change push (changes.py)
        self._transit: Transit | None = None
        self._lease_container: LeaseContainer | None = None
        self._file_secret: FileSecret | None = None
        self._access = AccessLog(self.clock)  # hits, counted per interval (see cache)

    # ------------------------------------------------------------------ wiring
    @property
    def settings(self) -> VaultSettings:
        if self._settings is None:
            self._settings = self._given_settings or (
                self._given_client.settings if self._given_client else VaultSettings()
            )
        return self._settings

    @property
    def client(self) -> VaultClient:
        if self._client is None:
            # HTTP backoff and token renewal keep the client's own (real) clock: ``clock``
            # drives the cache, listeners, leases and snapshot; give a client for more.
            self._client = self._given_client or VaultClient(self.settings, observer=self.observer)
            if self._client.observer is NOOP:  # a given client reports to us too
                self._client.observer = self.observer
        return self._client

    @property
    def cache(self) -> SecretCache:
        if self._cache is None:
            s = self.settings
            self._cache = SecretCache(s.cache_ttl, s.max_staleness, clock=self.clock)
            self._access.configure(self.clock, s.access_log_interval)
        return self._cache

    @property
    def _listeners(self) -> ListenerRegistry:
        if self._listener_registry is None:
            from .changes import Subscriber, beacon_of
            from .listeners import ListenerRegistry

            s = self.settings
            push_path = s.change_push_path
            push: Callable[[Callable[[str, int], None]], Subscriber] | None = None
            if push_path is not None:
                where = push_path

                def push(on_change: Callable[[str, int], None]) -> Subscriber:
                    return Subscriber(self._push_reader(where), where, on_change, clock=self.clock)

            self._listener_registry = ListenerRegistry(
                self,
                interval=s.listener_interval,
                observer=self.observer,
                beacon=beacon_of(s),
                full_interval=s.listener_full_poll_interval,
                push=push,
                local=lambda p: self._from_file(p) is not None,
            )
        return self._listener_registry

    def _snapshot_store(self) -> SnapshotStore | None:
        s = self.settings
        if self._snapshot is None and s.snapshot_path is not None:
            if s.snapshot_key is None:  # settings refuse this; a hand-made object may not
                raise ConfigurationError(
                    "invalid configuration: MAILY_SECRETS_SNAPSHOT_PATH is set but"
                    " MAILY_SECRETS_SNAPSHOT_KEY is not",
                    variable="MAILY_SECRETS_SNAPSHOT_KEY",
                )
            from .snapshot import SnapshotStore

            try:
                self._snapshot = SnapshotStore(s.snapshot_path, s.snapshot_key.get_secret_value())
            except ValueError as exc:
                raise ConfigurationError(
                    f"invalid configuration: {exc}", variable="MAILY_SECRETS_SNAPSHOT_KEY"
                ) from None
        return self._snapshot

    def _from_file(self, path: str) -> FileSecret | None:
        """The file source serving ``path`` (``MAILY_CONFIG_FILE`` serves the config)."""
        f = self._file_secret
        if f is None:
            file = self.settings.config_file
            if file is None:
                return None
            from .filesource import FileSecret

            f = self._file_secret = FileSecret(file, self._paths()[0], clock=self.clock)
        return f if f.path == path else None

    @property
    def kv_mount(self) -> str:
        return self.settings.kv_mount

    # ------------------------------------------------------------------ the guide's API
    async def get_config(self) -> dict[str, Any]:
        """Core configuration: ``<mount>/data/config`` (db, Redis, JWT, SMTP settings).

        With ``MAILY_CONFIG_FILE`` set it is the JSON object of that file (rendered by
        Vault Agent), as rendered: no request to Vault, no token needed.
        """
        return await self.get_secret(self._paths()[0])

    async def get_api_keys(self) -> dict[str, Any]:
        """API keys for external services: ``<mount>/data/api-keys``."""
        return await self.get_secret(self._paths()[1])

    @property
    def standard_paths(self) -> tuple[str, str, str] | None:
        """config, api-keys, credentials under the mount, once a read of one computed
        them (None before: reading settings could do I/O, so this never does)."""
        return self._std_paths

    def _paths(self) -> tuple[str, str, str]:
        """The guide's three paths under the configured mount (computed once)."""
        p = self._std_paths
        if p is None:
            m = self.kv_mount
            p = self._std_paths = (
                f"{m}/data/config",
                f"{m}/data/api-keys",
                f"{m}/data/credentials",
            )
        return p

    async def get_credentials(self, service: str) -> dict[str, Any]:
        """The credentials mapping of one service from ``<mount>/data/credentials``.

        ``await get_credentials("aws")`` returns ``{"aws_access_key": ..., ...}``.
        """
        path = self._paths()[2]
        if not isinstance(service, str) or not service:
            raise InvalidPath("service name must be a non-empty string", path=path)
        start = time.perf_counter()
        try:
            value, status = await self._get(checked(path))
        except BaseException as exc:
            self.observer.cache_read(path, "failed")
            self._log_access(path, None, "miss", _outcome(exc), start, service)
            raise
        self.observer.cache_read(path, status)
        creds = value.get(service)
        if not isinstance(creds, dict):
            self._log_access(path, None, status, "not_found", start, service)
            raise SecretNotFound(
                f"no credentials for service {service!r} in {path!r}"
                f" (services present: {', '.join(sorted(value)) or 'none'})",
                path=path,
            )
        self._log_access(path, creds, status, "ok", start, service)
        return creds

    def fresh_hit(self, path: object) -> dict[str, Any] | None:
        """The hot path of every read: a copy of a fresh cache entry, counted and logged as
        a hit, or None. No I/O and no await, so safe from any thread (entries are never
        changed once cached; ``maily_secrets.sync`` serves hits with it). Only validated
        paths are ever cached, so anything else is simply not a hit. The access log counts
        the hit (:class:`~maily_secrets.access.AccessLog`: one event per path per interval)."""
        cache = self._cache
        if cache is None or type(path) is not str:
            return None
        key: str = path
        entry = cache.fresh(key)
        if entry is None:
            return None
        value = entry.copy_out()
        self.observer.cache_read(key, "hit")
        if access_log.isEnabledFor(logging.INFO):
            self._access.hit(key, value)
        return value

    async def get_secret(self, path: str) -> dict[str, Any]:
        """Any secret by its API path (``maily/data/config``); KV v2 data is unwrapped.

        Raises :class:`SecretNotFound` when it does not exist (never returns ``{}`` for
        a missing secret), :class:`InvalidPath` before any request for a bad path,
        :class:`VaultUnavailable` when Vault is down and no last-known value is usable.
        """
        hit = self.fresh_hit(path)
        if hit is not None:
            return hit
        start = time.perf_counter()
        try:
            # fresh_hit found nothing and nothing awaited since: straight to the load,
            # with the path validated here once (nothing below validates it again).
            value, status = await self._miss(checked(path))
        except BaseException as exc:
            if isinstance(exc, VaultError) and not isinstance(exc, InvalidPath):
                self.observer.cache_read(path, "failed")  # a valid path: a bounded label
            self._log_access(
                path if isinstance(path, str) else "?", None, "miss", _outcome(exc), start
            )
            raise
        self.observer.cache_read(path, status)
        self._log_access(path, value, status, "ok", start)
        return value

    async def get_secret_version(self, path: str) -> int | None:
        """The KV v2 version of the cached value of ``path`` (reads it if needed)."""
        await self._get(checked(path))
        e = self.cache.peek(path)
        return e.version if e else None

    # ------------------------------------------------------------------ listeners
    async def register_secret_listener(
        self,
        path: str,
        callback: SecretCallback,
        *,
        interval: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a limit for each callback call
    ) -> Subscription:
        """Call ``callback(new_value)`` whenever the secret at ``path`` changes.

        One watcher per path polls the KV v2 metadata every ``interval`` seconds
        (default ``MAILY_SECRETS_LISTENER_INTERVAL``, 30 s, +-10% jitter) and reads
        the data only when the version moved; the cache is updated before the
        callbacks run. ``callback`` may be a function (run on the listeners' own
        bounded pool of daemon threads, so a blocked callback neither starves the others
        nor delays process exit) or a coroutine function. With ``timeout`` a call that
        runs longer is logged as a warning naming the path and the callback. Returns a
        :class:`Subscription`; ``await sub.cancel()`` or :meth:`unregister_secret_listener`
        removes it, :meth:`close` stops all.
        """
        validate_path(path)
        return await self._listeners.register(path, callback, interval, timeout=timeout)

    async def unregister_secret_listener(self, path: str, callback: SecretCallback) -> bool:
        """Remove one registration of ``callback`` on ``path``; False if there was none."""
        return await self._listeners.unregister(path, callback)

    # ------------------------------------------------------------------ encryption as a service
    @property
    def transit(self) -> Transit:
        """The transit engine (``MAILY_SECRETS_TRANSIT_MOUNT``, default ``transit``)."""
        if self._transit is None:
            from .vault.transit import Transit

            self._transit = Transit(self.client, self.settings.transit_mount)
        return self._transit

    async def encrypt_data(
        self, key: str, data: str | bytes, *, context: str | bytes | None = None
    ) -> str:
        """Encrypt ``data`` with the transit key ``key``; returns ``vault:vN:...``.

        ``str`` is encoded as UTF-8; ``bytes`` are taken as they are. ``context`` is
        required for derived keys. The plaintext never leaves this process except
        to Vault, and never appears in logs or errors.
        """
        return await self.transit.encrypt(key, data, context=context)

    @overload
    async def decrypt_data(
        self,
        key: str,
        ciphertext: str,
        *,
        context: str | bytes | None = ...,
        as_bytes: Literal[False] = ...,
    ) -> str: ...

    @overload
    async def decrypt_data(
        self,
        key: str,
        ciphertext: str,
        *,
        context: str | bytes | None = ...,
        as_bytes: Literal[True],
    ) -> bytes: ...

    async def decrypt_data(
        self,
        key: str,
        ciphertext: str,
        *,
        context: str | bytes | None = None,
        as_bytes: bool = False,
    ) -> str | bytes:
        """Decrypt a ciphertext of ``key``.

        Transit stores bytes, not their Python type: by default the plaintext is
        decoded as UTF-8 and a ``str`` comes back (the round trip of
        ``encrypt_data(key, "text")``); pass ``as_bytes=True`` to get the raw bytes
        (the round trip of ``encrypt_data(key, b"...")``). Plaintext that is not
        UTF-8 with ``as_bytes=False`` raises :class:`DecryptedNotText`.
        """
        raw = await self.transit.decrypt(key, ciphertext, context=context)
        if as_bytes:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptedNotText(
                f"plaintext decrypted with transit key {key!r} is not UTF-8 text;"
                " call decrypt_data(..., as_bytes=True)"
            ) from None

    async def encrypt_many(
        self,
        key: str,
        items: Iterable[str | bytes],
        *,
        context: str | bytes | Sequence[str | bytes] | None = None,
    ) -> list[str]:
        """Encrypt many values in batches (chunked under the server's JSON limits, in order)."""
        return await self.transit.encrypt_many(key, items, context=context)

    async def decrypt_many(
        self,
        key: str,
        ciphertexts: Iterable[str],
        *,
        context: str | bytes | Sequence[str | bytes] | None = None,
    ) -> list[bytes]:
        """Decrypt many ciphertexts in batches; returns bytes, in order."""
        return await self.transit.decrypt_many(key, ciphertexts, context=context)

    async def rewrap_many(
        self,
        key: str,
        ciphertexts: Iterable[str],
        *,
        context: str | bytes | Sequence[str | bytes] | None = None,
    ) -> list[str]:
        """Re-encrypt ciphertexts with the key's latest version (after a rotation)."""
        return await self.transit.rewrap_many(key, ciphertexts, context=context)

    # ------------------------------------------------------------------ dynamic secrets
    @property
    def leases(self) -> LeaseContainer:
        """The lease container of this service (renewal, rotation, revocation on close)."""
        if self._lease_container is None:
            from .leases import LeaseContainer

            self._lease_container = LeaseContainer(
                self.client, clock=self.clock, observer=self.observer
            )
        return self._lease_container

    async def get_database_credentials(
        self, role: str, *, mount: str = "database"
    ) -> DatabaseCredentials:
        """Dynamic PostgreSQL credentials of a Vault database role, kept alive for you.

        The first call creates a user (``<mount>/creds/<role>``); later calls return
        the current one. The lease is renewed at about 2/3 of its duration and new
        credentials are fetched before ``max_ttl`` runs out; subscribe with
        ``vault_service.leases.add_listener(fn, events=["rotated"])`` to swap a
        connection pool. ``close()`` revokes the user. ``.password`` is a
        ``SecretStr``: ``creds.password.get_secret_value()`` or ``creds.conninfo()``.
        """
        validate_path(f"{mount}/creds/{role}")
        return (await self.leases.database_credentials(role, mount=mount)).secret

    # ------------------------------------------------------------------ JWT key set
    async def get_jwt_signing_key(self) -> SigningKey:
        """The key to sign new tokens with: ``jwt_secret`` and its key id (``kid`` header).

        Read through :meth:`get_config` (cached; listeners keep it current), so after a
        rotation new tokens carry the new key id. ``.secret`` is the HS256 secret.
        """
        return await self._jwt_key_set().signing_key()

    async def get_jwt_verification_keys(self, *, kid: str | None = None) -> dict[str, str]:
        """``{kid: secret}`` of every key that verifies now (current, in-grace, published).

        With ``kid`` (a token's ``kid`` header, ``jwt_keys.token_kid(token)``) that is not
        among them, the config is read again from Vault, at most once per second,
        keeping the cached value if Vault is unreachable: a token signed by another
        instance right after a rotation verifies here before the cache expires.
        """
        return await self._jwt_key_set().verification_keys(kid=kid)

    def _jwt_key_set(self) -> JwtKeySet:
        from .jwt_keyset import JwtKeySet

        return JwtKeySet(self, self._paths()[0])  # the mount may change after close()

    # ------------------------------------------------------------------ health
    def require(self, *paths: str) -> None:
        """Declare secrets this process cannot serve without: :meth:`health` is ready
        only while each can be served (fresh, or no older than ``max_staleness``).
        ``MAILY_SECRETS_REQUIRED`` declares them from the environment."""
        for p in paths:
            validate_path(p)
            self._required[p] = None

    @property
    def required_secrets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.settings.required_secrets, *self._required)))

    def liveness(self) -> Health:
        """Whether every background task the service started still runs (no I/O)."""
        checks: list[Check] = []
        if self._listener_registry is not None:
            watchers = self._listener_registry.watchers
            dead = self._listener_registry.stopped()
            checks.append(
                Check(
                    "liveness",
                    "listeners",
                    not dead,
                    f"watcher task ended for {', '.join(dead)}"
                    if dead
                    else f"{len(watchers)} watcher(s) running",
                )
            )
        if self._lease_container is not None:
            dead = self._lease_container.stopped()
            checks.append(
                Check(
                    "liveness",
                    "leases",
                    not dead,
                    f"lease task ended for {', '.join(dead)}"
                    if dead
                    else f"{len(self._lease_container.leases)} lease(s) kept alive",
                )
            )
        if self._client is not None:
            stopped = self._client.tokens.renewal_stopped()
            checks.append(
                Check(
                    "liveness",
                    "token renewal",
                    not stopped,
                    "the token renewal task was cancelled" if stopped else "running or not needed",
                )
            )
        return Health(tuple(checks))

    async def readiness(self) -> Health:
        """Whether every required secret can be served within the staleness bound.

        A fresh cache entry answers without I/O; otherwise the secret is read the way
        :meth:`get_secret` reads it (Vault, else a last-known value within
        ``max_staleness``). No required secret: ready.
        """
        checks = [await self._servable(p) for p in self.required_secrets]
        return Health(tuple(checks))

    async def health(self) -> Health:
        """Readiness and liveness checks together (``.ready``, ``.live``, ``.ok``)."""
        ready = await self.readiness()
        return Health((*ready.checks, *self.liveness().checks))

    async def _servable(self, path: str) -> Check:
        cache = self.cache
        if cache.fresh(path) is not None:
            return Check("readiness", path, True, "fresh in memory")
        try:
            _, status = await self._get(checked(path))
        except VaultError as exc:
            return Check(
                "readiness",
                path,
                False,
                f"cannot be served: {type(exc).__name__} and no value within"
                f" max_staleness ({self.settings.max_staleness:g}s)",
            )
        if status == "miss":
            return Check("readiness", path, True, "read from Vault")
        e = cache.peek(path)
        age = e.age() if e is not None else 0.0
        return Check(
            "readiness",
            path,
            True,
            f"Vault unavailable; serving the last known value ({status}, {age:.0f}s old,"
            f" bound {self.settings.max_staleness:g}s)",
        )

    # ------------------------------------------------------------------ writes
    async def put_secret(self, path: str, data: dict[str, Any], *, cas: int) -> int:
        """Write a new version of a KV v2 secret if its current version is ``cas``.

        ``cas=0`` creates it only if absent. Raises :class:`CheckAndSetConflict` when
        someone else wrote first. The cache is updated and listeners of this
        process are told once (the watcher will not report the same version again).
        """
        kv = self._kv_path(path)
        version = await self.client.kv.write(kv, data, cas=cas)
        self._after_write(path, json_copy(dict(data)), version)
        await self._announce(path, version)
        return version

    async def update_secret(
        self, path: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> int:
        """Read-modify-write with check-and-set, retried on conflict (no lost update)."""
        kv = self._kv_path(path)
        written: dict[str, Any] = {}

        def apply(cur: dict[str, Any]) -> dict[str, Any]:
            new = change(cur)
            written.clear()
            written.update(new)
            return new

        version = await self.client.kv.update(kv, apply)
        self._after_write(path, json_copy(written), version)
        await self._announce(path, version)
        return version

    async def _announce(self, path: str, version: int) -> None:
        """The change feed: bump the beacon (and publish, with the push on) after a write.
        Never fails the write: a failed bump is a warning (``maily_secrets.changes``)."""
        s = self.settings
        if s.change_feed_path is None and s.change_push_path is None:
            return
        from .changes import Publisher, announce

        publisher = self._publisher
        push = s.change_push_path
        if push is not None and publisher is None:
            publisher = self._publisher = Publisher(self._push_reader(push), push)
        await announce(self.client, path, version, settings=s, publisher=publisher)

    def _push_reader(self, path: str) -> CredentialsReader:
        """The push's Redis credentials: cached, or straight from Vault when ``fresh``."""

        async def read(fresh: bool) -> Mapping[str, Any]:
            if fresh:
                return (await self.read_entry(path)).copy_out()
            return await self.get_secret(path)

        return read

    def _kv_path(self, path: str) -> KV2Path:
        kv = KV2Path.parse(path)
        if kv is None:
            raise InvalidPath(f"{path!r} is not a KV v2 data path (<mount>/data/<name>)", path=path)
        return kv

    def _after_write(self, path: str, data: dict[str, Any], version: int) -> None:
        if self._from_file(path) is not None:
            return  # the file is what this process serves: its watcher sees the re-render
        entry = self.cache.entry(data, version)
        if self.cache.put(path, entry):
            self._mark_snapshot_dirty()
        if self._listener_registry is not None:
            self._listener_registry.local_write(path, entry)

    def invalidate(self, path: str | None = None) -> None:
        """Drop ``path`` (or everything) from the in-memory cache."""
        self.cache.invalidate(path)

    async def close(self) -> None:
        """Cancel loads in flight, stop listeners and leases, flush the snapshot, close.

        Always completes: a step that fails (a snapshot that cannot be written, a lease
        that cannot be revoked) is logged and the next step still runs. A client given
        to the constructor is left open (it is the caller's); one the service made is
        closed. Safe to call twice. A closed service may be used again: it then starts
        afresh (re-reading the environment if it was built without explicit settings).
        """
        cache = self._cache
        registry, self._listener_registry = self._listener_registry, None
        container, self._lease_container = self._lease_container, None
        task, self._snapshot_task = self._snapshot_task, None
        steps: list[tuple[str, Callable[[], Any]]] = []
        if cache is not None:
            steps.append(("cancel loads", cache.close))
        if registry is not None:
            steps.append(("stop listeners", registry.close))
        if container is not None:
            steps.append(("revoke leases", lambda: container.close(revoke=True)))
        if task is not None:
            steps.append(("stop snapshot writer", lambda: self._stop_snapshot_writer(task)))
        steps.append(("write snapshot", self._final_snapshot))
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            steps.append(("close change push", publisher.close))
        if self._client is not None and self._client is not self._given_client:
            steps.append(("close client", self._client.close))
        for what, step in steps:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "vault_service.close(): %s failed (%s); continuing",
                    what,
                    type(exc).__name__,
                    extra={"step": what, "error": type(exc).__name__},
                )
        self._client = None
        self._settings = None
        self._cache = None
        self._snapshot = None
        self._snapshot_entries = None
        self._snapshot_dirty = False
        self._snapshot_wake = None
        self._std_paths = None
        self._transit = None
        self._file_secret = None
        self._warned_stale.clear()
        self._access.flush()  # the hits counted since the last aggregate event

    async def _stop_snapshot_writer(self, task: asyncio.Task[None]) -> None:
        if task.done() or task.get_loop() is not asyncio.get_running_loop():
            return
        if self._snapshot_wake is not None:
            self._snapshot_wake.set()  # skip the wait: write what is dirty now
        try:
            await asyncio.wait_for(asyncio.shield(task), 10.0)
        except TimeoutError:
            task.cancel()

    async def _final_snapshot(self) -> None:
        if self._snapshot_dirty:
            await self._save_snapshot()  # the last values reach the disk

    async def __aenter__(self) -> VaultService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals
    async def _get(self, path: ValidPath) -> tuple[dict[str, Any], CacheStatus]:
        """Returns a private copy of the value and where it came from."""
        entry = self.cache.fresh(path)
        if entry is not None:
            return entry.copy_out(), "hit"
        return await self._miss(path)

    async def _miss(self, path: ValidPath) -> tuple[dict[str, Any], CacheStatus]:
        """A read the cache cannot answer fresh: one load for all concurrent callers,
        else a last-known value within ``max_staleness`` when Vault is unavailable."""
        cache = self.cache
        try:
            entry = await cache.load(path, lambda: self._fetch(path))
        except VaultUnavailable as exc:
            stale = cache.usable_stale(path)
            if stale is not None:
                self._warn_stale(path, exc, stale.age(), "memory")
                return stale.copy_out(), "stale"
            from_disk = await self._from_snapshot(path)
            if from_disk is not None:
                self._warn_stale(path, exc, from_disk.age(), "snapshot")
                return from_disk.copy_out(), "snapshot"
            raise
        if self._warned_stale:
            self._warned_stale.discard(path)
        return entry.copy_out(), "miss"

    # --- the SecretSource of listeners and the JWT key set
    async def read_entry(self, path: str) -> Entry:
        """Read ``path`` from Vault now, bypassing the cache (KV v2 data with its version).

        The result is not cached (``cache.put`` or ``cache.load`` decide); a snapshot
        write is scheduled. Listeners compare versions with it.
        """
        return await self._fetch(checked(path))  # through ``_fetch``: tests substitute it

    async def current_version(self, path: KV2Path) -> int:
        """The current version of a KV v2 secret (its metadata; 0 when it does not exist).

        A path served from a file (``MAILY_CONFIG_FILE``) counts the file's content changes.
        """
        f = self._from_file(path.data)
        if f is not None:
            return f.version()
        return await self.client.kv.current_version(path)

    async def read_data(self, path: str) -> dict[str, Any] | None:
        """The ``data`` of any API path as Vault returns it, uncached (``None``: no data)."""
        return (await self.client.read(path)).data

    async def _fetch(self, path: ValidPath) -> Entry:
        settings = self.settings
        if self._file_secret is not None or settings.config_file is not None:
            f = self._from_file(path)
            if f is not None:
                return f.entry()  # a local file: no request, no token, no snapshot
        kv = KV2Path.parse_valid(path)
        if kv is not None:
            # KV v2 straight from the answer (what ``kv.read`` does, without the
            # SecretVersion nobody reads here); ``created_time`` parsed only if asked.
            r = await self.client.request("GET", kv.data)
            value, meta = live_data(kv.data, r.body)
            created = meta.get("created_time")
            entry = self.cache.entry(
                value,
                int(meta.get("version") or 0),
                created=created if isinstance(created, str) and created else None,
            )
        else:
            r = await self.client.read(path)
            data = r.data
            if data is None:
                raise SecretNotFound(f"secret {path!r} returned no data", path=path)
            entry = self.cache.entry(data, None)
        if settings.snapshot_path is not None:
            self._mark_snapshot_dirty()
        return entry

    def _warn_stale(self, path: str, exc: VaultError, age: float, where: str) -> None:
        if path in self._warned_stale:
            return
        self._warned_stale.add(path)
        log.warning(
            "Vault unavailable; serving last known value of %s (%.0fs old, from %s): %s",
            path,
            age,
            where,
            exc,
            extra={"path": path, "age_s": round(age, 1), "source": where},
        )

    # --- snapshot
    def _mark_snapshot_dirty(self) -> None:
        if self.settings.snapshot_path is None:
            return
        self._snapshot_dirty = True
        loop = asyncio.get_running_loop()
        t = self._snapshot_task
        if t is None or t.done() or t.get_loop() is not loop:
            self._snapshot_wake = asyncio.Event()
            self._snapshot_task = loop.create_task(
                supervised("secret snapshot writer", self._write_snapshot, clock=self.clock)
            )

    async def _write_snapshot(self) -> None:
        """Write the snapshot now, then at most once per ``snapshot_interval`` while dirty."""
        await asyncio.sleep(0)  # let the entry land in the cache first
        wake = self._snapshot_wake
        assert wake is not None
        while self._snapshot_dirty:
            await self._save_snapshot()
            if wake.is_set():
                return  # close() asked for the last write
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.snapshot_interval)

    async def _save_snapshot(self) -> None:
        store = self._snapshot_store()
        if store is None:
            return
        self._snapshot_dirty = False
        entries = {
            p: {"data": e.value, "version": e.version, "fetched_at": e.fetched_wall}
            for p, e in self.cache.items()
        }
        try:
            await asyncio.to_thread(store.save, entries)
        except (OSError, TypeError, ValueError) as exc:
            self._snapshot_dirty = True  # try again at the next write
            why = exc.strerror if isinstance(exc, OSError) else None
            log.warning("cannot write secret snapshot: %s", why or type(exc).__name__)

    async def _from_snapshot(self, path: str) -> Entry | None:
        store = self._snapshot_store()
        if store is None:
            return None
        if self._snapshot_entries is None:
            self._snapshot_entries = await asyncio.to_thread(store.load)
        raw = self._snapshot_entries.get(path)
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            return None
        entry = Entry.make(
            raw["data"], raw.get("version"), float(raw.get("fetched_at") or 0), clock=self.clock
        )
        if entry.age() > self.settings.max_staleness:
            return None
        self.cache.put(path, entry)  # later reads within max_staleness use memory
        return entry

    # --- access log (the guide's best practice 6): names, never values
    def _log_access(
        self,
        path: str,
        value: dict[str, Any] | None,
        cache: str,
        outcome: str,
        start: float,
        service: str | None = None,
    ) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        if cache == "hit" and outcome == "ok":  # counted, written once per interval
            self._access.hit(path, value or (), service)
            return
        fields: dict[str, Any] = {
            "log_type": "secret_read",
            "path": path,
            "keys": sorted(value) if value else [],
            "cache": cache,
            "outcome": outcome,
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
        }
        if service is not None:
            fields["service"] = service
        access_log.info("secret read %s %s %s", path, cache, outcome, extra=fields)
