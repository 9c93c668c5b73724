"""deploy/k8s manifests: offline schema validation, agreement with the guide, and the
guide's agent template rendered by a real `bao agent` against a real OpenBao.

(The three-node raft "leader SIGKILL with zero failed reads" is tests/test_ha.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from maily_secrets.dev.server import bao_binary
from maily_secrets.paths import KV2Path

from .kit.servers import running

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
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


TEMPLATE = "vault.hashicorp.com/agent-inject-template-config.json"


def escaped_like_the_deployment(guide_template: str) -> str:
    """The guide's template with its one fix: quoted values through ``toJSON``, bare
    (numeric) values through ``printf "%v" | parseInt``."""
    out = re.sub(r'"\{\{ (\.Data\.data\.\w+) \}\}"', r"{{ \1 | toJSON }}", guide_template)
    return re.sub(r"\{\{ (\.Data\.data\.\w+) \}\}", r'{{ printf "%v" \1 | parseInt }}', out)


def test_deployment_has_the_guides_annotations_but_escapes_values() -> None:
    want = dict(guide_deployment()["spec"]["template"]["metadata"]["annotations"])
    dep = find("Deployment", "maily-api")
    pod = dep["spec"]["template"]
    have = dict(pod["metadata"]["annotations"])
    # every annotation is the guide's, byte for byte, but the template ...
    assert set(have) == set(want)
    assert {k: v for k, v in have.items() if k != TEMPLATE} == {
        k: v for k, v in want.items() if k != TEMPLATE
    }
    # ... which differs only in the escaping of its values (the guide's breaks: see
    # test_guides_own_template_breaks_on_such_values and the Deployment's comment)
    assert have[TEMPLATE] != want[TEMPLATE]
    assert have[TEMPLATE] == escaped_like_the_deployment(want[TEMPLATE])
    assert '"{{' not in have[TEMPLATE]  # no value is pasted between quotes any more
    deviation = (ROOT / "docs" / "kubernetes-injector-template.md").read_text()
    assert "toJSON" in deviation and "parseInt" in deviation
    assert pod["spec"]["serviceAccountName"] == "maily-api"
    c = pod["spec"]["containers"][0]
    assert {"livenessProbe", "readinessProbe", "resources", "securityContext"} <= set(c)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "VAULT_ADDR", "value": "http://vault.vault:8200"} in c["env"]


def test_service_accounts_match_the_auth_roles() -> None:
    roles = json.loads((ROOT / "deploy" / "vault" / "auth" / "kubernetes-roles.json").read_text())
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


@contextlib.contextmanager
def agent_rendering(bao: Any, tmp: Path, template: str) -> Iterator[Path]:
    """A real ``bao agent`` rendering ``template`` with the ``maily`` policy's token;
    yields the destination file."""
    tpl = tmp / "config.json.ctmpl"
    tpl.write_text(template)

    async def app_token() -> str:
        from maily_secrets.policies import load_policies

        async with bao.client() as root:
            for name, text in load_policies().items():
                await root.write(f"sys/policies/acl/{name}", {"policy": text})
            r = await root.write("auth/token/create", {"policies": ["maily"], "ttl": "10m"})
            return str((r.body or {})["auth"]["client_token"])

    token_file = tmp / "token"
    token_file.write_text(asyncio.run(app_token()))
    out = tmp / "secrets" / "config.json"
    out.parent.mkdir()
    cfg = _render_config(tmp, bao.addr, token_file, tpl, out)
    with running([bao_binary(), "agent", f"-config={cfg}"], tmp / "agent.log", clean_env=False):
        yield out


def deployment_template() -> str:
    ann = find("Deployment", "maily-api")["spec"]["template"]["metadata"]["annotations"]
    assert ann["vault.hashicorp.com/agent-inject-secret-config.json"] == "maily/data/config"
    return str(ann[TEMPLATE])


def _update_config(bao: Any, **values: Any) -> None:
    async def go() -> None:
        async with bao.client() as root:
            await root.kv.update(KV2Path("maily", "config"), lambda d: {**d, **values})

    asyncio.run(go())


def test_guide_template_renders_with_a_real_agent(private_bao: Any, tmp_path: Path) -> None:
    with agent_rendering(private_bao, tmp_path, deployment_template()) as out:
        doc = _wait_json(out, lambda d: True)
        assert isinstance(doc["database"]["port"], int) and doc["database"]["port"] == 5432
        assert isinstance(doc["redis"]["port"], int)
        assert doc["database"]["username"] and doc["redis"]["password"]
        _update_config(private_bao, redis_password="rotated-pw")
        doc = _wait_json(out, lambda d: d["redis"]["password"] == "rotated-pw")
        assert doc["database"]["port"] == 5432


# values a generated or rotated secret may hold: quotes, backslashes, newlines,
# non-ASCII, HTML-ish and template-ish text, JSON that would inject a key
CANARIES = {
    "db_password": 'pa"ss\\word\n2nd line \u00e9\u00df\u2603 \U0001f511 \\"',
    "db_username": 'maily_app\t"quoted"',
    "redis_password": '", "injected": true, "x": "</script>{{ .Data }}\\',
    "db_host": "db.example\u00e9.internal",
}


def test_deployment_template_renders_valid_json_for_any_value(
    private_bao: Any, tmp_path: Path
) -> None:
    """Canary values round-trip exactly through a real ``bao agent``; ports stay numbers,
    also when a port was stored as a string."""
    _update_config(private_bao, **CANARIES, redis_port="6380")
    with agent_rendering(private_bao, tmp_path, deployment_template()) as out:
        doc = _wait_json(out, lambda d: True)
        assert doc["database"]["password"] == CANARIES["db_password"]
        assert doc["database"]["username"] == CANARIES["db_username"]
        assert doc["database"]["host"] == CANARIES["db_host"]
        assert doc["redis"]["password"] == CANARIES["redis_password"]
        assert set(doc["redis"]) == {"host", "port", "password"}  # nothing injected
        assert doc["database"]["port"] == 5432 and isinstance(doc["database"]["port"], int)
        assert doc["redis"]["port"] == 6380 and isinstance(doc["redis"]["port"], int)
        # a rotation to another awkward value re-renders valid JSON
        _update_config(private_bao, redis_password='new\\"\n\u00fc')
        doc = _wait_json(out, lambda d: d["redis"]["password"] == 'new\\"\n\u00fc')
        assert doc["database"]["password"] == CANARIES["db_password"]


def test_guides_own_template_breaks_on_such_values(private_bao: Any, tmp_path: Path) -> None:
    """Why the Deployment deviates from the guide: the guide's template, rendered by the
    same agent with the same canaries, is not JSON."""
    guide_tpl = guide_deployment()["spec"]["template"]["metadata"]["annotations"][TEMPLATE]
    _update_config(private_bao, **CANARIES)
    with agent_rendering(private_bao, tmp_path, guide_tpl) as out:
        deadline = time.monotonic() + 20
        while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        text = out.read_text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
