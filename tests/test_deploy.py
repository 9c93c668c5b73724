"""deploy/k8s manifests: offline schema validation, agreement with the guide, and the
guide's agent template rendered by a real `bao agent` against a real OpenBao.

(The three-node raft "leader SIGKILL with zero failed reads" is tests/test_ha.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from maily_secrets.devserver import bao_binary
from maily_secrets.paths import KV2Path
from maily_secrets.policies import deploy_dir

ROOT = Path(__file__).resolve().parents[1]
K8S = deploy_dir() / "k8s"
GUIDE = ROOT / "docs" / "vault-integration-guide.md"
CRDS = {"PrometheusRule"}
K8S_VERSION = "1.30.0"


def docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                out.append((f.name, d))
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    for _, d in docs():
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"no {kind} {name}")


def guide_deployment() -> dict[str, Any]:
    m = re.search(
        r"```yaml\n(apiVersion: apps/v1\nkind: Deployment.*?)```", GUIDE.read_text(), re.S
    )
    assert m
    return dict(yaml.safe_load(m.group(1)))


# CRDs (the PrometheusRule) have no built-in schema: test_prometheus_rule checks them
@pytest.mark.parametrize(
    "name,doc",
    [(n, d) for n, d in docs() if d["kind"] not in CRDS],
    ids=lambda x: x if isinstance(x, str) else x["kind"],
)
def test_manifest_validates_offline(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_is_strict() -> None:
    bad = json.loads(json.dumps(find("CronJob", "vault-secret-rotation")))
    bad["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_file() -> None:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files


def test_deployment_has_the_guides_annotations_exactly() -> None:
    want = guide_deployment()["spec"]["template"]["metadata"]["annotations"]
    dep = find("Deployment", "maily-api")
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"] == want
    assert pod["spec"]["serviceAccountName"] == "maily-api"
    c = pod["spec"]["containers"][0]
    assert {"livenessProbe", "readinessProbe", "resources", "securityContext"} <= set(c)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "VAULT_ADDR", "value": "http://vault.vault:8200"} in c["env"]


def test_service_accounts_match_the_auth_roles() -> None:
    roles = json.loads((deploy_dir() / "vault" / "auth" / "kubernetes-roles.json").read_text())
    sas = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for _, d in docs()
        if d["kind"] == "ServiceAccount"
    }
    bound = set()
    for r in roles["roles"].values():
        assert len(r["token_policies"]) == 1
        for ns in r["bound_service_account_namespaces"]:
            for n in r["bound_service_account_names"]:
                bound.add((ns, n))
    assert bound == sas
    assert roles["roles"]["maily"]["token_policies"] == ["maily"]


def test_rotation_cronjob_and_configmap() -> None:
    cj = find("CronJob", "vault-secret-rotation")
    assert cj["metadata"]["namespace"] == "vault"
    spec = cj["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "vault-secret-rotation"
    c = pod["containers"][0]
    assert c["command"][:3] == ["mailyctl", "secrets", "rotate"]
    assert "--due" in c["command"] and "--notify" in c["command"]
    assert [a for a in c["command"] if a.startswith("--env=")] == ["--env=production"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["limits"]["memory"]
    cm = find("ConfigMap", "vault-secret-rotation-config")
    assert cm["metadata"]["namespace"] == "vault"
    builtin = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"
    assert cm["data"]["rotation.yaml"] == builtin.read_text()
    env = {e["name"]: e["value"] for e in c["env"]}
    mount = c["volumeMounts"][0]
    assert env["MAILY_ROTATION_CONFIG"] == mount["mountPath"] + "/rotation.yaml"
    # the environment the CronJob names exists in that config, with the rotator's role
    cfg = yaml.safe_load(cm["data"]["rotation.yaml"])
    assert cfg["environments"]["production"]["vault"]["role"] == "maily-rotator"


def test_prometheus_rule() -> None:
    rule = find("PrometheusRule", "vault-secret-rotation")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "vault"
    metrics_src = (ROOT / "src" / "maily_secrets" / "rotation" / "metrics.py").read_text()
    alerts = {}
    for g in rule["spec"]["groups"]:
        assert set(g) <= {"name", "interval", "rules"} and g["name"]
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
            assert isinstance(r["expr"], str) and r["expr"].count("(") == r["expr"].count(")")
            assert re.fullmatch(r"\d+[smhd]", r.get("for", "0m"))
            for m in re.findall(r"maily_secret_rotation_\w+", r["expr"]):
                assert m in metrics_src, m
            alerts[r["alert"]] = r["expr"]
    assert 'outcome=~"failed' in alerts["MailySecretRotationFailed"]
    assert "next_due_timestamp_seconds" in alerts["MailySecretRotationOverdue"]


# ------------------------------------------------------------------ the agent template
def _render_config(tmp: Path, addr: str, token_file: Path, tpl: Path, out: Path) -> Path:
    cfg = tmp / "agent.hcl"
    cfg.write_text(
        f"""
pid_file = "{tmp / "agent.pid"}"
vault {{
  address = "{addr}"
}}
auto_auth {{
  method "token_file" {{
    config {{
      token_file_path = "{token_file}"
    }}
  }}
}}
template_config {{
  static_secret_render_interval = "1s"
}}
template {{
  source      = "{tpl}"
  destination = "{out}"
  perms       = "0600"
}}
"""
    )
    return cfg


def _wait_json(path: Path, pred: Any, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        if path.exists():
            try:
                last = json.loads(path.read_text())
                if pred(last):
                    return dict(last)
            except json.JSONDecodeError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"not rendered as expected: {last!r}")


def test_guide_template_renders_with_a_real_agent(private_bao: Any, tmp_path: Path) -> None:
    ann = find("Deployment", "maily-api")["spec"]["template"]["metadata"]["annotations"]
    assert ann["vault.hashicorp.com/agent-inject-secret-config.json"] == "maily/data/config"
    tpl = tmp_path / "config.json.ctmpl"
    tpl.write_text(ann["vault.hashicorp.com/agent-inject-template-config.json"])

    async def app_token() -> str:
        from maily_secrets.policies import load_policies

        async with private_bao.client() as root:
            for name, text in load_policies().items():
                await root.write(f"sys/policies/acl/{name}", {"policy": text})
            r = await root.write("auth/token/create", {"policies": ["maily"], "ttl": "10m"})
            return str((r.body or {})["auth"]["client_token"])

    token_file = tmp_path / "token"
    token_file.write_text(asyncio.run(app_token()))
    out = tmp_path / "secrets" / "config.json"
    out.parent.mkdir()
    cfg = _render_config(tmp_path, private_bao.addr, token_file, tpl, out)
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [bao_binary(), "agent", f"-config={cfg}"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        doc = _wait_json(out, lambda d: True)
        assert isinstance(doc["database"]["port"], int) and doc["database"]["port"] == 5432
        assert isinstance(doc["redis"]["port"], int)
        assert doc["database"]["username"] and doc["redis"]["password"]

        async def rotate() -> None:
            async with private_bao.client() as root:
                await root.kv.update(
                    KV2Path("maily", "config"), lambda d: {**d, "redis_password": "rotated-pw"}
                )

        asyncio.run(rotate())
        doc = _wait_json(out, lambda d: d["redis"]["password"] == "rotated-pw")
        assert doc["database"]["port"] == 5432
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
