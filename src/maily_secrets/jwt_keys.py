"""The JWT key set in ``<mount>/data/config``: one signing key, older keys that still verify.

The guide keeps Maily's HS256 secret in ``jwt_secret``. Rotation (``mailyctl
secrets rotate --secret-types=jwt``) turns that one value into a small key set,
stored next to it in the same secret so that one read (and one listener) sees
all of it::

    jwt_secret          the current signing key (URL-safe random, 64 bytes of entropy)
    jwt_kid             its key id, sent in every token's ``kid`` header
    jwt_previous_keys   [{kid, secret, retired_at, verify_until}, ...]
                        keys that no longer sign but still verify until ``verify_until``
                        (ISO 8601, UTC): ``retired_at`` + the type's grace, the longest
                        token lifetime
    jwt_next_key        {kid, secret, published_at}: only during a rotation, the new key
                        published for verification before anyone signs with it

A config from before rotation existed has no ``jwt_kid``: its key id is derived
from a hash of the secret (:func:`derived_kid`), never the secret itself, so it
is stable across processes and restarts. Tokens without a ``kid`` header (signed
the guide's way, before key ids existed) are accepted by that key only.

Signing and verifying: :func:`sign` and :func:`verify`, HS256 only (a token
claiming any other algorithm, ``none`` included, is refused before any key is
tried). Errors and ``repr`` never contain a secret or a token.

Everything here is pure (no I/O); reading the key set through a service's cache, and
refreshing it for an unknown key id, is :class:`maily_secrets.jwt_keyset.JwtKeySet`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

ALGORITHM = "HS256"
SECRET_KEY = "jwt_secret"  # noqa: S105 - the name of the config key, not a value
KID_KEY = "jwt_kid"
PREVIOUS_KEY = "jwt_previous_keys"
NEXT_KEY = "jwt_next_key"
#: Every config key of the key set (the rotator touches these and nothing else).
KEY_SET_FIELDS = (SECRET_KEY, KID_KEY, PREVIOUS_KEY, NEXT_KEY)
SECRET_BYTES = 64
#: ``VaultService.get_jwt_verification_keys(kid=...)`` re-reads the config for an unknown
#: key id at most once per this many seconds (a flood of forged key ids costs Vault
#: nothing more).
UNKNOWN_KID_REFRESH_AFTER = 1.0


class JwtKeyError(ValueError):
    """The key set in the config is missing or malformed (names the field, never a value)."""


class JwtVerificationError(jwt.InvalidTokenError):
    """A token was refused. The message says why; it never contains the token or a key."""


class UnknownKeyId(JwtVerificationError):
    """The token's ``kid`` is not in the key set (or it has none and no key accepts that)."""


class RetiredKeyId(JwtVerificationError):
    """The token's key was retired and its grace period is over."""


class TokenExpired(JwtVerificationError, jwt.ExpiredSignatureError):
    """The token's ``exp`` has passed."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key id and its HS256 secret (``repr`` shows the key id only)."""

    kid: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PreviousKey:
    kid: str
    secret: str = field(repr=False)
    retired_at: datetime
    verify_until: datetime

    def to_json(self) -> dict[str, str]:
        return {
            "kid": self.kid,
            "secret": self.secret,
            "retired_at": iso(self.retired_at),
            "verify_until": iso(self.verify_until),
        }


