"""The change feed: one beacon secret instead of one poll per watched path.

Every write made through the library (``VaultService.put_secret``/``update_secret``,
the rotation engine's promote) also *bumps* the beacon, a KV v2 secret
(``<mount>/data/_changes`` by default, ``MAILY_SECRETS_CHANGE_FEED``) whose data maps
each API path to the newest version written through us::

    {"maily/data/config": 14, "maily/data/api-keys": 3}

Listeners of a process then poll only the beacon's metadata each interval and read a
path only when its entry moved (``listeners.py``); a slow per-path poll
(``MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL``) still catches writes made around us.

- :func:`bump` writes the beacon with check-and-set, retried on conflict with a
  jittered, growing delay (two writers at once lose no entry); it never raises: a bump
  that cannot be made is a warning naming the paths (never a value) and the slow
  per-path poll catches up.
- Optional push (``MAILY_SECRETS_CHANGE_PUSH=redis``): :class:`Publisher` publishes
  ``{"path": ..., "version": n}`` on the Redis channel :data:`CHANNEL`;
  :class:`Subscriber` listens and reconnects with backoff; while Redis is unreachable
  the beacon is what listeners go by. Redis's address and login come from the secret
  ``MAILY_SECRETS_CHANGE_PUSH_SECRET`` (``redis_host``, ``redis_port``,
  ``redis_username``, ``redis_password``), read again when a login is refused (the
  password rotates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .clock import SYSTEM_CLOCK, Clock
from .errors import CheckAndSetConflict, VaultError
from .paths import KV2Path
from .supervise import backoff_delay

if TYPE_CHECKING:
    from .settings import VaultSettings
    from .vault.client import VaultClient

log = logging.getLogger("maily_secrets.changes")

#: the Redis Pub/Sub channel of the push
CHANNEL = "maily:secrets:changes"
#: the beacon's name under the mount when MAILY_SECRETS_CHANGE_FEED is unset
BEACON_NAME = "_changes"
BUMP_ATTEMPTS = 8
BUMP_BASE_DELAY = 0.01
BUMP_MAX_DELAY = 0.5

#: reads the push's credentials secret: ``fresh=True`` bypasses any cache
CredentialsReader = Callable[[bool], Awaitable[Mapping[str, Any]]]


def beacon_of(settings: VaultSettings) -> KV2Path | None:
    """The beacon of ``settings`` (None: the feed is off)."""
    path = settings.change_feed_path
    return KV2Path.parse(path) if path is not None else None


def entries(data: Mapping[str, Any] | None) -> dict[str, int]:
    """The beacon's ``{path: version}`` (anything that is not a positive int is ignored)."""
    out: dict[str, int] = {}
    for k, v in (data or {}).items():
        if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0:
            out[k] = v
    return out


async def bump(
    client: VaultClient,
    beacon: KV2Path,
    changes: Mapping[str, int],
    *,
    attempts: int = BUMP_ATTEMPTS,
    clock: Clock | None = None,
) -> bool:
    """Record ``changes`` ({path: version}) in the beacon; True when it holds them.

    Read-modify-write with check-and-set: an entry only moves forward (a slower writer
    never puts an older version back), a conflict is retried after a jittered delay,
    at most ``attempts`` times. Never raises a :class:`VaultError`: a failed bump is
    logged (paths and error type only) and False returned.
    """
    clock = clock or client.clock or SYSTEM_CLOCK
    paths = sorted(changes)
    for attempt in range(max(1, attempts)):
        try:
            data, version = await client.kv.read_with_version(beacon)
            have = entries(data)
            todo = {p: v for p, v in changes.items() if have.get(p, 0) < v}
            if not todo:
                return True
            await client.kv.write(beacon, {**(data or {}), **todo}, cas=version)
            return True
        except CheckAndSetConflict:
            await clock.sleep(backoff_delay(attempt, BUMP_BASE_DELAY, BUMP_MAX_DELAY, jitter=1.0))
            continue
        except VaultError as exc:
            _warn_bump(beacon, paths, type(exc).__name__)
            return False
    _warn_bump(beacon, paths, f"{attempts} check-and-set conflicts")
    return False


