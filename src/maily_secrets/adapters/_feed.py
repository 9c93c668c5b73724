"""The current credential of one secret, kept current by a secret listener.

Every adapter holds one :class:`CredentialFeed`: it reads the secret once at start,
registers a listener on it, and on every new version picks the adapter's fields
(``pick``), bumps ``generation`` and tells the adapter (``on_change``), which then
makes new connections with the new credential and drains the old ones. A value
``pick`` refuses (raises ``ValueError``: a half-written secret, a missing field) is
logged by field name and skipped: the adapter keeps the credential it has.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from ..listeners import Subscription
    from ..service import VaultService

log = logging.getLogger("maily_secrets.adapters")
T = TypeVar("T")
Changed = Callable[[T, int], Awaitable[None] | None]


class CredentialFeed(Generic[T]):
    """``pick(secret) -> T`` (raise ValueError when the secret is unusable)."""

    def __init__(
        self,
        service: VaultService,
        path: str,
        pick: Callable[[dict[str, Any]], T],
        *,
        name: str,
    ) -> None:
        self.service = service
        self.path = path
        self.name = name
        self._pick = pick
        self._current: T | None = None
        self.generation = 0
        self._hooks: list[Changed[T]] = []
        self._sub: Subscription | None = None

    def __repr__(self) -> str:  # never the credential
        return f"<CredentialFeed {self.name} {self.path!r} generation={self.generation}>"

    @property
    def current(self) -> T:
        if self._current is None:
            raise RuntimeError(f"{self.name}: not started (await start() first)")
        return self._current

    def on_change(self, hook: Changed[T]) -> None:
        self._hooks.append(hook)

    async def start(self) -> T:
        """Read the secret (errors propagate: no credential, no adapter) and subscribe."""
        if self._current is None:
            self._current = self._pick(await self.service.get_secret(self.path))
            self.generation = 1
            self._sub = await self.service.register_secret_listener(self.path, self._changed)
        return self._current

    async def _changed(self, value: dict[str, Any]) -> None:
        try:
            new = self._pick(value)
        except ValueError as exc:
            log.warning(
                "%s: new version of %s not usable (%s); keeping the current credential",
                self.name,
                self.path,
                exc,
                extra={"path": self.path, "adapter": self.name},
            )
            return
        if new == self._current:
            return  # another key of the same secret moved
        self._current = new
        self.generation += 1
        log.info(
            "%s: new credential from %s (generation %d)",
            self.name,
            self.path,
            self.generation,
            extra={"path": self.path, "adapter": self.name, "generation": self.generation},
        )
        for hook in self._hooks:
            res = hook(new, self.generation)
            if res is not None:
                await res

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.cancel()
