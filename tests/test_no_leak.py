"""Canary scan: no secret value reaches logs, exception text or reprs."""

from __future__ import annotations

import asyncio
import logging
import traceback
import uuid
from pathlib import Path

import pytest

from maily_secrets import logs
from maily_secrets.errors import VaultError
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.snapshot import generate_key

from .conftest import Bao


def canary() -> str:
    return "CANARY" + uuid.uuid4().hex


async def test_canaries_never_leak(
    private_bao: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = {"db_password": canary(), "nested": {"api": canary()}, "list": [canary()]}
    token_canary = "s." + canary()
    secret_id_canary = canary()
    path = "maily/data/leak-" + uuid.uuid4().hex[:6]
    errors: list[BaseException] = []

    async with private_bao.client() as root:
        await root.kv.write(path, values, cas=0)
        try:  # a CAS conflict carrying canary data
            await root.kv.write(path, {"x": canary(), **values}, cas=0)
        except VaultError as exc:
            errors.append(exc)

    snap = tmp_path / "snap"
    settings = private_bao.settings(
        cache_ttl=0.01,
        max_retries=0,
        snapshot_path=snap,
        snapshot_key=generate_key(),
    )
    json_log = tmp_path / "json.log"
    with json_log.open("w") as stream:
        logs.configure(logging.DEBUG, stream=stream)
        try:
            svc = VaultService(settings)
            assert await svc.get_secret(path) == values
            await asyncio.sleep(0.02)
            private_bao.server.stop()
            assert await svc.get_secret(path) == values  # stale-if-error path logs a warning
            for bad in ("maily/data/absent", "maily/../x"):
                try:
                    await svc.get_secret(bad)
                except VaultError as exc:
                    errors.append(exc)
            await svc.close()

            for s in (
                VaultSettings(addr=private_bao.addr, token=token_canary, max_retries=0),
                VaultSettings(
                    addr=private_bao.addr,
                    role_id="r",
                    secret_id=secret_id_canary,
                    max_retries=0,
                ),
            ):
                bad_svc = VaultService(s)
                try:
                    await bad_svc.get_config()
                except VaultError as exc:
                    errors.append(exc)
                finally:
                    await bad_svc.close()
                assert token_canary not in repr(s) and secret_id_canary not in repr(s)
                assert token_canary not in str(s.model_dump())
        finally:
            logging.getLogger("maily_secrets").handlers.clear()
            logging.getLogger("maily_secrets").propagate = True

    assert len(errors) >= 4
    texts = [caplog.text, json_log.read_text(), snap.read_bytes().decode("latin-1")]
    for exc in errors:
        texts.append(str(exc))
        texts.append(repr(exc))
        texts.append("".join(traceback.format_exception(exc)))
    blob = "\n".join(texts)
    assert "CANARY" not in blob
    assert "secret_read" in json_log.read_text()  # the log was really written
