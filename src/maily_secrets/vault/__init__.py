"""Async Vault/OpenBao client layer (aiohttp), organised by engine like Vault's API."""

from .auth import (
    AppRoleAuth,
    AuthMethod,
    KubernetesAuth,
    TokenAuth,
    TokenManager,
    auth_from_settings,
)
from .client import VaultClient, VaultResponse
from .kv import KV2, SecretVersion

__all__ = [
    "KV2",
    "AppRoleAuth",
    "AuthMethod",
    "KubernetesAuth",
    "SecretVersion",
    "TokenAuth",
    "TokenManager",
    "VaultClient",
    "VaultResponse",
    "auth_from_settings",
]
