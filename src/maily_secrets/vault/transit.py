"""Transit engine: encryption as a service, one item at a time or many in batches.

``encrypt_many``/``decrypt_many``/``rewrap_many`` send ``batch_input`` requests,
cut into chunks that stay well inside the server's JSON limits, a few chunks at a
time, and return the results in input order.

Limits, measured on OpenBao 2.7.2 with the default listener settings:

* ``max_request_json_strings = 1000``: every object key and every string value
  counts, and 1000 is still accepted.  A plain batch (``{"batch_input": [{"plaintext":
  ...}, ...]}``) costs 1 + 2 per item, so 499 items pass and 500 are refused (HTTP 400,
  "exceeded maximum number of strings"); with a context per item (4 strings) the limit
  is 249.  Chunks are sized for 90% of the budget and never above ``batch_size``:
  250 items without context, 224 with one.
* ``max_request_size = 32 MiB``: a chunk also stops at ``max_chunk_bytes`` (4 MiB) of
  encoded data; an item larger than that goes alone.

Errors: a batch item that fails raises the typed error of the lowest failing index
(:class:`~maily_secrets.errors.InvalidCiphertext`, ``CiphertextVersionTooOld``, ...)
with ``index`` set; no message ever carries a plaintext, a context or a ciphertext.

Missing keys: by default Vault and OpenBao *create* a missing key on encrypt
("upsert", given the ``create`` capability on ``<mount>/encrypt/<key>``).  With
``Transit.disable_upsert()`` (``POST <mount>/config/keys {"disable_upsert": true}``,
supported by OpenBao 2.7) the server refuses instead and :meth:`Transit.encrypt`
raises :class:`~maily_secrets.errors.TransitKeyNotFound`.  Decrypt and rewrap never
create a key.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from ..errors import (
    CiphertextVersionTooOld,
    DecryptionFailed,
    InvalidCiphertext,
    InvalidPath,
    SecretNotFound,
    TransitBatchError,
    TransitContextError,
    TransitError,
    TransitKeyNotFound,
    VaultError,
    VaultRequestError,
)
from ..paths import validate_path

if TYPE_CHECKING:
    from .requester import Requester, VaultResponse

# The listener's default ``max_request_json_strings``; chunks use 90% of it.
MAX_REQUEST_JSON_STRINGS: Final = 1000
STRING_BUDGET_SHARE: Final = 0.9
# Encoded bytes per chunk: far below the listener's default 32 MiB ``max_request_size``.
MAX_CHUNK_BYTES: Final = 4 * 1024 * 1024

Data = bytes | str
Context = bytes | str | Sequence[bytes | str] | None

_Op = Literal["encrypt", "decrypt", "rewrap"]
_KEY_NAME = re.compile(r"\w(?:[\w.-]*\w)?", re.ASCII)  # Vault's GenericNameRegex
_CT_VERSION = re.compile(r"vault:v(\d+):")
_BYTES_LIKE = (bytes, bytearray, memoryview)


@dataclass(frozen=True, slots=True)
class KeyVersions:
    """The versions of a transit key and the bounds its policy sets on them."""

    latest: int
    min_decryption: int
    min_encryption: int  # 0: the latest version
    available: tuple[int, ...]  # versions whose key material the server still holds


@dataclass(frozen=True, slots=True)
class _Failures:
    """The items of one chunk that failed: (absolute index, Vault's error text)."""

    items: list[tuple[int, str]]


def _at(index: int | None) -> str:
    return "" if index is None else f" (item {index})"


def _b64(value: object, what: str, index: int | None = None) -> str:
    if isinstance(value, str):
        bad_at = -1
        try:
            raw: bytes | bytearray | memoryview = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad_at = exc.start
        if bad_at >= 0:  # raised outside the handler: the UnicodeEncodeError holds the text
            raise ValueError(
                f"{what}{_at(index)} is not encodable as UTF-8 (lone surrogate at position"
                f" {bad_at})"
            )
    elif isinstance(value, _BYTES_LIKE):
        raw = value
    else:
        raise TypeError(f"{what}{_at(index)} must be bytes or str, not {type(value).__name__}")
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _ciphertext(value: object, index: int | None = None) -> str:
    if not isinstance(value, str):
        raise TypeError(f"ciphertext{_at(index)} must be str, not {type(value).__name__}")
    return value


def _version_of(ciphertext: str | None) -> int | None:
    m = _CT_VERSION.match(ciphertext or "")
    return int(m.group(1)) if m else None


class Transit:
    """Transit operations on one mount.

    ``batch_size`` caps the items per batch request (lowered automatically when the
    items carry a context, see the module's doc); ``concurrency`` is how many batch
    requests of one call are in flight at once.
    """

    def __init__(
        self,
        client: Requester,
        mount: str = "transit",
        batch_size: int = 250,
        *,
        concurrency: int = 4,
        max_request_json_strings: int = MAX_REQUEST_JSON_STRINGS,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
    ) -> None:
        if batch_size < 1 or concurrency < 1 or max_chunk_bytes < 1:
            raise ValueError("batch_size, concurrency and max_chunk_bytes must be positive")
        if max_request_json_strings < 8:
            raise ValueError("max_request_json_strings is too small for any batch")
        self._c = client
        self.mount = validate_path(mount.strip("/"))
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_chunk_bytes = max_chunk_bytes
        self._string_budget = int(max_request_json_strings * STRING_BUDGET_SHARE)
        self._where = f"mount {self.mount + '/'!r}"

    # ------------------------------------------------------------------ single items
    async def encrypt(
        self, key: str, plaintext: Data, *, context: bytes | str | None = None
    ) -> str:
        """Encrypt one value (``str`` is UTF-8 encoded); returns ``vault:vN:...``."""
        body = {"plaintext": _b64(plaintext, "plaintext")}
        if context is not None:
            body["context"] = _b64(context, "context")
        r = await self._post("encrypt", key, body, context_given=context is not None)
        return str((r.data or {})["ciphertext"])

    async def decrypt(
        self, key: str, ciphertext: str, *, context: bytes | str | None = None
    ) -> bytes:
        """Decrypt one ciphertext to the original bytes."""
        body = {"ciphertext": _ciphertext(ciphertext)}
        if context is not None:
            body["context"] = _b64(context, "context")
        r = await self._post("decrypt", key, body, context_given=context is not None)
        return binascii.a2b_base64((r.data or {}).get("plaintext") or "")

    async def rewrap(self, key: str, ciphertext: str, context: bytes | str | None = None) -> str:
        """Re-encrypt a ciphertext under the key's latest version, server-side."""
        body = {"ciphertext": _ciphertext(ciphertext)}
        if context is not None:
            body["context"] = _b64(context, "context")
        r = await self._post("rewrap", key, body, context_given=context is not None)
        return str((r.data or {})["ciphertext"])

    # ------------------------------------------------------------------ batches
    async def encrypt_many(
        self, key: str, items: Iterable[Data], *, context: Context = None
    ) -> list[str]:
        """Encrypt many values; ``context`` is one value for all or one per item."""
        values = [_b64(v, "plaintext", i) for i, v in enumerate(items)]
        batch = self._items("plaintext", values, context)
        return await self._batch("encrypt", key, batch, "ciphertext", context is not None)

    async def decrypt_many(
        self, key: str, ciphertexts: Iterable[str], *, context: Context = None
    ) -> list[bytes]:
        values = [_ciphertext(v, i) for i, v in enumerate(ciphertexts)]
        batch = self._items("ciphertext", values, context)
        out = await self._batch("decrypt", key, batch, "plaintext", context is not None)
        a2b = binascii.a2b_base64
        return [a2b(p) for p in out]

    async def rewrap_many(
        self, key: str, ciphertexts: Iterable[str], *, context: Context = None
    ) -> list[str]:
        values = [_ciphertext(v, i) for i, v in enumerate(ciphertexts)]
        batch = self._items("ciphertext", values, context)
        return await self._batch("rewrap", key, batch, "ciphertext", context is not None)

    # ------------------------------------------------------------------ key management
    async def read_key(self, key: str) -> dict[str, Any]:
        """The key's description (type, versions, policy); never its material."""
        path = f"{self.mount}/keys/{self._key(key)}"
        try:
            r = await self._c.request("GET", path)
        except SecretNotFound as exc:
            raise self._not_found(key, path, exc) from None
        return r.data or {}

    async def create_key(
        self, key: str, type: str = "aes256-gcm96", derived: bool = False
    ) -> dict[str, Any]:
        """Create the key if missing (idempotent); returns its description.

        An existing key is left as it is; it must have the requested type and derivation.
        """
        path = f"{self.mount}/keys/{self._key(key)}"
        r = await self._c.request("POST", path, json_body={"type": type, "derived": derived})
        info = r.data or await self.read_key(key)
        have_type, have_derived = info.get("type"), bool(info.get("derived"))
        if have_type != type or have_derived != derived:
            raise TransitError(
                f"transit key {key!r} on {self._where} already exists as type {have_type!r}"
                f" (derived={have_derived}), not {type!r} (derived={derived})",
                path=path,
            )
        return info

    async def rotate_key(self, key: str) -> int:
        """Add a new key version; returns it (new encryptions use it)."""
        path = f"{self.mount}/keys/{self._key(key)}/rotate"
        try:
            r = await self._c.request("POST", path, json_body={})
        except VaultRequestError as exc:
            raise self._map_key_error(key, path, exc) from None
        data = r.data or await self.read_key(key)
        return int(data["latest_version"])

    async def set_min_decryption_version(self, key: str, version: int) -> None:
        """Refuse to decrypt (or rewrap) ciphertexts of versions below ``version``."""
        path = f"{self.mount}/keys/{self._key(key)}/config"
        try:
            await self._c.request("POST", path, json_body={"min_decryption_version": int(version)})
        except VaultRequestError as exc:
            raise self._map_key_error(key, path, exc) from None

    async def key_versions(self, key: str) -> KeyVersions:
        info = await self.read_key(key)
        return KeyVersions(
            latest=int(info.get("latest_version") or 0),
            min_decryption=int(info.get("min_decryption_version") or 0),
            min_encryption=int(info.get("min_encryption_version") or 0),
            available=tuple(sorted(int(v) for v in info.get("keys") or {})),
        )

    async def disable_upsert(self, disabled: bool = True) -> None:
        """Make encrypt on a missing key fail instead of creating it (mount-wide)."""
        await self._c.request(
            "POST", f"{self.mount}/config/keys", json_body={"disable_upsert": disabled}
        )

    async def upsert_disabled(self) -> bool:
        r = await self._c.request("GET", f"{self.mount}/config/keys")
        return bool((r.data or {}).get("disable_upsert"))

    # ------------------------------------------------------------------ internals
    def _key(self, key: object) -> str:
        if not isinstance(key, str) or not _KEY_NAME.fullmatch(key):
            shown = key[:100] if isinstance(key, str) else type(key).__name__
            raise InvalidPath(
                f"transit key name {shown!r} is invalid: letters, digits, '_', '-' and '.'"
                " (not first or last)"
            )
        return key

    def _items(self, field: str, values: list[str], context: Context) -> list[dict[str, str]]:
        if context is None:
            return [{field: v} for v in values]
        if isinstance(context, (str, *_BYTES_LIKE)):
            c = _b64(context, "context")
            return [{field: v, "context": c} for v in values]
        if isinstance(context, Sequence):
            if len(context) != len(values):
                raise ValueError(
                    f"got {len(context)} contexts for {len(values)} items: give one context"
                    " for all items or exactly one per item"
                )
            return [
                {field: v, "context": _b64(c, "context", i)}
                for i, (v, c) in enumerate(zip(values, context, strict=True))
            ]
        raise TypeError(
            f"context must be bytes, str or a sequence of them, not {type(context).__name__}"
        )

    async def _post(
        self, op: _Op, key: str, body: dict[str, str], *, context_given: bool
    ) -> VaultResponse:
        path = f"{self.mount}/{op}/{self._key(key)}"
        try:
            # encrypt/decrypt/rewrap change nothing on the server: safe to resend
            return await self._c.request("POST", path, json_body=body, idempotent=True)
        except (VaultRequestError, SecretNotFound) as exc:
            raise await self._map(
                op,
                key,
                path,
                exc,
                context_given=context_given,
                ciphertext=body.get("ciphertext"),
            ) from None

    def _chunks(self, batch: list[dict[str, str]], top_strings: int) -> list[tuple[int, int]]:
        per_item = 2 * len(batch[0])
        n = max(1, min(self.batch_size, (self._string_budget - top_strings) // per_item))
        sizes = [sum(map(len, it.values())) + 16 * len(it) for it in batch]
        if max(sizes) * n <= self.max_chunk_bytes:
            return [(s, min(s + n, len(batch))) for s in range(0, len(batch), n)]
        bounds: list[tuple[int, int]] = []
        start = size = 0
        for i, s in enumerate(sizes):
            if i > start and (i - start >= n or size + s > self.max_chunk_bytes):
                bounds.append((start, i))
                start, size = i, 0
            size += s
        bounds.append((start, len(batch)))
        return bounds

    async def _batch(
        self,
        op: _Op,
        key: str,
        batch: list[dict[str, str]],
        field: str,
        context_given: bool,
    ) -> list[str]:
        if not batch:
            return []
        path = f"{self.mount}/{op}/{self._key(key)}"
        # Partial failures answer 200 with per-item errors (rewrap always does so and
        # does not know the parameter).
        top: dict[str, Any] = {} if op == "rewrap" else {"partial_failure_response_code": 200}
        bounds = self._chunks(batch, 1 + len(top))
        results: list[list[str] | _Failures | None] = [None] * len(bounds)

        async def one(ci: int) -> None:
            start, end = bounds[ci]
            results[ci] = await self._send_chunk(
                op, key, path, top, batch, start, end, field, context_given
            )

        if len(bounds) == 1:
            await one(0)
        else:
            todo = iter(range(len(bounds)))
            stop = False

            async def worker() -> None:
                nonlocal stop
                for ci in todo:
                    if stop:
                        return
                    await one(ci)
                    if isinstance(results[ci], _Failures):
                        stop = True  # chunks already sent finish; no new one starts

            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.concurrency, len(bounds))):
                        tg.create_task(worker())
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None

        failures = [f for r in results if isinstance(r, _Failures) for f in r.items]
        if failures:
            checked = sum(e - s for (s, e), r in zip(bounds, results, strict=True) if r is not None)
            index, detail = min(failures)
            raise await self._map(
                op,
                key,
                path,
                None,
                detail=detail,
                index=index,
                failed=len(failures),
                total=len(batch),
                checked=checked,
                context_given=context_given,
                ciphertext=batch[index].get("ciphertext"),
            )
        out: list[str] = []
        for r in results:
            assert isinstance(r, list)
            out.extend(r)
        return out

    async def _send_chunk(
        self,
        op: _Op,
        key: str,
        path: str,
        top: dict[str, Any],
        batch: list[dict[str, str]],
        start: int,
        end: int,
        field: str,
        context_given: bool,
    ) -> list[str] | _Failures:
        chunk = batch[start:end]
        try:
            r = await self._c.request(
                "POST", path, json_body={**top, "batch_input": chunk}, idempotent=True
            )
        except (VaultRequestError, SecretNotFound) as exc:
            if exc.status == 400 and not exc.detail:
                # Every item failed: Vault answers 400 with the per-item errors only in
                # the body. Ask for the first item alone to learn why.
                return _Failures(await self._why_all_failed(path, chunk, start))
            raise await self._map(
                op,
                key,
                path,
                exc,
                context_given=context_given,
                total=len(batch),
            ) from None
        got = (r.data or {}).get("batch_results")
        if not isinstance(got, list) or len(got) != len(chunk):
            n = len(got) if isinstance(got, list) else 0
            raise TransitBatchError(
                f"{op} with transit key {key!r} on {self._where}: Vault answered {n}"
                f" results for items {start}..{end - 1} ({len(chunk)} sent)",
                path=path,
                status=r.status,
                index=start,
            )
        failed = [(start + i, str(x["error"])) for i, x in enumerate(got) if x.get("error")]
        if failed:
            return _Failures(failed)
        return [x[field] for x in got]

    async def _why_all_failed(
        self, path: str, chunk: list[dict[str, str]], start: int
    ) -> list[tuple[int, str]]:
        detail = ""
        try:
            await self._c.request("POST", path, json_body=chunk[0], idempotent=True)
        except VaultError as exc:
            detail = exc.detail
        detail = detail or "Vault refused the whole batch (HTTP 400) without a reason"
        return [(start + i, detail) for i in range(len(chunk))]

    def _not_found(self, key: str, path: str, exc: VaultError) -> VaultError:
        if "no handler for route" in exc.detail:
            return SecretNotFound(
                f"no transit engine is mounted at {self.mount + '/'!r} (path {path!r})",
                path=path,
                status=exc.status,
                detail=exc.detail,
            )
        return TransitKeyNotFound(
            f"transit key {key!r} not found on {self._where}",
            path=path,
            status=exc.status,
            detail=exc.detail,
        )

    def _map_key_error(self, key: str, path: str, exc: VaultRequestError) -> VaultError:
        d = exc.detail.lower()
        if "key not found" in d or "no existing key named" in d:
            return self._not_found(key, path, exc)
        return exc

    async def _map(
        self,
        op: _Op,
        key: str,
        path: str,
        exc: VaultError | None,
        *,
        detail: str | None = None,
        index: int | None = None,
        failed: int = 0,
        total: int = 0,
        checked: int | None = None,
        context_given: bool,
        ciphertext: str | None = None,
    ) -> VaultError:
        """The typed error for Vault's error text; never quotes an input value."""
        if detail is None:
            detail = exc.detail if exc is not None else ""
        status = exc.status if exc is not None else 400
        d = detail.lower()
        item = "" if index is None else f"item {index} of {total}: "
        more = ""
        if failed > 1:
            if checked is None or checked >= total:
                more = f" ({failed} of {total} items failed)"
            else:  # later chunks were not sent once a failure was known
                more = f" ({failed} failed among the {checked} of {total} items sent)"
        head = f"{op} with transit key {key!r} on {self._where}: {item}"
        kw: dict[str, Any] = {
            "path": path,
            "status": status,
            "detail": detail[:300],
            "index": index,
            "failed": failed,
        }

        if isinstance(exc, SecretNotFound) and "no handler for route" in d:
            return self._not_found(key, path, exc)
        if "key not found" in d or "no existing key named" in d:
            hint = ""
            if op == "encrypt":
                hint = " (key upsert is disabled on this mount; create it with create_key)"
            return TransitKeyNotFound(f"transit key {key!r} not found on {self._where}{hint}", **kw)
        if "too old" in d:
            have = _version_of(ciphertext)
            minimum: int | None = None
            try:
                minimum = (await self.key_versions(key)).min_decryption
            except VaultError:
                pass
            return CiphertextVersionTooOld(
                f"{head}the ciphertext is of key version {have if have is not None else '?'},"
                f" below the key's min_decryption_version"
                f" {minimum if minimum is not None else '?'}{more}",
                ciphertext_version=have,
                min_decryption_version=minimum,
                **kw,
            )
        if "message authentication failed" in d:
            why = "it was altered or made with another key"
            if context_given:
                why += ", or the context differs from the one it was encrypted with"
            return DecryptionFailed(f"{head}the ciphertext did not authenticate: {why}{more}", **kw)
        if "too new" in d:
            have = _version_of(ciphertext)
            return InvalidCiphertext(
                f"{head}the ciphertext names key version {have if have is not None else '?'},"
                f" newer than the key's latest version{more}",
                **kw,
            )
        if "ciphertext" in d:
            return InvalidCiphertext(
                f"{head}malformed ciphertext (Vault: {detail[:200]}){more}", **kw
            )
        if "context" in d:
            if "missing" in d:
                text = "the key is derived: a context is required"
            else:
                text = f"context error (Vault: {detail[:200]})"
            return TransitContextError(f"{head}{text}{more}", **kw)
        if index is not None:
            return TransitBatchError(f"{head}{detail[:200]}{more}", **kw)
        return exc if exc is not None else TransitError(f"{head}{detail[:200]}", **kw)
