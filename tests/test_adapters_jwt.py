"""``adapters.jwt_signer`` / ``jwt_verifier`` across a ``jwt`` rotation and its retirement:
real OpenBao, the real ``jwt`` rotator driven by an in-process engine with an injected
``now`` (the verifier gets the same clock), listeners polling every 0.2 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml

from maily_secrets import adapters
from maily_secrets import jwt_keys as jk
from maily_secrets.bootstrap import sample_secrets
from maily_secrets.clock import ManualClock
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.rotation import Clock, all_log_text, hexid, scratch_mount
from .secrecy import assert_absent

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"


@pytest.fixture(scope="module")
async def mount(bao: Bao) -> AsyncIterator[str]:
    async with scratch_mount(bao, "adapt-jwt") as m:
        yield m


@pytest.fixture
async def client(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    async with bao.client(kv_mount=mount) as c:
        yield c


def service(
    bao: Bao, mount: str, interval: float = 0.2, clock: ManualClock | None = None
) -> VaultService:
    return VaultService(
        VaultSettings(
            addr=bao.addr,
            token=bao.token,
            auth_method="token",
            kv_mount=mount,
            listener_interval=interval,
            # the tests write around the service: each path's own poll catches that
            listener_full_poll_interval=2 * interval,
        ),
        clock=clock,
    )


async def until(cond: Callable[[], bool], within: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within}s")
        await asyncio.sleep(0.02)


def engine_config(tmp: Path, secret: str) -> RotationConfig:
    doc = yaml.safe_load(DEFAULT_YAML.read_text())
    doc["types"] = {"jwt": {"secret": secret, "grace": "1h"}}
    doc["defaults"]["intervals"] = {"jwt": "30d"}
    for env in doc["environments"].values():
        env.pop("intervals", None)
        env["state_prefix"] = f"rotation-{hexid()}"
    path = tmp / f"rotation-{hexid()}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return RotationConfig.load(path)


async def test_sign_and_verify_across_a_rotation_and_its_retirement(
    bao: Bao, client: VaultClient, mount: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name = f"config-{hexid()}"
    await client.kv.write(KV2Path(mount, name), sample_secrets()["config"], cas=0)
    clock = Clock()
    config = engine_config(tmp_path, name)
    svc = service(bao, mount)
    # another instance: its listener lags; its cache ages by a clock of the test's
    lag_clock = ManualClock()
    lagging = service(bao, mount, interval=3600, clock=lag_clock)
    signer = await adapters.jwt_signer(svc, secret=name, ttl=3000)
    verifier = await adapters.jwt_verifier(svc, secret=name, now=clock)
    other = await adapters.jwt_verifier(lagging, secret=name, now=clock)
    try:
        old_kid = signer.kid
        t1 = signer.sign({"sub": "u1"}, now=clock())
        assert (await verifier.verify(t1))["sub"] == "u1"
        # 1. rotate: the signer signs with the new key as soon as the listener sees it
        engine = RotationEngine(config, "development", client=client, now=clock)
        res = (await engine.run(["jwt"])).results[0]
        assert res.status == "rotated", res.reason
        await until(lambda: signer.generation >= 2 and verifier.generation >= 2, what="switch")
        assert signer.kid != old_kid
        t2 = signer.sign({"sub": "u2"}, now=clock())
        assert jk.token_kid(t2) == signer.kid
        # 2. both verify: the previous key for the grace, the new one
        assert (await verifier.verify(t1))["sub"] == "u1"
        assert (await verifier.verify(t2))["sub"] == "u2"
        # the lagging instance does not know the new kid: it re-reads once, then verifies
        assert other.generation == 1
        # a key set read less than a second ago is not read again (a flood of forged
        # kids costs Vault nothing); one second later it is
        with pytest.raises(jk.UnknownKeyId):
            await other.verify(t2)
        await lag_clock.advance(1.5)
        assert (await other.verify(t2))["sub"] == "u2"
        assert other.refreshes == 1 and other.generation == 2
        # 3. within the grace the previous key still verifies
        clock.advance(minutes=40)
        assert (await verifier.verify(t1))["sub"] == "u1"
        # 4. past the grace: refused, then retired (dropped from the key set)
        clock.advance(minutes=30)
        with pytest.raises(jk.RetiredKeyId):
            await verifier.verify(t1)
        gen = verifier.generation
        res = (
            await RotationEngine(config, "development", client=client, now=clock).run(
                ["jwt"], due_only=True
            )
        ).results[0]
        assert res.status == "skipped" and "not due" in res.reason, res.reason
        await until(lambda: verifier.generation > gen, what="the retirement seen")
        data = (await client.kv.read(KV2Path(mount, name))).data
        assert data[jk.PREVIOUS_KEY] == []
        with pytest.raises(jk.UnknownKeyId):
            await verifier.verify(t1)
        with pytest.raises(jk.TokenExpired):  # its own lifetime (50 min) is over too
            await verifier.verify(t2)
        t3 = signer.sign({"sub": "u3"}, now=clock())
        assert (await verifier.verify(t3))["sub"] == "u3"
        assert (await other.verify(t3))["sub"] == "u3"
        stats = [signer.stats(), verifier.stats(), other.stats()]
        assert stats[0]["signed"] == {old_kid: 1, signer.kid: 2}
        text = "\n".join([repr(signer), repr(verifier), repr(other), str(stats)])
    finally:
        for a in (signer, verifier, other):
            await a.close()
        await svc.close()
        await lagging.close()
    secrets = [data[jk.SECRET_KEY], sample_secrets()["config"][jk.SECRET_KEY]]
    for s in secrets:
        assert_absent(s, text, "a repr or the stats")
        assert_absent(s, all_log_text(caplog), "the logs")


async def test_a_malformed_key_set_keeps_the_one_in_use(
    bao: Bao, client: VaultClient, mount: str
) -> None:
    name = f"config-{hexid()}"
    path = KV2Path(mount, name)
    await client.kv.write(path, sample_secrets()["config"], cas=0)
    svc = service(bao, mount)
    signer = await adapters.jwt_signer(svc, secret=name)
    try:
        kid = signer.kid
        cur = await client.kv.read(path)
        await client.kv.write(path, {**cur.data, jk.PREVIOUS_KEY: "not a list"}, cas=cur.version)

        def seen() -> bool:
            entry = svc.cache.peek(path.data)
            return entry is not None and entry.version == cur.version + 1

        await until(seen, what="the listener read the new version")
        assert signer.generation == 1 and signer.kid == kid
        assert jk.token_kid(signer.sign({"sub": "x"})) == kid
    finally:
        await signer.close()
        await svc.close()
