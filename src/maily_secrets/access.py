"""The access log's hot path: fresh cache hits counted in memory, written per interval.

Every read is in the access log (the guide's best practice 6: names, never values), on
the ``maily_secrets.access`` logger at INFO with ``log_type: "secret_read"``. A miss, an
error and a stale serve are one event each, written when they happen. A fresh cache hit
is the hot path (about a microsecond): one event per hit made it 15x-59x dearer (a
``LogRecord``, a JSON document and a ``write`` per read), so :class:`AccessLog` counts
hits per path (and service) in a dict and writes one aggregate event per path per
interval::

    {"ts": "...", "level": "info", "logger": "maily_secrets.access",
     "msg": "secret read maily/data/config hit ok x1200", "log_type": "secret_read",
     "path": "maily/data/config", "keys": ["db_host", ...], "cache": "hit",
     "outcome": "ok", "count": 1200, "first_at": "2026-12-02T03:40:00.012Z",
     "last_at": "2026-12-02T03:40:09.998Z"}

The window opens at the first hit after a flush and is written by the first hit after
it closed, by a timer thread ``interval`` seconds after it opened (the system clock
only: an injected clock moves the window by itself, a test calls :meth:`flush`), by the
service's ``close()`` and at interpreter exit, so no count is lost. ``keys`` are the key
names of the window's first hit of that path. A hit costs a clock read and a dict update
under a lock (hits come from any thread: the sync API serves them in the caller's).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterable

from .clock import SYSTEM_CLOCK, Clock, SystemClock
from .logs import rfc3339

access_log = logging.getLogger("maily_secrets.access")

DEFAULT_INTERVAL = 10.0

#: Access logs holding counts not written yet (a strong reference until they are).
_PENDING: set[AccessLog] = set()
_PENDING_LOCK = threading.Lock()
_exit_hook = False


class _Hits:
    __slots__ = ("count", "first", "keys", "last", "path", "service")

    def __init__(self, path: str, service: str | None, keys: list[str], now: float) -> None:
        self.path = path
        self.service = service
        self.keys = keys
        self.count = 0
        self.first = now
        self.last = now


class AccessLog:
    """Counts fresh hits per path and writes them as one aggregate event per interval."""

    __slots__ = (
        "__weakref__",
        "_acquire",
        "_due",
        "_lock",
        "_mono0",
        "_now",
        "_pending",
        "_release",
        "_timer",
        "_wall0",
        "clock",
        "interval",
        "logger",
    )

    def __init__(
        self,
        clock: Clock | None = None,
        interval: float = DEFAULT_INTERVAL,
        logger: logging.Logger = access_log,
    ) -> None:
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.interval = interval  #: seconds of the clock one window lasts
        self.logger = logger
        # the system clock is read directly: a hit is a few hundred nanoseconds
        self._now = time.monotonic if isinstance(self.clock, SystemClock) else self.clock.monotonic
        self._lock = threading.Lock()
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._pending: dict[object, _Hits] = {}
        self._due = math.inf  # the clock's monotonic() at which the open window closes
        self._mono0 = 0.0  # the window's opening, on monotonic() and on time()
        self._wall0 = 0.0
        self._timer: threading.Timer | None = None

    def configure(self, clock: Clock, interval: float) -> None:
        """Use ``clock`` and ``interval`` from the next window on (what is pending is written)."""
        if self._pending:
            self.flush()
        self.clock = clock
        self._now = time.monotonic if isinstance(clock, SystemClock) else clock.monotonic
        self.interval = interval

    def hit(self, path: str, keys: Iterable[str], service: str | None = None) -> None:
        """One fresh hit of ``path`` (``service``: of ``get_credentials``) whose value has
        the key names ``keys`` (only read when the window's first hit of the path)."""
        now = self._now()
        if now >= self._due:
            self.flush()  # the window closed: its counts go out before this one is counted
        key: object = path if service is None else (path, service)
        self._acquire()  # not ``with``: half the cost (callgrind: ~1,000 of ~2,000 instructions)
        try:
            hits = self._pending.get(key)
            if hits is None:
                if not self._pending:
                    self._open(now)
                hits = self._pending[key] = _Hits(path, service, sorted(keys), now)
            hits.count += 1
            hits.last = now
        finally:
            self._release()
        if now >= self._due:  # an interval of 0: every hit is written at once
            self.flush()

    @property
    def pending(self) -> int:
        """Hits counted and not written yet."""
        with self._lock:
            return sum(h.count for h in self._pending.values())

    def flush(self) -> int:
        """Write every pending aggregate now; returns how many events were written."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._due = math.inf
            mono0, wall0 = self._mono0, self._wall0
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        with _PENDING_LOCK:
            _PENDING.discard(self)
        info = self.logger.info
        for h in pending.values():
            fields: dict[str, object] = {
                "log_type": "secret_read",
                "path": h.path,
                "keys": h.keys,
                "cache": "hit",
                "outcome": "ok",
                "count": h.count,
                "first_at": rfc3339(wall0 + (h.first - mono0)),
                "last_at": rfc3339(wall0 + (h.last - mono0)),
            }
            if h.service is not None:
                fields["service"] = h.service
            info("secret read %s hit ok x%d", h.path, h.count, extra=fields)
        return len(pending)

    def _open(self, now: float) -> None:
        """A window opens (under the lock): its end, its wall time, its safety nets."""
        global _exit_hook
        self._mono0 = now
        self._wall0 = self.clock.time()
        self._due = now + self.interval
        with _PENDING_LOCK:
            _PENDING.add(self)
            if not _exit_hook:
                atexit.register(_flush_all)  # after logging's own hook: handlers still open
                _exit_hook = True
        if isinstance(self.clock, SystemClock) and self.interval > 0:
            t = threading.Timer(self.interval, self._on_timer)
            t.name = "maily-secrets-access-log"
            t.daemon = True
            self._timer = t
            t.start()

    def _on_timer(self) -> None:
        if self.clock.monotonic() >= self._due:
            self.flush()
            return
        with self._lock:  # woken early: wait for the rest of the window
            if self._timer is not threading.current_thread() or not self._pending:
                return
            t = threading.Timer(max(0.01, self._due - self.clock.monotonic()), self._on_timer)
            t.name = "maily-secrets-access-log"
            t.daemon = True
            self._timer = t
            t.start()

    def _forget(self) -> None:
        """In a forked child: the parent writes these counts; start empty."""
        self._lock = threading.Lock()
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._pending = {}
        self._due = math.inf
        self._timer = None

    def __repr__(self) -> str:
        return f"AccessLog(interval={self.interval:g}, paths={len(self._pending)})"


def _flush_all() -> None:
    """At interpreter exit: write what every access log still holds."""
    with _PENDING_LOCK:
        logs = list(_PENDING)
    for a in logs:
        with contextlib.suppress(Exception):  # one failing handler must not hide the rest
            a.flush()


def _after_fork_in_child() -> None:
    global _PENDING_LOCK
    _PENDING_LOCK = threading.Lock()
    for a in list(_PENDING):
        a._forget()
    _PENDING.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["DEFAULT_INTERVAL", "AccessLog", "access_log"]