# ------------------------------------------------------------------ making keys
def new_secret() -> str:
    """A new HS256 secret: 64 random bytes, URL-safe base64 (86 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def new_kid(now: datetime | None = None) -> str:
    """A new key id that sorts by creation time: ``20260101T120000Z-1a2b3c4d``."""
    return f"{_utc(now):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def derived_kid(secret: str) -> str:
    """The key id of a key that has none (a config from before rotation existed).

    A truncated, domain-separated SHA-256 of the secret: stable, and it reveals
    nothing that a token signed with that secret does not already allow to test.
    """
    digest = hashlib.sha256(b"maily-jwt-kid\x00" + secret.encode()).hexdigest()
    return f"sha256-{digest[:16]}"


# ------------------------------------------------------------------ times
def iso(t: datetime) -> str:
    return _utc(t).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a string")
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _utc(t: datetime | None) -> datetime:
    if t is None:
        return datetime.now(UTC)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# ------------------------------------------------------------------ reading the key set
def current_signing_key(config: Mapping[str, Any]) -> SigningKey:
    """The key new tokens are signed with: ``jwt_secret`` and ``jwt_kid`` (or its derived kid)."""
    secret = config.get(SECRET_KEY)
    if not isinstance(secret, str) or not secret:
        raise JwtKeyError(f"the config has no {SECRET_KEY} (or it is not a non-empty string)")
    kid = config.get(KID_KEY)
    if kid is None:
        return SigningKey(derived_kid(secret), secret)
    if not isinstance(kid, str) or not kid:
        raise JwtKeyError(f"{KID_KEY} in the config is not a non-empty string")
    return SigningKey(kid, secret)


def previous_keys(config: Mapping[str, Any]) -> list[PreviousKey]:
    """``jwt_previous_keys``, expired ones included (``[]`` when absent)."""
    raw = config.get(PREVIOUS_KEY)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise JwtKeyError(f"{PREVIOUS_KEY} in the config is not a list")
    out: list[PreviousKey] = []
    for i, item in enumerate(raw):
        where = f"{PREVIOUS_KEY}[{i}]"
        if not isinstance(item, Mapping):
            raise JwtKeyError(f"{where} is not a mapping")
        kid, secret = item.get("kid"), item.get("secret")
        if not isinstance(kid, str) or not kid:
            raise JwtKeyError(f"{where}.kid is not a non-empty string")
        if not isinstance(secret, str) or not secret:
            raise JwtKeyError(f"{where}.secret is not a non-empty string")
        times: dict[str, datetime] = {}
        for name in ("retired_at", "verify_until"):
            try:
                times[name] = parse_time(item.get(name))
            except ValueError:
                raise JwtKeyError(f"{where}.{name} is not an ISO 8601 time") from None
        out.append(PreviousKey(kid, secret, times["retired_at"], times["verify_until"]))
    return out


def next_key(config: Mapping[str, Any]) -> SigningKey | None:
    """The key a rotation in progress published for verification (``jwt_next_key``)."""
    raw = config.get(NEXT_KEY)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise JwtKeyError(f"{NEXT_KEY} in the config is not a mapping")
    kid, secret = raw.get("kid"), raw.get("secret")
    if not isinstance(kid, str) or not kid or not isinstance(secret, str) or not secret:
        raise JwtKeyError(f"{NEXT_KEY} needs a non-empty kid and secret")
    return SigningKey(kid, secret)


def verification_keys(config: Mapping[str, Any], now: datetime | None = None) -> dict[str, str]:
    """``{kid: secret}`` of every key that verifies at ``now``.

    The current key, the previous keys whose ``verify_until`` is after ``now``, and
    the next key a rotation in progress has published.
    """
    t = _utc(now)
    keys: dict[str, str] = {}
    for p in previous_keys(config):
        if p.verify_until > t:
            keys[p.kid] = p.secret
    nxt = next_key(config)
    if nxt is not None:
        keys[nxt.kid] = nxt.secret
    cur = current_signing_key(config)
    keys[cur.kid] = cur.secret
    return keys


# ------------------------------------------------------------------ changing the key set
def with_next_key(config: Mapping[str, Any], key: SigningKey, now: datetime) -> dict[str, Any]:
    """The config with ``key`` published for verification (it does not sign yet)."""
    new = dict(config)
    new[NEXT_KEY] = {"kid": key.kid, "secret": key.secret, "published_at": iso(now)}
    return new


def without_next_key(config: Mapping[str, Any]) -> dict[str, Any]:
    new = dict(config)
    new.pop(NEXT_KEY, None)
    return new


def promoted(
    config: Mapping[str, Any], key: SigningKey, now: datetime, verify_for: timedelta
) -> dict[str, Any]:
    """The config with ``key`` signing and the current key verifying for ``verify_for`` more.

    Previous keys whose ``verify_until`` has passed are dropped; every other config
    key is kept as it is. ``jwt_next_key`` is removed (it is the new current key).
    """
    t = _utc(now)
    old = current_signing_key(config)
    keep = [p for p in previous_keys(config) if p.verify_until > t and p.kid != key.kid]
    if old.kid != key.kid and verify_for > timedelta(0):
        keep.append(PreviousKey(old.kid, old.secret, t, t + verify_for))
    new = without_next_key(config)
    new[SECRET_KEY] = key.secret
    new[KID_KEY] = key.kid
    new[PREVIOUS_KEY] = [p.to_json() for p in keep]
    return new


def without_expired(config: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The config without the previous keys whose grace is over; None if there are none."""
    t = _utc(now)
    prev = previous_keys(config)
    keep = [p for p in prev if p.verify_until > t]
    if len(keep) == len(prev):
        return None
    new = dict(config)
    new[PREVIOUS_KEY] = [p.to_json() for p in keep]
    return new


