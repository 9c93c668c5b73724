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

A source is whatever implements :class:`CiphertextSource` (the caller's own storage:
a table, a bucket, a dict); the factory gets the :class:`RotationContext`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from ...errors import (
    CiphertextVersionTooOld,
    InvalidCiphertext,
    InvalidPath,
    SecretNotFound,
    TransitBatchError,
    TransitContextError,
    VaultError,
)
from ...paths import KV2Path
from ...vault.transit import Transit
from ..base import RotationContext, RotationError, Rotator, RotatorConfigError, parse_time
from ..kit import Flag, RotatorOptions, int_from

DEFAULT_MOUNT = "transit"
DEFAULT_BATCH = 500
DEFAULT_PASSES = 3
_SECRET = re.compile(r"(?P<mount>[^\s]+?)/keys/(?P<key>[^/\s]+)")
_CT_VERSION = re.compile(r"vault:v(\d+):")
_ITEM_ERRORS = (InvalidCiphertext, CiphertextVersionTooOld, TransitContextError, TransitBatchError)
MAX_RECORDED_IDS = 20


# ---------------------------------------------------------------------------- sources
class Rewrapped(NamedTuple):
    """One rewrapped ciphertext to write back: ``(id, ciphertext, previous)``.

    ``previous`` is the ciphertext the source gave, for the source's own
    compare-and-set (``UPDATE ... SET ct = %(ciphertext)s WHERE id = %(id)s AND ct =
    %(previous)s``): a value the application changed meanwhile must not be overwritten.
    """

    id: Any
    ciphertext: str
    previous: str


@runtime_checkable
class CiphertextSource(Protocol):
    """Stored ciphertexts of one key, as the caller keeps them.

    ``batches`` yields every stored ciphertext once per call, in batches of
    ``(id, ciphertext)`` (about ``batch_size`` each; ids are the source's own);
    ``write`` stores rewrapped ciphertexts with the source's own concurrency
    control. The rotator never trusts ``write``: it scans again until a pass finds
    no ciphertext below the target version. An optional ``async def aclose()`` is
    awaited when the rotator is done with the source.
    """

    def batches(self, batch_size: int) -> AsyncIterator[Sequence[tuple[Any, str]]]: ...

    async def write(self, items: Sequence[Rewrapped]) -> None: ...


SourceFactory = Callable[..., CiphertextSource | Awaitable[CiphertextSource]]
_REGISTRY: dict[str, SourceFactory] = {}


def register_ciphertext_source(name: str, factory: SourceFactory) -> None:
    """Make ``name`` usable in ``rewrap_sources`` (``factory(ctx, **options)``)."""
    if not name or ":" in name:
        raise ValueError("a registered source name must be non-empty and have no ':'")
    _REGISTRY[name] = factory


def unregister_ciphertext_source(name: str) -> None:
    _REGISTRY.pop(name, None)


def resolve_source_factory(ref: str) -> SourceFactory:
    """A registered name, or ``"package.module:attribute"`` (dotted attribute allowed)."""
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise RotatorConfigError(
            f"rewrap source {ref!r} is neither registered (register_ciphertext_source) nor"
            " an import reference 'package.module:factory'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RotatorConfigError(
            f"rewrap source {ref!r}: cannot import {module_name}: {type(exc).__name__}"
        ) from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise RotatorConfigError(f"rewrap source {ref!r}: {module_name} has no {attr}")
    if not callable(obj):
        raise RotatorConfigError(f"rewrap source {ref!r} is not callable (a factory)")
    factory: SourceFactory = obj
    return factory


@dataclass(frozen=True)
class SourceSpec:
    ref: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)


