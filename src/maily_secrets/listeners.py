"""Secret listeners: one watcher per path, any number of callbacks.

OpenBao has no event stream (``sys/events/subscribe`` is 404), so a watcher polls
the secret's KV v2 metadata (``<mount>/metadata/<name>``, ~0.5 ms) every
``interval`` seconds (+-10% jitter) and reads the data only when
``current_version`` moved. The service's cache is updated first, then every
callback gets its own copy of the new value.

Callbacks may be plain functions or coroutine functions:

- each callback has its own worker, so a slow or failing callback delays
  nobody else; values reach one callback in order, one at a time, and when it
  falls behind it gets the newest value (intermediate versions are skipped);
- plain functions run on the registry's own pool of daemon threads
  (:class:`~maily_secrets.callbacks.CallbackExecutor`, not ``asyncio.to_thread``):
  a blocking callback stalls neither the event loop, nor the other callbacks
  (a call running longer than its ``timeout``, or 5 s, stops counting against the
  pool's bound), nor process exit after ``close()``; coroutine functions run in
  the loop;
- with ``timeout=`` a callback that runs longer is logged (a warning naming the
  path and the callback, never the value); it is not interrupted;
- an exception is logged with the path and the callback's name, never the value.

The watcher's loop runs under :func:`~maily_secrets.supervise.supervised`: a bug
is logged and the loop restarted; an outage of any length only backs the polling
off (capped at ``MAX_BACKOFF_FACTOR`` intervals, :func:`backoff_delay`). It never
puts a version into the cache that is older than the cached one, and notifies
each version at most once (a write made through the service notified it already).

Paths that are not KV v2 (no metadata) are watched by reading the data and
comparing it with the last value.

Registering reads the path's current version (the baseline: what exists at
registration is no change) under no lock: registrations of other paths, unregistering
and polling go on meanwhile, and concurrent registrations of one path share one read.
Polls of all paths share a few slots (``max_polls``); while baselines are being read,
one slot at a quarter duty cycle, so that registering 1,000 paths at a 1 s interval
does not queue each baseline behind the polls of the paths registered just before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .callbacks import STUCK_AFTER, CallbackExecutor, callback_name, is_async_callable, run_watched
from .changes import entries
from .clock import SYSTEM_CLOCK, Clock
from .errors import PermissionDenied, SecretNotFound, VaultError
from .observe import NOOP, Observer
from .paths import KV2Path
from .supervise import backoff_delay, supervised

if TYPE_CHECKING:
    from .cache import Entry
    from .changes import Subscriber
    from .source import SecretSource

log = logging.getLogger("maily_secrets.listeners")

SecretCallback = Callable[[dict[str, Any]], Awaitable[Any] | Any]
JITTER = 0.10
MAX_BACKOFF_FACTOR = 8
POLL_REST = 3  # while registering: polling's one slot rests 3x each poll's time
FULL_POLL_INTERVAL = 300.0  # with the change feed: seconds between a path's own polls


_name = callback_name


class _Runner:
    """Delivers values to one callback: in order, one at a time, newest wins."""

    def __init__(
        self,
        path: str,
        callback: SecretCallback,
        *,
        executor: CallbackExecutor | None = None,
        clock: Clock | None = None,
        timeout: float | None = None,
        observer: Observer = NOOP,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        self.path = path
        self.callback = callback
        self.timeout = timeout
        self._executor = executor or CallbackExecutor(max_workers=1, name="maily-listener")
        self._clock = clock or SYSTEM_CLOCK
        self._async = is_async_callable(callback)
        self._pending: tuple[int, dict[str, Any], float | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._observer = observer
        self.calls = 0
        self.failures = 0
        self.slow = 0  # calls that ran longer than ``timeout``

    def __repr__(self) -> str:  # never the pending value
        pending = self._pending[0] if self._pending is not None else None
        return (
            f"<_Runner {self.path!r} {_name(self.callback)} pending_version={pending}"
            f" calls={self.calls} failures={self.failures}>"
        )

    def _slow(self, version: int) -> None:
        self.slow += 1
        log.warning(
            "secret listener %s for %s still running after %ss (version %s)",
            _name(self.callback),
            self.path,
            self.timeout,
            version,
            extra={
                "path": self.path,
                "callback": _name(self.callback),
                "version": version,
                "timeout_s": self.timeout,
            },
        )

    def deliver(self, version: int, value: dict[str, Any], created: float | None = None) -> None:
        """``created``: the version's creation (wall time) in Vault, for the lag metric."""
        self._pending = (version, value, created)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while self._pending is not None:
            version, value, created = self._pending
            self._pending = None
            try:
                await run_watched(
                    self.callback,
                    value,
                    executor=self._executor,
                    clock=self._clock,
                    watch=self.timeout if self.timeout is not None else STUCK_AFTER,
                    on_slow=partial(self._slow, version) if self.timeout is not None else None,
                    is_async=self._async,
                )
                del value
                self.calls += 1
                # Vault's created_time and our time.time() are both real wall clocks.
                lag = None if created is None else time.time() - created
                self._observer.change_delivered(self.path, lag)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                log.error(
                    "secret listener %s for %s failed on version %s: %s",
                    _name(self.callback),
                    self.path,
                    version,
                    type(exc).__name__,
                    extra={
                        "path": self.path,
                        "callback": _name(self.callback),
                        "version": version,
                        "error": type(exc).__name__,
                    },
                )

    async def idle(self) -> None:
        """Wait until the callback has processed everything delivered so far."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        task, self._task = self._task, None
        self._pending = None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass
class Subscription:
    """What ``register_secret_listener`` returns: ``await sub.cancel()`` unregisters."""

    path: str
    callback: SecretCallback
    _watcher: _Watcher = field(repr=False)
    _runner: _Runner = field(repr=False)

    async def cancel(self) -> None:
        await self._watcher.remove(self._runner)


class _Watcher:
    def __init__(
        self, source: SecretSource, registry: ListenerRegistry, path: str, interval: float
    ) -> None:
        self.source = source
        self.registry = registry
        self.clock = source.clock
        self.path = path
        self.kv = KV2Path.parse(path)
        self.interval = interval
        self.version: int | None = None  # last version seen and notified
        self._digest: str | None = None  # for non-KV v2 paths
        self.runners: list[_Runner] = []
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self.polls = 0  # polls of the path's own metadata (each interval, or each full poll)
        self.reads = 0  # reads because the change feed (beacon or push) said it moved
        self.changes = 0
        self.crashes = 0  # unexpected errors: logged, the loop restarted
        self.wanted = 0  # the newest version the change feed announced
        self._signalled = False  # the feed asked for a read (or a poll) before the next wait
        self._poll_now = False
        self._sleeper: asyncio.Task[None] | None = None
        self._full_polls = 0  # full polls made (the first one is spread out)

    def __repr__(self) -> str:
        return (
            f"<_Watcher {self.path!r} version={self.version} callbacks={len(self.runners)}"
            f" polls={self.polls} failures={self._failures}>"
        )

    # --- lifecycle
    async def take_baseline(self) -> None:
        """Take the current version as the baseline (no callback for what exists now).

        The one network wait of a registration: the registry runs it under no lock."""
        try:
            await self._baseline()
        except PermissionDenied:
            raise
        except SecretNotFound:
            self.version = 0
        except VaultError as exc:
            # Vault down at registration: start from what the cache knows, if anything.
            cached = self.source.cache.peek(self.path)
            self.version = cached.version if cached and cached.version is not None else None
            log.warning(
                "listener for %s registered while Vault is unavailable (%s); polling",
                self.path,
                type(exc).__name__,
                extra={"path": self.path},
            )

    def run(self) -> None:
        """Start polling (no I/O): the first poll is one interval after the baseline."""
        self._task = asyncio.get_running_loop().create_task(
            supervised(
                f"listener:{self.path}",
                self._loop,
                clock=self.clock,
                base=self.interval,
                cap=self.interval * MAX_BACKOFF_FACTOR,
                logger=log,
                on_crash=self._crashed,
            ),
            name=f"listener:{self.path}",
        )

    def _crashed(self, exc: BaseException) -> None:
        self.crashes += 1

    async def _baseline(self) -> None:
        if self.kv is not None:
            self.version = await self.source.current_version(self.kv)
        else:
            self._digest = _digest(await self.source.read_data(self.path))
            self.version = 0

    async def remove(self, runner: _Runner) -> None:
        if runner in self.runners:
            self.runners.remove(runner)
            await runner.close()
        if not self.runners:
            await self.registry.drop(self)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for r in self.runners:
            await r.close()

    # --- polling
    def _delay(self) -> float:
        """The interval, doubled per failed poll up to ``MAX_BACKOFF_FACTOR`` times, +-10%.

        With the change feed on, the path's own polls are the slow full polls
        (``full_interval``); the first one is spread over half to all of it, so that
        paths registered together do not all poll together."""
        base = self.interval
        first_spread = 1.0
        if not self.registry.per_path(self):
            base = self.registry.full_interval
            if self._full_polls == 0 and self._failures == 0:
                first_spread = random.uniform(0.5, 1.0)  # noqa: S311 - jitter
        d = backoff_delay(self._failures, base, base * MAX_BACKOFF_FACTOR, jitter=0)
        return d * first_spread * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - jitter

    # --- the change feed's signals
    def signal(self, version: int) -> None:
        """The beacon (or the push) says ``version`` of this path exists: read it now,
        unless this watcher knows that version already. No I/O here."""
        if self.kv is None or (self.version is not None and version <= self.version):
            return
        self.wanted = max(self.wanted, version)
        self._wake()

    def poll_now(self) -> None:
        """Poll the path's metadata now (the beacon became unreadable)."""
        self._poll_now = True
        self._wake()

    def _wake(self) -> None:
        self._signalled = True
        sleeper, self._sleeper = self._sleeper, None  # no longer asleep, from now on
        if sleeper is not None and not sleeper.done():
            sleeper.cancel()

    async def _wait(self, delay: float) -> bool:
        """Sleep ``delay`` on the clock, or less when signalled; True when signalled."""
        if not self._signalled:
            if self.registry.signalling:
                await _interruptible(self, delay)
            else:  # nothing can signal: a plain sleep, as without the feed
                await self.clock.sleep(delay)
        signalled, self._signalled = self._signalled, False
        return signalled

    async def _loop(self) -> None:
        """Poll forever; Vault errors back off. Anything else propagates to
        ``supervised``, which logs it and runs this again."""
        while True:
            signalled = await self._wait(self._delay())
            try:
                async with self.registry.poll_slot():
                    if signalled:
                        await self.read_signalled()
                    else:
                        await self.poll_once()
            except VaultError as exc:
                self._failures += 1
                if self._failures == 1:
                    log.warning(
                        "listener for %s cannot poll Vault (%s); backing off",
                        self.path,
                        type(exc).__name__,
                        extra={"path": self.path, "error": type(exc).__name__},
                    )
                continue
            self.registry.observer.watcher_polled(self.path, self.clock.time())
            if self._failures:
                log.info(
                    "listener for %s: Vault reachable again after %d failed polls",
                    self.path,
                    self._failures,
                    extra={"path": self.path, "failures": self._failures},
                )
            self._failures = 0

    async def poll_once(self) -> None:
        self.polls += 1
        if not self.registry.per_path(self):
            self._full_polls += 1
        if self.kv is None:
            await self._poll_generic()
            return
        current = await self.source.current_version(self.kv)
        if self.version is None:
            self.version = current  # baseline after an outage at registration
            return
        if current <= self.version:
            return
        await self._take(current)

    async def read_signalled(self) -> None:
        """What a signal asks for: the data when the announced version is newer than the
        one this watcher knows (one read, no metadata request), else nothing."""
        wanted, self.wanted = self.wanted, 0
        poll, self._poll_now = self._poll_now, False
        if poll or self.kv is None or self.version is None:
            await self.poll_once()
            return
        if wanted <= self.version:
            return  # a local write (or a poll) got there first
        self.reads += 1
        await self._take(wanted)

    async def _take(self, current: int) -> None:
        """Read the data (``current``: the version known to exist) and hand it out."""
        try:
            entry = await self.source.read_entry(self.path)
        except SecretNotFound:  # the newest version was deleted: nothing to hand out
            self.version = current
            return
        cached = self.source.cache.peek(self.path)
        if (
            cached is not None
            and cached.version is not None
            and entry.version is not None
            and entry.version < cached.version
        ):
            # A write (or read) that finished while this read was in flight put a
            # newer version there: ours is outdated. The next poll catches up.
            return
        self.source.cache.put(self.path, entry)
        self.notify(entry)

    async def _poll_generic(self) -> None:
        entry = await self.source.read_entry(self.path)
        digest = _digest(entry.value)
        if digest == self._digest:
            return
        first = self._digest is None
        self._digest = digest
        self.source.cache.put(self.path, entry)
        if not first:
            self.version = (self.version or 0) + 1
            entry.version = self.version
            self.notify(entry, force=True)

    def notify(self, entry: Entry, *, force: bool = False) -> None:
        """Hand a new version to every callback (once per version)."""
        if not force:
            if entry.version is None or (
                self.version is not None and entry.version <= self.version
            ):
                return
            self.version = entry.version
        self.changes += 1
        for r in self.runners:
            r.deliver(self.version or 0, entry.copy_out(), entry.created)


