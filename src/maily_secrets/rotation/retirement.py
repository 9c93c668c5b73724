"""When to retire a previous credential: the retire policy as a pure function.

No I/O, no clock of its own (the h11 way): the engine observes the target
(``Rotator.usage``), then asks :func:`decide` what to do with one retiring item::

    policy = RetirePolicy.of(type_config)
    d = decide(policy, now, RetireItem(promoted_at, retired_at), observed)
    d.action   # "wait" | "retire" | "retire_ending_sessions" | "keep_forever" | "forget"

``observed`` is what ``usage()`` returned (an :class:`Adoption`, or None when the
target cannot tell who uses a credential) or the exception it raised (the target could
not be reached: never taken for "idle").

The policies (times count from the promote):

``when_idle`` (default)
    retire as soon as the previous credential has no users, at the earliest after
    ``min_grace``. Still used after ``grace``: keep waiting and name the stragglers
    (until ``hard_deadline``, if set). A target that cannot tell its users apart
    (``usage()`` None, or not observable) behaves like ``at_grace``.
``at_grace``
    retire at the end of ``grace`` even if used, naming the stragglers.
``never``
    keep it (a person retires it).

``hard_deadline`` (optional, not with ``never``): from then on retire even if used
and end what still uses it (``retire_ending_sessions``: ``ctx.end_sessions``). An
item already retired at the grace with stragglers left is kept until the deadline for
that (``keep`` True: only when its target shows users), then forgotten once nothing
is seen using it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ..clock import rfc3339
from .base import Adoption, CredentialUser, Usage
from .config import RetireMode, TypeConfig, format_duration

Action = Literal["wait", "retire", "retire_ending_sessions", "keep_forever", "forget"]


@dataclass(frozen=True)
class RetirePolicy:
    mode: RetireMode = "when_idle"
    min_grace: timedelta = timedelta(0)
    grace: timedelta = timedelta(0)
    hard_deadline: timedelta | None = None

    @classmethod
    def of(cls, tc: TypeConfig) -> RetirePolicy:
        return cls(
            mode=tc.retire,
            min_grace=tc.effective_min_grace,
            grace=tc.grace or timedelta(0),
            hard_deadline=tc.hard_deadline,
        )

    def describe(self) -> str:
        text = {
            "when_idle": f"when idle, after {format_duration(self.min_grace)} at the earliest",
            "at_grace": f"at the end of the grace ({format_duration(self.grace)})",
            "never": "never (by hand)",
        }[self.mode]
        if self.hard_deadline is not None:
            text += f"; ending its sessions {format_duration(self.hard_deadline)} after promote"
        return text


@dataclass(frozen=True)
class RetireItem:
    """The times of one retiring credential (from :class:`~.state.Retiring`)."""

    promoted_at: datetime
    retired_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    #: who still uses the previous credential (as observed; empty when idle or unknown)
    stragglers: tuple[CredentialUser, ...] = ()
    #: retire now but keep the record (to end its sessions at the hard deadline)
    keep: bool = False
    #: the next time the decision can change by time alone (None: only by observation)
    next_check: datetime | None = None
    #: the previous credential's usage as observed (None: not observable or failed)
    previous: Usage | None = field(default=None, repr=False)

    @property
    def retires(self) -> bool:
        return self.action in ("retire", "retire_ending_sessions")

    @property
    def end_sessions(self) -> bool:
        return self.action == "retire_ending_sessions"


def _at(t: datetime) -> str:
    return rfc3339(t, ms=False)


def describe_users(users: tuple[CredentialUser, ...]) -> str:
    """``"2 x worker from 10.0.0.5; 1 x (no name) from local"`` (no values)."""
    parts = []
    for u in users[:10]:
        text = f"{u.count} x {u.application or '(no name)'}"
        text += f" from {u.address}" if u.address is not None else " from (address hidden)"
        parts.append(text)
    more = f"; and {len(users) - 10} more" if len(users) > 10 else ""
    return "; ".join(parts) + more


def decide(
    policy: RetirePolicy,
    now: datetime,
    item: RetireItem,
    observed: Adoption | BaseException | None,
) -> Decision:
    """What to do with one retiring credential now (see the module's docstring)."""
    earliest = item.promoted_at + policy.min_grace
    grace_end = item.promoted_at + policy.grace
    deadline = item.promoted_at + policy.hard_deadline if policy.hard_deadline is not None else None

    # what the target says about the previous credential
    error = observed if isinstance(observed, BaseException) else None
    adoption = observed if isinstance(observed, Adoption) else None
    prev = adoption.previous if adoption is not None else None
    observable = prev is not None and prev.observable
    idle = observable and prev is not None and prev.total == 0
    users = tuple(u for u in prev.users if u.count > 0) if observable and prev else ()
    used = f"still used by {prev.total}: {describe_users(users)}" if users and prev else ""
    unknown = (
        f"cannot see who uses it ({type(error).__name__}: {error})"
        if error is not None
        else "its target cannot tell who uses it"
    )
    seen = prev if observable else None

    def d(action: Action, reason: str, nxt: datetime | None = None, keep: bool = False) -> Decision:
        return Decision(action, reason, users, keep, nxt, seen)

    if policy.mode == "never":
        return d(
            "keep_forever",
            "retire: never; kept until a person retires it" + (f"; {used}" if used else ""),
        )

    # retired already at the grace; kept only to end its sessions at the hard deadline
    if item.retired_at is not None:
        if deadline is None or (error is None and not users):
            return d("forget", "retired, and nothing is seen using it any more")
        if error is not None:
            return d("wait", f"retired at {_at(item.retired_at)}; {unknown}; retrying", deadline)
        if now >= deadline:
            return d(
                "retire_ending_sessions",
                f"hard deadline {_at(deadline)} reached: ending what still uses it ({used})",
            )
        return d(
            "wait",
            f"retired at {_at(item.retired_at)}; {used}; ending its sessions at the hard"
            f" deadline {_at(deadline)}",
            deadline,
        )

    if deadline is not None and now >= deadline:
        if idle:
            return d("retire", f"hard deadline {_at(deadline)} reached and nothing uses it")
        return d(
            "retire_ending_sessions",
            f"hard deadline {_at(deadline)} reached: retiring and ending what still uses it"
            + (f" ({used})" if used else f" ({unknown})" if not observable else ""),
        )

    # when_idle on a target that cannot tell (not an error: by design) = at_grace
    at_grace = policy.mode == "at_grace" or (error is None and not observable)
    if at_grace:
        if now < grace_end:
            if policy.mode == "at_grace":
                what = used or ("nothing uses it" if idle else unknown)
                why = f"retire: at_grace; retires at the end of the grace {_at(grace_end)}"
                return d("wait", f"{why} ({what})", grace_end)
            why = f"{unknown}, so it retires at the end of the grace {_at(grace_end)}"
            return d("wait", why, grace_end)
        keep = deadline is not None and bool(users)
        if users:
            return d("retire", f"grace ended {_at(grace_end)}; retiring although {used}", keep=keep)
        return d(
            "retire",
            f"grace ended {_at(grace_end)}"
            + ("; nothing uses it" if idle else f"; retiring ({unknown})"),
            keep=keep,
        )

    # when_idle, observable target (or one that could not be reached this time)
    if now < earliest:
        what = used or ("nothing uses it yet" if idle else unknown)
        return d("wait", f"min_grace: not before {_at(earliest)} ({what})", earliest)
    if idle:
        return d("retire", "nothing uses it any more")
    nxt = deadline if deadline is not None else (grace_end if now < grace_end else None)
    if error is not None:
        return d("wait", f"{unknown}; retiring only once it is seen idle", nxt)
    if now < grace_end:
        return d("wait", f"{used}; waiting until it is idle", nxt)
    tail = f"until the hard deadline {_at(deadline)}" if deadline else "with no hard deadline"
    return d("wait", f"grace ended {_at(grace_end)} but it is {used}; waiting {tail}", nxt)