def _source_specs(value: object) -> tuple[list[SourceSpec], list[str]]:
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], ["option rewrap_sources must be a list"]
    specs: list[SourceSpec] = []
    problems: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            specs.append(SourceSpec(item, item))
        elif isinstance(item, Mapping) and isinstance(item.get("source"), str):
            extra = set(item) - {"source", "name", "options"}
            opts = item.get("options") or {}
            if extra or not isinstance(opts, Mapping):
                problems.append(
                    f"rewrap_sources[{i}]: use {{source: module:factory, name: ..., options:"
                    " {...}}"
                )
                continue
            ref = str(item["source"])
            specs.append(SourceSpec(ref, str(item.get("name") or ref), dict(opts)))
        else:
            problems.append(f"rewrap_sources[{i}] must be a source name or a mapping")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"rewrap_sources names {', '.join(dupes)} more than once")
    return specs, problems


async def _open_source(ctx: RotationContext, spec: SourceSpec) -> CiphertextSource:
    factory = resolve_source_factory(spec.ref)
    made = factory(ctx, **spec.options)
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, CiphertextSource):
        raise RotatorConfigError(
            f"rewrap source {spec.name!r}: the factory returned a {type(made).__name__},"
            " not a CiphertextSource (batches + write)"
        )
    return made


async def _close_source(source: object) -> None:
    close = getattr(source, "aclose", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result):
            await result


def ciphertext_version(ciphertext: object) -> int | None:
    """The key version of a ``vault:vN:...`` ciphertext (None: not a transit ciphertext)."""
    m = _CT_VERSION.match(ciphertext) if isinstance(ciphertext, str) else None
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------- rewrap
@dataclass
class SourceReport:
    name: str
    passes: int = 0
    scanned: int = 0  # in the last pass
    rewrapped: int = 0  # written back, over every pass
    remaining: int = 0  # below the target in the last pass and not rewrapped by it
    failed: int = 0  # ciphertexts transit refused to rewrap (last pass)
    failed_ids: list[str] = field(default_factory=list)
    complete: bool = False  # a pass found nothing below the target
    error: str = ""

    def summary(self) -> str:
        if self.complete:
            return f"{self.name}: complete ({self.rewrapped} rewrapped)"
        why = self.error or (
            f"{self.failed} ciphertext(s) transit could not rewrap"
            if self.failed
            else f"still changing after {self.passes} passes"
        )
        return f"{self.name}: incomplete, {self.remaining} below the target remain ({why})"


@dataclass
class RewrapReport:
    target: int
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.sources)

    def summary(self) -> str:
        return "; ".join(s.summary() for s in self.sources) or "no rewrap sources"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target_version": self.target,
            "complete": self.complete,
            "sources": {
                s.name: {
                    "passes": s.passes,
                    "scanned": s.scanned,
                    "rewrapped": s.rewrapped,
                    "remaining": s.remaining,
                    "failed": s.failed,
                    "failed_ids": s.failed_ids,
                    "complete": s.complete,
                    "error": s.error,
                }
                for s in self.sources
            },
        }


def _error_text(exc: BaseException) -> str:
    # Never the exception's arguments of a source (could hold data): type + first line,
    # for our own errors (which never carry values) the message.
    if isinstance(exc, (VaultError, RotationError)):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return type(exc).__name__


async def _rewrap_batch(
    transit: Transit, key: str, target: int, batch: Sequence[tuple[Any, str]], rep: SourceReport
) -> tuple[list[Rewrapped], int]:
    """The rewrapped items of one batch, and how many were below the target."""
    old: list[tuple[Any, str]] = []
    below = 0
    for item in batch:
        ident, ct = item[0], item[1]
        v = ciphertext_version(ct)
        if v is not None and v >= target:
            continue
        below += 1
        if v is None:  # not a transit ciphertext: transit would refuse it
            rep.failed += 1
            if len(rep.failed_ids) < MAX_RECORDED_IDS:
                rep.failed_ids.append(str(ident)[:100])
            continue
        old.append((ident, ct))
    if not old:
        return [], below
    try:
        new = await transit.rewrap_many(key, [ct for _, ct in old])
        return [Rewrapped(i, n, ct) for (i, ct), n in zip(old, new, strict=True)], below
    except _ITEM_ERRORS:
        pass  # some items are bad: rewrap one by one and keep the good ones
    out: list[Rewrapped] = []
    for ident, ct in old:
        try:
            out.append(Rewrapped(ident, await transit.rewrap(key, ct), ct))
        except _ITEM_ERRORS:
            rep.failed += 1
            if len(rep.failed_ids) < MAX_RECORDED_IDS:
                rep.failed_ids.append(str(ident)[:100])
    return out, below


