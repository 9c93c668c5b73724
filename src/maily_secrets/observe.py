"""What the library reports to metrics: one observer object, a no-op by default.

The cache, the HTTP layer, the listeners, the lease container and the token manager
call these methods at the moment something happened; they never compute anything
for the observer. :class:`Observer` does nothing (no dependency, no cost beyond a
method call); :class:`maily_secrets.metrics.ServiceMetrics` is the Prometheus one.
Every argument is a name, a number or a time: never a secret value, a token or a
lease id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .clock import Clock


class Observer:
    """The no-op observer: subclass it and override what you need."""

    def cache_read(self, path: str, result: str) -> None:
        """A read of ``path`` was answered: ``hit``, ``miss`` (from Vault), ``stale``
        (last known value, Vault down), ``snapshot`` (from the file) or ``failed``."""

    def vault_request(self, method: str, path: str, status: str, seconds: float) -> None:
        """One HTTP attempt to Vault: ``status`` is the HTTP code or ``error`` (no answer)."""

    def token_issued(self, expires_at: float | None, clock: Clock) -> None:
        """A token was obtained or renewed; ``expires_at`` on ``clock.monotonic()``
        (``None``: it never expires)."""

    def watcher_polled(self, path: str, when: float) -> None:
        """The watcher of ``path`` polled Vault successfully at wall time ``when``."""

    def change_delivered(self, path: str, lag: float | None) -> None:
        """A listener callback of ``path`` returned for a new version; ``lag``: seconds
        from the version's ``created_time`` to then (``None`` when unknown)."""

    def lease_changed(self, key: str, expires_wall: float | None) -> None:
        """The lease of ``key`` (``<mount>/creds/<role>``) now expires at wall time
        ``expires_wall``; ``None``: it is gone (revoked, expired, released)."""


NOOP = Observer()

__all__ = ["NOOP", "Observer"]
