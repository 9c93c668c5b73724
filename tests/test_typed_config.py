"""Typed configuration against a real OpenBao: a pydantic model built from a secret,
revalidated on every new version, the old one kept when a new one does not fit."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from maily_secrets.clock import ManualClock
from maily_secrets.typed import InvalidSecretValue, SecretSettingsSource, typed_config
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive
from .kit.listeners import new_secret, service

CANARY = "typed-canary-9xQ"


class AppSettings(BaseModel):
    db_host: str
    db_port: int
    db_password: SecretStr
    feature_flag: bool = False


VALID = {"db_host": "db", "db_port": 5432, "db_password": CANARY + "-1", "other": "ignored"}


async def test_model_built_from_the_secret_and_replaced_on_change(
    bao: Bao, root: VaultClient
) -> None:
    path = await new_secret(root, VALID, prefix="typed")
    clock = ManualClock()
    svc = service(bao, clock)
    changes: list[AppSettings] = []
    threads: set[str] = set()

    def on_change(new: AppSettings) -> None:
        threads.add(threading.current_thread().name)
        changes.append(new)

    try:
        cfg = await typed_config(AppSettings, svc, path, on_change=on_change)
        assert cfg.current.db_port == 5432
        assert cfg.current.db_password.get_secret_value() == CANARY + "-1"
        assert CANARY not in repr(cfg.current) and CANARY not in repr(cfg)
        await root.kv.write(path, {**VALID, "db_port": "6543", "feature_flag": True}, cas=1)
        await drive(clock, lambda: len(changes) == 1)
        assert changes[0] is cfg.current  # swapped before on_change ran
        assert cfg.current.db_port == 6543 and cfg.current.feature_flag is True
        assert threads and threading.main_thread().name not in threads  # off the loop
    finally:
        await svc.close()


async def test_an_invalid_new_version_keeps_the_old_model_logs_and_calls_on_error(
    bao: Bao, root: VaultClient, caplog: pytest.LogCaptureFixture
) -> None:
    path = await new_secret(root, VALID, prefix="typed")
    clock = ManualClock()
    svc = service(bao, clock)
    errors: list[InvalidSecretValue] = []
    changes: list[AppSettings] = []

    async def on_change(new: AppSettings) -> None:  # a coroutine function: in the loop
        changes.append(new)

    caplog.set_level(logging.WARNING, logger="maily_secrets")
    try:
        cfg = await typed_config(
            AppSettings, svc, path, on_change=on_change, on_error=errors.append
        )
        first = cfg.current
        bad = {"db_host": "db", "db_port": CANARY, "db_password": CANARY + "-2"}
        await root.kv.write(path, bad, cas=1)
        await drive(clock, lambda: len(errors) == 1)
        assert cfg.current is first and changes == [] and cfg.rejected == 1
        assert errors[0].problems == [("db_port", "int_parsing")]
        assert CANARY not in str(errors[0]) and errors[0].__cause__ is None
        assert "db_port: int_parsing" in caplog.text and CANARY not in caplog.text
        await root.kv.write(path, {**VALID, "db_password": CANARY + "-3"}, cas=2)
        await drive(clock, lambda: len(changes) == 1)
        assert cfg.current.db_password.get_secret_value() == CANARY + "-3"
        await cfg.close()
        assert path not in svc._listeners.watchers  # its listener is gone
    finally:
        await svc.close()


async def test_an_invalid_first_value_raises_without_the_value(bao: Bao, root: VaultClient) -> None:
    path = await new_secret(root, {"db_host": "db", "db_port": CANARY}, prefix="typed")
    svc = service(bao, ManualClock())
    try:
        with pytest.raises(InvalidSecretValue) as info:
            await typed_config(AppSettings, svc, path)
        msg = str(info.value)
        assert "db_port: int_parsing" in msg and "db_password: missing" in msg
        assert CANARY not in msg and info.value.__cause__ is None
        assert path not in svc._listeners.watchers
    finally:
        await svc.close()


class EnvSettings(BaseSettings):
    db_host: str
    db_password: SecretStr
    log_level: str = "info"


async def test_base_settings_take_the_secret_over_the_environment(
    bao: Bao, root: VaultClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await new_secret(root, {"db_host": "from-vault", "db_password": CANARY}, prefix="typed")
    monkeypatch.setenv("DB_HOST", "from-env")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    svc = service(bao, ManualClock())
    try:
        cfg = await typed_config(EnvSettings, svc, path)
        assert cfg.current.db_host == "from-vault"  # the secret wins
        assert cfg.current.log_level == "debug"  # the environment fills in the rest
    finally:
        await svc.close()


async def test_the_default_path_is_the_services_config(bao: Bao) -> None:
    class Config(BaseModel):
        jwt_secret: SecretStr

    svc = service(bao, ManualClock())
    try:
        cfg = await typed_config(Config, svc)
        assert cfg.path == "maily/data/config"
        assert cfg.current.jwt_secret.get_secret_value()
    finally:
        await svc.close()


def test_secret_settings_source_sits_where_the_app_puts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data: dict[str, Any] = {"db_host": "from-vault", "db_password": CANARY, "unknown": 1}

    class Settings(BaseSettings):
        db_host: str
        db_password: SecretStr

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (env_settings, SecretSettingsSource(settings_cls, data))  # env first

    monkeypatch.setenv("DB_HOST", "from-env")
    s = Settings()  # type: ignore[call-arg]
    assert s.db_host == "from-env" and s.db_password.get_secret_value() == CANARY
    assert CANARY not in repr(SecretSettingsSource(Settings, data))
