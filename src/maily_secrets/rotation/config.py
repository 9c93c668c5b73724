"""The rotation configuration file (YAML): intervals, environments, where secrets live.

Looked up in this order: an explicit path (``--config``), ``MAILY_ROTATION_CONFIG``
(the Kubernetes ConfigMap mount), the default shipped with the package.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..settings import VaultSettings

# libyaml's safe loader when available: 20x faster on a large config
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(d|h|m|s)?\s*$")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1, None: 1}


class ConfigError(ValueError):
    """The rotation configuration is missing, malformed or names something unknown."""


def parse_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
    raise ValueError(f"not a duration: {value!r} (use e.g. 30d, 12h, 90m, 45s)")


def format_duration(td: timedelta) -> str:
    s = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: ``min_grace`` when a type sets none: long enough for listeners polling at the default
#: intervals (the beacon, and the slow per-path poll of 300 s) to see the new credential
#: and their pools to open connections with it, so "idle" is not mistaken for "adopted"
#: by a client that simply has not looked yet; capped by the type's ``grace``
DEFAULT_MIN_GRACE = timedelta(minutes=5)

RetireMode = Literal["when_idle", "at_grace", "never"]


class TypeConfig(_Model):
    secret: str
    rotator: str | None = None  # the rotator implementation (default: the type's own name)
    #: how long the previous credential keeps working after a rotation (at most; see retire)
    grace: timedelta | None = None
    #: when_idle: retire the previous credential as soon as its target shows no users of it,
    #: at the earliest after min_grace (targets that cannot tell: at the end of grace);
    #: at_grace: at the end of grace even if used (naming who still uses it);
    #: never: keep it (a person retires it)
    retire: RetireMode = "when_idle"
    #: when_idle's earliest retirement after the promote (default: DEFAULT_MIN_GRACE,
    #: at most grace)
    min_grace: timedelta | None = None
    #: after the promote: retire even if used and end what still uses it (PostgreSQL
    #: sessions); unset: never end sessions
    hard_deadline: timedelta | None = None
    #: may name credentials (a provider's settings): never in a repr
    options: dict[str, Any] = Field(default_factory=dict, repr=False)

    _dur = field_validator("grace", "min_grace", "hard_deadline", mode="before")(
        lambda v: None if v is None else parse_duration(v)
    )

    @model_validator(mode="after")
    def _retire_durations(self) -> TypeConfig:
        grace = self.grace or timedelta(0)
        show = format_duration
        if self.min_grace is not None and self.min_grace > grace:
            raise ValueError(
                f"min_grace {show(self.min_grace)} is longer than grace {show(grace)}"
                " (min_grace <= grace <= hard_deadline)"
            )
        if self.hard_deadline is not None:
            if self.retire == "never":
                raise ValueError(
                    "hard_deadline cannot be combined with retire: never"
                    " (never keeps the previous credential; drop one of them)"
                )
            if self.hard_deadline < grace:
                raise ValueError(
                    f"hard_deadline {show(self.hard_deadline)} is shorter than grace"
                    f" {show(grace)} (min_grace <= grace <= hard_deadline)"
                )
        return self

    @property
    def effective_min_grace(self) -> timedelta:
        """``min_grace``, or the default capped by ``grace``."""
        if self.min_grace is not None:
            return self.min_grace
        return min(DEFAULT_MIN_GRACE, self.grace or timedelta(0))


class EmailNotify(_Model):
    to: list[str] = Field(default_factory=list)
    sender: str = Field("maily-secrets@localhost", alias="from")
    smtp_secret: str = "config"  # noqa: S105 - a secret's name: which secret holds smtp_host/port/username/password
    #: auto: implicit TLS on port 465, else STARTTLS, which must be offered before the
    #: SMTP password is sent; starttls / implicit: that one, always; none: plaintext,
    #: AUTH included (the only setting that lets a password cross in the clear)
    tls: Literal["auto", "starttls", "implicit", "none"] = "auto"
    #: older spelling: true is ``tls: starttls``; false skips STARTTLS, so a password
    #: is then refused unless ``tls: none`` says plaintext is meant
    starttls: bool | None = None


class WebhookNotify(_Model):
    url: str | None = Field(None, repr=False)  # a webhook URL is a credential
    url_secret: str | None = None  # a secret with key webhook_url (webhook URLs are secrets)


class NotifyConfig(_Model):
    email: EmailNotify = Field(default_factory=EmailNotify)
    webhook: WebhookNotify = Field(default_factory=WebhookNotify)


class RestartsConfig(_Model):
    """Restart the Deployments annotated ``maily.io/restart-on-rotation`` after a promote
    (rotation/restarts.py; docs/adapters.md "Restarting workloads ...")."""

    namespace: str | list[str] = "maily"  # one namespace or a list, searched in this order
    api: str = "in-cluster"  # or the API server's URL (with token_file; ca_file for https)
    token_file: str | None = None  # default in-cluster: the service account's token file
    ca_file: str | None = None  # default in-cluster: the service account's ca.crt
    timeout: timedelta = timedelta(minutes=5)  # per workload, for its rollout to complete
    poll_interval: timedelta = timedelta(seconds=2)

    _dur = field_validator("timeout", "poll_interval", mode="before")(parse_duration)

    @field_validator("api")
    @classmethod
    def _api(cls, v: str) -> str:
        if v != "in-cluster" and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("api must be 'in-cluster' or the API server's http(s) URL")
        return v.rstrip("/")

    @property
    def namespaces(self) -> list[str]:
        return [self.namespace] if isinstance(self.namespace, str) else list(self.namespace)


class EnvironmentConfig(_Model):
    confirm: bool = False
    vault: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold a token
    intervals: dict[str, timedelta] = Field(default_factory=dict)
    notify: NotifyConfig | None = None
    lock_ttl: timedelta = timedelta(minutes=5)
    state_prefix: str = "rotation"
    restarts: RestartsConfig | None = None  # Deployments to restart after a promote

    @field_validator("intervals", mode="before")
    @classmethod
    def _intervals(cls, v: Any) -> Any:
        return {k: parse_duration(x) for k, x in (v or {}).items()}

    _lock = field_validator("lock_ttl", mode="before")(parse_duration)


class Defaults(_Model):
    environment: str = "development"
    intervals: dict[str, timedelta] = Field(default_factory=dict)

    @field_validator("intervals", mode="before")
    @classmethod
    def _intervals(cls, v: Any) -> Any:
        return {k: parse_duration(x) for k, x in (v or {}).items()}


class RotationConfig(_Model):
    defaults: Defaults = Field(default_factory=Defaults)
    types: dict[str, TypeConfig]
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    environments: dict[str, EnvironmentConfig]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None) -> RotationConfig:
        where = path or os.environ.get("MAILY_ROTATION_CONFIG")
        try:
            if where:
                text = Path(where).read_text()
                source = str(where)
            else:
                text = (
                    resources.files("maily_secrets.rotation") / "default_config.yaml"
                ).read_text()
                source = "default_config.yaml (built in)"
        except OSError as exc:
            raise ConfigError(
                f"cannot read rotation config {where or 'default_config.yaml (built in)'}:"
                f" {exc.strerror or exc}"
            ) from None
        try:
            doc = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a safe loader
        except yaml.YAMLError as exc:
            raise ConfigError(f"rotation config {source} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"rotation config {source} must be a mapping")
        try:
            cfg = cls.model_validate({**doc, "source": source})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"rotation config {source}: {problems}") from None
        for t in cfg.types:
            if t not in cfg.defaults.intervals and not any(
                t in e.intervals for e in cfg.environments.values()
            ):
                raise ConfigError(f"rotation config {source}: type {t!r} has no interval")
        return cfg

    @property
    def type_names(self) -> list[str]:
        return list(self.types)

    def environment(self, name: str | None) -> ResolvedEnvironment:
        env_name = name or os.environ.get("MAILY_ENV") or self.defaults.environment
        if env_name not in self.environments:
            raise ConfigError(
                f"unknown environment {env_name!r}; valid: {', '.join(self.environments)}"
            )
        return ResolvedEnvironment(self, env_name, self.environments[env_name])

    def parse_types(self, spec: str | None) -> list[str]:
        """``"jwt,aws"`` / ``"all"`` / None (all) -> type names; ConfigError lists valid ones."""
        valid = self.type_names
        if spec is None or spec.strip() == "all":
            return valid
        parts = [p.strip() for p in spec.split(",")]
        if any(not p for p in parts):
            raise ConfigError(
                f"malformed --secret-types {spec!r}: use a comma-separated list such as"
                f" 'jwt,aws' or 'all'; valid: {', '.join(valid)}"
            )
        unknown = [p for p in parts if p not in valid and p.replace("-", "_") not in valid]
        if unknown:
            raise ConfigError(
                f"unknown secret type(s) {', '.join(unknown)}; valid: {', '.join(valid)}, all"
            )
        out: list[str] = []
        for p in parts:
            name = p if p in valid else p.replace("-", "_")
            if name not in out:
                out.append(name)
        return out


class ResolvedEnvironment:
    """One environment with the defaults applied."""

    def __init__(self, cfg: RotationConfig, name: str, env: EnvironmentConfig) -> None:
        self.config = cfg
        self.name = name
        self.env = env

    def interval(self, type_name: str) -> timedelta:
        if type_name in self.env.intervals:
            return self.env.intervals[type_name]
        return self.config.defaults.intervals[type_name]

    def type(self, type_name: str) -> TypeConfig:
        return self.config.types[type_name]

    @property
    def notify(self) -> NotifyConfig:
        """The global notify settings, with the channels this environment sets replaced."""
        own = self.env.notify
        if own is None:
            return self.config.notify
        return self.config.notify.model_copy(
            update={name: getattr(own, name) for name in own.model_fields_set}
        )

    @property
    def confirm(self) -> bool:
        return self.env.confirm

    def vault_settings(self) -> VaultSettings:
        """Environment variables first, then this environment's ``vault`` overrides."""
        return VaultSettings(**self.env.vault)

    @property
    def kv_mount(self) -> str:
        return self.vault_settings().kv_mount
