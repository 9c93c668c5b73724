"""Configuration read from the environment (Vault's own conventions first).

Every field can be given as a keyword to :class:`VaultSettings` or through the
environment variable(s) listed in its ``validation_alias``.  ``VAULT_*`` names
follow HashiCorp Vault's CLI; the ``BAO_*`` spellings of OpenBao are accepted
too.  Secret-bearing fields are :class:`pydantic.SecretStr`, so a settings
object never prints a token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ADDR = "http://vault.vault:8200"
K8S_SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class VaultSettings(BaseSettings):
    """How to reach and authenticate to Vault, and how to cache what it returns."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    # --- where -------------------------------------------------------------------------
    addr: str = Field(DEFAULT_ADDR, validation_alias=_env("addr", "VAULT_ADDR", "BAO_ADDR"))
    namespace: str | None = Field(
        None, validation_alias=_env("namespace", "VAULT_NAMESPACE", "BAO_NAMESPACE")
    )
    cacert: Path | None = Field(None, validation_alias=_env("cacert", "VAULT_CACERT", "BAO_CACERT"))
    skip_verify: bool = Field(
        False, validation_alias=_env("skip_verify", "VAULT_SKIP_VERIFY", "BAO_SKIP_VERIFY")
    )
    timeout: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("timeout", "VAULT_CLIENT_TIMEOUT", "BAO_CLIENT_TIMEOUT"),
        description="Seconds for one HTTP request (connect + read).",
    )
    max_retries: int = Field(
        4, ge=0, validation_alias=_env("max_retries", "VAULT_MAX_RETRIES", "BAO_MAX_RETRIES")
    )
    retry_base_delay: float = Field(0.1, gt=0, validation_alias=_env("retry_base_delay"))
    retry_max_delay: float = Field(2.0, gt=0, validation_alias=_env("retry_max_delay"))
    pool_size: int = Field(100, ge=1, validation_alias=_env("pool_size", "VAULT_POOL_SIZE"))

    # --- who ---------------------------------------------------------------------------
    auth_method: Literal["auto", "token", "kubernetes", "approle"] = Field(
        "auto", validation_alias=_env("auth_method", "VAULT_AUTH_METHOD", "BAO_AUTH_METHOD")
    )
    token: SecretStr | None = Field(
        None, validation_alias=_env("token", "VAULT_TOKEN", "BAO_TOKEN")
    )
    token_file: Path | None = Field(
        None,
        validation_alias=_env("token_file", "VAULT_TOKEN_FILE", "BAO_TOKEN_FILE"),
        description="A file holding the token, e.g. /vault/secrets/token written by Vault Agent.",
    )
    role: str = Field("maily", validation_alias=_env("role", "VAULT_ROLE", "BAO_ROLE"))
    kubernetes_jwt_path: Path = Field(
        Path(K8S_SA_TOKEN), validation_alias=_env("kubernetes_jwt_path", "VAULT_K8S_JWT_PATH")
    )
    kubernetes_mount: str = Field(
        "kubernetes", validation_alias=_env("kubernetes_mount", "VAULT_K8S_MOUNT")
    )
    approle_mount: str = Field(
        "approle", validation_alias=_env("approle_mount", "VAULT_APPROLE_MOUNT")
    )
    role_id: SecretStr | None = Field(None, validation_alias=_env("role_id", "VAULT_ROLE_ID"))
    role_id_file: Path | None = Field(
        None, validation_alias=_env("role_id_file", "VAULT_ROLE_ID_FILE")
    )
    secret_id: SecretStr | None = Field(None, validation_alias=_env("secret_id", "VAULT_SECRET_ID"))
    secret_id_file: Path | None = Field(
        None, validation_alias=_env("secret_id_file", "VAULT_SECRET_ID_FILE")
    )
    renew_fraction: float = Field(
        2 / 3,
        gt=0,
        lt=1,
        validation_alias=_env("renew_fraction"),
        description="Renew a token once this fraction of its TTL has passed.",
    )

    # --- the facade --------------------------------------------------------------------
    kv_mount: str = Field("maily", validation_alias=_env("kv_mount", "MAILY_SECRETS_MOUNT"))
    transit_mount: str = Field(
        "transit", validation_alias=_env("transit_mount", "MAILY_SECRETS_TRANSIT_MOUNT")
    )
    cache_ttl: float = Field(
        60.0,
        ge=0,
        validation_alias=_env("cache_ttl", "MAILY_SECRETS_CACHE_TTL"),
        description="Seconds a secret read is served from memory before Vault is asked again.",
    )
    max_staleness: float = Field(
        3600.0,
        ge=0,
        validation_alias=_env("max_staleness", "MAILY_SECRETS_MAX_STALENESS"),
        description="How old a last-known value may be when served because Vault is down.",
    )
    listener_interval: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("listener_interval", "MAILY_SECRETS_LISTENER_INTERVAL"),
        description="Seconds between two polls of a watched secret's metadata (+-10% jitter).",
    )
    snapshot_path: Path | None = Field(
        None,
        validation_alias=_env("snapshot_path", "MAILY_SECRETS_SNAPSHOT_PATH"),
        description="Encrypted last-known-good snapshot file (off when unset).",
    )
    snapshot_interval: float = Field(
        5.0,
        ge=0,
        validation_alias=_env("snapshot_interval", "MAILY_SECRETS_SNAPSHOT_INTERVAL"),
        description="At most one snapshot write per this many seconds (and one at close()).",
    )
    snapshot_key: SecretStr | None = Field(
        None,
        validation_alias=_env("snapshot_key", "MAILY_SECRETS_SNAPSHOT_KEY"),
        description="Fernet key (urlsafe base64, 32 bytes) that encrypts the snapshot.",
    )

    @field_validator("addr")
    @classmethod
    def _strip_addr(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("VAULT_ADDR must start with http:// or https://")
        return v

    @field_validator("kv_mount", "transit_mount", "kubernetes_mount", "approle_mount")
    @classmethod
    def _strip_mount(cls, v: str) -> str:
        v = v.strip("/")
        if not v:
            raise ValueError("a mount path cannot be empty")
        return v