def _digest(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class _Sleeps(Protocol):
    clock: Clock
    _sleeper: asyncio.Task[None] | None


async def _interruptible(holder: _Sleeps, delay: float) -> bool:
    """Sleep ``delay`` on ``holder.clock``; ``holder._sleeper.cancel()`` ends it early.
    True when the whole delay passed. A cancellation of the caller itself propagates."""
    sleeper = holder._sleeper = asyncio.get_running_loop().create_task(holder.clock.sleep(delay))
    try:
        await sleeper
        return True
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being stopped, not woken
        return False
    finally:
        holder._sleeper = None
        if not sleeper.done():
            sleeper.cancel()


class _Feed:
    """The change feed of one registry: ONE poll of the beacon per interval.

    Each interval (the shortest of the watched paths'; the first wait +-10%, then one
    interval start to start) it reads the beacon's metadata; only when ``current_version``
    moved it reads the beacon's data, and each entry that moved past its watcher's version
    signals that watcher (which reads that path once). A missing beacon is version 0
    (nothing written through us yet); one the token may not read (403) is logged once and
    every watcher polls its own path each interval until the beacon is readable again (tried
    each full interval).
    """

    def __init__(self, registry: ListenerRegistry, beacon: KV2Path) -> None:
        self.registry = registry
        self.source = registry.source
        self.clock = registry.source.clock
        self.beacon = beacon
        self.version: int | None = None  # the beacon's version last read (None: never)
        self.entries: dict[str, int] = {}
        self.denied = False
        self.polls = 0  # metadata reads of the beacon
        self.reads = 0  # data reads of the beacon
        self.crashes = 0
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._sleeper: asyncio.Task[None] | None = None
        self._last: float | None = None  # when the last poll was due (monotonic)

    def __repr__(self) -> str:
        return (
            f"<_Feed {self.beacon.data!r} version={self.version} entries={len(self.entries)}"
            f" polls={self.polls} denied={self.denied} failures={self._failures}>"
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def interval(self) -> float:
        ivs = [w.interval for w in self.registry.watchers.values() if self.registry.on_feed(w)]
        return min(ivs, default=self.registry.interval)

    def _base(self) -> float:
        if self.denied:
            return self.registry.full_interval
        iv = self.interval()
        return backoff_delay(self._failures, iv, iv * MAX_BACKOFF_FACTOR, jitter=0)

    def start(self) -> None:
        if self.running:
            return
        self.version = None  # a restarted feed reads the beacon's data again
        self._last = None
        self._task = asyncio.get_running_loop().create_task(
            supervised(
                f"change feed:{self.beacon.data}",
                self._loop,
                clock=self.clock,
                base=self.registry.interval,
                cap=self.registry.interval * MAX_BACKOFF_FACTOR,
                logger=log,
                on_crash=self._crashed,
            ),
            name=f"change-feed:{self.beacon.data}",
        )

    def _crashed(self, exc: BaseException) -> None:
        self.crashes += 1

    def replan(self) -> None:
        """A path with a shorter interval was registered: shorten the current wait."""
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None and not sleeper.done():
            sleeper.cancel()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sleep(self) -> float:
        """Wait for the next poll; return when it was due.

        The first wait is the interval +-10% (processes started together spread out);
        after it, polls are one interval apart, start to start, with no jitter: jitter
        would either add polls (goal: one request per interval) or stretch some gaps
        past the interval (goal: a change seen within one interval)."""
        started = self.clock.monotonic()
        last = self._last
        jitter = random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - jitter
        while True:
            due = started + self._base() * jitter if last is None else last + self._base()
            remaining = due - self.clock.monotonic()
            if remaining <= 0 or await _interruptible(self, remaining):
                return due

    async def _loop(self) -> None:
        while True:
            due = await self._sleep()
            now = self.clock.monotonic()
            # the next poll is due one interval after this one was; after a long stall
            # (a suspended process, a slow poll) count from now instead of catching up
            self._last = due if now - due < self._base() else now
            try:
                await self.poll_once()
            except PermissionDenied:
                self._failures = 0
                if not self.denied:
                    self.denied = True
                    log.warning(
                        "change feed: this token may not read the beacon %s; polling each"
                        " watched path every interval instead (grant read on %s and %s)",
                        self.beacon.data,
                        self.beacon.data,
                        self.beacon.metadata,
                        extra={"beacon": self.beacon.data},
                    )
                    for w in list(self.registry.watchers.values()):
                        if self.registry.on_feed(w):
                            w.poll_now()
                continue
            except VaultError as exc:
                self._failures += 1
                if self._failures == 1:
                    log.warning(
                        "change feed: cannot poll the beacon %s (%s); backing off",
                        self.beacon.data,
                        type(exc).__name__,
                        extra={"beacon": self.beacon.data, "error": type(exc).__name__},
                    )
                continue
            if self._failures:
                log.info(
                    "change feed: beacon %s reachable again after %d failed polls",
                    self.beacon.data,
                    self._failures,
                )
            self._failures = 0
            # every path on the feed is as current as this poll: the watcher metric says so
            now = self.clock.time()
            observer = self.registry.observer
            for w in list(self.registry.watchers.values()):
                if self.registry.on_feed(w):
                    observer.watcher_polled(w.path, now)

    async def poll_once(self) -> None:
        """One metadata read; the data only when the beacon's version moved."""
        self.polls += 1
        current = await self.source.current_version(self.beacon)
        if self.denied:
            self.denied = False
            log.info("change feed: the beacon %s is readable again", self.beacon.data)
        if current == self.version:
            return
        if current == 0:  # no beacon (yet): nothing was written through us
            self.version = 0
            return
        self.reads += 1
        try:
            raw = await self.source.read_data(self.beacon.data)
        except SecretNotFound:  # its newest version deleted: nothing to go by
            self.version = current
            return
        doc = raw.get("data") if isinstance(raw, dict) else None
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        version = meta.get("version") if isinstance(meta, dict) else None
        self.version = version if isinstance(version, int) else current
        new = entries(doc if isinstance(doc, dict) else None)
        old, self.entries = self.entries, new
        for path, v in new.items():
            if old.get(path) != v:
                self.registry.signal(path, v)


class ListenerRegistry:
    """All watchers of one source: one per path; one thread pool for their callbacks.

    ``interval``: the seconds between polls of a path registered without its own.

    Registering holds no lock across the network. A new path is claimed in one step
    that does not wait (a future in ``_starting``, so a concurrent registration of the
    same path waits for that one read instead of reading again), its baseline is read
    outside any lock (at most ``max_reads`` such reads at once), and the watcher is
    published in a second step that does not wait either. Polls of all paths share
    ``max_polls`` slots, so a thousand watchers coming due together queue here, in
    front of the HTTP pool, instead of in it, ahead of every registration and every
    read of the application.
    """

    def __init__(
        self,
        source: SecretSource,
        *,
        interval: float,
        max_workers: int = 4,
        max_reads: int = 16,
        max_polls: int = 8,
        observer: Observer = NOOP,
        beacon: KV2Path | None = None,
        full_interval: float | None = None,
        push: Callable[[Callable[[str, int], None]], Subscriber] | None = None,
        local: Callable[[str], bool] | None = None,
    ) -> None:
        """``beacon``: the change feed's beacon (None: every path polled each interval);
        ``full_interval``: seconds between a path's own polls while the feed is on;
        ``push``: makes the push :class:`~maily_secrets.changes.Subscriber` given the
        function it calls with each (path, version); ``local(path)``: True for a path not
        served by Vault (a file), polled each interval as before."""
        if max_reads < 1 or max_polls < 1:
            raise ValueError("max_reads and max_polls must be at least 1")
        self.source = source
        self.interval = interval
        self.observer = observer
        self.full_interval = full_interval if full_interval is not None else FULL_POLL_INTERVAL
        self.feed = _Feed(self, beacon) if beacon is not None else None
        self._push_factory = push
        self.push: Subscriber | None = None
        self._push_task: asyncio.Task[None] | None = None
        self._local = local
        self.watchers: dict[str, _Watcher] = {}
        # path -> the registration reading its baseline; None: it gave up, claim again
        self._starting: dict[str, asyncio.Future[_Watcher | None]] = {}
        self.max_reads = max_reads
        self.max_polls = max_polls
        # (an asyncio primitive binds to a loop at its first wait, not here)
        self._reads = asyncio.Semaphore(max_reads)
        self._polls = asyncio.Semaphore(max_polls)
        self._polls_registering = asyncio.Semaphore(1)
        self._registering = 0  # baselines being read (or waiting to be)
        self._closed = False
        self.executor = CallbackExecutor(max_workers=max_workers, name="maily-listener")

    def __repr__(self) -> str:
        return (
            f"<ListenerRegistry paths={sorted(self.watchers)!r} feed={self.feed!r}"
            f" push={self.push!r} {self.executor!r}>"
        )

    # --- the change feed
    @property
    def signalling(self) -> bool:
        """Whether anything (the beacon, the push) may wake a watcher early."""
        return self.feed is not None or self._push_factory is not None

    def on_feed(self, w: _Watcher) -> bool:
        """Whether the beacon covers ``w``'s path (KV v2, served by Vault)."""
        return w.kv is not None and not (self._local is not None and self._local(w.path))

    def per_path(self, w: _Watcher) -> bool:
        """Whether ``w`` polls its own path each interval (no feed, or not covered)."""
        return self.feed is None or self.feed.denied or not self.on_feed(w)

    def signal(self, path: str, version: int) -> None:
        """The feed (beacon or push) says ``version`` of ``path`` exists."""
        w = self.watchers.get(path)
        if w is not None and self.on_feed(w):
            w.signal(version)

    def _feed_watch(self, w: _Watcher) -> None:
        """A watcher was published: start the feed (and the push) if needed."""
        if not self.on_feed(w):
            return
        feed = self.feed
        if feed is not None:
            if not feed.running:
                feed.start()
            elif w.interval < feed.interval():
                feed.replan()
            known = feed.entries.get(w.path, 0)
            if known:
                w.signal(known)  # written after its baseline, before the beacon's last read
        if self._push_factory is not None and (self._push_task is None or self._push_task.done()):
            self.push = self._push_factory(self.signal)
            self._push_task = asyncio.get_running_loop().create_task(
                supervised("change push", self.push.run, clock=self.source.clock, logger=log),
                name="change-push",
            )

    async def _feed_unwatch(self) -> None:
        """The last watcher on the feed left: stop polling the beacon, stop listening."""
        if any(self.on_feed(w) for w in self.watchers.values()):
            return
        await self._stop_feed()

    async def _stop_feed(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
        task, self._push_task = self._push_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.asynccontextmanager
    async def poll_slot(self) -> AsyncIterator[None]:
        """What a watcher holds while it polls: one of ``max_polls`` slots (all paths).

        While registrations read baselines, polling has one slot, which rests after each
        poll ``POLL_REST`` times as long as the poll took: the polls go on (a stalled
        registration stalls none of them) at a quarter of one sequential caller's pace,
        so a thousand registrations do not wait behind the polls of the first ones."""
        async with self._polls:
            if not self._registering:
                yield
                return
            async with self._polls_registering:
                clock = self.source.clock
                started = clock.monotonic()
                yield
                rest = (clock.monotonic() - started) * POLL_REST
                if self._registering and rest > 0:
                    await clock.sleep(rest)

    async def register(
        self,
        path: str,
        callback: SecretCallback,
        interval: float | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a limit for each callback call
    ) -> Subscription:
        """``timeout``: warn (path and callback name) when one call runs longer."""
        if not callable(callback):
            raise TypeError("callback must be a function or a coroutine function")
        runner = _Runner(
            path,
            callback,
            executor=self.executor,
            clock=self.source.clock,
            timeout=timeout,
            observer=self.observer,
        )
        while True:
            if self._closed:
                raise RuntimeError("the listener registry is closed")
            w = self.watchers.get(path)
            if w is not None:  # watched already: attach, no request
                w.runners.append(runner)
                return Subscription(path, callback, w, runner)
            pending = self._starting.get(path)
            if pending is None:
                w = await self._start(path, interval if interval is not None else self.interval)
                # nothing awaited since it was published: it is still the path's watcher
                w.runners.append(runner)
                return Subscription(path, callback, w, runner)
            # Another registration reads this path's baseline: wait for it, then look
            # again (it may have failed, given up, or been dropped meanwhile).
            await asyncio.shield(pending)

    async def _start(self, path: str, interval: float) -> _Watcher:
        """Claim ``path``, read its baseline outside any lock, publish its watcher."""
        w = _Watcher(self.source, self, path, interval)
        claim: asyncio.Future[_Watcher | None] = asyncio.get_running_loop().create_future()
        self._starting[path] = claim  # first step: no await before this
        self._registering += 1
        try:
            async with self._reads:
                await w.take_baseline()  # the network, under no lock
        except BaseException as exc:
            self._registering -= 1
            del self._starting[path]
            if isinstance(exc, Exception):
                claim.set_exception(exc)  # the same answer for those waiting
                claim.exception()  # retrieved: no "never retrieved" warning without waiters
            else:  # cancelled: whoever waits claims the path again
                claim.set_result(None)
            raise
        # second step, no await: publish
        self._registering -= 1
        del self._starting[path]
        if self._closed:
            claim.set_result(None)
            raise RuntimeError("the listener registry was closed during the registration")
        w.run()
        self.watchers[path] = w
        claim.set_result(w)
        self._feed_watch(w)
        return w

    async def unregister(self, path: str, callback: SecretCallback) -> bool:
        w = self.watchers.get(path)
        if w is None:
            return False
        for r in reversed(w.runners):  # the most recent registration first
            if r.callback == callback:
                await w.remove(r)
                return True
        return False

    async def drop(self, watcher: _Watcher) -> None:
        if self.watchers.get(watcher.path) is watcher:
            del self.watchers[watcher.path]
        await watcher.stop()
        await self._feed_unwatch()

    def stopped(self) -> list[str]:
        """Paths whose watcher task ended: it never should while the watcher is registered."""
        return sorted(p for p, w in self.watchers.items() if w._task is not None and w._task.done())

    def local_write(self, path: str, entry: Entry) -> None:
        """A write made through this service: notify now, and only once."""
        w = self.watchers.get(path)
        if w is not None:
            w.notify(entry)

    async def close(self) -> None:
        """Stop every watcher and callback; a callback thread still blocked is left
        behind (a daemon thread: it does not delay process exit)."""
        self._closed = True
        watchers = list(self.watchers.values())
        self.watchers.clear()
        await self._stop_feed()
        for w in watchers:
            await w.stop()
        self.executor.shutdown()
