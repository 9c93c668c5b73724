"""KV version 2 engine: versioned reads, check-and-set writes, metadata."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CheckAndSetConflict, OutcomeUnknown, SecretNotFound
from ..paths import KV2Path
from ..supervise import backoff_delay
from .requester import list_keys

if TYPE_CHECKING:
    from .requester import Requester


KEEP_ALL_VERSIONS = 1_000_000


@dataclass(frozen=True, slots=True)
class SecretVersion:
    """One version of a KV v2 secret."""

    path: str
    data: dict[str, Any] = field(repr=False)
    version: int
    created_time: str = ""
    custom_metadata: dict[str, str] = field(default_factory=dict, repr=False)


def live_data(path: str, body: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``data`` and ``metadata`` of a KV v2 read's answer ``body``; raises
    :class:`SecretNotFound` for a version with no live data (soft-deleted, destroyed)."""
    doc = body.get("data") if body is not None else None
    if isinstance(doc, dict):
        data = doc.get("data")
        if isinstance(data, dict):
            meta = doc.get("metadata")
            return data, meta if isinstance(meta, dict) else {}
    raise SecretNotFound(f"secret {path!r} has no live data (deleted)", path=path)


def _as_kv2(path: KV2Path | str) -> KV2Path:
    if isinstance(path, KV2Path):
        return path
    p = KV2Path.parse(path)
    if p is None:
        from ..errors import InvalidPath

        raise InvalidPath(f"{path!r} is not a KV v2 data path (<mount>/data/<name>)", path=path)
    return p


class KV2:
    """KV v2 operations on any mount. Every write is a check-and-set write."""

    def __init__(self, client: Requester) -> None:
        self._c = client

    async def read(self, path: KV2Path | str, version: int | None = None) -> SecretVersion:
        p = _as_kv2(path)
        params = {"version": str(version)} if version is not None else None
        r = await self._c.request("GET", p.data, params=params)
        data, meta = live_data(p.data, r.body)
        return SecretVersion(
            path=p.data,
            data=data,
            version=int(meta.get("version") or 0),
            created_time=str(meta.get("created_time") or ""),
            custom_metadata=dict(meta.get("custom_metadata") or {}),
        )

    async def metadata(self, path: KV2Path | str) -> dict[str, Any]:
        p = _as_kv2(path)
        r = await self._c.request("GET", p.metadata)
        return r.data or {}

    async def current_version(self, path: KV2Path | str) -> int:
        """0 when the secret does not exist."""
        try:
            return int((await self.metadata(path)).get("current_version") or 0)
        except SecretNotFound:
            return 0

    async def read_with_version(self, path: KV2Path | str) -> tuple[dict[str, Any] | None, int]:
        """The latest data (None when absent or deleted) and the version to CAS against.

        Race-free: a 404 followed by a metadata read that shows a version means someone
        wrote in between, so that version is read explicitly; never a stale pair of
        "no data" with a newer version (which would let a CAS write clobber it).
        """
        p = _as_kv2(path)
        try:
            v = await self.read(p)
            return v.data, v.version
        except SecretNotFound:
            pass
        n = await self.current_version(p)
        if n == 0:
            return None, 0
        try:
            return (await self.read(p, version=n)).data, n
        except SecretNotFound:
            return None, n  # that version is deleted

    async def write(self, path: KV2Path | str, data: Mapping[str, Any], *, cas: int) -> int:
        """Write a new version if the current version is ``cas`` (0: only if absent).

        Returns the new version; raises :class:`CheckAndSetConflict` otherwise. When the
        answer is lost (the request was sent, no response came back), the outcome is
        resolved by reading back: if version ``cas + 1`` holds exactly ``data``, the
        write landed and its version is returned; if the secret is still at ``cas``,
        the write is sent again (check-and-set makes that safe); else someone else
        wrote first (:class:`CheckAndSetConflict`). A write is never applied twice.
        """
        p = _as_kv2(path)
        body = {"options": {"cas": int(cas)}, "data": dict(data)}
        rounds = 3
        for n in range(rounds):
            try:
                r = await self._c.request("POST", p.data, json_body=body)
                return int((r.data or {}).get("version") or 0)
            except OutcomeUnknown:
                landed = await self._landed(p, body["data"], int(cas))
                if landed is not None:
                    return landed
                if n == rounds - 1:
                    raise
        raise AssertionError("unreachable")

    async def _landed(self, p: KV2Path, data: dict[str, Any], cas: int) -> int | None:
        """After a lost answer: the version our write made, or None if it did not land.

        Raises :class:`CheckAndSetConflict` when another writer moved the secret.
        """
        current = await self.current_version(p)
        if current == cas:
            return None  # not applied: sending it again is safe
        try:
            # compared as JSON: what we sent is what the server stored, types aside
            sent = json.loads(json.dumps(data))
            mine = (await self.read(p, version=cas + 1)).data == sent
        except SecretNotFound:
            mine = False
        if mine:
            return cas + 1
        raise CheckAndSetConflict(
            f"check-and-set conflict writing {p.data!r}: another writer moved it from"
            f" version {cas} while our answer was lost",
            path=p.data,
            status=400,
        )

    async def update(
        self,
        path: KV2Path | str,
        change: Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]],
        *,
        attempts: int = 100,
        base_delay: float = 0.005,
        max_delay: float = 0.5,
    ) -> int:
        """Read-modify-write with check-and-set, retried on conflict: no lost update.

        ``change`` gets a copy of the current data (``{}`` when absent) and returns the
        new data. Under contention each retry waits a jittered, growing delay
        (``base_delay`` doubling up to ``max_delay``) so concurrent updaters spread
        out instead of colliding again; after ``attempts`` conflicts the last
        :class:`CheckAndSetConflict` is raised. A write whose answer was lost is
        resolved by reading back (:meth:`write`), so ``change`` is never applied twice.
        """
        p = _as_kv2(path)
        last: CheckAndSetConflict | None = None
        for attempt in range(max(1, attempts)):
            data, version = await self.read_with_version(p)
            base = dict(data) if data is not None else {}
            new = change(base)
            if not isinstance(new, dict):
                new = await new
            try:
                return await self.write(p, new, cas=version)
            except CheckAndSetConflict as exc:
                last = exc
            await self._c.clock.sleep(backoff_delay(attempt, base_delay, max_delay, jitter=1.0))
        assert last is not None
        raise last

    async def write_metadata(
        self,
        path: KV2Path | str,
        *,
        cas_required: bool | None = None,
        max_versions: int | None = None,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> None:
        p = _as_kv2(path)
        body: dict[str, Any] = {}
        if cas_required is not None:
            body["cas_required"] = cas_required
        if max_versions is not None:
            body["max_versions"] = max_versions
        if custom_metadata is not None:
            body["custom_metadata"] = dict(custom_metadata)
        await self._c.request("POST", p.metadata, json_body=body)

    async def list(self, mount: str, prefix: str = "") -> list[str]:
        path = f"{mount}/metadata/{prefix}".rstrip("/")
        return await list_keys(self._c, path)

    async def configure(
        self, mount: str, *, cas_required: bool = True, max_versions: int = KEEP_ALL_VERSIONS
    ) -> None:
        """Engine-wide settings: force check-and-set on every write; keep every version.

        (``max_versions=0`` would mean the engine's default of 10, silently deleting
        older versions; a very large number keeps them all.)
        """
        await self._c.request(
            "POST",
            f"{mount}/config",
            json_body={"cas_required": cas_required, "max_versions": max_versions},
        )