def _warn_bump(beacon: KV2Path, paths: list[str], why: str) -> None:
    log.warning(
        "change feed: could not record the change of %s in %s (%s); listeners elsewhere"
        " see it at their next full poll",
        ", ".join(paths),
        beacon.data,
        why,
        extra={"paths": paths, "beacon": beacon.data, "error": why},
    )


# ---------------------------------------------------------------------------- push
@dataclass(frozen=True)
class RedisTarget:
    """Where the push connects, and as whom (the password never printed)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_secret(cls, data: Mapping[str, Any], where: str) -> RedisTarget:
        host = data.get("redis_host")
        if not isinstance(host, str) or not host:
            raise ValueError(f"{where} has no redis_host")
        try:
            port = int(data.get("redis_port") or 6379)
        except (TypeError, ValueError):
            raise ValueError(f"redis_port of {where} is not a port number") from None
        user = data.get("redis_username")
        password = data.get("redis_password")
        return cls(
            host,
            port,
            str(user) if user else None,
            str(password) if password not in (None, "") else None,
        )


def _auth_refused(exc: BaseException) -> bool:
    try:
        from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
    except ImportError:  # the redis extra is not installed: nothing to log in to
        return False

    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return True
    text = str(exc)
    return isinstance(exc, ResponseError) and any(
        w in text for w in ("WRONGPASS", "NOAUTH", "NOPERM", "invalid username-password")
    )


def _connect(target: RedisTarget, name: str, *, timeout: float) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis(
        host=target.host,
        port=target.port,
        username=target.username,
        password=target.password,
        socket_connect_timeout=timeout,
        client_name=name,
        retry=Retry(NoBackoff(), 0),
    )


def _why(exc: BaseException, target: RedisTarget | None) -> str:
    """An error's type (and the address), never its text: it may quote a password."""
    where = f" at {target.host}:{target.port}" if target is not None else ""
    return f"{type(exc).__name__}{where}"


def vault_reader(client: VaultClient, path: str) -> CredentialsReader:
    """Reads the credentials secret ``path`` straight from Vault (no cache)."""
    kv = KV2Path.parse(path)

    async def read(fresh: bool) -> Mapping[str, Any]:
        if kv is None:
            raise ValueError(f"{path} is not a KV v2 path")
        return (await client.kv.read(kv)).data

    return read


class Publisher:
    """Publishes each change on :data:`CHANNEL`; a failure is a warning, never raised.

    One connection, made at the first publish; a refused login reads the credentials
    again (fresh) and tries once more.
    """

    def __init__(
        self,
        read: CredentialsReader,
        where: str,
        *,
        channel: str = CHANNEL,
        timeout: float = 1.0,
        name: str = "maily-secrets-push",
    ) -> None:
        self._read = read
        self.where = where
        self.channel = channel
        self.timeout = timeout
        self.name = name
        self._conn: Any = None
        self._target: RedisTarget | None = None
        self._lock: asyncio.Lock | None = None
        self.published = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Publisher {self.channel} published={self.published} failures={self.failures}>"

    async def publish(self, path: str, version: int) -> bool:
        message = json.dumps({"path": path, "version": int(version)})
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            for fresh in (False, True):
                try:
                    if self._conn is None or fresh:
                        await self._reset()
                        self._target = RedisTarget.from_secret(await self._read(fresh), self.where)
                        self._conn = _connect(self._target, self.name, timeout=self.timeout)
                    await asyncio.wait_for(
                        self._conn.publish(self.channel, message), self.timeout * 2
                    )
                    self.published += 1
                    return True
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not fresh and _auth_refused(exc):
                        continue  # the password rotated: read it again
                    await self._reset()
                    self.failures += 1
                    log.warning(
                        "change push: could not publish the change of %s (%s); listeners"
                        " see it through the beacon",
                        path,
                        _why(exc, self._target),
                        extra={"path": path, "error": type(exc).__name__},
                    )
                    return False
        return False

    async def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def close(self) -> None:
        await self._reset()


