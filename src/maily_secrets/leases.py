"""A lease container: keeps leased secrets (e.g. dynamic database users) alive and fresh.

In the spirit of Spring Vault's ``SecretLeaseContainer``::

    container = LeaseContainer(client)
    container.add_listener(on_event)            # sync or async, any number
    creds = await container.database_credentials("maily-app")
    pool = make_pool(creds.secret)
    ...
    async def on_event(event: LeaseEvent[Any]) -> None:
        if event.kind == "rotated":
            await pool.swap(event.secret)       # new user; the old one still works a while
    ...
    await container.close()                     # revokes every lease it holds

For each requested secret the container

* renews the lease (``PUT sys/leases/renew``) once ``renew_fraction`` (2/3) of
  its duration has passed, asking for the lease's original duration again;
* notices when a renewal can no longer extend the lease (the role's ``max_ttl``
  is reached: Vault grants less than asked, or nothing more) and then fetches
  NEW credentials before the old ones expire ("rotation").  The old lease is
  left to run out, so that a pool can drain its connections; ``close()``
  revokes it if it is still alive;
* when Vault cannot be reached, retries with jittered exponential backoff
  (capped at ``retry_max_delay``) while the lease lasts; once it expired it
  says so (``expired``) and keeps trying to get new credentials;
* tells listeners what happened, as :class:`LeaseEvent` with ``kind`` one of
  :data:`EVENTS`.

Listeners are called one after the other for each event, and each listener
sees the events in order.  Plain functions run on the container's own pool of
daemon threads (never the loop's default executor, never in the loop itself),
coroutine functions in the loop.  The lease's task waits for a listener at most
``listener_timeout`` seconds: an async one is then cancelled; a sync one (a
thread cannot be cancelled) is logged as still running and left to finish, its
later events queued behind it, and nobody else waits for it meanwhile.  So a
listener that hangs never stops renewals.  A listener that raises is logged,
without any secret value, and the others still run.  Nothing starts at
construction: the tasks start inside the running loop, on the first request.
The leases belong to the client's token: revoking that token revokes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, get_args

from .callbacks import CallbackExecutor, callback_name, is_async_callable, run_watched
from .clock import SYSTEM_CLOCK, Clock
from .errors import VaultError, VaultUnavailable
from .observe import NOOP, Observer
from .supervise import backoff_delay, supervised

if TYPE_CHECKING:
    from .vault.database import DatabaseCredentials
    from .vault.requester import Requester

log = logging.getLogger("maily_secrets.leases")

EventKind = Literal["created", "renewed", "expiring", "rotated", "expired", "revoked", "error"]
#: ``created``   first credentials of a request
#: ``renewed``   the lease was extended (``lease`` new, ``previous_lease`` old)
#: ``expiring``  the lease cannot be extended any more: new credentials are being fetched
#: ``rotated``   new credentials (``secret``) replace ``previous``; swap your pool now
#: ``expired``   the lease ran out before it could be renewed or replaced (Vault down?)
#: ``revoked``   the lease was revoked (``close()`` / ``release()``)
#: ``error``     a renewal, fetch or revocation failed (``error`` names it); retrying
EVENTS: tuple[EventKind, ...] = get_args(EventKind)


class LeasedSecret(Protocol):
    """What a fetcher returns: a secret that carries its lease."""

    @property
    def lease_id(self) -> str: ...

    @property
    def lease_duration(self) -> int: ...

    @property
    def renewable(self) -> bool: ...


T = TypeVar("T", bound=LeasedSecret)


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease's state as of its last creation or renewal."""

    lease_id: str
    duration: float  # seconds granted, counted from ``obtained``
    renewable: bool
    obtained: float  # clock.monotonic() when the request was sent (conservative)
    obtained_wall: float  # clock.time() at the same moment
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False, compare=False)

    @property
    def expires_at(self) -> float:
        """Monotonic time of expiry."""
        return self.obtained + self.duration

    @property
    def expire_time(self) -> datetime:
        """Wall-clock time of expiry (UTC)."""
        return datetime.fromtimestamp(self.obtained_wall, UTC) + timedelta(seconds=self.duration)

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (self.clock.monotonic() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0


@dataclass(frozen=True, slots=True)
class LeasedData:
    """A generic leased secret (any ``GET`` that returns a lease). ``repr`` shows keys only."""

    path: str
    data: Mapping[str, Any] = field(repr=False)
    lease_id: str
    lease_duration: int
    renewable: bool

    def __repr__(self) -> str:
        return (
            f"LeasedData(path={self.path!r}, keys={sorted(self.data)!r},"
            f" lease_id={self.lease_id!r}, lease_duration={self.lease_duration})"
        )

    @property
    def secret_values(self) -> tuple[str, ...]:
        return tuple(_strings(self.data))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


@dataclass(frozen=True, slots=True)
class LeaseEvent(Generic[T]):
    """What happened to the lease of request ``key``.

    ``secret`` is the current secret (for ``rotated``: the NEW one), ``previous``
    the one it replaced; ``lease`` / ``previous_lease`` likewise.  ``error`` is an
    error's class and message, never containing a secret value.
    """

    kind: EventKind
    key: str
    secret: T | None = field(repr=False)  # a user's secret type may print its values
    lease: Lease | None
    previous: T | None = field(default=None, repr=False)
    previous_lease: Lease | None = None
    error: str = ""


Listener = Callable[[LeaseEvent[Any]], Awaitable[None] | None]
Fetcher = Callable[[], Awaitable[T]]
LeaseState = Literal["active", "expired", "revoked"]


class ManagedLease(Generic[T]):
    """The handle of one request: always the current secret and lease."""

    def __init__(self, key: str, fetcher: Fetcher[T], secret: T, lease: Lease) -> None:
        self.key = key
        self.fetcher = fetcher
        self.secret: T = secret
        self.lease: Lease = lease
        self.state: LeaseState = "active"
        self.rotations = 0
        self.renewals = 0
        self.capped = False  # the last renewal hit the max TTL: rotate next
        self.rotate_now = False  # renewal refused, or the lease ran out: rotate at once
        # Replaced leases that may still be alive: revoked on close().
        self.retired: list[tuple[T, Lease]] = []
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"ManagedLease(key={self.key!r}, lease_id={self.lease.lease_id!r},"
            f" state={self.state!r}, remaining={self.lease.remaining():.1f}s,"
            f" rotations={self.rotations})"
        )


