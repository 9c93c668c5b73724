"""API keys (``<mount>/data/api-keys``): rotate what Maily can, ask a person for the rest.

A third-party key (Stripe, SendGrid, OpenAI, ...) is never replaced by a random
string: only the vendor can issue one. Every key of the secret has a *kind*
(``types.api_keys.options.keys``; without it :data:`DEFAULT_KEYS`, the guide's)::

    api_keys:
      secret: api-keys
      grace: 1d
      options:
        scope: all               # all (default) | automatic | manual, see below
        keys:
          stripe:
            kind: manual
            instructions: "Roll the key in the Stripe dashboard (Developers > API keys)"
          sendgrid: {kind: manual}
          openai: manual         # shorthand for {kind: manual}
          internal_service: {kind: internal, bytes: 32}
          example: {kind: provider, provider: "package.module:Factory", base_url: ...}

- ``internal``  a key Maily issues itself: ``bytes`` of entropy, URL-safe, optional
                ``prefix``. Promotion keeps the previous one as ``<name>_previous``
                with ``<name>_previous_valid_until`` (RFC 3339), so verifiers accept
                both until the grace period is over (:func:`valid_internal_keys`);
                ``retire`` removes it.
- ``provider``  a vendor's key-management API through an :class:`ApiKeyProvider`
                (``Factory(name=..., options=<the key's other settings>, ctx=...)``).
                ``create_pending`` asks the vendor for a new key (stored in the rotation
                state before anything else), ``verify`` uses it, ``promote`` writes it
                (the old one stays as ``<name>_previous`` during the grace period),
                ``retire`` revokes the old key at the vendor (by its key id when one was
                recorded, else by value). A failed verification revokes the new key.
- ``manual``    (the default, also for keys in the secret but not configured) never
                written by a rotation: when due, the run reports ``action_required``
                with ``instructions`` and the command that stores the new value,
                ``mailyctl secrets set api-keys <name>`` (``./mailyctl.py`` in a checkout).

Per-key schedule: non-secret KV custom metadata ``rotated_at.<name>`` (and
``rotated_by.<name>``; ``key_id.<name>`` for provider keys), written by ``promote`` and
by ``secrets set``, so a key stored by hand counts as rotated; without a record a key is
as old as the secret. A key is due when older than the type's interval (a manual key
also when not set). When the type runs, its due automatable keys are rotated (all of
them when none is due) and its due manual keys reported (all of them when the scope has
no automatable key and none is due).

The engine records one outcome per type, and ``ActionRequired`` can only come before
anything changed, so: ``scope: automatic`` rotates internal and provider keys only;
``scope: manual`` never changes anything and raises ``ActionRequired`` for the due manual
keys (its schedule is the age of the oldest one); ``scope: all`` reports due manual keys
with ``ActionRequired`` when no automatable key is to be rotated, else by
:meth:`ApiKeysRotator.follow_up` after promotion (an engine hook; until the engine calls
it, a warning). Two types over the same secret (``api_keys`` with ``scope: automatic``,
then ``api_keys_manual`` with ``rotator: api_keys`` and ``scope: manual``) give one run
that records ``rotated`` for the automatable keys and ``action_required`` for the rest.

Nothing here logs or raises with a key value in the message.
"""

from __future__ import annotations

import importlib
import inspect
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, Self, runtime_checkable

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError

from ...api_keys import (
    META_KEY_ID,
    META_ROTATED_AT,
    META_ROTATED_BY,
    PREVIOUS,
    RESERVED_SUFFIXES,
    VALID_UNTIL,
    Snapshot,
    fingerprint,
    iso_seconds,
    key_name_problem,
    read_snapshot,
    shift,
    update_custom_metadata,
)
from ...cliname import command
from ...errors import PermissionDenied
from ..base import (
    ActionRequired,
    RotationContext,
    RotationError,
    Rotator,
    RotatorConfigError,
    parse_time,
)
from ..config import TypeConfig, format_duration
from ..kit import RotatorOptions, cas_update, int_from, one_of, option_message, scrub

