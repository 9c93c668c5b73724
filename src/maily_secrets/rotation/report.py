"""The result of one ``secrets rotate`` run: per type, never a secret value."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..clock import rfc3339

Status = Literal[
    "rotated",  # a new credential is in use
    "resumed",  # an interrupted rotation was completed
    "skipped",  # not due, or in the grace period of the previous rotation
    "action_required",  # only a person can rotate it (e.g. a third-party key): see reason
    "failed",
    "rolled_back",  # verification failed; the current credential is unchanged
    "planned",  # --dry-run
    "busy",  # another run holds the lock
    "retired",  # ``secrets retire``: a previous credential was retired (see notes)
]


@dataclass
class TypeResult:
    type: str
    status: Status
    rotation_id: str | None = None
    secret: str = ""  # where it lives, e.g. maily/data/config
    version: int | None = None  # consumer secret version after promotion
    reason: str = ""  # why skipped / what failed (no values)
    step: str | None = None  # the step reached (or failed at)
    started_at: datetime | None = None
    duration_s: float = 0.0
    next_due: datetime | None = None
    last_rotated: datetime | None = None
    #: what else the run did for this type (e.g. a previous credential retired after its
    #: grace period, and who still had sessions open with it); no values
    notes: list[str] = field(default_factory=list)
    #: who still used a previous credential when it was retired, or still uses it past
    #: its grace: {credential, rotation_id, count, application, address, detail}
    stragglers: list[dict[str, Any]] = field(default_factory=list)
    #: the retire policy's decision per retiring credential at this run's last look:
    #: {rotation_id, action, reason, next_check, stragglers}
    retirement: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "rolled_back", "busy")


@dataclass
class RunReport:
    env: str
    run_id: str
    actor: str
    started_at: datetime
    finished_at: datetime | None = None
    dry_run: bool = False
    due_only: bool = False
    results: list[TypeResult] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    #: problems that did not change the outcome (e.g. the lock could not be released)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_json(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, datetime):
                return rfc3339(v)
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v

        doc = conv(asdict(self))
        doc["ok"] = self.ok
        return doc  # type: ignore[no-any-return]