async def rewrap_source(
    transit: Transit,
    key: str,
    target: int,
    source: CiphertextSource,
    rep: SourceReport,
    *,
    batch_size: int = DEFAULT_BATCH,
    passes: int = DEFAULT_PASSES,
) -> None:
    """Rewrap ``source`` until a pass finds nothing below ``target`` (or ``passes`` ran)."""
    for _ in range(passes):
        rep.passes += 1
        rep.scanned = rep.failed = rep.remaining = 0
        rep.failed_ids = []
        below = written = 0
        async for batch in source.batches(batch_size):
            rep.scanned += len(batch)
            items, n_below = await _rewrap_batch(transit, key, target, batch, rep)
            below += n_below
            if items:
                await source.write(items)
                written += len(items)
        rep.rewrapped += written
        rep.remaining = below - written
        if below == 0:
            rep.complete = True
            return
        if rep.failed:
            return  # transit refused some ciphertexts: another pass would too


# ---------------------------------------------------------------------------- options
@dataclass(frozen=True)
class _Options:
    mount: str
    key: str
    sources: tuple[SourceSpec, ...]
    batch_size: int
    passes: int
    raise_min: bool


class TransitOptions(RotatorOptions):
    error_prefix: ClassVar[str] = "encryption_key {step}"

    key: str | None = None
    mount: str | None = None
    rewrap_sources: Any = None
    rewrap_batch_size: Annotated[int, int_from(1, 100_000)] = DEFAULT_BATCH
    rewrap_passes: Annotated[int, int_from(2, 100)] = DEFAULT_PASSES
    raise_min_decryption_version: Flag = True


def _options(ctx: RotationContext) -> tuple[_Options | None, list[str]]:
    o, problems = TransitOptions.problems(ctx.options)
    m = _SECRET.fullmatch(ctx.type_config.secret.strip("/"))
    raw = ctx.options
    key = raw.get("key") or (m.group("key") if m else None)
    mount = raw.get("mount") or (m.group("mount") if m else DEFAULT_MOUNT)
    if not isinstance(key, str) or not key:
        problems.append(
            "no transit key: set option key, or secret to '<mount>/keys/<key>'"
            f" (it is {ctx.type_config.secret!r})"
        )
    if not isinstance(mount, str) or not mount.strip("/"):
        problems.append("option mount must name the transit mount")
    specs, bad = _source_specs(raw.get("rewrap_sources"))
    problems += bad
    if problems or o is None:
        return None, list(dict.fromkeys(problems))
    assert isinstance(key, str) and isinstance(mount, str)
    return (
        _Options(
            mount.strip("/"),
            key,
            tuple(specs),
            o.rewrap_batch_size,
            o.rewrap_passes,
            o.raise_min_decryption_version,
        ),
        [],
    )


