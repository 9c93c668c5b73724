"""One rotation per environment at a time: a lock kept in Vault, with an expiry.

The lock is a KV v2 secret written with check-and-set: of several runs that
read the same version, exactly one write succeeds. It carries an expiry that the
holder extends while it works (heartbeat), so a crashed holder blocks others
only until then; a holder on this same host whose process is gone is taken over
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import CheckAndSetConflict
from ..paths import KV2Path
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class VaultLock:
    client: VaultClient
    path: KV2Path
    run_id: str
    holder: str
    ttl: timedelta
    _version: int = 0
    _beat: asyncio.Task[None] | None = None

    async def _read(self) -> tuple[dict[str, Any] | None, int]:
        return await self.client.kv.read_with_version(self.path)

    def _doc(self, now: datetime) -> dict[str, Any]:
        return {
            "held": True,
            "holder": self.holder,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": now.isoformat(),
            "expires_at": (now + self.ttl).isoformat(),
        }

    def _stale(self, cur: dict[str, Any], now: datetime) -> str | None:
        if not cur.get("held"):
            return "free"
        try:
            if datetime.fromisoformat(str(cur.get("expires_at"))) <= now:
                return "expired"
        except ValueError:
            return "unreadable"
        if cur.get("host") == socket.gethostname() and isinstance(cur.get("pid"), int):
            if cur["pid"] != os.getpid() and not _pid_alive(cur["pid"]):
                return "holder process gone"
        return None

    async def acquire(self) -> None:
        cur, version = await self._read()
        now = datetime.now(UTC)
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
        try:
            self._version = await self.client.kv.write(self.path, self._doc(now), cas=version)
        except CheckAndSetConflict:
            cur, _ = await self._read()
            raise LockBusy(cur or {}) from None
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.ttl.total_seconds() / 3))
            now = datetime.now(UTC)
            doc = self._doc(now)
            try:
                self._version = await self.client.kv.write(self.path, doc, cas=self._version)
            except CheckAndSetConflict:
                log.error("the rotation lock was taken over by another run")
                return
            except Exception as exc:  # keep trying while Vault is flaky
                log.warning("rotation lock heartbeat failed: %s", type(exc).__name__)

    async def release(self) -> None:
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        doc = {
            "held": False,
            "holder": self.holder,
            "run_id": self.run_id,
            "released_at": datetime.now(UTC).isoformat(),
        }
        try:
            await self.client.kv.write(self.path, doc, cas=self._version)
        except CheckAndSetConflict:
            log.error("the rotation lock was taken over by another run; not releasing it")
