"""The transit encryption key (``maily-enc-key``): a new key version, then a rewrap.

Transit never hands out key material: "rotating" adds a key version that every
new encryption uses, while ciphertexts of older versions keep decrypting until
the key's ``min_decryption_version`` is raised. So one rotation is:

1. ``create_pending``  the version the key has now (N) and the one the rotation makes
                       (N+1), plus a probe ciphertext of version N (no secret: the
                       probe is random and only its SHA-256 is kept);
2. ``apply``           ``POST <mount>/keys/<key>/rotate``, once per rotation: when the
                       key already has version N+1 (a resumed rotation) nothing is done;
3. ``verify``          encrypt + decrypt with the new version, and decrypt the probe of
                       version N (the previous version still works);
4. ``promote``         rewrap every stored ciphertext below N+1 through the configured
                       ``rewrap_sources`` (passes until one finds nothing left to
                       rewrap); what remains is recorded in
                       ``<mount>/data/<state_prefix>/_rewrap/<type>`` and logged. An
                       incomplete rewrap fails the step (the run reports it; the next
                       run resumes with the rewrap; the key is not rotated again).

After the grace period, ``retire`` raises ``min_decryption_version`` to N+1, and
only if a final sweep over every source finds no ciphertext below N+1 (it rewraps
stragglers first). It is never raised without rewrap sources, never lowered,
never raised while any source is incomplete: data would become unreadable.
``rollback`` cannot remove a key version; it does nothing (old versions still decrypt).

Options (``types.encryption_key.options``)::

    key: maily-enc-key          # default: from secret "<mount>/keys/<key>"
    mount: transit              # default: from secret, else "transit"
    rewrap_sources:             # where ciphertexts of this key are stored
      - myapp.storage:message_bodies_source           # a factory, "module:attribute"
      - {source: myapp.storage:table_source, name: attachments,
         options: {table: attachments}}               # factory(ctx, **options)
      - registered-name                               # register_ciphertext_source()
    rewrap_batch_size: 500      # optional: ciphertexts per batch asked of a source
    rewrap_passes: 3            # optional: passes per source before giving up
    raise_min_decryption_version: true   # optional; false: old versions stay usable

A source is whatever implements :class:`~maily_secrets.rotation.rewrap.CiphertextSource`
(the caller's own storage: a table, a bucket, a dict); the factory gets the
:class:`RotationContext`. ``rotation/rewrap.py`` holds the sources and the rewrap loop.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, PlainValidator

from ...errors import (
    CiphertextVersionTooOld,
    InvalidPath,
    SecretNotFound,
    VaultError,
)
from ...paths import KV2Path
from ...vault.transit import Transit
from ..base import RotationContext, RotationError, Rotator, RotatorConfigError, parse_time
from ..kit import Flag, RotatorOptions, int_from
from ..rewrap import (
    DEFAULT_BATCH,
    DEFAULT_PASSES,
    RewrapReport,
    SourceReport,
    SourceSpec,
    ciphertext_version,
    error_text,
    opened,
    resolve_source_factory,
    rewrap_source,
)

DEFAULT_MOUNT = "transit"
_SECRET = re.compile(r"(?P<mount>[^\s]+?)/keys/(?P<key>[^/\s]+)")


# ---------------------------------------------------------------------------- options
def _named(what: str) -> BeforeValidator:
    def check(value: object) -> str:
        if not isinstance(value, str) or not value.strip("/"):
            raise ValueError(f"must name the {what}")
        return value.strip("/")

    return BeforeValidator(check)


def _source_specs(value: object) -> tuple[SourceSpec, ...]:
    """``rewrap_sources``: source names, or ``{source, name, options}`` mappings."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list")
    specs: list[SourceSpec] = []
    bad: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            specs.append(SourceSpec(item, item))
        elif (
            isinstance(item, Mapping)
            and isinstance(ref := item.get("source"), str)
            and set(item) <= {"source", "name", "options"}
            and isinstance(opts := item.get("options") or {}, Mapping)
        ):
            specs.append(SourceSpec(ref, str(item.get("name") or ref), dict(opts)))
        else:
            bad.append(f"rewrap_sources[{i}]")
    if bad:
        raise ValueError(
            "must list source names or {source: module:factory, name: ..., options: {...}}"
            f" mappings (neither: {', '.join(bad)})"
        )
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"names {', '.join(dupes)} more than once")
    return tuple(specs)