def _opts(ctx: RotationContext, step: str) -> _Options:
    opts, problems = _options(ctx)
    if opts is None:
        raise RotatorConfigError(f"encryption_key {step}: {'; '.join(problems)}")
    return opts


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- the rotator
class TransitKeyRotator(Rotator):
    """``encryption_key``: rotate a transit key, rewrap, then retire its old versions."""

    type_name = "encryption_key"

    @staticmethod
    def _transit(ctx: RotationContext, mount: str) -> Transit:
        return Transit(ctx.client, mount)

    @staticmethod
    def _where(opts_or_pending: _Options | Mapping[str, Any]) -> str:
        if isinstance(opts_or_pending, _Options):
            return f"{opts_or_pending.mount}/keys/{opts_or_pending.key}"
        return f"{opts_or_pending['mount']}/keys/{opts_or_pending['key']}"

    async def _key_info(self, ctx: RotationContext, mount: str, key: str, step: str) -> Any:
        try:
            return await self._transit(ctx, mount).read_key(key)
        except (SecretNotFound, InvalidPath) as exc:
            raise RotatorConfigError(f"encryption_key {step}: {exc}") from None

    # -- schedule / dry run ----------------------------------------------------------
    async def created_at(self, ctx: RotationContext) -> datetime | None:
        """When the key's latest version was made (the key's creation, if never rotated)."""
        opts, _ = _options(ctx)
        if opts is None:
            return None
        try:
            info = await self._transit(ctx, opts.mount).read_key(opts.key)
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
        opts, problems = _options(ctx)
        if opts is not None:
            for spec in opts.sources:
                try:
                    resolve_source_factory(spec.ref)
                except RotatorConfigError as exc:
                    problems.append(str(exc))
            try:
                info = await self._transit(ctx, opts.mount).read_key(opts.key)
            except (SecretNotFound, InvalidPath) as exc:
                problems.append(str(exc))
            else:
                if info.get("derived") and opts.sources:
                    problems.append(
                        f"transit key {opts.key} is derived: rewrap needs a context per"
                        " ciphertext, which rewrap sources do not give"
                    )
                if int(info.get("latest_version") or 0) < 1:
                    problems.append(f"transit key {opts.key} reports no version")
        if problems or opts is None:
            raise RotatorConfigError(f"encryption_key rotation cannot start: {'; '.join(problems)}")

    async def describe(self, ctx: RotationContext) -> str:
        opts, problems = _options(ctx)
        if opts is None:
            return f"cannot rotate encryption_key: {'; '.join(problems)}"
        try:
            kv = await self._transit(ctx, opts.mount).key_versions(opts.key)
        except VaultError as exc:
            return f"cannot rotate encryption_key: {exc}"
        head = f"rotate transit key {self._where(opts)} (v{kv.latest} -> v{kv.latest + 1})"
        if not opts.sources:
            return f"{head}; no rewrap sources: older versions stay decryptable"
        names = ", ".join(s.name for s in opts.sources)
        tail = (
            f", then raise min_decryption_version to v{kv.latest + 1} after the grace period"
            if opts.raise_min
            else ""
        )
        return f"{head}; rewrap the ciphertexts in {names}{tail}"

    # -- the protocol ----------------------------------------------------------------
    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        opts = _opts(ctx, "create_pending")
        transit = self._transit(ctx, opts.mount)
        info = await self._key_info(ctx, opts.mount, opts.key, "create_pending")
        latest = int(info.get("latest_version") or 0)
        probe = secrets.token_bytes(24)
        probe_ct = await transit.encrypt(opts.key, probe)
        if ciphertext_version(probe_ct) != latest:
            raise RotationError(
                f"encryption_key create_pending: {self._where(opts)} encrypted with version"
                f" {ciphertext_version(probe_ct)}, not its latest v{latest}"
                " (min_encryption_version?)"
            )
        return {
            "mount": opts.mount,
            "key": opts.key,
            "from_version": latest,
            "new_version": latest + 1,
            "probe_ciphertext": probe_ct,
            "probe_sha256": _sha(probe),
        }

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        mount, key = str(pending["mount"]), str(pending["key"])
        before, target = int(pending["from_version"]), int(pending["new_version"])
        transit = self._transit(ctx, mount)
        kv = await transit.key_versions(key)
        if kv.latest >= target:
            ctx.log.info(
                "encryption_key: key already has the new version (not rotated again)",
                extra={"key": key, "version": kv.latest, "rotation_id": ctx.rotation_id},
            )
            return
        if kv.latest != before:
            raise RotationError(
                f"encryption_key apply: {self._where(pending)} is at version {kv.latest}, below"
                f" the v{before} this rotation started from (was it deleted and re-created?)"
            )
        made = await transit.rotate_key(key)
        ctx.log.info(
            "encryption_key: key rotated",
            extra={"key": key, "version": made, "rotation_id": ctx.rotation_id},
        )

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        mount, key = str(pending["mount"]), str(pending["key"])
        target = int(pending["new_version"])
        where = self._where(pending)
        transit = self._transit(ctx, mount)
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
            raise RotationError(f"encryption_key verify: {_error_text(exc)}") from None
        if _sha(old) != pending["probe_sha256"]:
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
        opts = _opts(ctx, "promote")
        mount, key = str(pending["mount"]), str(pending["key"])
        target = int(pending["new_version"])
        if (mount, key) != (opts.mount, opts.key):
            raise RotatorConfigError(
                f"encryption_key promote: this rotation is of {self._where(pending)}, the"
                f" configuration now names {self._where(opts)}"
            )
        if opts.sources:
            report = await self._rewrap_all(ctx, opts, target)
            await self._record(ctx, opts, report, "promote", raised=False)
            if not report.complete:
                kv = await self._transit(ctx, mount).key_versions(key)
                raise RotationError(
                    f"encryption_key promote: rewrap to v{target} of {self._where(pending)} is"
                    f" incomplete: {report.summary()}; min_decryption_version stays"
                    f" {kv.min_decryption} (older ciphertexts still decrypt); the next run"
                    " resumes the rewrap"
                )
        kv = await self._transit(ctx, mount).key_versions(key)
        return kv.latest

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """A transit key version cannot be removed: nothing to undo (old versions decrypt)."""
        ctx.log.warning(
            "encryption_key: a key version cannot be removed; new encryptions use it and"
            " older versions still decrypt",
            extra={"key": pending.get("key"), "version": pending.get("new_version")},
        )

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        opts, _ = _options(ctx)
        if opts is None or not opts.sources or not opts.raise_min:
            return None
        return {
            "mount": pending["mount"],
            "key": pending["key"],
            "min_decryption_version": int(pending["new_version"]),
        }

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> None:
        """Raise min_decryption_version, after a final sweep finds nothing left below it."""
        opts = _opts(ctx, "retire")
        mount, key = str(retiring["mount"]), str(retiring["key"])
        target = int(retiring["min_decryption_version"])
        where = self._where(retiring)
        transit = self._transit(ctx, mount)
        kv = await transit.key_versions(key)
        if kv.min_decryption >= target:
            return  # raised already (or by someone else, higher)
        if kv.latest < target:
            raise RotationError(f"encryption_key retire: {where} has no v{target}")
        if (mount, key) != (opts.mount, opts.key) or not opts.sources or not opts.raise_min:
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
    async def _rewrap_all(self, ctx: RotationContext, opts: _Options, target: int) -> RewrapReport:
        transit = self._transit(ctx, opts.mount)
        report = RewrapReport(target)
        for spec in opts.sources:
            rep = SourceReport(spec.name)
            report.sources.append(rep)
            source: CiphertextSource | None = None
            try:
                source = await _open_source(ctx, spec)
                await rewrap_source(
                    transit,
                    opts.key,
                    target,
                    source,
                    rep,
                    batch_size=opts.batch_size,
                    passes=opts.passes,
                )
            except Exception as exc:  # a source is the caller's code: any error is its own
                rep.error = _error_text(exc)
                rep.complete = False
            finally:
                if source is not None:
                    try:
                        await _close_source(source)
                    except Exception as exc:
                        ctx.log.warning(
                            "encryption_key: closing rewrap source %s failed: %s",
                            spec.name,
                            type(exc).__name__,
                        )
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
        opts: _Options,
        report: RewrapReport,
        phase: str,
        *,
        raised: bool,
    ) -> None:
        """What the rewrap left: ``<state_prefix>/_rewrap/<type>`` (no secret in it)."""
        path = rewrap_record_path(ctx)
        doc = {
            **report.as_dict(),
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
