"""deploy/k8s (a kustomize base and the overlays staging and production) and
deploy/grafana: offline schema validation of what each overlay renders, agreement with
the guide, the PrometheusRules unit-tested with `promtool test rules`, the Grafana
dashboard's queries against the metrics our code defines, and the guide's agent template
rendered by a real `bao agent` against a real OpenBao.

(The three-node raft "leader SIGKILL with zero failed reads" is tests/test_ha.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import shutil
import subprocess
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
BASE = K8S / "base"
OVERLAYS = ("staging", "production")
DASHBOARD = ROOT / "deploy" / "grafana" / "maily-secrets.json"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"
GUIDE = ROOT / "docs" / "vault-integration-guide.md"
CRDS = {"PrometheusRule", "ServiceMonitor"}
K8S_VERSION = "1.30.0"
KUBECTL = shutil.which("kubectl")
PROMTOOL = shutil.which("promtool")


def docs() -> list[tuple[str, dict[str, Any]]]:
    """The base's objects, file by file."""
    out = []
    for f in sorted(BASE.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                out.append((f.name, d))
    return out


@functools.cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize deploy/k8s/<target>`` (kubectl's built-in kustomize)."""
    if KUBECTL is None:
        pytest.fail("kubectl not found: the overlays are rendered with `kubectl kustomize`")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def find(kind: str, name: str, objs: Any = None) -> dict[str, Any]:
    for d in objs if objs is not None else (d for _, d in docs()):
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return dict(d)
    raise AssertionError(f"no {kind} {name}")


def guide_deployment() -> dict[str, Any]:
    m = re.search(
        r"```yaml\n(apiVersion: apps/v1\nkind: Deployment.*?)```", GUIDE.read_text(), re.S
    )
    assert m
    return dict(yaml.safe_load(m.group(1)))


# CRDs (PrometheusRule, ServiceMonitor) have no built-in schema: test_prometheus_rule
# and test_service_monitor check them
@pytest.mark.parametrize(
    "name,doc",
    [(n, d) for n, d in docs() if d["kind"] not in CRDS],
    ids=lambda x: x if isinstance(x, str) else x["kind"],
)
def test_manifest_validates_offline(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(overlay: str) -> None:
    objs = rendered(f"overlays/{overlay}")
    kinds = sorted(d["kind"] for d in objs)
    assert kinds == sorted(d["kind"] for _, d in docs()), "an overlay adds or drops objects"
    for d in objs:
        if d["kind"] in CRDS:
            assert d["apiVersion"] == "monitoring.coreos.com/v1", d["metadata"]["name"]
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    for d in objs:
        assert d["metadata"]["labels"]["maily.io/environment"] == overlay


@pytest.mark.parametrize("target", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_no_vault_namespace_is_applied(target: str) -> None:
    """Namespace vault belongs to Vault's own release: deleting our kustomization must
    never delete Vault. Namespace maily is ours."""
    namespaces = [d["metadata"]["name"] for d in rendered(target) if d["kind"] == "Namespace"]
    assert namespaces == ["maily"]
    used = {d["metadata"].get("namespace") for d in rendered(target)} - {None}
    assert used == {"maily", "vault"}


def _api(objs: Any) -> dict[str, Any]:
    pod = find("Deployment", "maily-api", objs)["spec"]["template"]["spec"]
    return dict(pod["containers"][0])


def _rotate(objs: Any) -> dict[str, Any]:
    cj = find("CronJob", "vault-secret-rotation", objs)
    return dict(cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_overlays_differ_where_they_should() -> None:
    st, pr = rendered("overlays/staging"), rendered("overlays/production")
    for env, objs in (("staging", st), ("production", pr)):
        assert _env(_api(objs))["MAILY_ENV"] == env
        assert _env(_rotate(objs))["MAILY_ENV"] == env
        # the CronJob's --env is the overlay's MAILY_ENV (Kubernetes expands $(MAILY_ENV))
        assert "--env=$(MAILY_ENV)" in _rotate(objs)["command"]
        assert (
            env
            in yaml.safe_load(
                find("ConfigMap", "vault-secret-rotation-config", objs)["data"]["rotation.yaml"]
            )["environments"]
        )
        for c in (_api(objs), _rotate(objs)):
            assert _env(c)["VAULT_ADDR"] == "http://vault.vault:8200"
    dep_st, dep_pr = find("Deployment", "maily-api", st), find("Deployment", "maily-api", pr)
    assert dep_st["spec"]["replicas"] == 2 and dep_pr["spec"]["replicas"] == 3
    assert _api(st)["image"] != _api(pr)["image"]
    assert _rotate(st)["image"] != _rotate(pr)["image"]
    assert _api(pr)["image"] == "ghcr.io/maily/api:1.0.0"
    mem = [c["resources"]["limits"]["memory"] for c in (_api(st), _api(pr))]
    assert mem == ["384Mi", "768Mi"]
    assert "topologySpreadConstraints" in dep_pr["spec"]["template"]["spec"]
    # what does not differ: the selectors (immutable on a live Deployment) and the rest
    assert dep_st["spec"]["selector"] == dep_pr["spec"]["selector"]
    assert find("Service", "maily-api", st)["spec"] == find("Service", "maily-api", pr)["spec"]
    assert (
        find("PrometheusRule", "maily-api-secrets", st)["spec"]
        == find("PrometheusRule", "maily-api-secrets", pr)["spec"]
    )


def test_base_sets_no_environment() -> None:
    """Only an overlay says which environment it is: applying the base alone would run a
    rotation with --env=$(MAILY_ENV), which no config names, so it fails instead of
    rotating the wrong environment."""
    objs = rendered("base")
    assert "MAILY_ENV" not in _env(_api(objs)) and "MAILY_ENV" not in _env(_rotate(objs))


def test_service_pdb_and_servicemonitor_select_maily_api() -> None:
    objs = rendered("overlays/production")
    dep = find("Deployment", "maily-api", objs)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in _api(objs)["ports"]}

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    svc = find("Service", "maily-api", objs)
    assert svc["metadata"]["namespace"] == "maily" and selects(svc["spec"]["selector"])
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    pdb = find("PodDisruptionBudget", "maily-api", objs)
    assert pdb["apiVersion"] == "policy/v1" and selects(pdb["spec"]["selector"]["matchLabels"])
    assert pdb["spec"]["maxUnavailable"] < dep["spec"]["replicas"]
    sm = find("ServiceMonitor", "maily-api", objs)
    assert sm["metadata"]["namespace"] == "maily"
    assert all(
        svc["metadata"]["labels"].get(k) == v
        for k, v in sm["spec"]["selector"]["matchLabels"].items()
    )
    assert sm["spec"]["namespaceSelector"]["matchNames"] == ["maily"]
    assert sm["metadata"]["labels"]["release"] == "prometheus"


def test_service_monitor() -> None:
    """The CRD's fields (monitoring.coreos.com/v1 ServiceMonitor), as far as we use them."""
    sm = find("ServiceMonitor", "maily-api")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    svc_ports = {p["name"] for p in find("Service", "maily-api")["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert ep["port"] in svc_ports and ep["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", ep["interval"]) and re.fullmatch(r"\d+s", ep["scrapeTimeout"])


def test_validation_is_strict() -> None:
    bad = json.loads(json.dumps(find("CronJob", "vault-secret-rotation")))
    bad["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_file() -> None:
    k = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    files = {f.name for f in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files
    assert sorted(p.name for p in K8S.iterdir()) == ["base", "overlays"]
    assert sorted(p.name for p in (K8S / "overlays").iterdir()) == sorted(OVERLAYS)


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
    # the environment is the overlay's (test_overlays_differ_where_they_should)
    assert [a for a in c["command"] if a.startswith("--env=")] == ["--env=$(MAILY_ENV)"]
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
    # Kubernetes auth as the rotator in every environment (production's config says so
    # too; staging's names only the address)
    assert env["VAULT_AUTH_METHOD"] == "kubernetes" and env["VAULT_ROLE"] == "maily-rotator"
    cfg = yaml.safe_load(cm["data"]["rotation.yaml"])
    assert cfg["environments"]["production"]["vault"]["role"] == "maily-rotator"


def _src_text() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))


def app_metric_families() -> set[str]:
    """The families the application's observer really exports (a registry of its own)."""
    from prometheus_client import CollectorRegistry

    from maily_secrets.metrics import ServiceMetrics

    registry = CollectorRegistry()
    ServiceMetrics(registry)
    return {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}


METRIC = re.compile(r"\bmaily_secrets?_[a-z_]+[a-z]")


def metric_family(name: str) -> str:
    """The family a queried series belongs to (a histogram's _bucket/_sum/_count)."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


def defined_in_src(family: str, src: str) -> bool:
    """prometheus_client takes a counter's name with or without ``_total``."""
    names = {family, re.sub(r"_total$", "", family)}
    return any(f'"{n}"' in src for n in names)


def assert_metrics_exist(names: set[str]) -> None:
    src, app = _src_text(), app_metric_families()
    missing = {
        n
        for n in names
        if not defined_in_src(metric_family(n), src) and metric_family(n) not in app
    }
    assert not missing, f"queried but defined nowhere in src/: {sorted(missing)}"


def test_metric_name_check_catches_an_unknown_name() -> None:
    with pytest.raises(AssertionError, match="maily_secret_rotation_made_up"):
        assert_metrics_exist({"maily_secret_rotation_made_up"})
    assert_metrics_exist({"maily_secret_rotation_duration_seconds"})


def prometheus_rules() -> list[dict[str, Any]]:
    return [d for _, d in docs() if d["kind"] == "PrometheusRule"]


def test_prometheus_rule() -> None:
    rule = find("PrometheusRule", "vault-secret-rotation")
    assert rule["metadata"]["namespace"] == "vault"  # beside the CronJob and the Pushgateway
    app = find("PrometheusRule", "maily-api-secrets")
    assert app["metadata"]["namespace"] == "maily"  # beside the ServiceMonitor
    alerts = {}
    for pr in prometheus_rules():
        assert pr["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(pr["spec"]) == {"groups"}
        for g in pr["spec"]["groups"]:
            assert set(g) <= {"name", "interval", "rules"} and g["name"]
            for r in g["rules"]:
                assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
                assert r["labels"]["severity"] in ("warning", "critical")
                assert re.fullmatch(r"\d+[smhd]", r.get("for", "0m"))
                assert_metrics_exist(set(METRIC.findall(r["expr"])))
                alerts[r["alert"]] = r["expr"]
    assert 'outcome=~"failed' in alerts["MailySecretRotationFailed"]
    assert "next_due_timestamp_seconds" in alerts["MailySecretRotationOverdue"]
    assert 'cache_reads_total{result=~"stale|snapshot"}' in alerts["MailySecretsServingStale"]
    # every alert has a promtool unit test
    tested = set(re.findall(r"alertname: (\w+)", (PROMTOOL_TESTS / "alerts_test.yaml").read_text()))
    assert tested == set(alerts)


def _promtool() -> str:
    if PROMTOOL is None:
        pytest.fail("promtool not found: `make test` installs it (Debian package prometheus)")
    return PROMTOOL


def promtool_dir(tmp: Path, rules: list[dict[str, Any]] | None = None) -> Path:
    """``rules.yaml`` (the groups of every PrometheusRule: what the operator loads into
    Prometheus) beside a copy of tests/promtool/*.yaml."""
    groups = [g for pr in (rules or prometheus_rules()) for g in pr["spec"]["groups"]]
    (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    for f in PROMTOOL_TESTS.glob("*.yaml"):
        shutil.copy(f, tmp / f.name)
    return tmp


def test_promtool_check_rules(tmp_path: Path) -> None:
    d = promtool_dir(tmp_path)
    out = subprocess.run(
        [_promtool(), "check", "rules", str(d / "rules.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


def run_promtool_tests(d: Path) -> subprocess.CompletedProcess[str]:
    tests = sorted(str(f) for f in d.glob("*_test.yaml"))
    assert tests
    return subprocess.run(
        [_promtool(), "test", "rules", *tests], capture_output=True, text=True, timeout=300
    )


def test_promtool_test_rules(tmp_path: Path) -> None:
    out = run_promtool_tests(promtool_dir(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_tests_fail_on_a_broken_stale_alert(tmp_path: Path) -> None:
    """The unit tests see it when the stale-serves alert stops firing in time."""
    rules = json.loads(json.dumps(prometheus_rules()))
    for pr in rules:
        for g in pr["spec"]["groups"]:
            for r in g["rules"]:
                if r["alert"] == "MailySecretsServingStale":
                    r["for"] = "30m"
    out = run_promtool_tests(promtool_dir(tmp_path, rules))
    assert out.returncode != 0
    assert "MailySecretsServingStale" in out.stdout + out.stderr


# ------------------------------------------------------------------ the Grafana dashboard
def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            exprs.append(t["expr"])
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(v["definition"])
    return exprs


def test_grafana_dashboard_queries_only_metrics_we_define() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "maily-secrets" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"] and p["title"] and p["description"]
    queried = {m for e in dashboard_exprs() for m in METRIC.findall(e)}
    assert_metrics_exist(queried)
    families = {metric_family(m) for m in queried}
    # every rotation metric and every application metric has a panel
    rotation = set(re.findall(r'"(maily_secret_rotation_\w+)"', _src_text()))
    assert rotation and rotation <= families
    assert app_metric_families() <= families


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
