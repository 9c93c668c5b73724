"""``repr()`` is an output channel: no rotation object prints a secret (a canary test).

Every object the rotation code builds around a credential (state, context, options,
config, credentials, reports) is given a canary value where a secret would be, then
``repr()``/``str()`` of it (and of what holds it) must not contain the canary.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from maily_secrets.api_keys import Snapshot
from maily_secrets.rotation.base import RotationContext
from maily_secrets.rotation.config import RotationConfig, TypeConfig
from maily_secrets.rotation.notify import _Smtp
from maily_secrets.rotation.report import RunReport, TypeResult
from maily_secrets.rotation.rewrap import SourceSpec
from maily_secrets.rotation.rotators.api_keys import KeySpec
from maily_secrets.rotation.state import Retiring, RotationState
from maily_secrets.settings import VaultSettings
from maily_secrets.targets.aws_iam import AwsCreds
from maily_secrets.targets.postgres import PostgresTarget
from maily_secrets.vault.client import VaultClient

CANARY = "canary-" + uuid.uuid4().hex
T0 = datetime(2030, 1, 15, 3, 0, tzinfo=UTC)


def assert_no_canary(obj: Any, what: str) -> None:
    for text in (repr(obj), str(obj)):
        if CANARY in text:
            raise AssertionError(f"the canary appears in repr/str of {what}")


def state() -> RotationState:
    return RotationState(
        type="database",
        env="production",
        rotation_id="r1",
        step="applied",
        outcome="in_progress",
        pending={"role": "maily_app_b", "password": CANARY},
        retiring=[Retiring(after=T0, data={"role": "maily_app"}, rotation_id="r0")],
    )


def config(tmp_path: Path) -> RotationConfig:
    doc = {
        "defaults": {"intervals": {"smtp": "180d"}},
        "types": {"smtp": {"secret": "config", "options": {"provider_token": CANARY}}},
        "notify": {"webhook": {"url": f"https://hooks.example/services/{CANARY}"}},
        "environments": {"development": {"vault": {"token": CANARY}}},
    }
    path = tmp_path / "rotation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return RotationConfig.load(path)


def test_rotation_state_and_its_copies(tmp_path: Path) -> None:
    s = state()
    assert_no_canary(s, "RotationState")
    assert_no_canary(s.model_copy(update={"step": "verified"}), "a copy of RotationState")
    assert_no_canary(s.public(), "RotationState.public()")
    assert s.pending is not None and s.pending["password"] == CANARY  # still there, just unprinted


def test_config_options_and_context(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    env = cfg.environment("development")
    for obj, what in [
        (cfg, "RotationConfig"),
        (cfg.types["smtp"], "TypeConfig"),
        (TypeConfig(secret="config", options={"password": CANARY}), "TypeConfig"),
        (env.env, "EnvironmentConfig"),
        (env.notify, "NotifyConfig"),
        (env.notify.webhook, "WebhookNotify"),
    ]:
        assert_no_canary(obj, what)
    client = VaultClient(VaultSettings(addr="http://127.0.0.1:1", token=SecretStr(CANARY)))
    ctx = RotationContext(
        env=env,
        type_name="smtp",
        type_config=cfg.types["smtp"],
        client=client,
        rotation_id="r1",
        log=logging.getLogger("test"),
        state=state(),
    )
    assert_no_canary(ctx, "RotationContext")


def test_credentials_and_rotator_options() -> None:
    for obj, what in [
        (AwsCreds("AKIAEXAMPLE", CANARY, CANARY), "AwsCreds"),
        (_Smtp("smtp.example", 587, "maily", CANARY), "the notification SMTP settings"),
        (
            KeySpec("stripe", "provider", provider="stripe", settings={"admin_key": CANARY}),
            "KeySpec",
        ),
        (Snapshot({"stripe_key": CANARY}, 3, {}, None), "the api-keys snapshot"),
        (
            SourceSpec("pkg.mod:factory", "db", {"dsn": f"postgresql://u:{CANARY}@h/db"}),
            "SourceSpec",
        ),
        (PostgresTarget(password=SecretStr(CANARY)), "PostgresTarget"),
    ]:
        assert_no_canary(obj, what)


def test_reports() -> None:
    report = RunReport(env="production", run_id="run1", actor="cron", started_at=T0)
    report.results.append(
        TypeResult("database", "rotated", rotation_id="r1", notes=["retired maily_app"])
    )
    report.finished_at = T0 + timedelta(seconds=3)
    assert_no_canary(report, "RunReport")
    assert_no_canary(report.to_json(), "RunReport.to_json()")