def _secret_values(*secrets: object) -> list[str]:
    out: list[str] = []
    for s in secrets:
        vals = getattr(s, "secret_values", ())
        out.extend(v for v in vals if isinstance(v, str) and v)
    return out


def scrub(text: str, secret_values: Iterable[str]) -> str:
    """``text`` with every secret value (raw or as ``repr`` would escape it) masked."""
    for v in secret_values:
        if not v:
            continue
        for form in {v, repr(v)[1:-1]}:
            text = text.replace(form, "******")
    return text


def _describe(exc: BaseException, secret_values: Iterable[str]) -> str:
    return scrub(f"{type(exc).__name__}: {exc}", secret_values)[:300]


def _transient(exc: BaseException) -> bool:
    """Vault down, sealed or overloaded (retry) as opposed to "this lease is gone"."""
    if isinstance(exc, VaultUnavailable):
        return True
    return isinstance(exc, VaultError) and (exc.status is None or exc.status >= 500)


class LeaseContainer:
    """Renews and rotates leased secrets; see the module documentation."""

    def __init__(
        self,
        client: Requester,
        *,
        renew_fraction: float | None = None,
        min_lead: float = 10.0,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 30.0,
        listener_timeout: float = 30.0,
        revoke_timeout: float = 10.0,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        """``renew_fraction`` (default: the client's, 2/3): act once this share of a
        lease's duration has passed.  ``min_lead``: when a capped renewal leaves the
        lease less than this many seconds after the next scheduled action, rotate at
        once instead.  ``clock``: what every delay and expiry is measured with
        (default: the system's; tests pass a ``ManualClock``).  ``observer``: told each
        lease's expiry (metrics; default: nobody)."""
        self.client = client
        self.observer: Observer = observer or NOOP
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.renew_fraction = (
            renew_fraction if renew_fraction is not None else client.settings.renew_fraction
        )
        if not 0 < self.renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        self.min_lead = min_lead
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.listener_timeout = listener_timeout
        self.revoke_timeout = revoke_timeout
        self._leases: dict[str, ManagedLease[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[_ListenerEntry] = []
        self._executor: CallbackExecutor | None = None
        self._calls: set[asyncio.Task[None]] = set()  # listener calls under way

    # ------------------------------------------------------------------ listeners
    def add_listener(
        self, listener: Listener, events: Iterable[EventKind] | None = None
    ) -> Callable[[], None]:
        """Call ``listener(event)`` (sync, or async: awaited) for ``events`` (default all).

        Returns a function that removes it again.
        """
        kinds = frozenset(events) if events is not None else None
        if kinds is not None and not kinds <= set(EVENTS):
            raise ValueError(f"unknown lease event(s): {sorted(kinds - set(EVENTS))}")
        entry = _ListenerEntry(listener, kinds)
        self._listeners.append(entry)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(entry)

        return remove

    async def _emit(self, event: LeaseEvent[Any]) -> None:
        secrets = _secret_values(event.secret, event.previous)
        lease = event.lease or event.previous_lease
        log.log(
            logging.WARNING if event.kind in ("error", "expired") else logging.INFO,
            "lease %s",
            event.kind,
            extra={
                "key": event.key,
                "lease_event": event.kind,
                "lease_id": lease.lease_id if lease else None,
                "lease_duration": lease.duration if lease else None,
                "error": event.error or None,
            },
        )
        if event.kind in ("created", "renewed", "rotated") and event.lease is not None:
            le = event.lease
            self.observer.lease_changed(event.key, le.obtained_wall + le.duration)
        for entry in list(self._listeners):
            if entry.kinds is not None and event.kind not in entry.kinds:
                continue
            await self._deliver(entry, event, secrets)

    async def _deliver(
        self, entry: _ListenerEntry, event: LeaseEvent[Any], secrets: list[str]
    ) -> None:
        """Start ``entry``'s call for ``event`` (after its previous one ended) and wait
        for it at most ``listener_timeout``; not at all while an earlier call overran."""
        loop = asyncio.get_running_loop()
        previous = entry.tail
        ended: asyncio.Future[None] = loop.create_future()
        released: asyncio.Future[None] = loop.create_future()
        entry.tail = ended
        task = loop.create_task(self._call(entry, event, secrets, previous, ended, released))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        if previous is not None and not previous.done():
            return  # still busy with an earlier event: this one waits behind it
        await asyncio.shield(released)

    async def _call(
        self,
        entry: _ListenerEntry,
        event: LeaseEvent[Any],
        secrets: list[str],
        previous: asyncio.Future[None] | None,
        ended: asyncio.Future[None],
        released: asyncio.Future[None],
    ) -> None:
        name = callback_name(entry.listener)

        def slow() -> None:
            log.warning(
                "lease listener %s still running after %ss (event %s); not waiting for it",
                name,
                self.listener_timeout,
                event.kind,
                extra={"key": event.key, "lease_event": event.kind, "listener": name},
            )
            _resolve(released)

        try:
            if previous is not None:
                await asyncio.shield(previous)
            if self._executor is None:
                self._executor = CallbackExecutor(max_workers=2, name="maily-lease-listener")
            await run_watched(
                entry.listener,
                event,
                executor=self._executor,
                clock=self.clock,
                watch=self.listener_timeout,
                on_slow=None if entry.is_async else slow,
                is_async=entry.is_async,
                cancel_after_watch=entry.is_async,
            )
        except Exception as exc:
            log.warning(
                "lease listener failed",
                extra={
                    "key": event.key,
                    "lease_event": event.kind,
                    "listener": name,
                    "error": _describe(exc, secrets),
                },
            )
        finally:
            _resolve(ended)
            _resolve(released)

    # ------------------------------------------------------------------ requests
    async def request(self, key: str, fetcher: Fetcher[T]) -> ManagedLease[T]:
        """The managed lease of ``key``; the first call fetches (errors propagate),
        emits ``created`` and starts keeping it alive.  Later calls return the same
        handle (``fetcher`` is then not used)."""
        existing = self._leases.get(key)
        if existing is not None:
            return existing
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            existing = self._leases.get(key)
            if existing is not None:
                return existing
            secret, lease = await self._fetch(fetcher)
            managed = ManagedLease(key, fetcher, secret, lease)
            self._leases[key] = managed
            await self._emit(LeaseEvent("created", key, secret, lease))
            if self._leases.get(key) is managed:  # not released/closed meanwhile
                managed.task = asyncio.get_running_loop().create_task(
                    supervised(
                        f"lease:{key}",
                        partial(self._run, managed),
                        clock=self.clock,
                        base=self.retry_base_delay,
                        cap=self.retry_max_delay,
                        logger=log,
                    ),
                    name=f"lease:{key}",
                )
            return managed

    async def database_credentials(
        self, role: str, *, mount: str = "database"
    ) -> ManagedLease[DatabaseCredentials]:
        """Dynamic credentials of ``role``, renewed and rotated (key ``<mount>/creds/<role>``)."""
        from .vault.database import Database

        db = Database(self.client, mount)
        return await self.request(f"{db.mount}/creds/{role}", lambda: db.credentials(role))

    async def request_path(self, path: str) -> ManagedLease[LeasedData]:
        """Any leased secret read with ``GET path`` (e.g. ``aws/creds/role``)."""

        async def fetch() -> LeasedData:
            r = await self.client.request("GET", path)
            body = r.body or {}
            if not body.get("lease_id"):
                raise VaultError(f"{path!r} returned no lease", path=path)
            return LeasedData(
                path=path,
                data=dict(r.data or {}),
                lease_id=str(body["lease_id"]),
                lease_duration=int(body.get("lease_duration") or 0),
                renewable=bool(body.get("renewable")),
            )

        return await self.request(path, fetch)

    def stopped(self) -> list[str]:
        """Keys whose keep-alive task ended: it never should while the lease is managed."""
        return sorted(k for k, m in self._leases.items() if m.task is not None and m.task.done())

    def get(self, key: str) -> ManagedLease[Any] | None:
        return self._leases.get(key)

    @property
    def leases(self) -> dict[str, ManagedLease[Any]]:
        return dict(self._leases)

    async def _fetch(self, fetcher: Fetcher[T]) -> tuple[T, Lease]:
        started, wall = self.clock.monotonic(), self.clock.time()
        secret = await fetcher()
        lease = Lease(
            lease_id=secret.lease_id,
            duration=float(secret.lease_duration),
            renewable=bool(secret.renewable),
            obtained=started,
            obtained_wall=wall,
            clock=self.clock,
        )
        return secret, lease

    # ------------------------------------------------------------------ the lease's task
    def _next_action(self, m: ManagedLease[Any]) -> tuple[Literal["renew", "rotate"], float]:
        lease = m.lease
        if m.rotate_now:
            return "rotate", self.clock.monotonic()
        at = lease.obtained + lease.duration * self.renew_fraction
        if not lease.renewable or lease.duration <= 0:
            return "rotate", at
        if m.capped:
            # The lease ends at expires_at whatever we do: replace it early enough
            # for a pool to switch; at once if the scheduled time leaves too little.
            if lease.expires_at - at < self.min_lead:
                at = max(lease.obtained, lease.expires_at - self.min_lead)
            return "rotate", at
        return "renew", at

    async def _run(self, m: ManagedLease[Any]) -> None:
        failures = 0
        while True:
            action, at = self._next_action(m)
            delay = at - self.clock.monotonic()
            if delay > 0:
                await self.clock.sleep(delay)
            try:
                if action == "renew":
                    await self._renew(m)
                else:
                    await self._rotate(m)
                failures = 0
            except Exception as exc:  # a bug must not end the renewals silently
                err = _describe(exc, _secret_values(m.secret))
                log.error("lease task error", extra={"key": m.key, "error": err})
                await self._emit(LeaseEvent("error", m.key, m.secret, m.lease, error=err))
                await self.clock.sleep(self._backoff(failures))
                failures += 1

    def _backoff(self, attempt: int) -> float:
        """Jittered ``base * 2**attempt`` capped at ``retry_max_delay``; never overflows."""
        return backoff_delay(attempt, self.retry_base_delay, self.retry_max_delay)

    async def _renew(self, m: ManagedLease[Any]) -> None:
        """Renew until it worked, the lease cannot be renewed (capped/refused: rotate
        next), or it expired while Vault was away."""
        attempt = 0
        while True:
            old = m.lease
            increment = max(1, round(m.secret.lease_duration or old.duration))
            started, wall = self.clock.monotonic(), self.clock.time()
            try:
                r = await self.client.request(
                    "PUT",
                    "sys/leases/renew",
                    json_body={"lease_id": old.lease_id, "increment": increment},
                    retries=1,
                    idempotent=True,  # renewing twice only extends the lease again
                )
            except VaultError as exc:
                err = _describe(exc, _secret_values(m.secret))
                await self._emit(LeaseEvent("error", m.key, m.secret, old, error=err))
                if not _transient(exc):
                    m.rotate_now = True  # refused (e.g. lease gone): replace it now
                    return
                if old.expired():
                    await self._mark_expired(m)
                    m.rotate_now = True
                    return
                # Back off, but try once more when the lease is about to run out.
                delay = min(self._backoff(attempt), max(0.0, old.remaining()) + 0.01)
                attempt += 1
                log.debug("lease renewal retry", extra={"key": m.key, "delay": round(delay, 3)})
                await self.clock.sleep(delay)
                continue
            body = r.body or {}
            granted = float(body.get("lease_duration") or 0)
            new = Lease(
                lease_id=str(body.get("lease_id") or old.lease_id),
                duration=granted,
                renewable=bool(body.get("renewable", old.renewable)),
                obtained=started,
                obtained_wall=wall,
                clock=self.clock,
            )
            extended = new.expires_at > old.expires_at + 0.5
            m.lease = new
            m.capped = granted < increment or not extended
            if extended:
                m.renewals += 1
                await self._emit(LeaseEvent("renewed", m.key, m.secret, new, previous_lease=old))
            if m.capped:
                log.info(
                    "lease reached its max TTL",
                    extra={"key": m.key, "lease_id": new.lease_id, "granted": granted},
                )
            return

    async def _rotate(self, m: ManagedLease[Any]) -> None:
        """Fetch new credentials (retrying while Vault is away) and swap them in."""
        old_secret, old_lease = m.secret, m.lease
        if m.state == "active":
            await self._emit(LeaseEvent("expiring", m.key, old_secret, old_lease))
        attempt = 0
        while True:
            try:
                secret, lease = await self._fetch(m.fetcher)
                break
            except VaultError as exc:
                err = _describe(exc, _secret_values(old_secret))
                await self._emit(LeaseEvent("error", m.key, old_secret, old_lease, error=err))
                if m.state == "active" and old_lease.expired():
                    await self._mark_expired(m)
                delay = self._backoff(attempt)
                if m.state == "active":
                    delay = min(delay, max(0.0, old_lease.remaining()) + 0.01)
                attempt += 1
                await self.clock.sleep(delay)
        if not old_lease.expired():
            m.retired.append((old_secret, old_lease))
        m.retired = [(s, le) for s, le in m.retired if not le.expired()]
        m.secret, m.lease, m.state = secret, lease, "active"
        m.capped = m.rotate_now = False
        m.rotations += 1
        await self._emit(
            LeaseEvent(
                "rotated",
                m.key,
                secret,
                lease,
                previous=old_secret,
                previous_lease=old_lease,
            )
        )

    async def _mark_expired(self, m: ManagedLease[Any]) -> None:
        if m.state != "expired":
            m.state = "expired"
            await self._emit(LeaseEvent("expired", m.key, m.secret, m.lease))

    # ------------------------------------------------------------------ revocation
    async def _revoke(self, key: str, secret: Any, lease: Lease) -> bool:
        try:
            await asyncio.wait_for(
                self.client.request(
                    "PUT",
                    "sys/leases/revoke",
                    json_body={"lease_id": lease.lease_id},
                    retries=1,
                    idempotent=True,
                ),
                self.revoke_timeout,
            )
        except (VaultError, TimeoutError) as exc:
            err = _describe(exc, _secret_values(secret))
            await self._emit(LeaseEvent("error", key, secret, lease, error=err))
            return False
        await self._emit(LeaseEvent("revoked", key, secret, lease))
        return True

    async def _stop(self, m: ManagedLease[Any]) -> None:
        task, m.task = m.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _revoke_all(self, m: ManagedLease[Any]) -> None:
        targets = [(s, le) for s, le in m.retired if not le.expired()]
        targets.append((m.secret, m.lease))
        m.retired = []
        results = await asyncio.gather(
            *(self._revoke(m.key, s, le) for s, le in targets), return_exceptions=True
        )
        if all(r is True for r in results):
            m.state = "revoked"

    async def release(self, key: str, *, revoke: bool = True) -> None:
        """Stop managing ``key``; revoke its lease(s) unless ``revoke=False``."""
        m = self._leases.pop(key, None)
        if m is None:
            return
        self.observer.lease_changed(key, None)
        await self._stop(m)
        if revoke:
            await self._revoke_all(m)

    async def close(self, *, revoke: bool = True) -> None:
        """Stop every renewal and revoke every lease still alive (bounded by
        ``revoke_timeout``).  The container may be used again afterwards."""
        managed = list(self._leases.values())
        self._leases.clear()
        for m in managed:
            self.observer.lease_changed(m.key, None)
            await self._stop(m)
        if revoke:
            await asyncio.gather(*(self._revoke_all(m) for m in managed))
        # Listener calls still under way are stuck (they overran listener_timeout):
        # stop waiting for them; a blocked thread is a daemon and does not delay exit.
        calls = list(self._calls)
        for t in calls:
            t.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        for entry in self._listeners:
            entry.tail = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown()

    async def __aenter__(self) -> LeaseContainer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _ListenerEntry:
    """One ``add_listener`` registration and the end of its latest call."""

    __slots__ = ("is_async", "kinds", "listener", "tail")

    def __init__(self, listener: Listener, kinds: frozenset[str] | None) -> None:
        self.listener = listener
        self.kinds = kinds
        self.is_async = is_async_callable(listener)
        self.tail: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        kinds = sorted(self.kinds) if self.kinds is not None else "all"
        return f"<lease listener {callback_name(self.listener)} events={kinds}>"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
