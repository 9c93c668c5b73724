"""The HTTP layer's decisions, as pure functions: what to retry, where to follow, which error.

Sans-I/O: these take what happened and return what to do, so the rules are tested
without a server (and the same cases, in ``tests/conformance/cases.json``, are run
against the TypeScript client's twin of this module). The client applies them.

Retry rule. A request is resent only when resending cannot apply it twice:

- the request never reached the server (connection refused, DNS, TLS handshake
  before any byte was sent: ``failure="connect"``): resend any method;
- the server said it did not process it: 412/429 (a standby behind the index),
  503 (sealed, or no active node), or KV v2's 400 "Upgrading from non-versioned
  to versioned data" on a freshly mounted engine: resend any method;
- the outcome is unknown (a timeout or a dropped connection after the request was
  sent: ``failure="sent"``; 500/502/504, which a proxy or the server may answer
  after applying it): resend only an idempotent request (GET, HEAD, LIST, or one
  the caller marked idempotent, like transit encrypt). A check-and-set write whose
  outcome is unknown is resolved by reading back (``vault/kv.py``), never resent.

Redirect rule. 307/308 are followed only to the same origin (scheme, host, port)
or to an origin configured as a cluster member, and never from https to http. The
token is sent only where a redirect is followed, so it never leaves for anywhere
else; a refused redirect is an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from yarl import URL

from ..errors import (
    CheckAndSetConflict,
    PermissionDenied,
    SecretNotFound,
    VaultError,
    VaultRequestError,
    VaultUnavailable,
)

Failure = Literal["connect", "sent"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "LIST", "OPTIONS"})
NOT_PROCESSED_STATUS = frozenset({412, 429, 503})  # the server did not apply the request
UNKNOWN_OUTCOME_STATUS = frozenset({500, 502, 504})  # it may have
RETRY_STATUS = NOT_PROCESSED_STATUS | UNKNOWN_OUTCOME_STATUS
REDIRECT_STATUS = frozenset({307, 308})
KV_UPGRADING = "Upgrading from non-versioned to versioned data"


def is_idempotent(method: str, idempotent: bool | None = None) -> bool:
    """Whether sending ``method`` twice has the effect of sending it once."""
    if idempotent is not None:
        return idempotent
    return method.upper() in IDEMPOTENT_METHODS


def should_retry(
    method: str,
    status: int | None = None,
    *,
    failure: Failure | None = None,
    detail: str = "",
    idempotent: bool | None = None,
) -> bool:
    """Whether a request that ended this way may be sent again (attempts left aside).

    Give either ``failure`` (no HTTP answer) or ``status`` (with Vault's error text
    in ``detail``).
    """
    safe = is_idempotent(method, idempotent)
    if failure == "connect":
        return True
    if failure == "sent":
        return safe
    if status is None:
        return False
    if status in NOT_PROCESSED_STATUS:
        return True
    if status in UNKNOWN_OUTCOME_STATUS:
        return safe
    return status == 400 and KV_UPGRADING in detail


def origin(url: URL | str) -> tuple[str, str, int]:
    u = url if isinstance(url, URL) else URL(url)
    return (u.scheme.lower(), (u.host or "").lower().rstrip("."), u.explicit_port or _port(u))


def _port(u: URL) -> int:
    return {"http": 80, "https": 443}.get(u.scheme.lower(), 0)


def redirect_target(current: URL | str, location: str, members: Iterable[str] = ()) -> URL | None:
    """The URL to follow a 307/308 to, or ``None`` when the redirect must be refused.

    ``current`` is the URL that answered; ``location`` its ``Location`` header
    (absolute or relative); ``members`` the configured cluster member addresses.
    """
    cur = current if isinstance(current, URL) else URL(current)
    try:
        target = cur.join(URL(location))
    except (ValueError, TypeError):
        return None
    if target.scheme.lower() not in ("http", "https") or not target.host:
        return None
    if target.user is not None or target.password is not None:
        return None
    if cur.scheme.lower() == "https" and target.scheme.lower() != "https":
        return None  # never downgrade: the token would cross the network in clear
    dest = origin(target)
    if dest == origin(cur):
        return target
    for m in members:
        try:
            if origin(m) == dest:
                return target
        except (ValueError, TypeError):
            continue
    return None


def error_class(status: int, detail: str = "") -> type[VaultError]:
    """The error a final (not retried) HTTP status becomes.

    403 is :class:`PermissionDenied` here; the client turns it into
    :class:`~maily_secrets.errors.AuthFailed` when the token itself is dead.
    """
    if status == 404:
        return SecretNotFound
    if status == 403:
        return PermissionDenied
    if status in RETRY_STATUS or status >= 500:
        return VaultUnavailable
    if "check-and-set" in detail:
        return CheckAndSetConflict
    return VaultRequestError
