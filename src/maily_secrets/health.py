"""The result of ``vault_service.health()``: readiness and liveness, nothing secret.

Readiness: every *required* secret (``MAILY_SECRETS_REQUIRED``, plus each
``vault_service.require(path)``) can be served now, fresh or as a last-known value
no older than ``MAILY_SECRETS_MAX_STALENESS``. Liveness: every background task the
service started (one watcher per listened path, each lease's keep-alive, token
renewal) is still running; one that ended means the process no longer keeps its
secrets current, and a restart is the cure. A check names paths and error classes,
never a value or a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Probe = Literal["readiness", "liveness"]


@dataclass(frozen=True, slots=True)
class Check:
    """One probe's verdict on one thing (``name``: a path or a task kind)."""

    probe: Probe
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"probe": self.probe, "name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Health:
    """``ok`` when every check passed; ``ready``/``live`` per probe."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks if c.probe == "readiness")

    @property
    def live(self) -> bool:
        return all(c.ok for c in self.checks if c.probe == "liveness")

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        """A JSON document for a probe endpoint (``/readyz``, ``/livez``)."""
        return {
            "ok": self.ok,
            "ready": self.ready,
            "live": self.live,
            "checks": [c.to_dict() for c in self.checks],
        }


__all__ = ["Check", "Health", "Probe"]