# ------------------------------------------------------------------ tokens
def sign(
    config: Mapping[str, Any],
    claims: Mapping[str, Any],
    ttl: timedelta | float,
    *,
    now: datetime | None = None,
) -> str:
    """A token signed with the current key (``kid`` header); ``iat``/``exp`` from ``ttl``.

    Keep ``ttl`` at most the rotation grace (``types.jwt.grace``): a token must
    not outlive the verification window of the key that signed it.
    """
    key = current_signing_key(config)
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if seconds <= 0:
        raise ValueError("a token lifetime must be positive")
    iat = int(_utc(now).timestamp())
    payload = {**claims, "iat": iat, "exp": iat + int(seconds)}
    return jwt.encode(payload, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})


def _show(value: object) -> str:
    """A header value for an error message (attacker-controlled: short, repr)."""
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def verify(
    config: Mapping[str, Any],
    token: str,
    now: datetime | None = None,
    *,
    leeway: float = 0.0,
    audience: str | None = None,
    issuer: str | None = None,
) -> dict[str, Any]:
    """The claims of ``token`` if it verifies with a key of the set at ``now``.

    Picks the key by the ``kid`` header. Raises :class:`UnknownKeyId`,
    :class:`RetiredKeyId` (known key, grace over), :class:`TokenExpired` or
    :class:`JwtVerificationError` (bad signature, algorithm other than HS256,
    malformed, no ``exp``).
    """
    t = _utc(now)
    keys = verification_keys(config, t)
    kid = _header(token).get("kid")
    if isinstance(kid, str) and kid not in keys:
        for p in previous_keys(config):
            if p.kid == kid:
                raise RetiredKeyId(
                    f"token key id {_show(kid)} was retired at {iso(p.retired_at)} and"
                    f" stopped verifying at {iso(p.verify_until)}"
                )
    return verify_with_keys(keys, token, t, leeway=leeway, audience=audience, issuer=issuer)


def verify_with_keys(
    keys: Mapping[str, str],
    token: str,
    now: datetime | None = None,
    *,
    leeway: float = 0.0,
    audience: str | None = None,
    issuer: str | None = None,
) -> dict[str, Any]:
    """:func:`verify` with a ``{kid: secret}`` map (``get_jwt_verification_keys()``)."""
    header = _header(token)
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise JwtVerificationError(f"token algorithm {_show(alg)} is refused (only {ALGORITHM})")
    kid = header.get("kid")
    if kid is None:
        # Signed before key ids existed: only a key whose id is derived from its secret.
        legacy = [(k, s) for k, s in keys.items() if k == derived_kid(s)]
        if not legacy:
            raise UnknownKeyId("token has no key id (kid) and no key of the set accepts that")
        kid, secret = legacy[0]
    elif not isinstance(kid, str):
        raise JwtVerificationError("token key id (kid) is not a string")
    elif kid not in keys:
        raise UnknownKeyId(f"token key id {_show(kid)} is not in the key set")
    else:
        secret = keys[kid]
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={
                "verify_exp": False,  # checked below against ``now``
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["exp"],
            },
        )
    except jwt.InvalidSignatureError:
        raise JwtVerificationError(
            f"token signature does not verify with key id {_show(kid)}"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise JwtVerificationError(f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise JwtVerificationError(f"token refused ({type(exc).__name__})") from None
    ts = _utc(now).timestamp()
    exp = _number(claims.get("exp"))
    if exp is None:
        raise JwtVerificationError("token exp claim is not a number")
    if exp <= ts - leeway:
        raise TokenExpired("token has expired")
    for name in ("nbf", "iat"):
        if claims.get(name) is None:
            continue
        value = _number(claims.get(name))
        if value is None:
            raise JwtVerificationError(f"token {name} claim is not a number")
        if value > ts + leeway:
            raise JwtVerificationError(f"token is not valid yet ({name} is in the future)")
    return claims


def _number(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return None


def token_kid(token: str) -> str | None:
    """The ``kid`` header of a token, unverified (to pick or refresh keys); None if absent."""
    kid = _header(token).get("kid")
    return kid if isinstance(kid, str) else None


def _header(token: str) -> dict[str, Any]:
    if not isinstance(token, str | bytes):
        raise JwtVerificationError("token is not a string")
    try:
        return jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise JwtVerificationError(f"token is malformed ({type(exc).__name__})") from None
