"""What every rotator needs, written once: options, scrubbing, admin secrets, CAS writes.

- :class:`RotatorOptions`  a pydantic model of a type's ``options`` (unknown keys and
  wrong values are a :class:`RotatorConfigError` naming the option), with shared field
  types :data:`Seconds` (a positive duration), :data:`Delay` (a duration, zero allowed),
  :data:`PasswordLength` (16..256), :data:`SecretName` (a KV v2 secret name) and
  :data:`Flag`, and validators :func:`int_from`, :func:`seconds_from` and :func:`one_of`;
  the one duration parser (:func:`duration_seconds`: numbers or 30s/5m/1h/1d, never a
  bool); :func:`option_message` (pydantic's error as "option X <problem>" text);
- :func:`scrub`            one line of an error text with the given values blanked;
- :func:`admin_secret`     the rotator's admin secret (``maily/data/rotator/<name>``)
  with the fields it must hold, or a clear error;
- :func:`cas_update`       read-modify-write of a KV v2 secret with check-and-set, where
  ``change`` may answer "nothing to do";
- :func:`promote_fields`   set named fields of the consumer secret (idempotent, CAS), with
  the "changed during the rotation: stale" guard; it and :func:`cas_update` bump the
  change feed's beacon after a write (``maily_secrets.changes.announce``);
- :func:`in_use`           whether the credential to retire is (again) the one in use
  (the guard of two-slot rotators; unknown is an error, never a guess);
- :func:`blocking`         run a blocking SDK call in a thread, its errors translated to
  a :class:`RotationError` whose message holds no secret value;
- :func:`load_factory`     the callable an import reference ``"pkg.module:factory"`` names;
- :func:`rotation_state`   the engine's state of the type, for a step that must know it
  (unreadable is an error, never "none").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from ..changes import announce
from ..errors import CheckAndSetConflict, PermissionDenied, SecretNotFound, VaultError
from ..targets import scrubbed_line
from .base import RotationContext, RotationError, RotatorConfigError
from .config import parse_duration
from .state import RotationState, StateStore

T = TypeVar("T")

CAS_ATTEMPTS = 10


def scrub(text: str, *values: str | None) -> str:
    """The first line of an error text with each of ``values`` blanked (<= 300 chars)."""
    return scrubbed_line(text, *values)[:300]


# ---------------------------------------------------------------------------- options
def duration_seconds(value: object, *, positive: bool) -> float:
    """Seconds of a duration option (a number or 30s/5m/1h/1d; never a bool)."""
    if isinstance(value, bool):  # True is not "1 second"
        raise ValueError("must be a number of seconds or a duration such as 30s, 5m, 1h, 1d")
    try:
        td = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"must be a number of seconds or a duration ({exc})") from None
    seconds = td.total_seconds()
    if seconds < 0 or (positive and seconds == 0):
        raise ValueError(
            "must be a positive number of seconds" if positive else "must not be negative"
        )
    return seconds


#: a positive duration in seconds: 5, 2.5, "30s", "5m", "1h", "1d" (never a bool)
Seconds = Annotated[float, BeforeValidator(lambda v: duration_seconds(v, positive=True))]
#: a duration in seconds that may be zero ("no wait")
Delay = Annotated[float, BeforeValidator(lambda v: duration_seconds(v, positive=False))]


def password_length(value: object) -> int:
    """A generated password's length option: an integer from 16 to 256."""
    if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 256:
        raise ValueError("must be an integer from 16 to 256")
    return value


#: the length of a generated password: an integer from 16 to 256
PasswordLength = Annotated[int, BeforeValidator(password_length)]


def _secret_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip("/"):
        raise ValueError("must name a secret")
    return value.strip("/")


#: a KV v2 secret name of this environment's mount (surrounding slashes dropped)
SecretName = Annotated[str, BeforeValidator(_secret_name)]


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


#: true or false (no "yes", no 1)
Flag = Annotated[bool, BeforeValidator(_flag)]


