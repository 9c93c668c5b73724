"""The api-keys secret (``<mount>/data/api-keys``): its layout, and what verifiers need.

One field per key (``stripe``, ``internal_service``, ...). While a rotated or re-set
internal key's grace period runs, the previous value stays as ``<name>_previous`` with
``<name>_previous_valid_until`` (RFC 3339), so verifiers accept both
(:func:`valid_internal_keys`, :func:`is_valid_internal_key`). When each key was last
rotated is non-secret custom metadata: ``rotated_at.<name>``, ``rotated_by.<name>``
and, for a key of a vendor's API, ``key_id.<name>``. The rotator
(``rotation/rotators/api_keys.py``) and ``mailyctl secrets set`` (:func:`set_api_key`)
write it; nothing here logs or raises with a key value.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from .errors import SecretNotFound
from .paths import KV2Path
from .rotation.base import parse_time
from .vault.client import VaultClient

PREVIOUS = "_previous"
VALID_UNTIL = "_previous_valid_until"
RESERVED_SUFFIXES = (PREVIOUS, VALID_UNTIL)
META_ROTATED_AT = "rotated_at."
META_ROTATED_BY = "rotated_by."
META_KEY_ID = "key_id."
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def key_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        return "key names are letters, digits, '_', '.', '-' (at most 100 characters)"
    if name.endswith(RESERVED_SUFFIXES):
        return f"key names may not end with {' or '.join(RESERVED_SUFFIXES)} (reserved)"
    return None


# ---------------------------------------------------------------------------- consumers
def valid_internal_keys(
    api_keys: Mapping[str, Any], name: str, now: datetime | None = None
) -> list[str]:
    """The values of internal key ``name`` a verifier accepts now: current, then previous.

    ``api_keys`` is the data of the api-keys secret (``await vault_service.get_api_keys()``).
    The previous key counts until ``<name>_previous_valid_until``; without a valid
    time it does not count.
    """
    now = now or datetime.now(UTC)
    out: list[str] = []
    current = api_keys.get(name)
    if isinstance(current, str) and current:
        out.append(current)
    previous = api_keys.get(name + PREVIOUS)
    until = parse_time(api_keys.get(name + VALID_UNTIL))
    if isinstance(previous, str) and previous and until is not None and now < until:
        if previous not in out:
            out.append(previous)
    return out


def is_valid_internal_key(
    api_keys: Mapping[str, Any], name: str, presented: str, now: datetime | None = None
) -> bool:
    """Whether ``presented`` is a valid value of internal key ``name`` (constant time)."""
    ok = False
    for candidate in valid_internal_keys(api_keys, name, now):
        ok |= hmac.compare_digest(candidate.encode(), presented.encode())
    return ok


@dataclass
class Snapshot:
    """The api-keys secret: data, version, custom metadata, creation time."""

    data: dict[str, Any] = field(repr=False)  # the keys themselves
    version: int
    custom: dict[str, str]
    created: datetime | None

    def rotated_at(self, name: str) -> datetime | None:
        return parse_time(self.custom.get(META_ROTATED_AT + name)) or self.created

    def unknown_keys(self, specs: Mapping[str, Any]) -> list[str]:
        return sorted(
            k
            for k in self.data
            if k not in specs and not k.endswith(RESERVED_SUFFIXES) and not key_name_problem(k)
        )


async def read_snapshot(client: VaultClient, path: KV2Path) -> Snapshot:
    try:
        meta = await client.kv.metadata(path)
    except SecretNotFound:
        return Snapshot({}, 0, {}, None)
    custom = {str(k): str(v) for k, v in (meta.get("custom_metadata") or {}).items()}
    version = int(meta.get("current_version") or 0)
    try:
        cur = await client.kv.read(path)
        data, version = dict(cur.data), cur.version
    except SecretNotFound:  # the current version is deleted
        data = {}
    return Snapshot(data, version, custom, parse_time(meta.get("created_time")))


async def update_custom_metadata(
    client: VaultClient, path: KV2Path, changes: Mapping[str, str | None]
) -> None:
    """Merge ``changes`` (None: remove) into the secret's custom metadata."""
    try:
        meta = await client.kv.metadata(path)
        custom = {str(k): str(v) for k, v in (meta.get("custom_metadata") or {}).items()}
    except SecretNotFound:
        custom = {}
    merged = {k: v for k, v in {**custom, **changes}.items() if v is not None}
    await client.kv.write_metadata(path, custom_metadata=merged)


def fingerprint(value: str) -> str:
    """A short SHA-256 fingerprint: tells two keys apart, reveals nothing usable."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def iso_seconds(t: datetime) -> str:
    """``t`` as RFC 3339 UTC, whole seconds (the metadata's times)."""
    return t.astimezone(UTC).isoformat(timespec="seconds")


def shift(data: dict[str, Any], name: str, new: str, valid_until: datetime) -> None:
    """``name`` := ``new``, keeping the value in use as ``<name>_previous`` until then."""
    old = data.get(name)
    if isinstance(old, str) and old and old != new:
        data[name + PREVIOUS] = old
        data[name + VALID_UNTIL] = iso_seconds(valid_until)
    data[name] = new


class KeyRef(Protocol):
    """A configured key (the rotator's ``KeySpec``): its name and kind."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


async def set_api_key(
    client: VaultClient,
    path: KV2Path,
    spec: KeyRef,
    value: str,
    *,
    actor: str,
    grace: timedelta,
    now: datetime | None = None,
) -> int:
    """Store a key given by a person (check-and-set) and record it as rotated.

    An internal key keeps the previous value valid for ``grace`` like a rotation;
    a provider key forgets its recorded vendor key id (it is no longer the one in use).
    Returns the new version.
    """
    if not value:
        raise ValueError("empty value")
    now = now or datetime.now(UTC)

    def change(data: dict[str, Any]) -> dict[str, Any]:
        if spec.kind == "internal" and grace > timedelta(0):
            shift(data, spec.name, value, now + grace)
        else:
            data[spec.name] = value
        return data

    version = await client.kv.update(path, change)
    meta: dict[str, str | None] = {
        META_ROTATED_AT + spec.name: iso_seconds(now),
        META_ROTATED_BY + spec.name: f"{actor} (secrets set)"[:500],
    }
    if spec.kind == "provider":
        meta[META_KEY_ID + spec.name] = None
    await update_custom_metadata(client, path, meta)
    return version
