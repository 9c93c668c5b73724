"""Rotation state and its history, kept in Vault (KV v2), not on local disk.

One secret per type: ``<mount>/data/<state_prefix>/<type>``. Every step of a
rotation writes a new version with check-and-set, so KV v2's version history is
the rotation history (``mailyctl secrets history``), and any pod or laptop sees
the same schedule. While a rotation is in progress the state holds the pending
credential (``pending``): the state path must be readable by the rotator only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..errors import SecretNotFound
from ..paths import KV2Path
from ..vault.client import VaultClient

Step = Literal["created", "applied", "verified", "promoted", "finished", "failed", "rolled_back"]
Outcome = Literal["in_progress", "success", "failed", "rolled_back"]
STEPS: tuple[Step, ...] = ("created", "applied", "verified", "promoted", "finished")


class Retiring(BaseModel):
    """What one rotation kept for its grace period, until its retire policy retires it.

    Only ``after``/``data``/``rotation_id`` existed before retire policies: states stored
    then still load. The policy's times (earliest retirement, hard deadline) are computed
    from ``promoted_at`` and the type's config at each check, not stored, so a change of
    the config (a longer deadline, say) applies to credentials already retiring.
    """

    after: datetime  # the end of the grace period
    data: dict[str, Any]  # non-secret identifiers only (a role name, a key id)
    rotation_id: str
    #: when the rotation promoted (None in states stored before: ``after`` - grace)
    promoted_at: datetime | None = None
    #: at_grace with a hard deadline: retired already, kept to end its sessions then
    retired_at: datetime | None = None
    #: the last adoption seen on the target (``Adoption.public()``: role names, counts,
    #: application names and addresses, never a value), when, or why it could not be seen
    observed: dict[str, Any] | None = None
    observed_at: datetime | None = None
    observed_error: str = ""


class RotationState(BaseModel):
    type: str
    env: str
    rotation_id: str | None = None
    step: Step | None = None
    outcome: Outcome | None = None
    by: str = ""
    started_at: datetime | None = None
    updated_at: datetime | None = None
    error: str = ""
    #: secret material while in progress: never in a repr (nor in ``public()``)
    pending: dict[str, Any] | None = Field(default=None, repr=False)
    last_success_at: datetime | None = None
    last_rotation_id: str | None = None
    last_version: int | None = None
    retiring: list[Retiring] = Field(default_factory=list)

    @property
    def in_progress(self) -> bool:
        return self.outcome == "in_progress"

    def public(self, mode: Literal["json", "python"] = "json") -> dict[str, Any]:
        """The state without the pending credential (for status, history, logs);
        ``mode="python"`` keeps datetimes as such (the CLI formats them)."""
        doc = self.model_dump(mode=mode, exclude={"pending"})
        doc["has_pending"] = self.pending is not None
        return doc


class StateStore:
    def __init__(self, client: VaultClient, mount: str, prefix: str = "rotation") -> None:
        self.client = client
        self.mount = mount
        self.prefix = prefix.strip("/")

    def path(self, type_name: str) -> KV2Path:
        return KV2Path(self.mount, f"{self.prefix}/{type_name}")

    async def read(self, type_name: str) -> tuple[RotationState | None, int]:
        """The state and its version (0 when there is none yet)."""
        data, version = await self.client.kv.read_with_version(self.path(type_name))
        return (RotationState.model_validate(data) if data is not None else None), version

    async def write(self, state: RotationState, cas: int) -> int:
        state.updated_at = datetime.now(UTC)
        return await self.client.kv.write(
            self.path(state.type), state.model_dump(mode="json"), cas=cas
        )

    async def read_many(
        self, types: list[str], concurrency: int = 64
    ) -> dict[str, tuple[RotationState | None, int]]:
        """The states of many types: one LIST, then reads of those that exist only."""
        present = set(await self.client.kv.list(self.mount, self.prefix + "/"))
        sem = asyncio.Semaphore(concurrency)

        async def one(t: str) -> tuple[str, tuple[RotationState | None, int]]:
            if t not in present:
                return t, (None, 0)
            async with sem:
                return t, await self.read(t)

        return dict(await asyncio.gather(*(one(t) for t in types)))

    async def history(self, type_name: str) -> list[tuple[int, str, RotationState | None]]:
        """Every version: (version, created_time, state or None when deleted)."""
        p = self.path(type_name)
        try:
            meta = await self.client.kv.metadata(p)
        except SecretNotFound:
            return []
        versions = meta.get("versions") or {}
        sem = asyncio.Semaphore(32)

        async def one(n: int) -> tuple[int, str, RotationState | None]:
            created = str((versions.get(str(n)) or {}).get("created_time") or "")
            async with sem:
                try:
                    v = await self.client.kv.read(p, version=n)
                except SecretNotFound:
                    return n, created, None
            return n, created, RotationState.model_validate(v.data)

        nums = sorted(int(k) for k in versions)
        return list(await asyncio.gather(*(one(n) for n in nums)))