def int_from(low: int, high: int) -> BeforeValidator:
    """A validator for an integer option from ``low`` to ``high`` (no bool)."""

    def check(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return BeforeValidator(check)


def one_of(*choices: str) -> BeforeValidator:
    """A validator for a string option that must be one of ``choices``."""

    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(value)

    return BeforeValidator(check)


def option_message(err: Mapping[str, Any]) -> str:
    """The problem of one pydantic error, as it follows "option X" ("is not set", ...)."""
    if err.get("type") == "missing":
        return "is not set"
    msg = str(err.get("msg", "is not valid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


class RotatorOptions(BaseModel):
    """A type's ``options``; subclasses list the fields, with defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: how an error message starts: ``{type}`` and ``{step}`` are filled in
    error_prefix: ClassVar[str] = "{type} {step}"

    @classmethod
    def problems(cls, options: Mapping[str, Any]) -> tuple[Self | None, list[str]]:
        """The options, or None and one line per problem (no value is repeated)."""
        try:
            return cls.model_validate(dict(options)), []
        except ValidationError as exc:
            errors = exc.errors()
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        problems = [
            f"option {e['loc'][0] if e['loc'] else '?'} {option_message(e)}"
            for e in errors
            if e["type"] != "extra_forbidden"
        ]
        if unknown:
            valid = ", ".join(sorted(cls.model_fields))
            problems.insert(0, f"unknown option(s) {', '.join(unknown)}; valid: {valid}")
        return None, problems

    @classmethod
    def of(cls, ctx: RotationContext, step: str = "") -> Self:
        """The options of ``ctx``'s type, or a :class:`RotatorConfigError` naming them."""
        opts, problems = cls.problems(ctx.options)
        if opts is None:
            where = cls.error_prefix.format(type=ctx.type_name, step=step).strip()
            raise RotatorConfigError(f"{where}: {'; '.join(problems)}")
        return opts


# ---------------------------------------------------------------------------- Vault
async def admin_secret(
    ctx: RotationContext, name: str, step: str, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The rotator's admin secret ``name`` (e.g. ``rotator/redis-admin``).

    Missing, unreadable or lacking a field of ``required``: a
    :class:`RotatorConfigError` naming the path and the step.
    """
    path = ctx.secret_path(name)
    where = f"{ctx.type_name} {step}".strip()
    try:
        data = dict((await ctx.client.kv.read(path)).data)
    except SecretNotFound:
        raise RotatorConfigError(f"{where}: the admin secret {path.data} does not exist") from None
    except PermissionDenied:
        raise RotatorConfigError(
            f"{where}: this token may not read the admin secret {path.data}"
        ) from None
    missing = [k for k in required if data.get(k) in (None, "")]
    if missing:
        raise RotatorConfigError(
            f"{where}: the admin secret {path.data} lacks {', '.join(missing)}"
        )
    return data


async def cas_update(
    ctx: RotationContext,
    step: str,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    name: str | None = None,
    attempts: int = CAS_ATTEMPTS,
) -> tuple[int, bool]:
    """Read-modify-write of a KV v2 secret (default: the consumer's) with check-and-set.

    ``change`` gets a copy of the data and returns the new data, or None for "nothing
    to do". Returns (the version now current, whether this call wrote it).
    """
    path = ctx.secret_path(name)
    for _ in range(attempts):
        data, version = await ctx.read_secret(name, step=step)
        new = change(data)
        if new is None:
            return version, False
        try:
            written = await ctx.client.kv.write(path, new, cas=version)
        except CheckAndSetConflict:
            continue
        await announce(ctx.client, path.data, written)  # the change feed; never raises
        return written, True
    raise RotationError(
        f"{step}: {path.data} kept changing during the update"
        f" ({attempts} check-and-set conflicts); run the rotation again"
    )


async def promote_fields(
    ctx: RotationContext,
    fields: Mapping[str, Any],
    *,
    expect: tuple[str, Any] | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
    message: str = "consumer secret holds the new credential",
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Set ``fields`` in the consumer secret, keeping its other keys; return the version.

    Idempotent: when every field already has its value nothing is written. Written by
    a check-and-set read-modify-write (``kv.update``); ``expect`` = (key, previous):
    that key must still hold ``previous`` (or its new value), else the pending
    credential is stale and nothing is written. ``check`` may refuse the data too.
    """
    path, where = ctx.secret_path(), f"{ctx.type_name} promote"
    data, version = await ctx.read_secret(step="promote")
    if all(data.get(k) == v for k, v in fields.items()):
        return version  # promoted already (a rerun after a crash)

    def change(cur: dict[str, Any]) -> dict[str, Any]:
        if check is not None:
            check(cur)
        if expect is not None:
            key, previous = expect
            active = cur.get(key) or None
            if active not in (previous, fields.get(key)):
                raise RotationError(
                    f"{where}: {key} of {path.data} changed to {active!r} during the"
                    f" rotation (expected {previous})"
                )
        return {**cur, **fields}

    new_version = await ctx.client.kv.update(path, change)
    await announce(ctx.client, path.data, new_version)  # the change feed; never raises
    ctx.log.info(
        f"{ctx.type_name}: {message}",
        extra={"type": ctx.type_name, "path": path.data, "version": new_version, **(extra or {})},
    )
    return new_version


# ---------------------------------------------------------------------------- guards
async def in_use(
    ctx: RotationContext,
    step: str,
    key: str,
    is_it: Callable[[Any], bool],
    *,
    unknown: str,
    what: str,
    extra: Mapping[str, Any] | None = None,
) -> bool:
    """Whether the credential to ``step`` (retire) is, again, the one the consumer uses.

    Two-slot rotators flip between two credentials: a later rotation may have made the
    one to retire current again. ``key`` of the consumer secret names the credential in
    use (``is_it`` compares); when it is missing nobody can tell, so this raises a
    :class:`RotationError` ending with ``unknown`` and nothing is removed. In use: a
    warning is logged and True returned, and the caller keeps it.
    """
    data, _ = await ctx.read_secret(step=step)  # unreadable: raises, nothing changes
    current = data.get(key)
    if not current:
        raise RotationError(
            f"{ctx.type_name} {step}: {ctx.secret_path().data} has no {key}; {unknown}"
        )
    if not is_it(current):
        return False
    ctx.log.warning(
        f"{ctx.type_name}: the {what} to {step} is the one in use again; keeping it",
        extra=dict(extra or {}),
    )
    return True


# ---------------------------------------------------------------------------- SDKs
async def blocking(
    step: str,
    call: Callable[..., T],
    *args: Any,
    errors: tuple[type[BaseException], ...] = (Exception,),
    secrets: tuple[str | None, ...] = (),
    raise_as: type[RotationError] = RotationError,
) -> T:
    """``call(*args)`` in a thread; ``errors`` become ``raise_as`` naming ``step``.

    The message is one scrubbed line of the error: none of ``secrets`` appears in it.
    """
    try:
        return await asyncio.to_thread(call, *args)
    except errors as exc:
        raise raise_as(f"{step}: {scrub(str(exc), *secrets)}") from None


# ---------------------------------------------------------------------------- encryption_key
def load_factory(spec: str, where: str) -> Callable[..., Any]:
    """The callable an import reference ``"package.module:attribute"`` names.

    The attribute may be dotted (``module:Class.method``). Not of that form, not
    importable, no such attribute or not callable: a :class:`RotatorConfigError`
    starting with ``where`` (it names the module, never an error's text).
    """
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RotatorConfigError(f"{where} is not an import reference 'package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RotatorConfigError(
            f"{where}: cannot import {module_name}: {type(exc).__name__}"
        ) from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise RotatorConfigError(f"{where}: {module_name} has no {attr}")
    if not callable(obj):
        raise RotatorConfigError(f"{where} is not callable (a factory)")
    factory: Callable[..., Any] = obj
    return factory


# ---------------------------------------------------------------------------- aws, smtp
# seconds_from: a duration option within bounds; rotation_state: the engine's state of
# the type, for a step that must know it (unreadable is an error).
def seconds_from(low: float, high: float) -> BeforeValidator:
    """A validator for a duration option (seconds, or 30s/5m/1h/1d) from ``low`` to ``high``."""

    def check(value: object) -> float:
        try:
            seconds = duration_seconds(value, positive=False)
        except ValueError:
            seconds = -1.0
        if not low <= seconds <= high:
            raise ValueError(f"must be a number of seconds from {low:g} to {high:g}")
        return seconds

    return BeforeValidator(check)


async def rotation_state(ctx: RotationContext, step: str, then: str = "") -> RotationState | None:
    """The engine's state of ``ctx``'s type (None: never rotated), for a step that must
    know it. Unreadable is a :class:`RotationError` (ending with ``then``), never None:
    a guess could make a credential still in use look like a leftover."""
    store = StateStore(ctx.client, ctx.kv_mount, ctx.env.env.state_prefix)
    try:
        state, _ = await store.read(ctx.type_name)
    except (VaultError, ValueError) as exc:
        raise RotationError(
            f"{ctx.type_name} {step}: cannot read the rotation state"
            f" {store.path(ctx.type_name).data} ({type(exc).__name__})"
            + (f"; {then}" if then else "")
        ) from None
    return state
