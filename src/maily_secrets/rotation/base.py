"""What a rotator is: the four steps of a rotation for one secret type.

The engine (``engine.py``) drives every rotator through the same protocol, the
way AWS Secrets Manager does:

1. ``create_pending``  make the new credential (nothing changes anywhere yet); the
                       engine stores it in the rotation state in Vault;
2. ``apply``           set it on the real target system (PostgreSQL, IAM, Redis...);
                       the credential in use keeps working;
3. ``verify``          prove the new credential works by using it;
4. ``promote``         write it to the consumer-facing secret with check-and-set.

Then ``retire`` removes what the previous rotation left behind once its grace
period is over. Every step must be idempotent: after a crash the engine runs
the interrupted step again. If ``verify`` fails the engine calls ``rollback``
and the credential in use stays what it was.

A rotator never logs or raises with a secret value in the message.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from ..errors import InvalidPath, PermissionDenied, SecretNotFound
from ..paths import KV2Path
from ..vault.client import VaultClient
from .config import ResolvedEnvironment, TypeConfig


def parse_time(value: object) -> datetime | None:
    """Vault's RFC 3339 timestamps (with Z and nanoseconds) -> aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    text = re.sub(r"\.(\d{1,6})\d*", r".\1", value.replace("Z", "+00:00"))  # at most µs
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class RotationError(Exception):
    """A rotation step failed; the message names the step and the cause, never a value."""


class RotatorConfigError(RotationError):
    """The rotator's configuration or prerequisites are wrong (nothing was changed)."""


class PendingLost(RotationError):
    """The pending credential of an interrupted rotation is gone from the target system.

    Raise it from ``apply`` on resume when the rotation cannot be completed: the
    engine rolls it back and clears it, so the next run starts a new one.
    """


class ActionRequired(RotationError):
    """Only a person can rotate this (e.g. a third-party key without a rotation API).

    Raise it from ``check`` or ``create_pending`` (before anything changed); the
    message says what to do. The run reports ``action_required`` and ``--notify``
    passes the message on to administrators.
    """


