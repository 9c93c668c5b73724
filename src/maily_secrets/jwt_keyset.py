"""Maily's JWT key set as a running service sees it: read through the cache, refreshed
for a key id it does not know yet.

``jwt_keys`` is the pure part (the fields of the config secret, signing, verifying);
this module adds the reads. ``VaultService.get_jwt_signing_key()`` and
``get_jwt_verification_keys()`` delegate to a :class:`JwtKeySet` over the service's
config secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import VaultError
from .jwt_keys import UNKNOWN_KID_REFRESH_AFTER, SigningKey, current_signing_key, verification_keys

if TYPE_CHECKING:
    from .source import SecretSource


class JwtKeySet:
    """The key set in the config secret at ``path`` (``<mount>/data/config``) of ``source``."""

    def __init__(self, source: SecretSource, path: str) -> None:
        self.source = source
        self.path = path

    def __repr__(self) -> str:
        return f"<JwtKeySet {self.path!r}>"

    async def signing_key(self) -> SigningKey:
        """The key to sign new tokens with (from the cached config)."""
        return current_signing_key(await self.source.get_secret(self.path))

    async def verification_keys(self, *, kid: str | None = None) -> dict[str, str]:
        """``{kid: secret}`` of every key that verifies now.

        A ``kid`` that is not among them makes the config be read again from Vault, at
        most once per ``UNKNOWN_KID_REFRESH_AFTER`` seconds (the age of the cached entry
        decides), keeping the cached value if Vault is unreachable.
        """
        source, path = self.source, self.path
        keys = verification_keys(await source.get_secret(path))
        if kid is None or kid in keys:
            return keys
        entry = source.cache.peek(path)
        if entry is not None and entry.age() < UNKNOWN_KID_REFRESH_AFTER:
            return keys
        try:
            fresh = await source.cache.load(path, lambda: source.read_entry(path))
        except VaultError:
            return keys
        return verification_keys(fresh.copy_out())
