"""Configuration read from the environment (Vault's own conventions first).

Every field can be given as a keyword to :class:`VaultSettings` or through the
environment variable(s) listed in its ``validation_alias``.  ``VAULT_*`` names
follow HashiCorp Vault's CLI; the ``BAO_*`` spellings of OpenBao are accepted
too.  Secret-bearing fields are :class:`pydantic.SecretStr`, so a settings
object never prints a token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from yarl import URL

from .cliname import command
from .errors import ConfigurationError

DEFAULT_ADDR = "http://vault.vault:8200"
K8S_SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class _OurNamesOnly(EnvSettingsSource):
    """The environment, read only through each field's aliases (VAULT_*, BAO_*, MAILY_*).

    pydantic-settings also matches a field's own name (``namespace``, ``token``,
    ``role``, ``timeout``) against the environment, case-insensitively, when
    ``populate_by_name`` is on: a pod's ``NAMESPACE`` would become the Vault
    namespace. Field names are keyword arguments, never environment variables.
    """

    def _extract_field_info(
        self, field: FieldInfo, field_name: str, model_config: Any = None
    ) -> list[tuple[str, str, bool]]:
        infos = super()._extract_field_info(field, field_name, model_config)
        return [i for i in infos if i[0] != field_name]


class VaultSettings(BaseSettings):
    """How to reach and authenticate to Vault, and how to cache what it returns."""

    # Only the names in each field's ``validation_alias`` are read from the environment
    # (VAULT_*, BAO_*, MAILY_*): a field name is accepted as a keyword argument only.
    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, frozen=True, allow_inf_nan=False
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _OurNamesOnly(settings_cls))

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _configuration_error(exc, values) from None

    # --- where -------------------------------------------------------------------------
    addr: str = Field(DEFAULT_ADDR, validation_alias=_env("VAULT_ADDR", "BAO_ADDR"))
    agent_addr: str | None = Field(
        None,
        validation_alias=_env("VAULT_AGENT_ADDR", "BAO_AGENT_ADDR"),
        description="A local Vault Agent's API proxy: when set, every request goes there"
        " instead of VAULT_ADDR (as the Vault CLI does); with no credentials of its own the"
        " app sends no token and the agent adds its auto-auth token (use_auto_auth_token).",
    )
    namespace: str | None = Field(None, validation_alias=_env("VAULT_NAMESPACE", "BAO_NAMESPACE"))
    cacert: Path | None = Field(None, validation_alias=_env("VAULT_CACERT", "BAO_CACERT"))
    skip_verify: bool = Field(False, validation_alias=_env("VAULT_SKIP_VERIFY", "BAO_SKIP_VERIFY"))
    capath: Path | None = Field(
        None,
        validation_alias=_env("VAULT_CAPATH", "BAO_CAPATH"),
        description="A directory of PEM CA certificates, every file loaded (no hashed names"
        " needed); ignored when VAULT_CACERT is set, as by the Vault CLI.",
    )
    client_cert: Path | None = Field(
        None,
        validation_alias=_env("VAULT_CLIENT_CERT", "BAO_CLIENT_CERT"),
        description="PEM client certificate for mutual TLS (and the cert auth method).",
    )
    client_key: Path | None = Field(
        None,
        validation_alias=_env("VAULT_CLIENT_KEY", "BAO_CLIENT_KEY"),
        description="PEM private key of VAULT_CLIENT_CERT (unencrypted, as for the Vault CLI).",
    )
    tls_server_name: str | None = Field(
        None,
        validation_alias=_env("VAULT_TLS_SERVER_NAME", "BAO_TLS_SERVER_NAME"),
        description="Name sent as SNI and checked against the server's certificate"
        " instead of VAULT_ADDR's host.",
    )
    timeout: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("VAULT_CLIENT_TIMEOUT", "BAO_CLIENT_TIMEOUT"),
        description="Seconds for one HTTP request (connect + read).",
    )
    max_retries: int = Field(4, ge=0, validation_alias=_env("VAULT_MAX_RETRIES", "BAO_MAX_RETRIES"))
    retry_base_delay: float = Field(
        0.1, gt=0, validation_alias=_env("MAILY_SECRETS_RETRY_BASE_DELAY")
    )
    retry_max_delay: float = Field(
        2.0, gt=0, validation_alias=_env("MAILY_SECRETS_RETRY_MAX_DELAY")
    )
    pool_size: int = Field(100, ge=1, validation_alias=_env("VAULT_POOL_SIZE"))
    cluster_members: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        validation_alias=_env("MAILY_SECRETS_CLUSTER_MEMBERS"),
        description="Addresses of the other Vault nodes (comma-separated): a 307/308 redirect"
        " is followed, with the token, only to the same origin or to one of these.",
    )

    # --- who ---------------------------------------------------------------------------
    auth_method: Literal["auto", "token", "kubernetes", "approle", "cert"] = Field(
        "auto", validation_alias=_env("VAULT_AUTH_METHOD", "BAO_AUTH_METHOD")
    )
    token: SecretStr | None = Field(None, validation_alias=_env("VAULT_TOKEN", "BAO_TOKEN"))
    token_file: Path | None = Field(
        None,
        validation_alias=_env("VAULT_TOKEN_FILE", "BAO_TOKEN_FILE"),
        description="A file holding the token, e.g. /vault/secrets/token written by Vault Agent.",
    )
    role: str = Field("maily", validation_alias=_env("VAULT_ROLE", "BAO_ROLE"))
    kubernetes_jwt_path: Path = Field(
        Path(K8S_SA_TOKEN), validation_alias=_env("VAULT_K8S_JWT_PATH")
    )
    kubernetes_mount: str = Field("kubernetes", validation_alias=_env("VAULT_K8S_MOUNT"))
    approle_mount: str = Field("approle", validation_alias=_env("VAULT_APPROLE_MOUNT"))
    role_id: SecretStr | None = Field(None, validation_alias=_env("VAULT_ROLE_ID"))
    role_id_file: Path | None = Field(None, validation_alias=_env("VAULT_ROLE_ID_FILE"))
    secret_id: SecretStr | None = Field(None, validation_alias=_env("VAULT_SECRET_ID"))
    secret_id_file: Path | None = Field(None, validation_alias=_env("VAULT_SECRET_ID_FILE"))
    cert_mount: str = Field("cert", validation_alias=_env("VAULT_CERT_MOUNT"))
    cert_role: str | None = Field(
        None,
        validation_alias=_env("VAULT_CERT_ROLE"),
        description="The cert auth role to log in as (unset: any role that trusts the cert).",
    )
    renew_fraction: float = Field(
        2 / 3,
        gt=0,
        lt=1,
        validation_alias=_env("MAILY_SECRETS_RENEW_FRACTION"),
        description="Renew a token once this fraction of its TTL has passed.",
    )

    # --- the facade --------------------------------------------------------------------
    kv_mount: str = Field("maily", validation_alias=_env("MAILY_SECRETS_MOUNT"))
    transit_mount: str = Field("transit", validation_alias=_env("MAILY_SECRETS_TRANSIT_MOUNT"))
    cache_ttl: float = Field(
        60.0,
        ge=0,
        validation_alias=_env("MAILY_SECRETS_CACHE_TTL"),
        description="Seconds a secret read is served from memory before Vault is asked again.",
    )
    max_staleness: float = Field(
        3600.0,
        ge=0,
        validation_alias=_env("MAILY_SECRETS_MAX_STALENESS"),
        description="How old a last-known value may be when served because Vault is down.",
    )
    listener_interval: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("MAILY_SECRETS_LISTENER_INTERVAL"),
        description="Seconds between two polls of a watched secret's metadata (+-10% jitter).",
    )
    listener_full_poll_interval: float = Field(
        300.0,
        gt=0,
        validation_alias=_env("MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL"),
        description="With the change feed on: seconds between two polls of each watched"
        " secret's own metadata (+-10% jitter), which catch writes made around the library"
        " (`bao kv put`); the beacon is polled every MAILY_SECRETS_LISTENER_INTERVAL.",
    )
    change_feed: str | None = Field(
        None,
        validation_alias=_env("MAILY_SECRETS_CHANGE_FEED"),
        description="The change feed's beacon, a KV v2 secret mapping each API path written"
        " through the library to its version (unset: <mount>/data/_changes; a bare name is"
        " taken under the mount). Listeners poll it once per interval instead of every"
        " watched path. 'off': every watched path is polled each interval.",
    )
    change_push: Literal["off", "redis"] = Field(
        "off",
        validation_alias=_env("MAILY_SECRETS_CHANGE_PUSH"),
        description="'redis': writes are also published on the Redis channel"
        " maily:secrets:changes and listeners subscribe to it (changes arrive at once; the"
        " beacon stays the fallback when Redis is unreachable).",
    )
    change_push_secret: str = Field(
        "config",
        validation_alias=_env("MAILY_SECRETS_CHANGE_PUSH_SECRET"),
        description="The secret holding redis_host, redis_port, redis_username and"
        " redis_password for the push (a name under the mount, or an API path); re-read"
        " when a login is refused.",
    )
    required_secrets: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        validation_alias=_env("MAILY_SECRETS_REQUIRED"),
        description="API paths (comma-separated) that must be servable within"
        " MAILY_SECRETS_MAX_STALENESS for vault_service.health() to report ready;"
        " vault_service.require(path) adds more.",
    )
    config_file: Path | None = Field(
        None,
        validation_alias=_env("MAILY_CONFIG_FILE"),
        description="A JSON file rendered by Vault Agent (the injector's"
        " /vault/secrets/config.json):"
        " get_config() is served from it, reloaded when it changes; no Vault token needed.",
    )
    snapshot_path: Path | None = Field(
        None,
        validation_alias=_env("MAILY_SECRETS_SNAPSHOT_PATH"),
        description="Encrypted last-known-good snapshot file (off when unset).",
    )
    snapshot_interval: float = Field(
        5.0,
        ge=0,
        validation_alias=_env("MAILY_SECRETS_SNAPSHOT_INTERVAL"),
        description="At most one snapshot write per this many seconds (and one at close()).",
    )
    snapshot_key: SecretStr | None = Field(
        None,
        validation_alias=_env("MAILY_SECRETS_SNAPSHOT_KEY"),
        description="Fernet key (urlsafe base64, 32 bytes) that encrypts the snapshot.",
    )
    access_log_interval: float = Field(
        10.0,
        ge=0,
        validation_alias=_env("MAILY_SECRETS_ACCESS_LOG_INTERVAL"),
        description="Seconds over which fresh cache hits are counted per path and written as"
        " one access-log event (misses, errors and stale serves: one event each; 0: every"
        " hit its own event).",
    )

    @field_validator("change_push", mode="before")
    @classmethod
    def _push_word(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @property
    def change_feed_path(self) -> str | None:
        """The beacon's API path (``<mount>/data/_changes`` by default), None when off."""
        return _kv_path(self.change_feed, self.kv_mount, "_changes", off=True)

    @property
    def change_push_path(self) -> str | None:
        """The API path of the push's Redis credentials, None when the push is off."""
        if self.change_push == "off":
            return None
        return _kv_path(self.change_push_secret, self.kv_mount, "config", off=False)

    @model_validator(mode="after")
    def _feed_paths(self) -> VaultSettings:
        from .paths import KV2Path

        for var, value, off in (
            ("MAILY_SECRETS_CHANGE_FEED", self.change_feed, True),
            ("MAILY_SECRETS_CHANGE_PUSH_SECRET", self.change_push_secret, False),
        ):
            path = _kv_path(value, self.kv_mount, "_", off=off)
            try:
                kv = KV2Path.parse(path) if path is not None else None
            except ValueError:  # InvalidPath
                kv = None
            if path is not None and kv is None:
                raise _SettingError(
                    var, "must be a secret name or a KV v2 path <mount>/data/<name>"
                )
        return self

    @field_validator("addr")
    @classmethod
    def _strip_addr(cls, v: str) -> str:
        return _check_addr(v)

    @field_validator("agent_addr")
    @classmethod
    def _strip_agent_addr(cls, v: str | None) -> str | None:
        return _check_addr(v) if v is not None and v.strip() else None

    @property
    def api_addr(self) -> str:
        """Where requests go: ``VAULT_AGENT_ADDR`` when set, else ``VAULT_ADDR``."""
        return self.agent_addr or self.addr

    @field_validator("cluster_members", mode="before")
    @classmethod
    def _split_members(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [m for m in (p.strip() for p in v.split(",")) if m]
        if isinstance(v, (list, tuple)):
            return tuple(_check_addr(str(m)) for m in v)
        return v

    @field_validator("required_secrets", mode="before")
    @classmethod
    def _split_required(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = tuple(p for p in (q.strip() for q in v.split(",")) if p)
        return v

    @field_validator("cacert")
    @classmethod
    def _readable_cacert(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        try:
            with open(v, "rb") as f:
                head = f.read(1 << 16)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise ValueError(f"cannot read CA file {v}: {why}") from None
        if b"-----BEGIN CERTIFICATE-----" not in head:
            raise ValueError(f"{v} holds no PEM certificate")
        return v

    @field_validator("capath")
    @classmethod
    def _capath_is_a_directory(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"{v} is not a directory")
        return v

    @field_validator("tls_server_name")
    @classmethod
    def _server_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v or any(c in v for c in "/:@ ") or len(v) > 253:
            raise ValueError("must be a host name such as vault.example (no scheme or port)")
        return v

    @model_validator(mode="after")
    def _client_cert_and_key(self) -> VaultSettings:
        """Both or neither, readable, and PEM (checked here; loaded when a connection is made)."""
        cert, key = self.client_cert, self.client_key
        if cert is None and key is None:
            return self
        if cert is None or key is None:
            have, missing = (
                ("VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY")
                if key is None
                else ("VAULT_CLIENT_KEY", "VAULT_CLIENT_CERT")
            )
            raise _SettingError(missing, f"is not set but {have} is (mutual TLS needs both files)")
        for path, var, marker in (
            (cert, "VAULT_CLIENT_CERT", b"-----BEGIN CERTIFICATE-----"),
            (key, "VAULT_CLIENT_KEY", b"PRIVATE KEY-----"),
        ):
            try:
                with open(path, "rb") as f:
                    head = f.read(1 << 16)
            except OSError as exc:
                why = exc.strerror or type(exc).__name__
                raise _SettingError(var, f"cannot read {path}: {why}") from None
            if marker not in head:
                what = "PEM certificate" if var == "VAULT_CLIENT_CERT" else "PEM private key"
                raise _SettingError(var, f"{path} holds no {what}")
        return self

    @model_validator(mode="after")
    def _snapshot_needs_key(self) -> VaultSettings:
        if self.snapshot_path is None:
            return self
        if self.snapshot_key is None:
            raise ValueError(
                "snapshot_path is set but MAILY_SECRETS_SNAPSHOT_KEY is not"
                f" (make one with `{command('snapshot-key')}`)"
            )
        from cryptography.fernet import Fernet

        try:
            Fernet(self.snapshot_key.get_secret_value().encode())
        except (ValueError, TypeError):
            raise ValueError(
                "MAILY_SECRETS_SNAPSHOT_KEY is not a valid Fernet key (32 url-safe"
                f" base64-encoded bytes; make one with `{command('snapshot-key')}`)"
            ) from None
        return self

    @field_validator("kv_mount", "transit_mount", "kubernetes_mount", "approle_mount", "cert_mount")
    @classmethod
    def _strip_mount(cls, v: str) -> str:
        v = v.strip("/")
        if not v:
            raise ValueError("a mount path cannot be empty")
        return v


class _SettingError(ValueError):
    """A check across fields that knows which variable to blame."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(reason)
        self.variable = variable


_OFF = frozenset({"off", "false", "0", "no", "none", "disabled"})


def _kv_path(value: str | None, mount: str, default: str, *, off: bool) -> str | None:
    """A setting naming a KV v2 secret: a bare name under ``mount``, or an API path."""
    v = (value or "").strip().strip("/")
    if off and v.lower() in _OFF:
        return None
    if not v or v.lower() in ("on", "true", "1", "yes"):
        v = default
    return v if "/data/" in v else f"{mount}/data/{v}"


def _check_addr(v: str) -> str:
    v = v.strip().rstrip("/")
    if not v.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    try:
        u = URL(v)
    except (ValueError, TypeError):
        raise ValueError("is not a valid URL") from None
    if not u.host:
        raise ValueError("has no host")
    if u.user is not None or u.password is not None:
        raise ValueError("must not hold a user name or password (userinfo)")
    if u.query_string or "?" in v:
        raise ValueError("must not have a query string")
    if u.fragment or "#" in v:
        raise ValueError("must not have a fragment")
    if u.path not in ("", "/"):
        raise ValueError("must not have a path (give scheme://host:port)")
    try:
        u.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise ValueError("has an invalid port") from None
    return v


def _env_names(field: str) -> tuple[str, ...]:
    info = VaultSettings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return tuple(str(c) for c in alias.choices if isinstance(c, str))
    return (alias,) if isinstance(alias, str) else ()


def _configuration_error(exc: ValidationError, given: dict[str, Any]) -> ConfigurationError:
    """One typed error naming the variable (or keyword) and the reason, never the value."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(x) for x in first.get("loc", ()) if isinstance(x, str)]
    key = loc[0] if loc else ""
    blamed = (first.get("ctx") or {}).get("error")
    if isinstance(blamed, _SettingError):
        variable = _spelling(blamed.variable, given)
    elif not key:  # a model-level check: the snapshot key is the one to fix
        variable = "MAILY_SECRETS_SNAPSHOT_KEY"
    elif key in given:  # a keyword argument
        variable = key
    else:
        field = next(
            (f for f in VaultSettings.model_fields if f == key or key in _env_names(f)), key
        )
        names = _env_names(field)
        in_env = {k.upper() for k in os.environ}
        variable = next((n for n in names if n.upper() in in_env), names[0] if names else key)
    reason = str(first.get("msg") or "invalid").removeprefix("Value error, ")
    return ConfigurationError(f"invalid configuration: {variable} {reason}", variable=variable)


def _spelling(variable: str, given: dict[str, Any]) -> str:
    """``VAULT_X`` as the caller gave it: the keyword, or the ``BAO_X`` spelling if set."""
    field = next((f for f in VaultSettings.model_fields if variable in _env_names(f)), None)
    if field is None:
        return variable
    if field in given:
        return field
    in_env = {k.upper() for k in os.environ}
    return next((n for n in _env_names(field) if n.upper() in in_env or n in given), variable)