Kind = Literal["internal", "provider", "manual"]
Scope = Literal["all", "automatic", "manual"]
KINDS: tuple[Kind, ...] = ("internal", "provider", "manual")
SCOPES: tuple[Scope, ...] = ("all", "automatic", "manual")
ROTATOR_NAME = "api_keys"


PROVIDER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
MIN_BYTES, MAX_BYTES = 16, 256

#: The keys of the integration guide, used when ``options.keys`` is not configured.
DEFAULT_KEYS: dict[str, dict[str, Any]] = {
    "stripe": {
        "kind": "manual",
        "instructions": "Roll the secret key in the Stripe dashboard (Developers > API keys)",
    },
    "sendgrid": {
        "kind": "manual",
        "instructions": "Create a new API key in SendGrid (Settings > API Keys); delete the"
        " old one once Maily uses the new one",
    },
    "openai": {
        "kind": "manual",
        "instructions": "Create a new secret key in the OpenAI platform (API keys); revoke"
        " the old one once Maily uses the new one",
    },
    "internal_service": {"kind": "internal", "bytes": 32},
}


# ---------------------------------------------------------------------------- providers
@runtime_checkable
class ApiKeyProvider(Protocol):
    """A vendor's key-management API. Never put a key value into an exception message.

    ``create_key`` issues a new key (``current`` is the key in use, or None) and returns
    it with the vendor's id of it (None when the vendor has none); ``verify`` uses the
    new key for real and raises (or returns False) when it does not work; ``revoke``
    revokes a key by the id ``create_key`` returned, or by its value when no id was
    recorded, and must succeed when the key is already revoked. An optional
    ``async aclose()`` is called after each step.
    """

    async def create_key(self, current: str | None) -> tuple[str, str | None]: ...

    async def verify(self, new_key: str) -> bool | None: ...

    async def revoke(self, key_id_or_key: str) -> None: ...


def load_provider(spec: KeySpec, ctx: RotationContext) -> ApiKeyProvider:
    """``Factory(name=, options=, ctx=)`` of the key's ``provider`` import path."""
    module_name, _, attr = spec.provider.partition(":")
    where = f"api key {spec.name}: provider {spec.provider!r}"
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise RotatorConfigError(f"{where} cannot be imported: {exc}") from None
    except AttributeError:
        raise RotatorConfigError(f"{where}: {module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise RotatorConfigError(f"{where} is not callable")
    try:
        provider = obj(name=spec.name, options=dict(spec.settings), ctx=ctx)
    except Exception as exc:
        raise RotatorConfigError(f"{where} could not be set up: {type(exc).__name__}") from None
    if not isinstance(provider, ApiKeyProvider):
        raise RotatorConfigError(f"{where} lacks create_key, verify or revoke")
    return provider


async def _close(provider: ApiKeyProvider) -> None:
    aclose = getattr(provider, "aclose", None)
    if aclose is not None:
        result = aclose()
        if inspect.isawaitable(result):
            await result


async def _vendor(
    ctx: RotationContext,
    specs: Mapping[str, KeySpec],
    name: str,
    what: str,
    method: str,
    arg: str | None,
    *values: str | None,
) -> Any:
    """Load the provider of key ``name``, await ``provider.<method>(arg)``, close it.

    Any failure of the call is a RotationError naming the key, the provider and ``what``
    it could not do, with none of ``values`` (key values) in it.
    """
    spec = specs.get(name)
    if spec is None or spec.kind != "provider":
        raise RotatorConfigError(
            f"api key {name} was rotated through a provider but is no longer configured"
            " as kind provider"
        )
    provider = load_provider(spec, ctx)
    try:
        return await getattr(provider, method)(arg)
    except Exception as exc:
        detail = scrub(str(exc), *values) if str(exc).strip() else ""
        raise RotationError(
            f"api key {spec.name}: provider {spec.provider} could not {what}:"
            f" {type(exc).__name__}" + (f": {detail}" if detail else "")
        ) from None
    finally:
        await _close(provider)


# ---------------------------------------------------------------------------- options
#: a key's own settings; any other setting of a key is an option of its provider
KEY_SETTINGS = ("kind", "instructions", "bytes", "prefix", "provider")


def _key_name(name: object) -> str:
    problem = key_name_problem(str(name))
    if problem:
        raise ValueError(f": {problem}")  # "option keys.<name>: ..."
    return str(name)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value.strip()


def _prefix(value: object) -> str:
    if not isinstance(value, str) or len(value) > 32 or any(c.isspace() for c in value):
        raise ValueError("must be a short string without spaces")
    return value


@dataclass(frozen=True)
class KeySpec:
    """One key of ``options.keys`` (validated by :class:`ApiKeysOptions`)."""

    name: str = ""
    kind: Annotated[Kind, one_of(*KINDS)] = "manual"
    instructions: Annotated[str, BeforeValidator(_text)] = ""
    nbytes: Annotated[int, Field(alias="bytes"), int_from(MIN_BYTES, MAX_BYTES)] = 32
    prefix: Annotated[str, BeforeValidator(_prefix)] = ""
    # not a string: checked as an import path by _by_kind, as before
    provider: Annotated[str, BeforeValidator(lambda v: "" if v is None else str(v))] = ""
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)  # provider options
    configured: bool = True

    @property
    def automatic(self) -> bool:
        return self.kind != "manual"


