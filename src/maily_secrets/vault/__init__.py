"""Async Vault/OpenBao client layer (aiohttp), organised by engine like Vault's API."""

from .auth import (
    AppRoleAuth,
    AuthMethod,
    KubernetesAuth,
    TokenAuth,
    TokenManager,
    auth_from_settings,
)
from .client import VaultClient
from .kv import KV2, SecretVersion
from .requester import Requester, VaultResponse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .transit import KeyVersions, Transit

__all__ = [
    "KV2",
    "AppRoleAuth",
    "AuthMethod",
    "KeyVersions",
    "KubernetesAuth",
    "Requester",
    "SecretVersion",
    "TokenAuth",
    "TokenManager",
    "Transit",
    "VaultClient",
    "VaultResponse",
    "auth_from_settings",
]


def __getattr__(name: str) -> object:
    # transit loads when first used, not with every read's client
    if name in ("KeyVersions", "Transit"):
        from . import transit

        return getattr(transit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
