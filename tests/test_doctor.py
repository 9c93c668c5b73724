"""`mailyctl doctor` against real OpenBao servers: healthy, sealed, revoked token,
deleted secret, missing transit key, an app token (least privilege), unreachable."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from maily_secrets.cli.main import app
from maily_secrets.dev.server import free_port
from maily_secrets.policies import load_policies


def doctor(monkeypatch: pytest.MonkeyPatch, addr: str, token: str, *args: str) -> tuple[int, Any]:
    monkeypatch.setenv("VAULT_ADDR", addr)
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.setenv("VAULT_AUTH_METHOD", "token")
    r = CliRunner().invoke(app, ["doctor", "--env=development", "--json", *args])
    return r.exit_code, json.loads(r.stdout)


def check(doc: Any, name: str) -> dict[str, Any]:
    found = [c for c in doc["checks"] if c["name"] == name]
    assert found, [c["name"] for c in doc["checks"]]
    return dict(found[0])


def root_call(bao: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async def go() -> Any:
        async with bao.client() as c:
            return (await c.request(method, path, json_body=body)).body

    return asyncio.run(go())


def test_healthy_server_passes(bao: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, doc = doctor(monkeypatch, bao.addr, bao.token)
    assert code == 0, doc
    assert doc["ok"] is True
    for name in (
        "reachable",
        "server state",
        "auth",
        "capabilities",
        "secret config",
        "transit key maily-enc-key",
        "rotation",
        "audit device",
    ):
        assert check(doc, name)["status"] == "ok", check(doc, name)
    assert check(doc, "token ttl")["status"] == "warn"  # a root token never expires


def test_text_output_one_line_per_check(bao: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 0
    lines = [ln for ln in r.stdout.splitlines() if ln and not ln.lstrip().startswith("fix:")]
    assert len(lines) == 11
    assert lines[0].split()[0] == "ok"


def test_app_token_has_its_capabilities(bao: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in load_policies().items():
        root_call(bao, "POST", f"sys/policies/acl/{name}", {"policy": text})
    tok = root_call(
        bao, "POST", "auth/token/create", {"policies": ["maily"], "no_default_policy": True}
    )["auth"]["client_token"]
    code, doc = doctor(monkeypatch, bao.addr, tok)
    assert code == 0, doc
    assert check(doc, "capabilities")["status"] == "ok"
    assert check(doc, "token ttl")["status"] == "ok"
    assert check(doc, "rotation")["status"] == "skip"
    assert check(doc, "audit device")["status"] == "skip"


def test_policy_without_rights_is_reported(bao: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root_call(
        bao,
        "POST",
        "sys/policies/acl/doctor-thin",
        {
            "policy": 'path "maily/data/config" { capabilities = ["read"] }\n'
            'path "sys/capabilities-self" { capabilities = ["update"] }\n'
            'path "auth/token/lookup-self" { capabilities = ["read"] }'
        },
    )
    tok = root_call(
        bao, "POST", "auth/token/create", {"policies": ["doctor-thin"], "no_default_policy": True}
    )["auth"]["client_token"]
    code, doc = doctor(monkeypatch, bao.addr, tok)
    assert code == 1
    c = check(doc, "capabilities")
    assert c["status"] == "fail" and "transit/encrypt/maily-enc-key" in c["detail"]
    assert "mailyctl vault bootstrap" in c["hint"]
    s = check(doc, "secret api-keys")
    assert s["status"] == "fail" and "permission denied" in s["detail"]


def test_sealed_server(private_bao: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root_call(private_bao, "PUT", "sys/seal")
    code, doc = doctor(monkeypatch, private_bao.addr, private_bao.token)
    assert code == 1
    c = check(doc, "server state")
    assert c["status"] == "fail" and c["detail"] == "sealed"
    assert "bao operator unseal" in c["hint"] and "kubectl logs -n vault vault-0" in c["hint"]
    assert check(doc, "auth")["status"] == "skip"


def test_revoked_token(bao: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = root_call(bao, "POST", "auth/token/create", {"policies": ["default"]})["auth"][
        "client_token"
    ]
    root_call(bao, "POST", "auth/token/revoke", {"token": tok})
    code, doc = doctor(monkeypatch, bao.addr, tok)
    assert code == 1
    c = check(doc, "auth")
    assert c["status"] == "fail"
    assert "revoked" in c["hint"] and "VAULT_TOKEN" in c["hint"]
    assert check(doc, "capabilities")["status"] == "skip"


def test_deleted_secret(private_bao: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root_call(private_bao, "DELETE", "maily/data/api-keys")
    code, doc = doctor(monkeypatch, private_bao.addr, private_bao.token)
    assert code == 1
    c = check(doc, "secret api-keys")
    assert c["status"] == "fail" and "not found" in c["detail"]
    assert "bao kv undelete" in c["hint"] and "bao kv get maily/api-keys" in c["hint"]
    assert check(doc, "secret config")["status"] == "ok"


def test_missing_transit_key(private_bao: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root_call(private_bao, "POST", "transit/keys/maily-enc-key/config", {"deletion_allowed": True})
    root_call(private_bao, "DELETE", "transit/keys/maily-enc-key")
    code, doc = doctor(monkeypatch, private_bao.addr, private_bao.token)
    assert code == 1
    c = check(doc, "transit key maily-enc-key")
    assert c["status"] == "fail" and "does not exist" in c["detail"]
    assert "mailyctl vault bootstrap" in c["hint"]


def test_overdue_rotation(private_bao: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    text = (importlib.resources.files("maily_secrets.rotation") / "default_config.yaml").read_text()
    cfg = tmp_path / "rotation.yaml"
    # an interval of 0s: due from the moment the jwt secret was made, no wait for time to pass
    cfg.write_text(text.replace("    jwt: 90d\n", "    jwt: 0s\n", 1))
    code, doc = doctor(monkeypatch, private_bao.addr, private_bao.token, f"--config={cfg}")
    assert code == 1
    c = check(doc, "rotation")
    assert c["status"] == "fail" and "overdue: jwt" in c["detail"]
    assert "kubectl logs -n vault vault-secret-rotation-<pod-id>" in c["hint"]


def test_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    code, doc = doctor(monkeypatch, f"http://127.0.0.1:{free_port()}", "x")
    assert code == 1
    c = check(doc, "reachable")
    assert c["status"] == "fail"
    assert "kubectl get pods -n vault" in c["hint"] and "http://vault.vault:8200" in c["hint"]
