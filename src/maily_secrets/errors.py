"""Typed errors of Maily Secrets.

Every message names the path and the cause, never a secret value. Catch
:class:`VaultError` for "anything went wrong talking to Vault", or one of the
specific subclasses::

    VaultError
    ├── InvalidPath          the path was refused before any request was made
    ├── SecretNotFound       the path does not exist (HTTP 404)
    ├── PermissionDenied     the token may not do this (HTTP 403 after re-login)
    ├── AuthFailed           logging in (token, Kubernetes, AppRole) failed
    ├── VaultRequestError    Vault refused the request (other 4xx), e.g. a CAS mismatch
    │   └── CheckAndSetConflict
    └── VaultUnavailable     connection error, timeout, sealed, or 5xx after retries
"""

from __future__ import annotations


class VaultError(Exception):
    """Base class of every error raised by Maily Secrets."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        status: int | None = None,
        detail: str = "",
    ):
        super().__init__(message)
        self.path = path
        self.status = status
        self.detail = detail  # Vault's own error text (never a secret value)


class InvalidPath(VaultError, ValueError):
    """The secret path is malformed; no request was sent."""


class SecretNotFound(VaultError, KeyError):
    """The secret does not exist (or was deleted/destroyed)."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0]) if self.args else ""


class PermissionDenied(VaultError):
    """Vault answered 403 for this path even with a fresh login."""


class AuthFailed(VaultError):
    """Authentication to Vault failed (bad token, role, JWT or secret-id)."""


class VaultRequestError(VaultError):
    """Vault rejected the request (4xx other than 403/404)."""


class CheckAndSetConflict(VaultRequestError):
    """A KV v2 write's check-and-set version did not match the current version."""


class VaultUnavailable(VaultError):
    """Vault could not be reached or kept failing (connection, timeout, 5xx, sealed)."""