def _key(raw: object) -> object:
    """``openai: manual`` is ``{kind: manual}``; other settings go to ``settings``."""
    if raw is None or isinstance(raw, str):
        return {} if raw is None else {"kind": raw}
    if not isinstance(raw, Mapping):
        raise ValueError("must be a mapping (kind: manual|internal|provider) or a kind")
    own = {k: v for k, v in raw.items() if k in KEY_SETTINGS}
    return {**own, "settings": {str(k): v for k, v in raw.items() if k not in KEY_SETTINGS}}


def _by_kind(spec: KeySpec) -> KeySpec:
    """The settings that depend on the kind (a message may start with the setting)."""
    if spec.kind == "provider":
        if not PROVIDER_RE.match(spec.provider):
            raise ValueError(".provider must be an import path 'package.module:Factory'")
    elif spec.provider:
        raise ValueError(".provider is only for kind provider")
    elif spec.settings:
        raise ValueError(f": unknown setting(s) {', '.join(sorted(spec.settings))}")
    return spec


def _key_map(value: object) -> object:
    if not isinstance(value, Mapping) or not value:
        raise ValueError("must map key names to their kind")
    return value


Keys = Annotated[
    dict[
        Annotated[str, BeforeValidator(_key_name)],
        Annotated[KeySpec, BeforeValidator(_key), AfterValidator(_by_kind)],
    ],
    BeforeValidator(_key_map),
    AfterValidator(lambda keys: {n: replace(s, name=n) for n, s in keys.items()}),
]


class ApiKeysOptions(RotatorOptions):
    """``types.<name>.options`` of an ``api_keys`` type."""

    scope: Annotated[Scope, one_of(*SCOPES)] = "all"
    keys: Keys = Field(DEFAULT_KEYS, validate_default=True)

    @classmethod
    def problems(cls, options: Mapping[str, Any]) -> tuple[Self | None, list[str]]:
        """As :meth:`RotatorOptions.problems`, naming a key's setting by its path
        (``option keys.stripe.kind must be one of ...``)."""
        try:
            return cls.model_validate(dict(options)), []
        except ValidationError as exc:
            errors = exc.errors()
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        out = [f"unknown option(s) {', '.join(unknown)}; valid: keys, scope"] if unknown else []
        for e in errors:
            if e["type"] != "extra_forbidden":
                where, msg = ".".join(str(p) for p in e["loc"] if p != "[key]"), option_message(e)
                out.append(f"option {where}{'' if msg[:1] in '.:' else ' '}{msg}")
        return None, out


def api_keys_options(options: Mapping[str, Any]) -> ApiKeysOptions:
    """The options of an ``api_keys`` type, or a RotatorConfigError naming each problem."""
    opts, problems = ApiKeysOptions.problems(options)
    if opts is None:
        raise RotatorConfigError(f"api_keys: {'; '.join(problems)}")
    return opts


def key_specs(options: Mapping[str, Any]) -> dict[str, KeySpec]:
    """The configured keys (``options.keys``, else :data:`DEFAULT_KEYS`)."""
    return api_keys_options(options).keys


