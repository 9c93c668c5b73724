"""Maily Secrets: the Vault/OpenBao integration of the Maily email platform."""

from .errors import (
    AuthFailed,
    CheckAndSetConflict,
    InvalidPath,
    PermissionDenied,
    SecretNotFound,
    VaultError,
    VaultRequestError,
    VaultUnavailable,
)
from .service import VaultService
from .settings import VaultSettings

__version__ = "0.1.0"

__all__ = [
    "AuthFailed",
    "CheckAndSetConflict",
    "InvalidPath",
    "PermissionDenied",
    "SecretNotFound",
    "VaultError",
    "VaultRequestError",
    "VaultService",
    "VaultSettings",
    "VaultUnavailable",
]
