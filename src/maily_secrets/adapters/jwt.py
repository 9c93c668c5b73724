"""JWT signing and verification that follow the ``jwt`` rotation: thin adapters over
:mod:`maily_secrets.jwt_keys` (the key set's fields, HS256 signing and verifying) and
:class:`maily_secrets.jwt_keyset.JwtKeySet` (a re-read for an unknown key id).

    signer = await adapters.jwt_signer(vault_service)       # maily/data/config
    token = signer.sign({"sub": user_id}, ttl=900)          # current key, kid header
    verifier = await adapters.jwt_verifier(vault_service)
    claims = await verifier.verify(token)                   # current, previous, next key

What already followed the rotation: the key set lives in the config secret
(``jwt_secret``, ``jwt_kid``, ``jwt_previous_keys``, ``jwt_next_key``) and
``VaultService.get_jwt_signing_key()`` reads it through the cache. What these add:
a secret listener on that secret, so the signer signs with the new key as soon as the
rotation promotes it (not when a cache entry expires) and the verifier holds the key
set of the latest version (the published next key, the previous keys until their
``verify_until``: the grace); a token with a key id the verifier does not know yet
(another instance saw the rotation first) makes it re-read the secret, at most once
per second, and try again. A version whose key set is malformed is skipped (logged by
field name): the adapter keeps the key set it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .. import jwt_keys as jk
from ..jwt_keyset import JwtKeySet
from ._feed import CredentialFeed

if TYPE_CHECKING:
    from ..service import VaultService


class KeySet:
    """The key set fields of one version of the config (validated; no secret in a repr)."""

    __slots__ = ("config", "kid")

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = {k: config[k] for k in jk.KEY_SET_FIELDS if k in config}
        self.kid = jk.current_signing_key(self.config).kid  # JwtKeyError is a ValueError
        jk.previous_keys(self.config)
        jk.next_key(self.config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeySet) and other.config == self.config

    def __hash__(self) -> int:
        return hash(self.kid)

    def __repr__(self) -> str:
        return f"<KeySet kid={self.kid}>"


async def _feed(service: VaultService, secret: str, name: str) -> CredentialFeed[KeySet]:
    feed: CredentialFeed[KeySet] = CredentialFeed(
        service, f"{service.kv_mount}/data/{secret}", KeySet, name=name
    )
    await feed.start()
    return feed


class JwtSigner:
    """Signs with the key the secret says signs now (``kid`` header)."""

    def __init__(self, feed: CredentialFeed[KeySet], ttl: float | timedelta) -> None:
        self.feed = feed
        self.ttl = ttl
        self.signed: dict[str, int] = {}  # kid -> tokens signed

    def __repr__(self) -> str:
        return f"<JwtSigner kid={self.kid} generation={self.feed.generation}>"

    @property
    def kid(self) -> str:
        return self.feed.current.kid

    @property
    def generation(self) -> int:
        return self.feed.generation

    def sign(
        self,
        claims: Mapping[str, Any],
        ttl: float | timedelta | None = None,
        *,
        now: datetime | None = None,
    ) -> str:
        """:func:`jwt_keys.sign` with the current key set (keep ``ttl`` at most the
        rotation's grace: a token must not outlive its key's verification window)."""
        keys = self.feed.current
        token = jk.sign(keys.config, claims, self.ttl if ttl is None else ttl, now=now)
        self.signed[keys.kid] = self.signed.get(keys.kid, 0) + 1
        return token

    def stats(self) -> dict[str, Any]:
        return {"generation": self.generation, "kid": self.kid, "signed": dict(self.signed)}

    async def close(self) -> None:
        await self.feed.close()


class JwtVerifier:
    """Verifies with every key of the latest key set (current, in-grace, published)."""

    def __init__(
        self,
        feed: CredentialFeed[KeySet],
        *,
        now: Callable[[], datetime] | None = None,
        leeway: float = 0.0,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self.feed = feed
        self._now = now or (lambda: datetime.now(UTC))
        self.leeway, self.audience, self.issuer = leeway, audience, issuer
        self._keyset = JwtKeySet(feed.service, feed.path)
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"<JwtVerifier kid={self.feed.current.kid} generation={self.feed.generation}>"

    @property
    def generation(self) -> int:
        return self.feed.generation

    def _verify(self, token: str, now: datetime) -> dict[str, Any]:
        return jk.verify(
            self.feed.current.config,
            token,
            now,
            leeway=self.leeway,
            audience=self.audience,
            issuer=self.issuer,
        )

    async def verify(self, token: str, *, now: datetime | None = None) -> dict[str, Any]:
        """The claims, or :class:`jwt_keys.JwtVerificationError` (``UnknownKeyId``,
        ``RetiredKeyId``, ``TokenExpired``...), never with the token or a key in it."""
        t = now or self._now()
        try:
            return self._verify(token, t)
        except jk.UnknownKeyId:
            kid = jk.token_kid(token)
            if kid is None:
                raise
            # another instance may sign with a key this one has not seen: re-read the
            # secret (JwtKeySet: at most once per second) and take its key set
            await self._keyset.verification_keys(kid=kid)
            before = self.feed.generation
            await self.feed._changed(await self.feed.service.get_secret(self.feed.path))
            if self.feed.generation == before:
                raise
            self.refreshes += 1
            return self._verify(token, t)

    def stats(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "kid": self.feed.current.kid,
            "verifying": sorted(jk.verification_keys(self.feed.current.config, self._now())),
            "refreshes": self.refreshes,
        }

    async def close(self) -> None:
        await self.feed.close()


async def jwt_signer(
    service: VaultService,
    *,
    secret: str = "config",  # noqa: S107 - a secret's name
    ttl: float | timedelta = 900.0,
) -> JwtSigner:
    """A signer over the key set in ``<mount>/data/<secret>`` (``ttl``: the default
    token lifetime, seconds). Raises when the secret has no usable key set."""
    return JwtSigner(await _feed(service, secret, "jwt_signer"), ttl)


async def jwt_verifier(
    service: VaultService,
    *,
    secret: str = "config",  # noqa: S107 - a secret's name
    now: Callable[[], datetime] | None = None,
    leeway: float = 0.0,
    audience: str | None = None,
    issuer: str | None = None,
) -> JwtVerifier:
    """A verifier over the key set in ``<mount>/data/<secret>`` (``now``: an injected
    clock for the tokens' times and the keys' ``verify_until``)."""
    feed = await _feed(service, secret, "jwt_verifier")
    return JwtVerifier(feed, now=now, leeway=leeway, audience=audience, issuer=issuer)


__all__ = ["JwtSigner", "JwtVerifier", "KeySet", "jwt_signer", "jwt_verifier"]
