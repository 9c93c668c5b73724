"""The guide's import path: ``from apps.api.services.vault_service import vault_service``.

Maily's own wiring of the package's service: ``vault_service`` here is the same object
as ``from maily_secrets import vault_service`` (the import path for other repositories).
Importing this module does no I/O and starts no task. Configuration comes from
the environment (``VAULT_ADDR``, ``VAULT_TOKEN`` ... see the README) when the
service is first used.
"""

from maily_secrets import vault_service
from maily_secrets.errors import (
    AuthFailed,
    InvalidPath,
    PermissionDenied,
    SecretNotFound,
    VaultError,
    VaultUnavailable,
)
from maily_secrets.service import VaultService

__all__ = [
    "AuthFailed",
    "InvalidPath",
    "PermissionDenied",
    "SecretNotFound",
    "VaultError",
    "VaultService",
    "VaultUnavailable",
    "vault_service",
]
