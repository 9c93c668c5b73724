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
from .settings import VaultSettings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .service import VaultService

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


def __getattr__(name: str) -> object:
    # the service (and aiohttp, transit, leases...) loads on first use, not on import of
    # any submodule: `mailyctl` commands start faster
    if name == "VaultService":
        from .service import VaultService

        return VaultService
    raise AttributeError(name)