class TransitOptions(RotatorOptions):
    """``types.encryption_key.options`` (``key``/``mount`` default to the secret's)."""

    key: Annotated[str, _named("transit key")] = ""
    mount: Annotated[str, _named("transit mount")] = DEFAULT_MOUNT
    rewrap_sources: Annotated[tuple[SourceSpec, ...], PlainValidator(_source_specs)] = ()
    rewrap_batch_size: Annotated[int, int_from(1, 100_000)] = DEFAULT_BATCH
    rewrap_passes: Annotated[int, int_from(2, 100)] = DEFAULT_PASSES
    raise_min_decryption_version: Flag = True

    @property
    def where(self) -> str:
        return f"{self.mount}/keys/{self.key}"

    @property
    def raises_min(self) -> bool:
        """Whether retire raises min_decryption_version (never without rewrap sources)."""
        return bool(self.rewrap_sources) and self.raise_min_decryption_version

    @classmethod
    def resolve(cls, ctx: RotationContext) -> tuple[Self | None, list[str]]:
        """The options, or None and one line per problem; the secret may name the key."""
        m = _SECRET.fullmatch(ctx.type_config.secret.strip("/"))
        # an empty or null key/mount is not set: the secret's (or the default) applies
        given = {k: v for k, v in ctx.options.items() if v or k not in ("key", "mount")}
        opts, problems = cls.problems({**(m.groupdict() if m else {}), **given})
        if not m and not given.get("key"):
            problems.append(
                "no transit key: set option key, or secret to '<mount>/keys/<key>'"
                f" (it is {ctx.type_config.secret!r})"
            )
        return (None if problems else opts), problems

    @classmethod
    def of(cls, ctx: RotationContext, step: str = "") -> Self:
        """The options (see :meth:`resolve`), or a :class:`RotatorConfigError` naming them."""
        opts, problems = cls.resolve(ctx)
        if opts is None:
            raise RotatorConfigError(f"encryption_key {step}: {'; '.join(problems)}")
        return opts


def _key_of(ctx: RotationContext, state: Mapping[str, Any]) -> tuple[Transit, str, str]:
    """The transit engine, key and ``<mount>/keys/<key>`` of a pending or retiring state."""
    mount, key = str(state["mount"]), str(state["key"])
    return Transit(ctx.client, mount), key, f"{mount}/keys/{key}"


