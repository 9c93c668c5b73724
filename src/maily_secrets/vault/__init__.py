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
