"""Restarting annotated Deployments after a promote (rotation/restarts.py).

The Kubernetes side is a STAND-IN, not a cluster: tests/k8s_apps_standin.py is a small
local HTTP(S) server that answers list/get/patch of apps/v1 Deployments the way
kube-apiserver does, enforces the RBAC of deploy/k8s/base/rbac.yaml and simulates the
Deployment controller's rollout (one step per status read, no real time). What is
tested against it: the decisions (which Deployments, in which order, what is skipped or
held), the requests and patch bodies on the wire, one-at-a-time restarts, timeouts on
the injected clock, RBAC refusals, and that the token never appears anywhere. The
engine-level tests rotate a real type (jwt) on the real OpenBao with restarts
configured against the stand-in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from maily_secrets.clock import ManualClock
from maily_secrets.rotation.config import ConfigError, RestartsConfig, RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.restarts import (
    ANNOTATION,
    PATCH_CONTENT_TYPE,
    RESTARTED_AT,
    RESTARTED_FOR,
    Deployment,
    KubeApiError,
    KubeClient,
    plan,
    restart_workloads,
    rollout_status,
    wants,
)
from maily_secrets.rotation.state import StateStore
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .k8s_apps_standin import ROTATOR, AppsStandin, StandinDeployment, rbac_rules
from .rotation_env import DEFAULT_YAML, RotationEnv, mailyctl_argv, make_rotation_env
from .secrecy import assert_absent

T = TypeVar("T")
RID = "20260301T120000Z-database-0badc0de"
WALL = 1_800_000_000.0  # ManualClock's wall-clock start


@pytest.fixture
def token() -> str:
    return f"canary-k8s-token-{uuid.uuid4().hex}"


@pytest.fixture
def token_file(tmp_path: Path, token: str) -> Path:
    f = tmp_path / "sa-token"
    f.write_text(token + "\n")
    f.chmod(0o600)
    return f


@pytest.fixture
def standin(token: str) -> Iterator[AppsStandin]:
    with AppsStandin({token: ROTATOR}) as s:
        yield s


def cfg_for(s: AppsStandin, token_file: Path, **kw: Any) -> RestartsConfig:
    doc: dict[str, Any] = {"api": s.url, "token_file": str(token_file), "namespace": "maily"}
    doc.update(kw)
    return RestartsConfig.model_validate(doc)


def dep(name: str, annotation: str | None = None, ns: str = "maily", **kw: Any) -> Any:
    return StandinDeployment(
        ns, name, annotations={ANNOTATION: annotation} if annotation else {}, **kw
    )


async def drive(clock: ManualClock, aw: Awaitable[T], max_steps: int = 10_000) -> T:
    """Run ``aw``; whenever it sleeps on ``clock``, move the clock to its deadline.

    The stand-in answers over real sockets, so the loop waits for I/O in between; no
    assertion depends on how long that takes."""
    task = asyncio.ensure_future(aw)
    for _ in range(max_steps):
        done, _ = await asyncio.wait({task}, timeout=0.005)
        if done:
            return task.result()
        d = clock.next_deadline()
        if d is not None:
            await clock.advance(d - clock.monotonic())
    task.cancel()
    raise AssertionError("the restarts did not finish")


# ---------------------------------------------------------------------- pure decisions
@pytest.mark.parametrize(
    "value,type_name,expected",
    [
        ("database,redis", "database", True),
        (" database , redis ", "redis", True),
        ("database,redis", "jwt", False),
        ("all", "encryption_key", True),
        ("ALL", "jwt", True),
        ("api-keys", "api_keys", True),
        ("databases", "database", False),
        ("database,,", "database", True),
        ("", "database", False),
        (None, "database", False),
    ],
)
def test_annotation_names_types_comma_separated_spaces_dashes_and_all(
    value: str | None, type_name: str, expected: bool
) -> None:
    assert wants(value, type_name) is expected


def test_plan_orders_by_configured_namespace_then_name_skips_zero_replicas_holds_paused() -> None:
    deps = [
        Deployment("maily", "web", "database"),
        Deployment("jobs", "batch", "all"),
        Deployment("maily", "api", "redis, database"),
        Deployment("maily", "cron", "database", replicas=0),
        Deployment("maily", "frozen", "database", paused=True),
        Deployment("maily", "other", "jwt"),
        Deployment("maily", "plain", None),
        Deployment("maily", "again", "database", restarted_for=RID),
    ]
    got = [(d.deployment.key, d.action) for d in plan(deps, "database", RID, ["maily", "jobs"])]
    assert got == [
        ("maily/again", "wait"),  # patched for this rotation already (a resumed run)
        ("maily/api", "restart"),
        ("maily/cron", "skip"),
        ("maily/frozen", "hold"),
        ("maily/web", "restart"),
        ("jobs/batch", "restart"),
    ]
    assert plan(deps, "smtp", RID, ["maily"]) == [
        d for d in plan(deps, "smtp", RID, ["maily"]) if d.deployment.annotation == "all"
    ]


def test_deployment_from_api_defaults_replicas_to_one() -> None:
    d = Deployment.from_api({"metadata": {"name": "x", "namespace": "n"}, "spec": {}})
    assert d.replicas == 1 and not d.paused and d.annotation is None


def _status(gen: int, obs: int, want: int = 2, **st: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": want},
        "status": {"observedGeneration": obs, **st},
    }


@pytest.mark.parametrize(
    "doc,state",
    [
        (_status(3, 2, replicas=2, updatedReplicas=2, availableReplicas=2), "progressing"),
        (_status(3, 3, replicas=3, updatedReplicas=1, availableReplicas=2), "progressing"),
        (_status(3, 3, replicas=3, updatedReplicas=2, availableReplicas=2), "progressing"),
        (
            _status(
                3, 3, replicas=2, updatedReplicas=2, availableReplicas=1, unavailableReplicas=1
            ),
            "progressing",
        ),
        (_status(3, 3, replicas=2, updatedReplicas=2, availableReplicas=2), "done"),
        (
            _status(
                3,
                3,
                replicas=3,
                updatedReplicas=1,
                conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}],
            ),
            "failed",
        ),
    ],
)
def test_rollout_status_follows_kubectl_rollout_status(doc: dict[str, Any], state: str) -> None:
    assert rollout_status(doc, 3).state == state


def test_rollout_of_an_older_generation_is_not_taken_for_ours() -> None:
    doc = _status(2, 2, replicas=2, updatedReplicas=2, availableReplicas=2)
    assert rollout_status(doc, 3).state == "progressing"  # the patch answered generation 3


def test_restarts_config_durations_namespaces_and_api_validation() -> None:
    c = RestartsConfig.model_validate(
        {"namespace": ["maily", "jobs"], "timeout": "90s", "poll_interval": "1s"}
    )
    assert c.namespaces == ["maily", "jobs"] and c.timeout == timedelta(seconds=90)
    assert RestartsConfig().namespaces == ["maily"] and RestartsConfig().api == "in-cluster"
    assert RestartsConfig().timeout == timedelta(minutes=5)
    with pytest.raises(ValueError, match="in-cluster"):
        RestartsConfig.model_validate({"api": "kubernetes.default.svc"})


def test_rotation_config_takes_restarts_per_environment(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(
        "defaults: {intervals: {jwt: 1d}}\ntypes: {jwt: {secret: config}}\n"
        "environments:\n  production:\n    restarts: {namespace: maily, timeout: 10m}\n"
        "  development: {}\n"
    )
    cfg = RotationConfig.load(f)
    prod = cfg.environment("production").env.restarts
    assert prod is not None and prod.timeout == timedelta(minutes=10)
    assert cfg.environment("development").env.restarts is None
    f.write_text(f.read_text().replace("timeout: 10m", "timeot: 10m"))
    with pytest.raises(ConfigError, match="timeot"):
        RotationConfig.load(f)


def test_in_cluster_client_uses_the_service_account_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    c = KubeClient.from_config(RestartsConfig(), sa_dir=tmp_path)
    assert c.api_url == "https://kubernetes.default.svc"
    assert c.token_file == tmp_path / "token" and c.ca_file == tmp_path / "ca.crt"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert KubeClient.from_config(RestartsConfig(), sa_dir=tmp_path).api_url == (
        "https://10.96.0.1:443"
    )
    with pytest.raises(KubeApiError, match="token_file"):
        KubeClient.from_config(RestartsConfig(api="http://127.0.0.1:1"))


# ---------------------------------------------------------------------- against the stand-in
async def test_restarts_exactly_the_annotated_deployments_with_kubectls_patch(
    standin: AppsStandin, token_file: Path
) -> None:
    for d in (
        dep("api", "database,redis", rollout_reads=1),
        dep("jwt-only", "jwt"),
        dep("plain"),
        dep("worker", "all", rollout_reads=1),
    ):
        standin.add(d)
    clock = ManualClock()
    out = await drive(
        clock, restart_workloads(cfg_for(standin, token_file), "database", RID, clock=clock)
    )
    assert out.ok and not out.hold_retirement
    assert out.restarted == ["maily/api", "maily/worker"]
    patches = standin.patches()
    assert [p.path.rsplit("/", 1)[1] for p in patches] == ["api", "worker"]
    stamp = datetime.fromtimestamp(WALL, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for p in patches:
        assert p.content_type == PATCH_CONTENT_TYPE
        assert p.body == {
            "spec": {
                "template": {"metadata": {"annotations": {RESTARTED_AT: stamp, RESTARTED_FOR: RID}}}
            }
        }
    # the patch reached the pod template: a new generation, rolled out
    api = standin.deployments[("maily", "api")]
    assert api.generation == 2 and api.template_annotations[RESTARTED_AT] == stamp
    assert standin.deployments[("maily", "jwt-only")].generation == 1
    assert standin.deployments[("maily", "plain")].generation == 1
    assert any("maily/api, maily/worker" in n for n in out.notes())


async def test_second_patch_only_after_the_first_rollout_completed(
    standin: AppsStandin, token_file: Path
) -> None:
    standin.add(dep("a", "database", rollout_reads=4))
    standin.add(dep("b", "database", rollout_reads=3))
    clock = ManualClock()
    cfg = cfg_for(standin, token_file, poll_interval="2s")
    out = await drive(clock, restart_workloads(cfg, "database", RID, clock=clock))
    assert out.restarted == ["maily/a", "maily/b"]
    assert standin.events == [
        ("patch", "maily/a"),
        ("complete", "maily/a"),
        ("patch", "maily/b"),
        ("complete", "maily/b"),
    ]
    # it polled until complete (4 reads of a, 3 of b), sleeping on the injected clock
    assert standin.reads_of("maily/a") == 4 and standin.reads_of("maily/b") == 3
    assert clock.monotonic() - 1_000.0 == pytest.approx(2.0 * (3 + 2))


async def test_a_rollout_that_never_completes_times_out_and_stops_the_rest(
    standin: AppsStandin, token_file: Path
) -> None:
    standin.add(dep("a-stuck", "database", stuck=True))
    standin.add(dep("b", "database"))
    clock = ManualClock()
    cfg = cfg_for(standin, token_file, timeout="5m", poll_interval="10s")
    out = await drive(clock, restart_workloads(cfg, "database", RID, clock=clock))
    assert not out.ok and out.hold_retirement
    assert out.failed is not None and out.failed[0] == "maily/a-stuck"
    assert "did not complete within 5m" in out.failed[1]
    assert "1 of 2 new replicas updated" in out.failed[1]  # the last thing it saw
    assert out.not_attempted == ["maily/b"] and out.restarted == []
    assert [e for e in standin.events if e[0] == "patch"] == [("patch", "maily/a-stuck")]
    assert standin.deployments[("maily", "b")].generation == 1
    assert clock.monotonic() - 1_000.0 == pytest.approx(300.0)  # the timeout, not real time
    assert "not attempted after that: maily/b" in out.notes()
    assert "previous credential is kept" in out.hold_reason()


async def test_progress_deadline_exceeded_fails_before_the_timeout(
    standin: AppsStandin, token_file: Path
) -> None:
    standin.add(dep("a", "database", stuck=True, deadline_after=3))
    clock = ManualClock()
    cfg = cfg_for(standin, token_file, timeout="1h", poll_interval="5s")
    out = await drive(clock, restart_workloads(cfg, "database", RID, clock=clock))
    assert out.failed is not None and "timed out progressing" in out.failed[1]
    assert clock.monotonic() - 1_000.0 == pytest.approx(10.0)


async def test_paused_deployment_is_not_patched_and_holds_retirement(
    standin: AppsStandin, token_file: Path
) -> None:
    standin.add(dep("a", "database", paused=True))
    standin.add(dep("b", "database", rollout_reads=1))
    standin.add(dep("idle", "database", replicas=0))
    clock = ManualClock()
    out = await drive(
        clock, restart_workloads(cfg_for(standin, token_file), "database", RID, clock=clock)
    )
    assert [p.path.rsplit("/", 1)[1] for p in standin.patches()] == ["b"]
    assert out.restarted == ["maily/b"] and out.failed is None
    assert [w for w, _ in out.held] == ["maily/a"] and out.hold_retirement
    assert [w for w, _ in out.skipped] == ["maily/idle"]


async def test_rbac_denial_is_reported_with_the_role_to_fix(token: str, token_file: Path) -> None:
    # the manifest's Role covers namespace maily only: listing another one is refused
    with AppsStandin({token: ROTATOR}) as s:
        s.add(dep("x", "database", ns="billing"))
        clock = ManualClock()
        out = await drive(
            clock,
            restart_workloads(
                cfg_for(s, token_file, namespace="billing"), "database", RID, clock=clock
            ),
        )
    assert out.failed is not None and out.failed[0] == "namespace/billing"
    msg = out.failed[1]
    assert "403 Forbidden" in msg and 'cannot list resource "deployments"' in msg
    assert "Role vault-secret-rotation" in msg and ROTATOR in msg
    # a Role without patch: the patch is refused, nothing after it is attempted
    rules = {ROTATOR: {("maily", "apps", "deployments", v) for v in ("get", "list")}}
    with AppsStandin({token: ROTATOR}, rules=rules) as s:
        s.add(dep("a", "database"))
        s.add(dep("b", "database"))
        out = await drive(
            clock, restart_workloads(cfg_for(s, token_file), "database", RID, clock=clock)
        )
        assert [r.status for r in s.patches()] == [403]
    assert out.failed is not None and out.failed[0] == "maily/a"
    assert 'cannot patch resource "deployments"' in out.failed[1]
    assert out.not_attempted == ["maily/b"]


def test_the_manifests_rbac_is_what_the_restarts_need() -> None:
    rules = rbac_rules()[ROTATOR]
    assert {("maily", "apps", "deployments", v) for v in ("get", "list", "patch")} <= rules
    assert not any(r[3] in ("create", "delete", "update") for r in rules if r[2] == "deployments")


async def test_token_never_in_logs_errors_notes_or_repr(
    standin: AppsStandin,
    token: str,
    token_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.add(dep("ok", "database", rollout_reads=1))
    standin.add(dep("stuck", "database", stuck=True))
    clock = ManualClock()
    texts: list[str] = []
    cfg = cfg_for(standin, token_file, timeout="30s")
    progress: list[str] = []
    out = await drive(
        clock, restart_workloads(cfg, "database", RID, clock=clock, progress=progress.append)
    )
    assert out.failed is not None  # the stuck one
    texts += [repr(out), *out.notes(), out.hold_reason(), repr(cfg), *progress]
    # the token is refused (401): its value is not echoed in what we report
    wrong = tmp_path / "wrong-token"
    wrong.write_text(token + "-revoked")
    out401 = await drive(
        clock, restart_workloads(cfg_for(standin, wrong), "database", RID, clock=clock)
    )
    assert out401.failed is not None and "401" in out401.failed[1]
    texts += [repr(out401), *out401.notes()]
    # unreachable and a 403 (another namespace)
    for c in (
        cfg_for(standin, token_file, api="http://127.0.0.1:9"),
        cfg_for(standin, token_file, namespace="billing"),
    ):
        o = await drive(clock, restart_workloads(c, "database", RID, clock=clock))
        assert o.failed is not None
        texts += [repr(o), *o.notes()]
    client = KubeClient(standin.url, token_file)
    try:
        await client.get_deployment("maily", "missing")
    except KubeApiError as exc:
        assert exc.status == 404
        texts += [str(exc), repr(exc)]
    finally:
        await client.close()
    texts += [repr(client), repr(standin), caplog.text]
    for t in texts:
        assert_absent(token, t, "restart output")
    assert all(r.authenticated for r in standin.requests if r.status != 401)


async def test_list_follows_continue_pages(standin: AppsStandin, token_file: Path) -> None:
    from maily_secrets.rotation import restarts

    for i in range(5):
        standin.add(dep(f"d{i}", "database" if i % 2 else None))
    async with KubeClient(standin.url, token_file) as c:
        old, restarts._LIST_PAGE = restarts._LIST_PAGE, 2
        try:
            items = await c.list_deployments("maily")
        finally:
            restarts._LIST_PAGE = old
    assert [i["metadata"]["name"] for i in items] == ["d0", "d1", "d2", "d3", "d4"]
    lists = [r for r in standin.requests if r.path.endswith("/deployments")]
    assert len(lists) == 3


async def test_a_resumed_run_waits_but_does_not_restart_twice_for_one_rotation(
    standin: AppsStandin, token_file: Path
) -> None:
    standin.add(dep("a", "database", rollout_reads=2))
    clock = ManualClock()
    cfg = cfg_for(standin, token_file)
    first = await drive(clock, restart_workloads(cfg, "database", RID, clock=clock))
    again = await drive(clock, restart_workloads(cfg, "database", RID, clock=clock))
    assert first.restarted == again.restarted == ["maily/a"]
    assert len(standin.patches()) == 1
    other = await drive(clock, restart_workloads(cfg, "database", RID + "x", clock=clock))
    assert other.restarted == ["maily/a"] and len(standin.patches()) == 2


async def test_tls_with_the_service_account_ca(
    token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with AppsStandin({token: ROTATOR}, tls=True) as s:
        s.add(dep("a", "database", rollout_reads=1))
        sa = tmp_path / "sa"
        sa.mkdir()
        (sa / "token").write_text(token)
        assert s.ca_file is not None
        shutil.copy(s.ca_file, sa / "ca.crt")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(s.port))
        clock = ManualClock()
        client = KubeClient.from_config(RestartsConfig(), sa_dir=sa)
        try:
            out = await drive(
                clock,
                restart_workloads(RestartsConfig(), "database", RID, clock=clock, client=client),
            )
        finally:
            await client.close()
        assert out.restarted == ["maily/a"]
        # without that CA the server is not trusted: reported, nothing patched
        (sa / "ca.crt").unlink()
        cfg = RestartsConfig(api=s.url, token_file=str(sa / "token"))
        out = await drive(clock, restart_workloads(cfg, "database", RID + "y", clock=clock))
        assert out.failed is not None and "unreachable" in out.failed[1]
        assert "Certificate" in out.failed[1] or "SSL" in out.failed[1]
        assert len(s.patches()) == 1


# ---------------------------------------------------------------------- the engine
def _vault_get(bao: Bao, path: str) -> dict[str, Any]:
    url = f"{bao.addr}/v1/{path}"  # the test's own server (http)
    req = urllib.request.Request(url, headers={"X-Vault-Token": bao.token})  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        return json.loads(r.read())["data"]  # type: ignore[no-any-return]


@pytest.fixture
async def renv(bao: Bao, root: VaultClient, tmp_path: Path) -> RotationEnv:
    return await make_rotation_env(
        bao, root, tmp_path, types={"jwt": {"secret": "config", "grace": "1h"}}
    )


def with_restarts(renv: RotationEnv, s: AppsStandin, token_file: Path, **kw: Any) -> RotationConfig:
    restarts = {"api": s.url, "token_file": str(token_file), "namespace": "maily", **kw}
    renv.doc["environments"]["development"]["restarts"] = restarts
    renv.write()
    return renv.config()


async def test_jwt_rotation_restarts_exactly_the_annotated_deployment_after_promote(
    bao: Bao, renv: RotationEnv, standin: AppsStandin, token_file: Path
) -> None:
    standin.add(dep("api", "jwt", rollout_reads=1))
    standin.add(dep("worker", "database,redis", rollout_reads=1))
    standin.add(dep("web"))
    seen: list[dict[str, Any]] = []

    def at_patch(key: str) -> None:  # in the stand-in's thread, at the instant of the patch
        config = _vault_get(bao, f"{renv.mount}/data/config")
        state = _vault_get(bao, f"{renv.mount}/data/rotation/jwt")["data"]
        seen.append({"key": key, "version": config["metadata"]["version"], "step": state["step"]})

    standin.on_patch = at_patch
    v0 = _vault_get(bao, f"{renv.mount}/data/config")["metadata"]["version"]
    async with renv.client() as client:
        engine = RotationEngine(
            with_restarts(renv, standin, token_file), "development", client=client
        )
        report = await engine.run(["jwt"])
        (res,) = report.results
        assert res.status == "rotated", res.reason
        state, _ = await StateStore(client, renv.mount).read("jwt")
    assert [p.path.rsplit("/", 1)[1] for p in standin.patches()] == ["api"]
    # at the patch the new key was promoted (the config's new version) and the rotation
    # was at step "promoted": not finished, nothing scheduled for retirement yet
    assert seen == [{"key": "maily/api", "version": res.version, "step": "promoted"}]
    assert res.version is not None and res.version > v0
    assert standin.events == [("patch", "maily/api"), ("complete", "maily/api")]
    assert any("restarted after the promote" in n and "maily/api" in n for n in res.notes)
    assert state is not None and state.step == "finished" and len(state.retiring) == 1
    assert standin.deployments[("maily", "api")].template_annotations[RESTARTED_FOR] == (
        res.rotation_id
    )


async def test_a_failed_restart_holds_the_rotation_at_promoted_until_a_run_completes_it(
    renv: RotationEnv, standin: AppsStandin, token_file: Path
) -> None:
    api = standin.add(dep("api", "jwt", stuck=True))
    # timeout 0s: the first status read that is not complete fails it (no waiting)
    cfg = with_restarts(renv, standin, token_file, timeout="0s")
    async with renv.client() as client:
        store = StateStore(client, renv.mount)
        before, _ = await store.read("jwt")
        report = await RotationEngine(cfg, "development", client=client).run(["jwt"])
        (res,) = report.results
        assert res.status == "failed" and not report.ok
        assert "promoted, but restarts stopped at maily/api" in res.reason
        assert "previous credential is kept" in res.reason
        state, _ = await store.read("jwt")
        assert state is not None and state.step == "promoted" and state.in_progress
        # nothing new scheduled for retirement while its pods may hold the previous key
        assert len(state.retiring) == len(before.retiring if before else [])
        # the rollout gets unstuck; the next run resumes: waits, no second restart
        api.stuck = False
        api.rollout_reads = 0
        report = await RotationEngine(cfg, "development", client=client).run(["jwt"])
        (res2,) = report.results
        assert res2.status == "resumed", res2.reason
        assert res2.rotation_id == res.rotation_id
        state, _ = await store.read("jwt")
        assert state is not None and state.step == "finished" and len(state.retiring) == 1
    assert len(standin.patches()) == 1


def test_the_shipped_configs_commented_restarts_example_is_valid() -> None:
    text = DEFAULT_YAML.read_text()
    m = re.search(r"^(\s*)# restarts:\n((?:\1#  .*\n)+)", text, re.M)
    assert m, "the commented restarts example is gone from default_config.yaml"
    body = "\n".join(line.split("#", 1)[1][1:] for line in m.group(2).splitlines())
    doc = yaml.safe_load(body)
    cfg = RestartsConfig.model_validate(doc)
    assert cfg.namespaces == ["maily"] and cfg.api == "in-cluster"
    assert cfg.timeout == timedelta(minutes=5)
    ns = {r[0] for r in rbac_rules()[ROTATOR]}
    assert set(cfg.namespaces) <= ns  # what it names, the manifest's Role covers


async def test_cli_rotate_lists_restarted_workloads_and_never_the_token(
    renv: RotationEnv, standin: AppsStandin, token: str, token_file: Path
) -> None:
    standin.add(dep("api", "jwt", rollout_reads=1))
    standin.add(dep("stuck", "all", stuck=True))
    with_restarts(renv, standin, token_file, timeout="0s")
    argv = mailyctl_argv("secrets", "rotate", "--secret-types=jwt", "--json", "--yes")
    out = subprocess.run(argv, capture_output=True, text=True, env=renv.env(), timeout=120)
    assert out.returncode != 0  # the stuck rollout holds the rotation: a failed run
    (res,) = json.loads(out.stdout)["results"]
    assert res["status"] == "failed" and res["step"] == "restart"
    assert "restarted after the promote (rollout complete): maily/api" in res["notes"]
    assert any(n.startswith("restarts stopped at maily/stuck") for n in res["notes"])
    assert [p.path.rsplit("/", 1)[1] for p in standin.patches()] == ["api", "stuck"]
    assert_absent(token, out.stdout + out.stderr, "mailyctl output")


async def test_a_lost_lock_stops_the_restarts_before_the_next_patch(
    standin: AppsStandin, token_file: Path
) -> None:
    standin.add(dep("a", "database", rollout_reads=1))
    standin.add(dep("b", "database", rollout_reads=1))
    calls: list[int] = []

    class Lost(Exception):
        pass

    async def guard() -> None:  # the engine's lock check, as it runs before each patch
        calls.append(len(standin.patches()))
        if len(calls) == 2:
            raise Lost

    clock = ManualClock()
    cfg = cfg_for(standin, token_file)
    with pytest.raises(Lost):
        await drive(clock, restart_workloads(cfg, "database", RID, clock=clock, guard=guard))
    assert calls == [0, 1]
    assert [p.path.rsplit("/", 1)[1] for p in standin.patches()] == ["a"]
