"""One rotation per environment at a time: a lock kept in Vault, with an expiry.

The lock is a KV v2 secret written with check-and-set: of several runs that
read the same version, exactly one write succeeds. It carries an expiry that the
holder extends while it works (heartbeat), so a crashed holder blocks others
only until then; a holder on this same host whose process is gone is taken over
at once.

A holder can *lose* the lock: another run took it over after it expired, or the
heartbeat could not renew it before it expired (Vault unreachable, the policy
changed). :meth:`VaultLock.ensure_held` says so (``LockLost``) and the engine
calls it before every step, so a run that lost its lock stops before it changes
anything more; what it saved so far is resumed by the next run.

Time comes from an injected :class:`~maily_secrets.clock.Clock` (expiry,
heartbeat interval), so tests drive it without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import CheckAndSetConflict
from ..paths import KV2Path
from ..procs import pid_alive
from ..vault.client import VaultClient

log = logging.getLogger("maily_secrets.rotation")


class LockBusy(Exception):
    def __init__(self, holder: dict[str, Any]) -> None:
        self.holder = holder
        super().__init__(
            f"another rotation holds the lock: {holder.get('holder', '?')}"
            f" (run {holder.get('run_id', '?')}, since {holder.get('acquired_at', '?')},"
            f" expires {holder.get('expires_at', '?')})"
        )


class LockLost(Exception):
    """This run no longer holds the rotation lock; it must not take another step."""


@dataclass
class VaultLock:
    client: VaultClient = field(repr=False)
    path: KV2Path
    run_id: str
    holder: str
    ttl: timedelta
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)
    _version: int = 0
    _expires: float = 0.0  # clock.time() until which our last write holds the lock
    _acquired_at: str = ""
    _lost: str | None = None
    _beat: asyncio.Task[None] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ helpers
    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), UTC)

    async def _read(self) -> tuple[dict[str, Any] | None, int]:
        return await self.client.kv.read_with_version(self.path)

    def _doc(self, now: datetime) -> dict[str, Any]:
        return {
            "held": True,
            "holder": self.holder,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": self._acquired_at or now.isoformat(),
            "renewed_at": now.isoformat(),
            "expires_at": (now + self.ttl).isoformat(),
        }

    def _ours(self, cur: dict[str, Any] | None) -> bool:
        return bool(cur and cur.get("held") and cur.get("run_id") == self.run_id)

    def _stale(self, cur: dict[str, Any], now: datetime) -> str | None:
        if not cur.get("held"):
            return "free"
        try:
            if datetime.fromisoformat(str(cur.get("expires_at"))) <= now:
                return "expired"
        except ValueError:
            return "unreadable"
        if cur.get("host") == socket.gethostname() and isinstance(cur.get("pid"), int):
            if cur["pid"] != os.getpid() and not pid_alive(cur["pid"]):
                return "holder process gone"
        return None

    @property
    def lost(self) -> str | None:
        """Why this run no longer holds the lock (None: it still does, as far as we know)."""
        if self._lost is None and self._version and self.clock.time() >= self._expires:
            self._lost = "the lock expired before the heartbeat could renew it"
        return self._lost

    def _mark_lost(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
            log.error("rotation lock lost: %s", why, extra={"run_id": self.run_id})

    # ------------------------------------------------------------------ acquire
    async def acquire(self) -> None:
        cur, version = await self._read()
        now = self._now()
        if cur is not None:
            why = self._stale(cur, now)
            if why is None:
                raise LockBusy(cur)
            if why != "free":
                log.warning(
                    "taking over a stale rotation lock (%s) from %s",
                    why,
                    cur.get("holder"),
                    extra={"previous_run": cur.get("run_id"), "reason": why},
                )
        self._acquired_at = now.isoformat()
        try:
            self._version = await self.client.kv.write(self.path, self._doc(now), cas=version)
        except CheckAndSetConflict:
            cur, _ = await self._read()
            raise LockBusy(cur or {}) from None
        self._expires = now.timestamp() + self.ttl.total_seconds()
        self._lost = None
        self._beat = asyncio.get_running_loop().create_task(
            self._heartbeat(), name=f"rotation-lock-heartbeat-{self.run_id}"
        )
        self._beat.add_done_callback(self._beat_done)

    # ------------------------------------------------------------------ while held
    def _beat_done(self, task: asyncio.Task[None]) -> None:
        if self._beat is task:  # stopped by anything but release(): nobody renews the lock
            self._beat = None
            why = "cancelled" if task.cancelled() else "stopped"
            if self._lost is None:
                log.warning(
                    "rotation lock heartbeat %s; the run stops at its next step",
                    why,
                    extra={"run_id": self.run_id},
                )
                self._lost = f"the lock heartbeat was {why}"

    async def _renew(self) -> None:
        now = self._now()
        try:
            self._version = await self.client.kv.write(self.path, self._doc(now), cas=self._version)
        except CheckAndSetConflict:
            # our own earlier write may have landed without us seeing the answer (a
            # cancelled or timed-out request): the lock is still ours if it names this run
            cur, version = await self._read()
            if not self._ours(cur):
                self._mark_lost(
                    f"taken over by {(cur or {}).get('holder', '?')}"
                    f" (run {(cur or {}).get('run_id', '?')})"
                )
                return
            self._version = await self.client.kv.write(self.path, self._doc(now), cas=version)
        self._expires = now.timestamp() + self.ttl.total_seconds()

    async def _heartbeat(self) -> None:
        interval = max(1.0, self.ttl.total_seconds() / 3)
        while self.lost is None:
            await self.clock.sleep(interval)
            if self.lost is not None:
                return
            try:
                await self._renew()
            except CheckAndSetConflict:
                self._mark_lost("taken over by another run")
            except Exception as exc:  # keep trying while Vault is flaky, until it expires
                log.warning(
                    "rotation lock heartbeat failed: %s",
                    type(exc).__name__,
                    extra={"run_id": self.run_id},
                )

    async def ensure_held(self) -> None:
        """Raise ``LockLost`` unless this run still holds the lock (one read of it)."""
        if self.lost is None:
            cur, version = await self._read()
            if not self._ours(cur):
                self._mark_lost(
                    f"taken over by {(cur or {}).get('holder', '?')}"
                    f" (run {(cur or {}).get('run_id', '?')})"
                )
            else:
                self._version = max(self._version, version)
        if self._lost is not None:
            raise LockLost(self._lost)

    # ------------------------------------------------------------------ release
    async def release(self) -> None:
        """Stop the heartbeat and free the lock, if it is still ours.

        Runs to the end even when the calling task is cancelled meanwhile (the
        cancellation is re-raised afterwards): a run that was cancelled must not
        leave the lock held until it expires.
        """
        beat, self._beat = self._beat, None
        if beat is not None and not beat.done():
            beat.cancel()
        task = asyncio.get_running_loop().create_task(self._free(beat))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), self.ttl.total_seconds())
            raise

    async def _free(self, beat: asyncio.Task[None] | None) -> None:
        if beat is not None:
            await asyncio.wait([beat])  # never swallows a cancellation of ours
        doc = {
            "held": False,
            "holder": self.holder,
            "run_id": self.run_id,
            "released_at": self._now().isoformat(),
        }
        try:
            await self.client.kv.write(self.path, doc, cas=self._version)
        except CheckAndSetConflict:
            cur, version = await self._read()
            if not self._ours(cur):
                log.error("the rotation lock was taken over by another run; not releasing it")
                return
            # a heartbeat write landed unseen (cancelled mid-request): still ours, free it
            await self.client.kv.write(self.path, doc, cas=version)
