"""Typed errors of Maily Secrets.

Every message names the path and the cause, never a secret value. Catch
:class:`VaultError` for "anything went wrong talking to Vault", or one of the
specific subclasses::

    VaultError
    ├── ConfigurationError   a setting (environment variable) is invalid; names the variable
    ├── InvalidPath          the path was refused before any request was made
    ├── SecretNotFound       the path does not exist (HTTP 404)
    ├── PermissionDenied     the token may not do this (HTTP 403 after re-login)
    ├── AuthFailed           logging in (token, Kubernetes, AppRole) failed
    ├── VaultRequestError    Vault refused the request (other 4xx), e.g. a CAS mismatch
    │   └── CheckAndSetConflict
    └── VaultUnavailable     connection error, timeout, sealed, or 5xx after retries
"""

from __future__ import annotations

from typing import Any


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


class ConfigurationError(VaultError):
    """A setting is invalid (``variable`` names the environment variable); nothing was sent."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


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


class OutcomeUnknown(VaultUnavailable):
    """The request may have been applied: it was sent, and no answer came back.

    Not retried for a write; a check-and-set write resolves it by reading back.
    """


# ---------------------------------------------------------------------------- transit
# Errors of the transit engine (vault/transit.py). Messages name the key, the mount,
# the operation and, in a batch, the index of the item; never a plaintext, a context
# or a ciphertext::
#
#     TransitError (VaultError)         base; ``index`` is the failing item of a batch
#     ├── TransitKeyNotFound            + SecretNotFound: the key does not exist
#     ├── InvalidCiphertext             + VaultRequestError: malformed, or too new a version
#     │   └── DecryptionFailed          did not authenticate: altered, other key, other context
#     ├── CiphertextVersionTooOld       + VaultRequestError: below min_decryption_version
#     ├── TransitContextError           + VaultRequestError: context missing (derived key)
#     └── TransitBatchError             + VaultRequestError: any other per-item failure


class TransitError(VaultError):
    """A transit engine error. ``index`` is the (0-based) failing item of a batch call,
    ``failed`` how many items of that call were seen failing (0 for a single-item call)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        status: int | None = None,
        detail: str = "",
        index: int | None = None,
        failed: int = 0,
    ):
        super().__init__(message, path=path, status=status, detail=detail)
        self.index = index
        self.failed = failed


class TransitKeyNotFound(TransitError, SecretNotFound):
    """The transit key does not exist (and encrypt may not create it: upsert disabled)."""


class InvalidCiphertext(TransitError, VaultRequestError):
    """The ciphertext is malformed, or names a key version newer than the key has."""


class DecryptionFailed(InvalidCiphertext):
    """The ciphertext did not authenticate: altered, made with another key, or (derived
    key) encrypted under a different context."""


class CiphertextVersionTooOld(TransitError, VaultRequestError):
    """The ciphertext's key version is below the key's ``min_decryption_version``."""

    def __init__(
        self,
        message: str,
        *,
        ciphertext_version: int | None = None,
        min_decryption_version: int | None = None,
        **where: Any,  # path, status, detail, index, failed: as TransitError
    ):
        super().__init__(message, **where)
        self.ciphertext_version = ciphertext_version
        self.min_decryption_version = min_decryption_version


class TransitContextError(TransitError, VaultRequestError):
    """A derived key needs a context on every item, and got none (or only on some)."""


class TransitBatchError(TransitError, VaultRequestError):
    """An item of a batch failed for a reason without a more specific class."""


class DecryptedNotText(TransitError, ValueError):
    """``decrypt_data`` was asked for text but the plaintext is not UTF-8 (use ``as_bytes``)."""
