"""The ``aws`` rotator: IAM user access keys against a real moto server (HTTP, IAM auth on).

Real OpenBao (``bao``) and moto in server mode (``tests/moto_server.py``) with IAM
authentication switched on, so a deleted key or a wrong secret is refused exactly
like on AWS. One KV v2 mount for the module (``rot-aws-<hex>``), one consumer secret
and one IAM user per test. The rotator's boto3 code is the code that runs against
real AWS; only ``endpoint_url`` points at moto.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from maily_secrets.dev.standins import SELF_ROTATION_POLICY
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.base import (
    ActionRequired,
    RotationContext,
    RotationError,
    RotatorConfigError,
    rotator_for,
)
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rotators.aws import AwsAccessKeyRotator
from maily_secrets.rotation.state import StateStore
from maily_secrets.targets.aws_iam import user_from_arn
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.rotation import Clock, Traffic, all_log_text, hexid, rotate, rotation_ctx, scratch_mount
from .moto_server import Moto, moto
from .secrecy import assert_absent

__all__ = ["moto"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"
T0 = datetime(2030, 1, 15, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def mount(bao: Bao) -> AsyncIterator[str]:
    async with scratch_mount(bao, "rot-aws") as m:
        yield m


# ---------------------------------------------------------------------------- the world
@dataclass
class World:
    moto: Moto
    bao: Bao
    client: VaultClient
    mount: str
    secret: str
    user: str
    key: tuple[str, str]
    options: dict[str, Any]
    secrets: list[str] = field(default_factory=list)  # every secret value the test saw

    @property
    def path(self) -> KV2Path:
        return KV2Path(self.mount, self.secret)

    def ctx(self, now: Callable[[], datetime] | None = None, **options: Any) -> RotationContext:
        opts = {**self.options, **options}
        return rotation_ctx("aws", self.client, self.secret, options=opts, now=now)

    async def data(self) -> tuple[dict[str, Any], int]:
        v = await self.client.kv.read(self.path)
        return v.data, v.version

    async def creds(self) -> tuple[str, str]:
        m = (await self.data())[0]["aws"]
        return str(m["aws_access_key"]), str(m["aws_secret_key"])

    def keys(self) -> set[str]:
        return self.moto.key_ids(self.user)

    def works(self, creds: tuple[str, str]) -> bool:
        arn = self.moto.whoami(creds)
        return arn is not None and user_from_arn(arn) == self.user


async def make_world(
    moto: Moto, bao: Bao, client: VaultClient, mount: str, **options: Any
) -> World:
    user, akid, secret = moto.user("app", SELF_ROTATION_POLICY)
    name = f"credentials-{hexid()}"
    data = {
        "aws": {"aws_access_key": akid, "aws_secret_key": secret, "aws_region": "us-east-1"},
        "stripe": {"api_key": "sk_test_" + uuid.uuid4().hex},  # another service's entry
    }
    await client.kv.write(KV2Path(mount, name), data, cas=0)
    opts = {"endpoint_url": moto.endpoint, "verify_timeout": 5, **options}
    return World(moto, bao, client, mount, name, user, (akid, secret), opts, [secret])


@pytest.fixture
async def client(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    async with bao.client(kv_mount=mount) as c:
        yield c


@pytest.fixture
async def world(moto: Moto, bao: Bao, client: VaultClient, mount: str) -> World:
    return await make_world(moto, bao, client, mount)


# ---------------------------------------------------------------------------- tests
def test_registered_as_aws() -> None:
    rot = rotator_for("aws")
    assert isinstance(rot, AwsAccessKeyRotator) and rot.two_slots


async def test_rotation_while_in_use_previous_key_valid_until_retired(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rot = AwsAccessKeyRotator()
    ctx = world.ctx()
    before, _ = await world.data()
    app = Traffic(world.creds, world.works)
    app.start()
    try:
        await app.until_seen(world.key[0])
        pending, version = await rotate(rot, ctx)
        world.secrets.append(pending["secret_access_key"])
        new = pending["access_key_id"]
        assert pending["previous_access_key_id"] == world.key[0]
        assert pending["iam_user"] == world.user
        await app.until_seen(new)
        # both keys exist and work during the grace period
        assert world.keys() == {world.key[0], new}
        assert world.works(world.key), "the previous key must work until it is retired"
        retiring = rot.retiring(ctx, pending)
        assert retiring == {"access_key_id": world.key[0], "iam_user": world.user}
        await rot.retire(ctx, retiring)
        await app.until_seen(new, times=app.seen.count(new) + 3)
    finally:
        await app.stop()
    assert app.failed == 0 and app.ok > 6
    assert world.keys() == {new}
    assert not world.works(world.key), "the retired key must be refused"
    # only the aws mapping's key changed; the region and other entries are kept
    after, now_version = await world.data()
    assert now_version == version
    assert after["stripe"] == before["stripe"]
    assert after["aws"]["aws_region"] == "us-east-1"
    assert after["aws"]["aws_access_key"] == new
    # retiring again: already gone is fine
    await rot.retire(ctx, retiring)
    text = all_log_text(caplog)
    for s in world.secrets:
        assert_absent(s, text, "the logs")


async def test_engine_rotates_then_retires_after_grace(
    world: World, bao: Bao, tmp_path: Path
) -> None:
    clock = Clock()
    prefix = f"rotation-{hexid()}"
    doc = yaml.safe_load(DEFAULT_YAML.read_text())
    # at_grace: this test is about the grace (when_idle would retire the unused old key
    # after min_grace and lift the gate: tested with the retire policies)
    doc["types"] = {
        "aws": {
            "secret": world.secret,
            "grace": "1h",
            "retire": "at_grace",
            "options": world.options,
        }
    }
    doc["defaults"]["intervals"] = {"aws": "90d"}
    for env in doc["environments"].values():
        env.pop("intervals", None)
        env["state_prefix"] = prefix
    cfg_path = tmp_path / "rotation.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    config = RotationConfig.load(cfg_path)

    async def run(**kw: Any) -> Any:
        engine = RotationEngine(config, "development", client=world.client, now=clock)
        return (await engine.run(["aws"], **kw)).results[0]

    res = await run()
    assert res.status == "rotated", res.reason
    new = (await world.creds())[0]
    assert new != world.key[0] and world.keys() == {world.key[0], new}
    state, _ = await StateStore(world.client, world.mount, prefix).read("aws")
    assert state is not None and state.pending is None
    assert [r.data["access_key_id"] for r in state.retiring] == [world.key[0]]
    assert "secret" not in json.dumps([r.data for r in state.retiring])

    clock.advance(minutes=30)  # within the grace: no second rotation, nothing retired
    res = await run()
    assert res.status == "skipped" and "grace" in res.reason
    assert world.works(world.key)

    clock.advance(hours=1)  # grace over: retired first, then not due
    res = await run(due_only=True)
    assert res.status == "skipped" and "not due" in res.reason
    assert world.keys() == {new}
    assert not world.works(world.key)
    assert world.works(await world.creds())


async def test_crash_after_each_step_then_rerun(world: World) -> None:
    rot = AwsAccessKeyRotator()
    ctx = world.ctx()
    # 1. died between CreateAccessKey and the engine saving the state: an orphan key
    await rot.create_pending(ctx)
    assert len(world.keys()) == 2
    # the rerun deletes the orphan (never used) and makes a new key
    pending = await rot.create_pending(ctx)
    new = pending["access_key_id"]
    assert world.keys() == {world.key[0], new}
    # 2. died after "created" (state saved), then after "applied": apply again
    await rot.apply(ctx, pending)
    await rot.apply(ctx, pending)
    # 3. died after "verified": verify and promote again
    await rot.verify(ctx, pending)
    await rot.verify(ctx, pending)
    v1 = await rot.promote(ctx, pending)
    # 4. died after "promoted": promote is a no-op the second time
    v2 = await rot.promote(ctx, pending)
    assert v1 == v2 == (await world.data())[1]
    assert (await world.creds())[0] == new
    assert world.keys() == {world.key[0], new}
    assert world.works(world.key) and world.works(await world.creds())


async def test_engine_resumes_after_a_killed_run(world: World, bao: Bao, tmp_path: Path) -> None:
    """``MAILY_ROTATION_CRASH_AFTER=applied``: the CLI process dies like a killed pod; the
    next run resumes the same rotation, with the same key."""
    prefix = f"rotation-{hexid()}"
    doc = yaml.safe_load(DEFAULT_YAML.read_text())
    doc["types"] = {"aws": {"secret": world.secret, "grace": "1h", "options": world.options}}
    doc["defaults"]["intervals"] = {"aws": "90d"}
    for env in doc["environments"].values():
        env.pop("intervals", None)
        env["state_prefix"] = prefix
        env["vault"] = {"addr": bao.addr, "kv_mount": world.mount, "auth_method": "token"}
        env["lock_ttl"] = "2s"
    cfg_path = tmp_path / "rotation.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "AWS_"))}
    env.update({"VAULT_TOKEN": bao.token, "MAILY_ROTATION_CONFIG": str(cfg_path), "COLUMNS": "200"})
    argv = [sys.executable, str(ROOT / "mailyctl.py"), "secrets", "rotate", "--secret-types=aws"]
    crashed = subprocess.run(
        argv,
        env={**env, "MAILY_ROTATION_CRASH_AFTER": "applied"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 70, crashed.stdout + crashed.stderr
    state, _ = await StateStore(world.client, world.mount, prefix).read("aws")
    assert state is not None and state.step == "applied" and state.pending
    pending_key = state.pending["access_key_id"]
    world.secrets.append(state.pending["secret_access_key"])
    assert (await world.creds())[0] == world.key[0]  # not promoted yet
    # no waiting: the dead run's lock names this host and a pid that is gone
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resum" in rerun.stdout
    assert (await world.creds())[0] == pending_key
    assert world.keys() == {world.key[0], pending_key}
    for s in world.secrets:
        assert_absent(s, crashed.stdout + crashed.stderr + rerun.stdout + rerun.stderr, "output")


@pytest.mark.parametrize(
    "case",
    [
        "no_such_user",
        "unreachable",
        "wrong_secret",
        "bad_option",
        "vault_mode_without_secret",
        "no_mapping",
        "key_of_another_user",
        "role_not_user",
    ],
)
async def test_bad_configuration_is_clear_and_changes_nothing(world: World, case: str) -> None:
    rot = AwsAccessKeyRotator()
    options: dict[str, Any] = {}
    expect = ""
    if case == "no_such_user":
        options, expect = {"iam_user": f"nobody-{hexid()}"}, "NoSuchEntity"
    elif case == "unreachable":
        options, expect = {"endpoint_url": "http://127.0.0.1:9", "timeout": 1}, "cannot reach"
    elif case == "wrong_secret":
        m, version = await world.data()
        m["aws"]["aws_secret_key"] = "W" * 40
        await world.client.kv.write(world.path, m, cas=version)
        world.secrets.append("W" * 40)
        expect = "SignatureDoesNotMatch"
    elif case == "bad_option":
        options, expect = {"verify_timeout": "soon", "iam_credentials": "root"}, "verify_timeout"
    elif case == "vault_mode_without_secret":
        options, expect = {"iam_credentials": "vault"}, "iam_credentials_secret"
    elif case == "no_mapping":
        options, expect = {"key": "aws-eu"}, "no 'aws-eu' mapping"
    elif case == "key_of_another_user":
        other, _, _ = world.moto.user("other")
        options, expect = {"iam_user": other}, "is not one of IAM user"
    elif case == "role_not_user":
        # a key that is not an IAM user's would need iam_user; simulate with a bad ARN
        assert user_from_arn("arn:aws:sts::123456789012:assumed-role/r/s") is None
        assert user_from_arn("arn:aws:iam::123456789012:user/a/b/maily") == "maily"
        return
    ctx = world.ctx(**options)
    keys_before = world.keys()
    data_before, version_before = await world.data()
    for step in (rot.check, rot.create_pending):
        with pytest.raises(RotatorConfigError) as exc:
            await step(ctx)
        assert expect in str(exc.value), str(exc.value)
        for s in world.secrets:
            assert_absent(s, str(exc.value), "the error")
    assert world.keys() == keys_before, "no IAM key may be created"
    data_after, version_after = await world.data()
    assert version_after == version_before
    assert data_after == data_before


async def test_engine_reports_bad_configuration_as_failed(world: World, tmp_path: Path) -> None:
    doc = yaml.safe_load(DEFAULT_YAML.read_text())
    options = {**world.options, "iam_user": f"nobody-{hexid()}"}
    doc["types"] = {"aws": {"secret": world.secret, "grace": "1h", "options": options}}
    doc["defaults"]["intervals"] = {"aws": "90d"}
    for env in doc["environments"].values():
        env.pop("intervals", None)
        env["state_prefix"] = f"rotation-{hexid()}"
    cfg_path = tmp_path / "rotation.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    engine = RotationEngine(RotationConfig.load(cfg_path), "development", client=world.client)
    _, version = await world.data()
    res = (await engine.run(["aws"])).results[0]
    assert res.status == "failed" and "NoSuchEntity" in res.reason
    assert (await world.data())[1] == version
    assert world.keys() == {world.key[0]}


async def test_leftover_unused_or_inactive_key_is_deleted(world: World) -> None:
    rot = AwsAccessKeyRotator()
    iam = world.moto.client("iam")
    # never used
    unused = iam.create_access_key(UserName=world.user)["AccessKey"]["AccessKeyId"]
    await rot.check(world.ctx())
    pending = await rot.create_pending(world.ctx())
    assert world.keys() == {world.key[0], pending["access_key_id"]}
    assert unused not in world.keys()
    await rot.rollback(world.ctx(), pending)
    # used, but deactivated
    key = iam.create_access_key(UserName=world.user)["AccessKey"]
    assert world.works((key["AccessKeyId"], key["SecretAccessKey"]))
    iam.update_access_key(UserName=world.user, AccessKeyId=key["AccessKeyId"], Status="Inactive")
    pending = await rot.create_pending(world.ctx())
    assert world.keys() == {world.key[0], pending["access_key_id"]}


async def test_leftover_key_in_use_needs_a_person_and_nothing_changes(world: World) -> None:
    rot = AwsAccessKeyRotator()
    key = world.moto.client("iam").create_access_key(UserName=world.user)["AccessKey"]
    world.secrets.append(key["SecretAccessKey"])
    assert world.works((key["AccessKeyId"], key["SecretAccessKey"]))  # somebody uses it
    keys_before = world.keys()
    for step in (rot.check, rot.create_pending):
        with pytest.raises(ActionRequired) as exc:
            await step(world.ctx())
        msg = str(exc.value)
        assert key["AccessKeyId"] in msg and "last used" in msg and "delete-access-key" in msg
        assert_absent(key["SecretAccessKey"], msg, "the message")
    assert world.keys() == keys_before


async def test_previous_key_in_grace_or_pending_is_never_deleted(world: World) -> None:
    """Two keys where the other one is known to the state: the pending key of a rotation in
    progress, or the previous key still in its grace period -> ActionRequired; once the
    grace is over it is deleted."""
    rot = AwsAccessKeyRotator()
    clock = Clock()
    ctx = world.ctx(now=clock)
    store = StateStore(world.client, world.mount, ctx.env.env.state_prefix)
    pending, _ = await rotate(rot, ctx)
    old = world.key[0]
    from maily_secrets.rotation.state import Retiring, RotationState

    _, version = await store.read("aws")
    state = RotationState(
        type="aws",
        env="development",
        outcome="success",
        retiring=[
            Retiring(after=T0 + timedelta(hours=1), data={"access_key_id": old}, rotation_id="r1")
        ],
    )
    version = await store.write(state, cas=version)
    try:
        with pytest.raises(ActionRequired, match="grace period until"):
            await rot.create_pending(ctx)
        assert world.keys() == {old, pending["access_key_id"]}
        clock.advance(hours=2)
        newer = await rot.create_pending(ctx)
        assert world.keys() == {pending["access_key_id"], newer["access_key_id"]}
        # a rotation in progress: its pending key is never the "leftover"
        state.retiring, state.outcome, state.pending = [], "in_progress", newer
        version = await store.write(state, cas=version)
        with pytest.raises(ActionRequired, match="in progress"):
            await rot.check(ctx)
    finally:
        await world.client.kv.write(store.path("aws"), {"type": "aws", "env": "x"}, cas=version)


@pytest.mark.parametrize("how", ["corrupt", "forbidden"])
async def test_unreadable_state_deletes_no_key(world: World, bao: Bao, how: str) -> None:
    """The state names the pending key of a rotation in progress (never used, so it looks
    like a leftover). When the state cannot be read, the cleanup must not guess: nothing
    is deleted and the step fails with a clear error."""
    from maily_secrets.rotation.state import RotationState

    rot = AwsAccessKeyRotator()
    ctx = world.ctx()
    store = StateStore(world.client, world.mount, ctx.env.env.state_prefix)
    pending_id = world.moto.client("iam").create_access_key(UserName=world.user)["AccessKey"][
        "AccessKeyId"
    ]
    _, version = await store.read("aws")
    state = RotationState(
        type="aws",
        env="development",
        outcome="in_progress",
        step="created",
        rotation_id="r-in-progress",
        pending={"access_key_id": pending_id, "iam_user": world.user},
    )
    version = await store.write(state, cas=version)
    policy = f"rot-aws-{hexid()}"
    limited: VaultClient | None = None
    try:
        if how == "corrupt":
            version = await world.client.kv.write(
                store.path("aws"), {"type": "aws", "env": "x", "retiring": "garbage"}, cas=version
            )
        else:  # a policy that may read the consumer secret but not the rotation state
            text = (
                f'path "{world.mount}/*" {{ capabilities = ["read", "list"] }}\n'
                f'path "{store.path("aws").data}" {{ capabilities = ["deny"] }}'
            )
            await world.client.write(f"sys/policies/acl/{policy}", {"policy": text})
            r = await world.client.write("auth/token/create", {"policies": [policy], "ttl": "5m"})
            token = str((r.body or {})["auth"]["client_token"])
            limited = bao.client(token=token, kv_mount=world.mount)
            ctx.client = limited
        keys_before = world.keys()
        assert keys_before == {world.key[0], pending_id}
        for step in (rot.check, rot.create_pending):
            with pytest.raises(RotationError, match="cannot read the rotation state") as exc:
                await step(ctx)
            assert "not deleting any access key" in str(exc.value)
        assert world.keys() == keys_before  # old code: the pending key was deleted
    finally:
        if limited is not None:
            await limited.close()
        await world.client.delete(f"sys/policies/acl/{policy}")
        world.moto.client("iam").delete_access_key(UserName=world.user, AccessKeyId=pending_id)
        await world.client.kv.write(store.path("aws"), {"type": "aws", "env": "x"}, cas=version)


async def test_verify_failure_then_rollback_deletes_the_pending_key(world: World) -> None:
    rot = AwsAccessKeyRotator()
    ctx = world.ctx(verify_timeout=1)
    pending = await rot.create_pending(ctx)
    world.secrets.append(pending["secret_access_key"])
    await rot.apply(ctx, pending)
    broken = {**pending, "secret_access_key": "X" * 40}
    with pytest.raises(RotationError) as exc:
        await rot.verify(ctx, broken)
    assert "SignatureDoesNotMatch" in str(exc.value)
    for s in (*world.secrets, "X" * 40):
        assert_absent(s, str(exc.value), "the error")
    _, version = await world.data()
    await rot.rollback(ctx, pending)
    await rot.rollback(ctx, pending)  # idempotent
    assert world.keys() == {world.key[0]}
    assert (await world.data())[1] == version
    assert (await world.creds())[0] == world.key[0]


async def test_retire_never_deletes_the_key_in_vault(world: World) -> None:
    rot = AwsAccessKeyRotator()
    with pytest.raises(RotationError, match="not deleting"):
        await rot.retire(world.ctx(), {"access_key_id": world.key[0], "iam_user": world.user})
    with pytest.raises(RotationError, match="not deleting"):
        await rot.rollback(
            world.ctx(),
            {"access_key_id": world.key[0], "iam_user": world.user, "secret_access_key": "x"},
        )
    assert world.keys() == {world.key[0]}


async def test_promote_refuses_a_concurrently_changed_key(world: World) -> None:
    rot = AwsAccessKeyRotator()
    ctx = world.ctx()
    pending = await rot.create_pending(ctx)
    data, version = await world.data()
    data["aws"]["aws_access_key"] = "AKIASOMEONEELSE00000"
    await world.client.kv.write(world.path, data, cas=version)
    with pytest.raises(RotationError, match="changed to"):
        await rot.promote(ctx, pending)
    assert (await world.creds())[0] == "AKIASOMEONEELSE00000"


async def test_admin_credentials_from_vault(world: World) -> None:
    """``iam_credentials: vault``: an admin key in Vault manages a user whose own key may
    not touch IAM at all."""
    user, akid, secret = world.moto.user("svc")  # no policy: cannot call IAM itself
    data, version = await world.data()
    data["aws"].update({"aws_access_key": akid, "aws_secret_key": secret})
    await world.client.kv.write(world.path, data, cas=version)
    admin_secret = f"rotator/aws-admin-{hexid()}"
    await world.client.kv.write(
        KV2Path(world.mount, admin_secret),
        {"aws_access_key": world.moto.admin[0], "aws_secret_key": world.moto.admin[1]},
        cas=0,
    )
    rot = AwsAccessKeyRotator()
    # the key itself may not list its own keys: self mode fails clearly
    with pytest.raises(RotatorConfigError, match="AccessDenied"):
        await rot.check(world.ctx())
    ctx = world.ctx(iam_credentials="vault", iam_credentials_secret=admin_secret, iam_user=user)
    pending, _ = await rotate(rot, ctx)
    assert world.moto.key_ids(user) == {akid, pending["access_key_id"]}
    await rot.retire(ctx, rot.retiring(ctx, pending) or {})
    assert world.moto.key_ids(user) == {pending["access_key_id"]}


async def test_describe_and_created_at(world: World) -> None:
    rot = AwsAccessKeyRotator()
    text = await rot.describe(world.ctx())
    assert world.key[0] in text and "STS" in text
    created = await rot.created_at(world.ctx())
    assert created is not None and abs(created - datetime.now(UTC)) < timedelta(minutes=5)


# ---------------------------------------------------------------------------- usage
# moto records a key's last use on every request it receives, at once (AWS: with a delay)
async def test_usage_names_a_straggler_of_the_previous_key_after_the_promote(
    world: World,
) -> None:
    rot = AwsAccessKeyRotator()
    ctx = world.ctx()
    pending, _ = await rotate(rot, ctx)
    world.secrets.append(pending["secret_access_key"])
    retiring = rot.retiring(ctx, pending)
    assert retiring is not None
    since = datetime.now(UTC)
    # nobody used the previous key since the promote: idle, with the delay caveat
    quiet = await rot.usage(ctx, retiring, since=since)
    assert quiet is not None and quiet.previous is not None and quiet.current is not None
    assert quiet.previous.credential == world.key[0] and quiet.previous.idle is True
    assert "delay" in quiet.previous.note
    # the rotator's own IAM calls (iam_credentials: self) use the current key
    assert quiet.current.credential == pending["access_key_id"]
    assert quiet.current.idle is False and "rotator's own" in quiet.current.note
    # an application still on the previous key: a straggler, with service, region, time
    assert world.works(world.key)
    seen = await rot.usage(ctx, retiring, since=since)
    assert seen is not None and seen.previous is not None
    (user,) = seen.previous.users
    assert seen.previous.idle is False and user.count == 1
    assert user.application == "sts" and "us-east-1" in user.detail
    assert "last used 20" in user.detail
    assert seen.previous.describe().startswith(f"{world.key[0]}: 1 in use: 1 x sts")
    doc = json.dumps(seen.public())
    for s in world.secrets:
        assert_absent(s, doc, "the usage document")
    # retired: the previous key is gone, so nobody uses it
    await rot.retire(ctx, retiring)
    gone = await rot.usage(ctx, retiring, since=since)
    assert gone is not None and gone.previous is not None and gone.previous.idle is True
    assert "deleted" in gone.previous.note


async def test_usage_without_a_previous_key_reports_the_current_one(world: World) -> None:
    rot = AwsAccessKeyRotator()
    seen = await rot.usage(world.ctx(), None)
    assert seen is not None and seen.previous is None and seen.current is not None
    assert seen.current.credential == world.key[0] and seen.current.observable


async def test_usage_when_aws_is_unreachable_raises_never_idle(world: World) -> None:
    rot = AwsAccessKeyRotator()
    ctx = world.ctx(endpoint_url="http://127.0.0.1:9", timeout=1)
    retiring = {"access_key_id": world.key[0], "iam_user": world.user}
    with pytest.raises(RotationError, match="cannot reach"):
        await rot.usage(ctx, retiring, since=datetime.now(UTC))