@dataclass(frozen=True)
class CredentialUser:
    """One group of clients that use a credential, as the target system reports them.

    Enough to find them, never a value: PostgreSQL ``application_name`` and
    ``client_addr``, a Redis client's name and address, an AWS service and region.
    """

    count: int
    application: str = ""  # application_name / Redis client name / AWS service name
    address: str | None = None  # client address; None: hidden from the rotator or unknown
    detail: str = ""  # e.g. "last used 2026-12-02T08:00:00Z in us-east-1"

    def public(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "application": self.application,
            "address": self.address,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Usage:
    """Who uses one credential, as far as its target system can tell.

    ``credential`` is a non-secret identifier (a login role, an ACL user, an access key
    id). ``observable`` False: the target cannot tell its users apart (an SMTP provider,
    one Redis user with two passwords); ``note`` says why, or states a caveat (AWS
    records a key's last use with a delay).
    """

    # an identifier, not a value; kept out of repr() all the same (the class-wide rule
    # for fields named like a secret, tests/test_no_secret_in_repr.py)
    credential: str = field(repr=False)
    observable: bool = True
    users: tuple[CredentialUser, ...] = ()
    note: str = ""

    @property
    def total(self) -> int:
        return sum(u.count for u in self.users)

    @property
    def idle(self) -> bool | None:
        """True: nobody uses it; None: the target cannot tell."""
        return None if not self.observable else self.total == 0

    def describe(self) -> str:
        """One line naming the users (for reports and notifications), no values."""
        if not self.observable:
            return f"{self.credential}: users not observable ({self.note or 'unknown'})"
        if not self.users:
            return f"{self.credential}: no users" + (f" ({self.note})" if self.note else "")
        parts = []
        for u in self.users[:10]:
            text = f"{u.count} x {u.application or '(no name)'}"
            if u.address is not None:
                text += f" from {u.address}"
            if u.detail:
                text += f" ({u.detail})"
            parts.append(text)
        more = f"; and {len(self.users) - 10} more" if len(self.users) > 10 else ""
        return f"{self.credential}: {self.total} in use: {'; '.join(parts)}{more}"

    def public(self) -> dict[str, Any]:
        return {
            "credential": self.credential,
            "observable": self.observable,
            "total": self.total if self.observable else None,
            "users": [u.public() for u in self.users],
            "note": self.note,
        }


@dataclass(frozen=True)
class Adoption:
    """Who uses the current credential, and who still uses the previous one."""

    current: Usage | None
    previous: Usage | None

    def public(self) -> dict[str, Any]:
        return {
            "current": self.current.public() if self.current else None,
            "previous": self.previous.public() if self.previous else None,
        }


@dataclass
class RotationContext:
    """Everything a rotator may use during one rotation of one type."""

    env: ResolvedEnvironment
    type_name: str
    type_config: TypeConfig
    client: VaultClient
    rotation_id: str
    log: logging.Logger
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    #: the operator asked to rotate despite the previous credential's grace period
    force: bool = False
    #: the type's rotation state as read at the start of this rotation (read-only view:
    #: e.g. what earlier rotations keep for their grace period, in ``state.retiring``)
    state: Any = field(default=None, repr=False)
    #: retiring at a hard deadline: also end what still uses the previous credential
    #: (PostgreSQL: pg_terminate_backend of its sessions; Redis: CLIENT KILL USER)
    end_sessions: bool = False

    @property
    def kv_mount(self) -> str:
        return self.client.settings.kv_mount

    def secret_path(self, name: str | None = None) -> KV2Path:
        """A KV v2 secret of this environment's mount (default: the type's ``secret``)."""
        return KV2Path(self.kv_mount, name or self.type_config.secret)

    async def read_secret(
        self, name: str | None = None, step: str = ""
    ) -> tuple[dict[str, Any], int]:
        """A KV v2 secret (default: the consumer secret) and its version, for CAS.

        Missing or unreadable is a :class:`RotatorConfigError` naming the path and step.
        """
        path = self.secret_path(name)
        where = f"{self.type_name} {step}".strip()
        what = "the secret" if name else "the consumer secret"
        try:
            cur = await self.client.kv.read(path)
        except SecretNotFound:
            raise RotatorConfigError(f"{where}: {what} {path.data} does not exist") from None
        except PermissionDenied:
            raise RotatorConfigError(
                f"{where}: this token may not read {what} {path.data}"
            ) from None
        return dict(cur.data), cur.version

    @property
    def options(self) -> Mapping[str, Any]:
        return self.type_config.options

    @property
    def grace(self) -> timedelta:
        return self.type_config.grace or timedelta(0)


class Rotator(ABC):
    """One secret type. Subclasses register themselves by ``type_name``."""

    type_name: ClassVar[str]
    #: Two-slot credentials (two login roles, two IAM keys): a second rotation within
    #: the grace period would invalidate the credential that holders may still use.
    two_slots: ClassVar[bool] = False
    registry: ClassVar[dict[str, type[Rotator]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        name = cls.__dict__.get("type_name")  # only a class that names itself registers
        if name:
            Rotator.registry[name] = cls

    async def check(self, ctx: RotationContext) -> None:
        """Validate configuration and prerequisites before anything changes (may read)."""
        return None

    async def created_at(self, ctx: RotationContext) -> datetime | None:
        """When the secret first existed: the age of a type that was never rotated.

        Default: the creation time of the consumer KV v2 secret (:func:`secret_created_at`).
        """
        return await secret_created_at(ctx)

    async def describe(self, ctx: RotationContext) -> str:
        """One line for --dry-run: what a rotation would do (reads only)."""
        return f"rotate {ctx.type_name} in {ctx.secret_path().data}"

    @abstractmethod
    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        """Make the new credential. Stored (in Vault) by the engine before ``apply``."""

    @abstractmethod
    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Set the pending credential on the target system (idempotent)."""

    @abstractmethod
    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Use the pending credential for real; raise RotationError if it does not work."""

    @abstractmethod
    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        """Make it the current credential in the consumer secret (CAS); return the version."""

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Undo ``apply`` after a failed verification (the current credential stays)."""
        return None

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> str | None:
        """Remove what a previous rotation kept for its grace period (``retiring``).

        May return one line for the run's report (e.g. who still used it); no values.
        A state or secret that cannot be read is an error (raise): never guess.
        """
        return None

    async def usage(
        self,
        ctx: RotationContext,
        retiring: Mapping[str, Any] | None,
        since: datetime | None = None,
    ) -> Adoption | None:
        """Who uses the current credential and, with ``retiring`` (what a rotation kept
        for its grace period, as ``retiring()`` returned it), the previous one, as the
        target system sees them. ``since``: when that rotation promoted (a target that
        records last use, such as AWS, counts only use after it). Reads only.

        None: this type's target cannot tell (the default). A target that cannot be
        reached raises (RotationError): "unknown" is never reported as "idle".
        """
        return None

    async def follow_up(self, ctx: RotationContext, pending: dict[str, Any]) -> str | None:
        """After a successful rotation: what a person still has to do (None: nothing).

        E.g. third-party keys of the same type that only a person can roll; the run
        reports ``action_required`` with this text and ``--notify`` passes it on.
        """
        return None

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        """What to retire once the grace period after this rotation is over (None: nothing)."""
        return None


async def secret_created_at(ctx: RotationContext) -> datetime | None:
    """The creation time of the consumer KV v2 secret (None when there is none)."""
    try:
        meta = await ctx.client.kv.metadata(ctx.secret_path())
    except (SecretNotFound, InvalidPath):
        return None
    return parse_time(meta.get("created_time"))


def rotator_for(type_name: str, implementation: str | None = None) -> Rotator:
    """The rotator of a type (``implementation``: the config's ``rotator``, if set)."""
    name = implementation or type_name
    cls = Rotator.registry.get(name)
    if cls is None:
        from . import rotators  # importing a rotator's module registers it

        rotators.load(name)
        cls = Rotator.registry.get(name)
    if cls is None:
        raise RotatorConfigError(
            f"no rotator is available for secret type {type_name!r}"
            + (f" (rotator {name!r})" if implementation else "")
            + f"; available: {', '.join(sorted(Rotator.registry)) or 'none'}"
        )
    return cls()
