"""Maily Secrets: the Vault/OpenBao integration of the Maily email platform.

``from maily_secrets import vault_service`` gives the process-wide ``VaultService``
(configured from the environment on first use); importing it does no I/O.
"""

import threading

from ._version import __version__
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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .service import VaultService
    from .settings import VaultSettings

    vault_service: VaultService  # made on first access by __getattr__ below

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
    "__version__",
    "vault_service",
]

_service_lock = threading.Lock()
_service: "VaultService | None" = None


def __getattr__(name: str) -> object:
    # the service (aiohttp) and the settings (pydantic) load on first use, not on import
    # of any submodule (`maily_secrets.errors`...): `mailyctl` commands start faster
    if name == "VaultService":
        from .service import VaultService

        return VaultService
    if name == "VaultSettings":
        from .settings import VaultSettings

        return VaultSettings
    if name == "vault_service":
        return _vault_service()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _vault_service() -> "VaultService":
    """The module-level service, made once (thread-safe) on first access. Making it
    does no I/O either: settings, the client and the cache are set up on first use."""
    global _service
    with _service_lock:
        if _service is None:
            from .service import VaultService

            _service = VaultService()
        return _service