def uses_api_keys_rotator(type_name: str, tc: TypeConfig) -> bool:
    return (tc.rotator or type_name) == ROTATOR_NAME


# ---------------------------------------------------------------------------- the rotator
@dataclass
class _Plan:
    automatic: list[KeySpec]
    manual: list[KeySpec]


class ApiKeysRotator(Rotator):
    """``api_keys``: internal keys rotated, vendor keys through providers, the rest by hand."""

    type_name = ROTATOR_NAME
    # an internal key keeps one previous value: a second rotation within the grace
    # period would cut off holders of the first
    two_slots = True

    # -- configuration ---------------------------------------------------------------
    def _config(self, ctx: RotationContext) -> tuple[dict[str, KeySpec], Scope]:
        opts = api_keys_options(ctx.options)
        return opts.keys, opts.scope

    @staticmethod
    def _in_scope(spec: KeySpec, scope: Scope) -> bool:
        return scope == "all" or (scope == "automatic") == spec.automatic

    async def _plan(
        self, ctx: RotationContext, step: str
    ) -> tuple[dict[str, KeySpec], Snapshot, _Plan]:
        """The keys to rotate now and the manual ones to report; none to rotate: the
        manual ones are the outcome (ActionRequired)."""
        specs, scope = self._config(ctx)
        snap = await self._read(ctx, step)
        every = dict(specs)
        for name in snap.unknown_keys(specs):
            every[name] = KeySpec(name=name, configured=False)
        in_scope = [s for s in every.values() if self._in_scope(s, scope)]
        interval = ctx.env.interval(ctx.type_name)
        now = ctx.now()

        def due(s: KeySpec) -> bool:
            if s.kind == "manual" and not snap.data.get(s.name):
                return True  # never set
            last = snap.rotated_at(s.name)
            return last is None or now >= last + interval

        auto = [s for s in in_scope if s.automatic]
        manual = [s for s in in_scope if not s.automatic]
        # The engine runs this type when it is due or asked for explicitly: rotate the
        # automatable keys that are due, else all of them. Manual keys: the due ones;
        # a scope without automatable keys asked for explicitly lists all of them.
        plan = _Plan(
            automatic=[s for s in auto if due(s)] or auto,
            manual=[s for s in manual if due(s)] or ([] if auto else manual),
        )
        if not plan.automatic:
            raise ActionRequired(self.manual_message(ctx, plan.manual, snap))
        return specs, snap, plan

    async def _read(self, ctx: RotationContext, step: str) -> Snapshot:
        path = ctx.secret_path()
        try:
            return await read_snapshot(ctx.client, path)
        except PermissionDenied:
            raise RotatorConfigError(
                f"api_keys {step}: this token may not read {path.data} or its metadata"
            ) from None

    def manual_message(self, ctx: RotationContext, manual: list[KeySpec], snap: Snapshot) -> str:
        """What a person has to do, per manual key (names, times, instructions; no values)."""
        secret = ctx.type_config.secret
        env_flag = (
            f" --env {ctx.env.name}" if ctx.env.name != ctx.env.config.defaults.environment else ""
        )
        now = ctx.now()
        items = []
        for s in manual:
            last = snap.rotated_at(s.name)
            if not snap.data.get(s.name):
                when = "not set"
            elif last is None:
                when = "never rotated"
            else:
                when = f"last rotated {last:%Y-%m-%d}, {(now - last).days} days ago"
            todo = s.instructions or (
                f"Issue a new {s.name} key with its provider"
                + ("" if s.configured else " (not in the rotation config: kind manual)")
            )
            items.append(
                f"{s.name} ({when}): {todo.rstrip('. ')}; then store it with:"
                f" {command('secrets', 'set', secret, s.name)}{env_flag}"
            )
        return (
            f"{len(manual)} API key(s) in {ctx.secret_path().data} can only be rotated by a"
            " person (rotation never replaces them): " + " | ".join(items)
        )

    # -- the protocol ----------------------------------------------------------------
    async def check(self, ctx: RotationContext) -> None:
        specs, scope = self._config(ctx)
        if scope == "automatic" and not any(s.automatic for s in specs.values()):
            raise RotatorConfigError(
                "api_keys: scope automatic, but no key is of kind internal or provider"
            )
        for s in specs.values():
            if s.kind == "provider" and self._in_scope(s, scope):
                await _close(load_provider(s, ctx))
        await self._read(ctx, "check")

    async def created_at(self, ctx: RotationContext) -> datetime | None:
        """The time the oldest key in scope was last rotated (or set): the schedule's
        baseline until the type's first successful rotation (for ``scope: manual``,
        always)."""
        try:
            specs, scope = self._config(ctx)
            snap = await self._read(ctx, "created_at")
        except RotationError:  # the engine's default: the secret's age
            return await super().created_at(ctx)
        names = [n for n, s in specs.items() if self._in_scope(s, scope)]
        if scope == "manual" and any(not snap.data.get(n) for n in names):
            return None  # a manual key that is not set at all: due now
        if scope != "automatic":
            names += snap.unknown_keys(specs)
        times = [t for t in (snap.rotated_at(n) for n in names) if t is not None]
        return min(times) if times else snap.created

    async def describe(self, ctx: RotationContext) -> str:
        _, _, plan = await self._plan(ctx, "describe")
        grace = format_duration(ctx.grace) if ctx.grace else "0s"
        parts = [
            f"{s.name} ({'new random key' if s.kind == 'internal' else 'via ' + s.provider})"
            for s in plan.automatic
        ]
        text = (
            f"rotate {', '.join(parts)} in {ctx.secret_path().data}; previous keys stay"
            f" valid for {grace}"
        )
        if plan.manual:
            text += f"; then ask a person for {', '.join(s.name for s in plan.manual)}"
        return text

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        specs, snap, plan = await self._plan(ctx, "create_pending")
        keys: dict[str, dict[str, Any]] = {}
        try:
            for s in plan.automatic:
                current = snap.data.get(s.name)
                current = current if isinstance(current, str) and current else None
                entry: dict[str, Any] = {
                    "kind": s.kind,
                    "old_fp": fingerprint(current) if current else None,
                }
                if s.kind == "internal":
                    entry["value"] = s.prefix + secrets.token_urlsafe(s.nbytes)
                else:
                    new, key_id = await _vendor(
                        ctx, specs, s.name, "create a key", "create_key", current, current
                    )
                    if not isinstance(new, str) or not new:
                        raise RotationError(
                            f"api key {s.name}: provider {s.provider} returned no key"
                        )
                    entry.update(
                        value=new,
                        key_id=str(key_id) if key_id else None,
                        old_key_id=snap.custom.get(META_KEY_ID + s.name),
                    )
                keys[s.name] = entry
        except Exception:
            # the state was not written: revoke what vendors issued already
            await self._revoke_new(ctx, specs, keys, swallow=True)
            raise
        ctx.log.info(
            "api keys: new keys created",
            extra={"type": ctx.type_name, "keys": sorted(keys), "rotation_id": ctx.rotation_id},
        )
        return {"keys": keys, "manual_due": [s.name for s in plan.manual]}

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Nothing to do: Vault itself is the target of an internal key, and a provider
        key exists at the vendor since ``create_pending``."""
        return None

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        specs, _ = self._config(ctx)
        for name, entry in self._keys(pending):
            value = entry.get("value")
            if not isinstance(value, str) or not value:
                raise RotationError(f"api key {name}: the pending key is empty")
            if entry.get("kind") != "provider":
                continue
            ok = await _vendor(ctx, specs, name, "verify the new key", "verify", value, value)
            if ok is False:
                raise RotationError(f"api key {name}: the vendor does not accept the new key")

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        specs, _ = self._config(ctx)
        await self._revoke_new(ctx, specs, dict(self._keys(pending)), swallow=False)

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        keys = dict(self._keys(pending))
        until = ctx.now() + ctx.grace

        def change(data: dict[str, Any]) -> dict[str, Any] | None:
            todo = {n: e["value"] for n, e in keys.items() if data.get(n) != e["value"]}
            if not todo:
                return None  # promoted already (a resumed rotation)
            for name, value in todo.items():
                shift(data, name, value, until)
            return data

        version, _ = await cas_update(ctx, "promote", change)
        meta: dict[str, str | None] = {}
        for name, entry in keys.items():
            meta[META_ROTATED_AT + name] = iso_seconds(ctx.now())
            meta[META_ROTATED_BY + name] = f"rotation {ctx.rotation_id}"
            if entry.get("kind") == "provider":
                meta[META_KEY_ID + name] = entry.get("key_id") or None
        await update_custom_metadata(ctx.client, ctx.secret_path(), meta)
        manual = pending.get("manual_due") or []
        if manual:
            ctx.log.warning(
                "api keys: manual keys are due and need a person: %s",
                ", ".join(manual),
                extra={"type": ctx.type_name, "keys": manual},
            )
        return version

    async def follow_up(self, ctx: RotationContext, pending: dict[str, Any]) -> str | None:
        """After promotion: the manual keys of this run that need a person (or None).

        For an engine hook that reports ``action_required`` for a type whose
        automatable part was rotated.
        """
        names = [str(n) for n in pending.get("manual_due") or []]
        if not names:
            return None
        specs, _ = self._config(ctx)
        snap = await self._read(ctx, "follow_up")
        manual = [specs.get(n) or KeySpec(name=n, configured=False) for n in names]
        return self.manual_message(ctx, manual, snap)

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        items = [
            {"name": name, **{k: entry.get(k) for k in ("kind", "old_fp", "old_key_id")}}
            for name, entry in self._keys(pending)
            if entry.get("old_fp") or entry.get("old_key_id")  # else: there was none
        ]
        return {"keys": items} if items else None

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> None:
        specs, _ = self._config(ctx)
        snap = await self._read(ctx, "retire")
        now = ctx.now()
        drop: list[str] = []
        for item in retiring.get("keys") or []:
            name = str(item.get("name"))
            previous = snap.data.get(name + PREVIOUS)
            same = isinstance(previous, str) and fingerprint(previous) == item.get("old_fp")
            if item.get("kind") == "provider":
                target = item.get("old_key_id") or (previous if same else None)
                if target:
                    what = "revoke the old key"
                    await _vendor(ctx, specs, name, what, "revoke", target, previous)
                else:
                    ctx.log.warning(
                        "api keys: the old %s key is no longer known; revoke it at the vendor",
                        name,
                        extra={"type": ctx.type_name},
                    )
            until = parse_time(snap.data.get(name + VALID_UNTIL))
            # an expired previous internal key is dead anyway; a provider key's previous
            # value stays until the retirement that revokes it
            expired = item.get("kind") == "internal" and until is not None and until <= now
            if same or expired:
                drop.append(name)
        if not drop:
            return

        def change(data: dict[str, Any]) -> dict[str, Any] | None:
            fields = [n + s for n in drop for s in RESERVED_SUFFIXES if n + s in data]
            for f in fields:
                del data[f]
            return data if fields else None  # None: retired already

        await cas_update(ctx, "retire", change)
        ctx.log.info(
            "api keys: previous keys retired",
            extra={"type": ctx.type_name, "keys": drop, "rotation_id": ctx.rotation_id},
        )

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def _keys(pending: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        keys = pending.get("keys") or {}
        return [(str(n), e) for n, e in keys.items() if isinstance(e, dict)]

    async def _revoke_new(
        self,
        ctx: RotationContext,
        specs: Mapping[str, KeySpec],
        keys: Mapping[str, Mapping[str, Any]],
        *,
        swallow: bool,
    ) -> None:
        """Revoke the new vendor keys of ``keys`` (rollback, or a failed create_pending):
        every one is tried; the failures are raised together, or logged if ``swallow``."""
        errors: list[str] = []
        for name, entry in keys.items():
            target, value = entry.get("key_id") or entry.get("value"), entry.get("value")
            if entry.get("kind") != "provider" or not target:
                continue
            try:
                await _vendor(ctx, specs, name, "revoke the new key", "revoke", str(target), value)
            except RotationError as exc:
                errors.append(str(exc))
        if errors and not swallow:
            raise RotationError("; ".join(errors))
        if errors:
            ctx.log.error(
                "api keys: new keys could not be revoked: %s",
                "; ".join(errors),
                extra={"type": ctx.type_name},
            )
