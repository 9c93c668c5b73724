"""Rewrapping stored ciphertexts after a transit key rotation: the caller's sources.

A :class:`CiphertextSource` is the caller's own storage of ciphertexts of one key (a
table, a bucket, a dict), named in ``rewrap_sources`` of the ``encryption_key`` type
by a registered name (:func:`register_ciphertext_source`) or an import reference
``"package.module:factory"``. :func:`rewrap_source` rewraps one source until a pass
finds no ciphertext below the target version, and says in a :class:`SourceReport`
what it did; the rotator (``rotators/encryption_key.py``) drives it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..errors import (
    CiphertextVersionTooOld,
    InvalidCiphertext,
    TransitBatchError,
    TransitContextError,
    VaultError,
)
from ..vault.transit import Transit
from .base import RotationContext, RotationError, RotatorConfigError
from .kit import load_factory

DEFAULT_BATCH = 500
DEFAULT_PASSES = 3
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
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise RotatorConfigError(
            f"rewrap source {ref!r} is neither registered (register_ciphertext_source) nor"
            " an import reference 'package.module:factory'"
        )
    return load_factory(ref, f"rewrap source {ref!r}")


@dataclass(frozen=True)
class SourceSpec:
    ref: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)


@asynccontextmanager
async def opened(ctx: RotationContext, spec: SourceSpec) -> AsyncIterator[CiphertextSource]:
    """The source ``spec`` makes; closed (its ``aclose``, if any) when done."""
    made = resolve_source_factory(spec.ref)(ctx, **spec.options)
    source = await made if inspect.isawaitable(made) else made
    if not isinstance(source, CiphertextSource):
        raise RotatorConfigError(
            f"rewrap source {spec.name!r}: the factory returned a {type(source).__name__},"
            " not a CiphertextSource (batches + write)"
        )
    try:
        yield source
    finally:
        close = getattr(source, "aclose", None)
        try:
            if callable(close) and inspect.isawaitable(result := close()):
                await result
        except Exception as exc:
            ctx.log.warning(
                "encryption_key: closing rewrap source %s failed: %s",
                spec.name,
                type(exc).__name__,
            )


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

    def fail(self, ident: Any) -> None:
        """Count a ciphertext transit refuses; record its id (the first few)."""
        self.failed += 1
        if len(self.failed_ids) < MAX_RECORDED_IDS:
            self.failed_ids.append(str(ident)[:100])

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


def error_text(exc: BaseException) -> str:
    # Never the exception's arguments of a source (could hold data): type + first line,
    # for our own errors (which never carry values) the message.
    if isinstance(exc, (VaultError, RotationError)):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return type(exc).__name__


async def _rewrap(
    transit: Transit, key: str, old: Sequence[tuple[Any, str]], rep: SourceReport
) -> list[Rewrapped]:
    """``old`` (below the target) rewrapped; what transit refuses is counted in ``rep``."""
    todo: list[tuple[Any, str]] = []
    for ident, ct in old:
        if ciphertext_version(ct) is None:  # not a transit ciphertext: transit would refuse it
            rep.fail(ident)
        else:
            todo.append((ident, ct))
    if not todo:
        return []
    try:
        new = await transit.rewrap_many(key, [ct for _, ct in todo])
        return [Rewrapped(i, n, ct) for (i, ct), n in zip(todo, new, strict=True)]
    except _ITEM_ERRORS:
        pass  # some items are bad: rewrap one by one and keep the good ones
    out: list[Rewrapped] = []
    for ident, ct in todo:
        try:
            out.append(Rewrapped(ident, await transit.rewrap(key, ct), ct))
        except _ITEM_ERRORS:
            rep.fail(ident)
    return out


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
            old = [(i[0], i[1]) for i in batch if (ciphertext_version(i[1]) or 0) < target]
            below += len(old)
            items = await _rewrap(transit, key, old, rep)
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