# ---------------------------------------------------------------------------- the rotator
class TransitKeyRotator(Rotator):
    """``encryption_key``: rotate a transit key, rewrap, then retire its old versions."""

    type_name = "encryption_key"

    # -- schedule / dry run ----------------------------------------------------------
    async def created_at(self, ctx: RotationContext) -> datetime | None:
        """When the key's latest version was made (the key's creation, if never rotated)."""
        opts, _ = TransitOptions.resolve(ctx)
        if opts is None:
            return None
        try:
            info = await Transit(ctx.client, opts.mount).read_key(opts.key)
        except (VaultError, ValueError):
            return None
        keys = info.get("keys") or {}
        if not isinstance(keys, Mapping) or not keys:
            return None
        latest = str(max(int(k) for k in keys))
        value = keys[latest]
        if isinstance(value, Mapping):  # asymmetric keys: {creation_time: RFC 3339, ...}
            return parse_time(value.get("creation_time"))
        try:
            return datetime.fromtimestamp(int(value), UTC)
        except (TypeError, ValueError, OverflowError):
            return None

    async def check(self, ctx: RotationContext) -> None:
        opts, problems = TransitOptions.resolve(ctx)
        if opts is not None:
            for spec in opts.rewrap_sources:
                try:
                    resolve_source_factory(spec.ref)
                except RotatorConfigError as exc:
                    problems.append(str(exc))
            try:
                info = await Transit(ctx.client, opts.mount).read_key(opts.key)
            except (SecretNotFound, InvalidPath) as exc:
                problems.append(str(exc))
            else:
                if info.get("derived") and opts.rewrap_sources:
                    problems.append(
                        f"transit key {opts.key} is derived: rewrap needs a context per"
                        " ciphertext, which rewrap sources do not give"
                    )
                if int(info.get("latest_version") or 0) < 1:
                    problems.append(f"transit key {opts.key} reports no version")
        if problems or opts is None:
            raise RotatorConfigError(f"encryption_key rotation cannot start: {'; '.join(problems)}")

    async def describe(self, ctx: RotationContext) -> str:
        opts, problems = TransitOptions.resolve(ctx)
        if opts is None:
            return f"cannot rotate encryption_key: {'; '.join(problems)}"
        try:
            kv = await Transit(ctx.client, opts.mount).key_versions(opts.key)
        except VaultError as exc:
            return f"cannot rotate encryption_key: {exc}"
        head = f"rotate transit key {opts.where} (v{kv.latest} -> v{kv.latest + 1})"
        if not opts.rewrap_sources:
            return f"{head}; no rewrap sources: older versions stay decryptable"
        names = ", ".join(s.name for s in opts.rewrap_sources)
        tail = (
            f", then raise min_decryption_version to v{kv.latest + 1} after the grace period"
            if opts.raises_min
            else ""
        )
        return f"{head}; rewrap the ciphertexts in {names}{tail}"

    # -- the protocol ----------------------------------------------------------------
    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        opts = TransitOptions.of(ctx, "create_pending")
        transit = Transit(ctx.client, opts.mount)
        try:
            info = await transit.read_key(opts.key)
        except (SecretNotFound, InvalidPath) as exc:
            raise RotatorConfigError(f"encryption_key create_pending: {exc}") from None
        latest = int(info.get("latest_version") or 0)
        probe = secrets.token_bytes(24)
        probe_ct = await transit.encrypt(opts.key, probe)
        if ciphertext_version(probe_ct) != latest:
            raise RotationError(
                f"encryption_key create_pending: {opts.where} encrypted with version"
                f" {ciphertext_version(probe_ct)}, not its latest v{latest}"
                " (min_encryption_version?)"
            )
        return {
            "mount": opts.mount,
            "key": opts.key,
            "from_version": latest,
            "new_version": latest + 1,
            "probe_ciphertext": probe_ct,
            "probe_sha256": hashlib.sha256(probe).hexdigest(),
        }

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        transit, key, where = _key_of(ctx, pending)
        before, target = int(pending["from_version"]), int(pending["new_version"])
        kv = await transit.key_versions(key)
        if kv.latest >= target:
            ctx.log.info(
                "encryption_key: key already has the new version (not rotated again)",
                extra={"key": key, "version": kv.latest, "rotation_id": ctx.rotation_id},
            )
            return
        if kv.latest != before:
            raise RotationError(
                f"encryption_key apply: {where} is at version {kv.latest}, below"
                f" the v{before} this rotation started from (was it deleted and re-created?)"
            )
        made = await transit.rotate_key(key)
        ctx.log.info(
            "encryption_key: key rotated",
            extra={"key": key, "version": made, "rotation_id": ctx.rotation_id},
        )

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        transit, key, where = _key_of(ctx, pending)
        target = int(pending["new_version"])
        try:
            kv = await transit.key_versions(key)
            if kv.latest < target:
                raise RotationError(
                    f"encryption_key verify: {where} is at v{kv.latest}, not v{target}"
                )
            probe = secrets.token_bytes(24)
            ct = await transit.encrypt(key, probe)
            if (ciphertext_version(ct) or 0) < target:
                raise RotationError(
                    f"encryption_key verify: {where} still encrypts with v{ciphertext_version(ct)}"
                )
            if await transit.decrypt(key, ct) != probe:
                raise RotationError(
                    f"encryption_key verify: a v{ciphertext_version(ct)} ciphertext of {where}"
                    " decrypted to something else"
                )
            old = await transit.decrypt(key, str(pending["probe_ciphertext"]))
        except CiphertextVersionTooOld:
            raise RotationError(
                f"encryption_key verify: ciphertexts of v{pending['from_version']} of {where}"
                " no longer decrypt (min_decryption_version was raised)"
            ) from None
        except VaultError as exc:
            raise RotationError(f"encryption_key verify: {error_text(exc)}") from None
        if hashlib.sha256(old).hexdigest() != pending["probe_sha256"]:
            raise RotationError(
                f"encryption_key verify: the v{pending['from_version']} probe of {where}"
                " decrypted to something else"
            )
        ctx.log.info(
            "encryption_key: new version encrypts and decrypts; the previous one decrypts",
            extra={"key": key, "version": kv.latest},
        )

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        """Rewrap every source to the new version; fail (resumably) unless complete."""
        opts = TransitOptions.of(ctx, "promote")
        transit, key, where = _key_of(ctx, pending)
        target = int(pending["new_version"])
        if (pending["mount"], key) != (opts.mount, opts.key):
            raise RotatorConfigError(
                f"encryption_key promote: this rotation is of {where}, the"
                f" configuration now names {opts.where}"
            )
        if opts.rewrap_sources:
            report = await self._rewrap_all(ctx, opts, target)
            await self._record(ctx, opts, report, "promote", raised=False)
            if not report.complete:
                kv = await transit.key_versions(key)
                raise RotationError(
                    f"encryption_key promote: rewrap to v{target} of {where} is"
                    f" incomplete: {report.summary()}; min_decryption_version stays"
                    f" {kv.min_decryption} (older ciphertexts still decrypt); the next run"
                    " resumes the rewrap"
                )
        return (await transit.key_versions(key)).latest

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """A transit key version cannot be removed: nothing to undo (old versions decrypt)."""
        ctx.log.warning(
            "encryption_key: a key version cannot be removed; new encryptions use it and"
            " older versions still decrypt",
            extra={"key": pending.get("key"), "version": pending.get("new_version")},
        )

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        opts, _ = TransitOptions.resolve(ctx)
        if opts is None or not opts.raises_min:
            return None
        return {
            "mount": pending["mount"],
            "key": pending["key"],
            "min_decryption_version": int(pending["new_version"]),
        }

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> None:
        """Raise min_decryption_version, after a final sweep finds nothing left below it."""
        opts = TransitOptions.of(ctx, "retire")
        transit, key, where = _key_of(ctx, retiring)
        target = int(retiring["min_decryption_version"])
        kv = await transit.key_versions(key)
        if kv.min_decryption >= target:
            return  # raised already (or by someone else, higher)
        if kv.latest < target:
            raise RotationError(f"encryption_key retire: {where} has no v{target}")
        if (retiring["mount"], key) != (opts.mount, opts.key) or not opts.raises_min:
            ctx.log.warning(
                "encryption_key: min_decryption_version not raised: the configuration no longer"
                " names rewrap sources for this key (or raise_min_decryption_version is off)",
                extra={"key": key, "version": target},
            )
            return
        sweep = await self._rewrap_all(ctx, opts, target)
        if not sweep.complete:
            await self._record(ctx, opts, sweep, "retire", raised=False)
            raise RotationError(
                f"encryption_key retire: not raising min_decryption_version of {where} to"
                f" v{target}: {sweep.summary()}"
            )
        await transit.set_min_decryption_version(key, target)
        await self._record(ctx, opts, sweep, "retire", raised=True)
        ctx.log.info(
            "encryption_key: min_decryption_version raised",
            extra={"key": key, "version": target},
        )

    # -- rewrap ----------------------------------------------------------------------
    async def _rewrap_all(
        self, ctx: RotationContext, opts: TransitOptions, target: int
    ) -> RewrapReport:
        transit = Transit(ctx.client, opts.mount)
        report = RewrapReport(target)
        for spec in opts.rewrap_sources:
            rep = SourceReport(spec.name)
            report.sources.append(rep)
            try:
                async with opened(ctx, spec) as source:
                    await rewrap_source(
                        transit,
                        opts.key,
                        target,
                        source,
                        rep,
                        batch_size=opts.rewrap_batch_size,
                        passes=opts.rewrap_passes,
                    )
            except Exception as exc:  # a source is the caller's code: any error is its own
                rep.error = error_text(exc)
                rep.complete = False
            log = ctx.log.info if rep.complete else ctx.log.warning
            log(
                "encryption_key rewrap: %s",
                rep.summary(),
                extra={"key": opts.key, "target": target, "source": spec.name},
            )
        return report

    async def _record(
        self,
        ctx: RotationContext,
        opts: TransitOptions,
        report: RewrapReport,
        phase: str,
        *,
        raised: bool,
    ) -> None:
        """What the rewrap left: ``<state_prefix>/_rewrap/<type>`` (no secret in it)."""
        path = rewrap_record_path(ctx)
        doc = {
            "target_version": report.target,
            "complete": report.complete,
            "sources": {
                r.name: {k: v for k, v in asdict(r).items() if k != "name"} for r in report.sources
            },
            "rotation_id": ctx.rotation_id,
            "mount": opts.mount,
            "key": opts.key,
            "phase": phase,
            "min_decryption_version_raised": raised,
            "at": ctx.now().isoformat(),
        }
        try:
            await ctx.client.kv.update(path, lambda _cur: dict(doc))
        except VaultError as exc:
            ctx.log.warning(
                "encryption_key: the rewrap record %s was not written: %s",
                path.data,
                type(exc).__name__,
            )


def rewrap_record_path(ctx: RotationContext) -> KV2Path:
    """Where the last rewrap of ``ctx``'s type is recorded."""
    return KV2Path(ctx.kv_mount, f"{ctx.env.env.state_prefix}/_rewrap/{ctx.type_name}")