class Subscriber:
    """Listens on :data:`CHANNEL` and hands each ``(path, version)`` to ``on_change``.

    :meth:`run` runs until cancelled: it connects, subscribes, and on any failure waits
    a capped, growing delay (on ``clock``) and connects again; a refused login reads the
    credentials again (fresh). ``connected`` says whether it listens right now.
    """

    def __init__(
        self,
        read: CredentialsReader,
        where: str,
        on_change: Callable[[str, int], None] | None = None,
        *,
        clock: Clock | None = None,
        channel: str = CHANNEL,
        timeout: float = 2.0,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        health_interval: float = 30.0,
        name: str = "maily-secrets-listen",
    ) -> None:
        self._read = read
        self.where = where
        self.on_change = on_change
        self.clock = clock or SYSTEM_CLOCK
        self.channel = channel
        self.timeout = timeout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.health_interval = health_interval
        self.name = name
        self.connected = False
        self.subscribed: asyncio.Event | None = None
        self.messages = 0
        self.failures = 0
        self.connects = 0

    def __repr__(self) -> str:
        return (
            f"<Subscriber {self.channel} connected={self.connected} messages={self.messages}"
            f" failures={self.failures}>"
        )

    async def run(self) -> None:
        fresh = False
        if self.subscribed is None:
            self.subscribed = asyncio.Event()
        while True:
            target: RedisTarget | None = None
            conn: Any = None
            try:
                target = RedisTarget.from_secret(await self._read(fresh), self.where)
                conn = _connect(target, self.name, timeout=self.timeout)
                pubsub = conn.pubsub()
                await asyncio.wait_for(pubsub.subscribe(self.channel), self.timeout * 2)
                self.connected, fresh = True, False
                self.connects += 1
                if self.failures:
                    log.info(
                        "change push: listening on %s again after %d failures",
                        self.channel,
                        self.failures,
                    )
                self.failures = 0
                self.subscribed.set()
                while True:
                    msg = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.health_interval
                    )
                    if msg is None:
                        await asyncio.wait_for(pubsub.ping(), self.timeout * 2)
                        continue
                    self._handle(msg.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _auth_refused(exc):
                    fresh = True
                self.failures += 1
                if self.failures == 1:
                    log.warning(
                        "change push: cannot listen on %s (%s); the beacon is polled meanwhile",
                        self.channel,
                        _why(exc, target),
                        extra={"channel": self.channel, "error": type(exc).__name__},
                    )
            finally:
                self.connected = False
                self.subscribed.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.aclose(), self.timeout)
            await self.clock.sleep(
                backoff_delay(self.failures - 1, self.base_delay, self.max_delay, jitter=0.5)
            )

    def _handle(self, raw: Any) -> None:
        try:
            doc = json.loads(raw)
            path, version = doc["path"], doc["version"]
        except (ValueError, TypeError, KeyError):
            return  # not ours: ignored
        if not isinstance(path, str) or not isinstance(version, int) or isinstance(version, bool):
            return
        self.messages += 1
        if self.on_change is not None:
            self.on_change(path, version)


# ---------------------------------------------------------------------------- writers
async def announce(
    client: VaultClient,
    path: str,
    version: int,
    *,
    settings: VaultSettings | None = None,
    publisher: Publisher | None = None,
) -> None:
    """After a write of ``path`` (now at ``version``): bump the beacon and, with the push
    on, publish. Never raises (each failure is a warning)."""
    s = settings or client.settings
    beacon = beacon_of(s)
    if beacon is not None and path != beacon.data:
        await bump(client, beacon, {path: version})
    push_path = s.change_push_path
    if push_path is None:
        return
    if publisher is not None:
        await publisher.publish(path, version)
        return
    once = Publisher(vault_reader(client, push_path), push_path)
    try:
        await once.publish(path, version)
    finally:
        await once.close()


__all__ = [
    "BEACON_NAME",
    "CHANNEL",
    "Publisher",
    "RedisTarget",
    "Subscriber",
    "announce",
    "beacon_of",
    "bump",
    "entries",
    "vault_reader",
]
