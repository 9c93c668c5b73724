"""The contract between the facade and what runs beside it: watchers, the JWT key set.

:class:`SecretSource` is what a secret listener (``listeners.py``) and the JWT key set
(``jwt_keyset.py``) need from whoever holds the secrets: reads from Vault, the cache
to offer what they read to, and the clock their delays run on.
:class:`~maily_secrets.service.VaultService` is one; those modules import this
protocol, never the service (which imports them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .cache import Entry, SecretCache
    from .clock import Clock
    from .paths import KV2Path


class SecretSource(Protocol):
    """Reads from Vault, the cache and the clock of one service."""

    @property
    def clock(self) -> Clock:
        """What every delay and age is measured with."""
        ...

    @property
    def cache(self) -> SecretCache:
        """The cache to offer entries to (it keeps the newer version of a path)."""
        ...

    async def read_entry(self, path: str) -> Entry:
        """Read ``path`` from Vault now (KV v2 data unwrapped, with its version); the
        result is not put in the cache: the caller decides."""
        ...

    async def current_version(self, path: KV2Path) -> int:
        """The current version of a KV v2 secret (its metadata; 0 when it does not exist)."""
        ...

    async def read_data(self, path: str) -> dict[str, Any] | None:
        """The ``data`` of any API path as Vault returns it (``None`` if it has none)."""
        ...

    async def get_secret(self, path: str) -> dict[str, Any]:
        """A cached read: a fresh cache entry, else Vault, else a last-known value."""
        ...
