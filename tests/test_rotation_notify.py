"""Rotation notifications and metrics against real servers (nothing mocked).

* email: a real SMTP server (aiosmtpd) with AUTH, whose credentials the notifier
  reads from a KV v2 secret on the real OpenBao dev server;
* webhook: a local aiohttp server standing in for Slack's incoming webhook;
* metrics: a local aiohttp server standing in for a Pushgateway, and the textfile.

Canary strings sit in the SMTP password, in other keys of the same secret and in
the webhook URL's path: none may reach a message, a detail or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_string
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from maily_secrets.logs import JsonFormatter
from maily_secrets.rotation import metrics, notify
from maily_secrets.rotation.config import ResolvedEnvironment, RotationConfig
from maily_secrets.rotation.report import RunReport, TypeResult
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.certs import self_signed, server_tls_context
from .kit.smtp import SMTP_PASSWORD, SMTP_USER, Smtp, free_port, smtp_server
from .secrecy import assert_absent

DEFAULT_CONFIG = (
    Path(__file__).resolve().parents[1] / "src/maily_secrets/rotation/default_config.yaml"
)
T0 = dt.datetime(2030, 1, 15, 3, 0, tzinfo=dt.UTC)


def canary(what: str) -> str:
    return f"CANARY-{what}-{uuid.uuid4().hex[:12]}"


OTHER_SECRETS = {
    "db_password": canary("db"),
    "jwt_secret": canary("jwt"),
    "redis_password": canary("redis"),
}
HOOK_TOKEN = canary("hook-token")
pytestmark = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning"  # the test server, on purpose
)

ALL_CANARIES = [SMTP_PASSWORD, HOOK_TOKEN, *OTHER_SECRETS.values()]


def assert_no_canary(text: str, where: str) -> None:
    for c in ALL_CANARIES:
        assert_absent(c, text, where)


# --------------------------------------------------------------------------- fixtures


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.fmt = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.fmt.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[LogLines]:
    """Every log record of maily_secrets (DEBUG and up) and of the rest of the process."""
    h = LogLines()
    ours = logging.getLogger("maily_secrets")
    root = logging.getLogger()
    old = ours.level
    ours.setLevel(logging.DEBUG)
    ours.addHandler(h)
    root.addHandler(h)
    try:
        yield h
    finally:
        ours.removeHandler(h)
        root.removeHandler(h)
        ours.setLevel(old)


async def make_mount(root: VaultClient, smtp: dict[str, Any] | None) -> str:
    """A fresh KV v2 mount whose ``config`` holds SMTP settings next to other secrets."""
    m = f"nt{uuid.uuid4().hex[:10]}"
    await root.write(f"sys/mounts/{m}", {"type": "kv", "options": {"version": "2"}})
    await root.kv.configure(m)
    await root.kv.write(f"{m}/data/config", {**OTHER_SECRETS, **(smtp or {})}, cas=0)
    return m


def environment(
    tmp_path: Path,
    *,
    to: list[str] | None = None,
    email: dict[str, Any] | None = None,
    webhook: dict[str, Any] | None = None,
    env: str = "production",
) -> ResolvedEnvironment:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["notify"]["email"]["to"] = to if to is not None else ["admin@maily.test", "ops@maily.test"]
    # the stand-in SMTP servers of these tests have no TLS unless a test says otherwise:
    # plaintext AUTH must be allowed explicitly
    doc["notify"]["email"]["tls"] = "none"
    doc["notify"]["email"].update(email or {})
    if webhook is not None:
        doc["notify"]["webhook"] = webhook
    path = tmp_path / f"rotation-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return RotationConfig.load(path).environment(env)


def run_report(env: str = "production") -> RunReport:
    return RunReport(
        env=env,
        run_id="run-20300115-0300-ab12",
        actor="cronjob/vault-secret-rotation",
        started_at=T0,
        finished_at=T0 + dt.timedelta(seconds=9),
        results=[
            TypeResult(
                type="jwt",
                status="rotated",
                rotation_id="rot-jwt-5f1e",
                secret="maily/data/config",
                version=12,
                step="promote",
                started_at=T0,
                duration_s=1.25,
                next_due=dt.datetime(2030, 4, 15, 3, 0, tzinfo=dt.UTC),
                last_rotated=T0 + dt.timedelta(seconds=1),
            ),
            TypeResult(
                type="database",
                status="rotated",
                rotation_id="rot-db-77aa",
                secret="maily/data/config",
                version=13,
                step="promote",
                started_at=T0 + dt.timedelta(seconds=2),
                duration_s=4.5,
                next_due=dt.datetime(2030, 2, 14, 3, 0, tzinfo=dt.UTC),
            ),
            TypeResult(
                type="aws",
                status="failed",
                rotation_id="rot-aws-9c0d",
                secret="maily/data/credentials",
                reason="verify failed: IAM answered InvalidClientTokenId",
                step="verify",
                started_at=T0 + dt.timedelta(seconds=7),
                duration_s=2.0,
                next_due=T0,
                last_rotated=dt.datetime(2029, 10, 1, tzinfo=dt.UTC),
            ),
            TypeResult(
                type="smtp",
                status="skipped",
                secret="maily/data/config",
                reason="not due",
                next_due=dt.datetime(2030, 6, 1, tzinfo=dt.UTC),
                last_rotated=dt.datetime(2029, 12, 3, tzinfo=dt.UTC),
            ),
        ],
    )


@dataclass
class Http:
    """A tiny local HTTP server: Slack webhook / Pushgateway stand-in."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def http() -> AsyncIterator[Http]:
    box = Http(port=0)

    async def handle(request: web.Request) -> web.Response:
        box.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        return web.Response(status=box.status, text="ok" if box.status < 300 else "nope")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.port = int(runner.addresses[0][1])
    try:
        yield box
    finally:
        await runner.cleanup()


def only(records: list[dict[str, Any]], channel: str) -> dict[str, Any]:
    [r] = [r for r in records if r["channel"] == channel]
    return r


# --------------------------------------------------------------------------- email


async def test_email_arrives_authenticated_with_vault_credentials_and_no_values(
    bao: Bao, root: VaultClient, smtp: Smtp, tmp_path: Path, logs: LogLines
) -> None:
    m = await make_mount(root, smtp.settings())
    env = environment(tmp_path)
    report = run_report()
    async with bao.client(kv_mount=m) as client:
        records = await notify.send_notifications(env, client, report)

    email = only(records, "email")
    assert email["ok"], email["detail"]
    assert "sent to 2 recipient(s)" in email["detail"]
    # the webhook secret (rotator/notify) does not exist in this mount: skipped quietly
    assert only(records, "webhook") == {
        "channel": "webhook",
        "ok": True,
        "detail": "not configured",
    }

    # AUTH with exactly the Vault credentials (the authenticator compares them)
    assert smtp.logins and all(r == "ok" and u == SMTP_USER for _, u, r in smtp.logins)
    [got] = smtp.received
    assert got["authenticated"]
    assert got["mail_from"] == "maily-secrets@localhost"
    assert sorted(got["rcpt_tos"]) == ["admin@maily.test", "ops@maily.test"]

    msg: Message = message_from_string(got["content"])
    assert msg["Subject"] == "[maily-secrets] production: 2 rotated, 1 skipped, 1 failed"
    assert msg["To"] == "admin@maily.test, ops@maily.test"
    assert msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_payload(decode=True)
    assert isinstance(body, bytes)
    text = body.decode()
    header = next(ln for ln in text.splitlines() if ln.startswith("type "))
    for col in ("outcome", "rotation id", "version", "next due", "reason"):
        assert col in header
    rows = {ln.split()[0]: ln for ln in text.splitlines() if ln.split()[:1]}
    assert "rotated" in rows["jwt"] and "rot-jwt-5f1e" in rows["jwt"] and " 12 " in rows["jwt"]
    assert "2030-04-15 03:00 UTC" in rows["jwt"]
    assert "2030-02-14 03:00 UTC" in rows["database"] and " 13 " in rows["database"]
    assert "failed (verify)" in rows["aws"] and "InvalidClientTokenId" in rows["aws"]
    assert "skipped" in rows["smtp"] and "not due" in rows["smtp"]
    assert "run-20300115-0300-ab12" in text and "NEEDS ATTENTION" in text

    # no value: not the SMTP password, not the other keys of the secret it came from
    assert_no_canary(got["content"], "the email")
    assert_no_canary(json.dumps(records), "the notification records")
    assert_no_canary(logs.text, "the logs")
    assert any('"channel": "email"' in ln and '"outcome": "sent"' in ln for ln in logs.lines)


async def test_wrong_smtp_password_is_a_failed_channel_not_an_exception(
    bao: Bao, root: VaultClient, smtp: Smtp, tmp_path: Path, logs: LogLines
) -> None:
    wrong = canary("wrong-password")
    m = await make_mount(root, smtp.settings(password=wrong))
    env = environment(tmp_path)
    async with bao.client(kv_mount=m) as client:
        records = await notify.send_notifications(env, client, run_report())

    email = only(records, "email")
    assert email["ok"] is False
    assert "authentication" in email["detail"] and f"127.0.0.1:{smtp.port}" in email["detail"]
    assert "535" in email["detail"]
    assert smtp.received == []
    assert smtp.logins and all(r == "rejected" for *_, r in smtp.logins)
    for where, text in (("detail", json.dumps(records)), ("logs", logs.text)):
        assert_absent(wrong, text, where)
        assert_no_canary(text, where)
    assert any('"outcome": "failed"' in ln for ln in logs.lines)


async def test_email_smtp_unreachable_or_settings_missing(
    bao: Bao, root: VaultClient, tmp_path: Path
) -> None:
    down = free_port()
    m = await make_mount(
        root,
        {"smtp_host": "127.0.0.1", "smtp_port": down, "smtp_username": "u", "smtp_password": "p"},
    )
    no_smtp = await make_mount(root, None)
    env = environment(tmp_path)
    async with bao.client(kv_mount=m) as client:
        [email, _] = await notify.send_notifications(env, client, run_report())
    assert email["ok"] is False and "cannot reach SMTP server" in email["detail"]
    async with bao.client(kv_mount=no_smtp) as client:
        [email, _] = await notify.send_notifications(env, client, run_report())
    assert email == {
        "channel": "email",
        "ok": False,
        "detail": f"SMTP settings secret {no_smtp}/data/config has no smtp_host",
    }
    assert_no_canary(json.dumps(email), "detail")
    # smtp_secret names another secret; an absent one is reported by path
    env2 = environment(tmp_path, email={"smtp_secret": "notify/smtp"})
    async with bao.client(kv_mount=m) as client:
        [email, _] = await notify.send_notifications(env2, client, run_report())
    assert email["ok"] is False
    assert email["detail"] == f"SMTP settings secret {m}/data/notify/smtp does not exist"


async def test_email_not_configured_is_skipped(
    bao: Bao, root: VaultClient, smtp: Smtp, tmp_path: Path
) -> None:
    m = await make_mount(root, smtp.settings())
    env = environment(tmp_path, to=[])
    async with bao.client(kv_mount=m) as client:
        records = await notify.send_notifications(env, client, run_report())
    assert records == [
        {"channel": "email", "ok": True, "detail": "not configured"},
        {"channel": "webhook", "ok": True, "detail": "not configured"},
    ]
    assert smtp.received == [] and smtp.logins == []


async def test_starttls_is_used_when_offered(
    bao: Bao, root: VaultClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = server_tls_context(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts our test CA
    with smtp_server(tls_context=server_ctx, require_starttls=True, auth_require_tls=True) as box:
        m = await make_mount(root, box.settings())
        env = environment(tmp_path, email={"tls": "auto"})
        async with bao.client(kv_mount=m) as client:
            email = await notify.send_email(env, client, run_report())
    assert email["ok"], email["detail"]
    assert email["detail"].endswith("(TLS)")
    [got] = box.received
    assert got["tls"] and got["authenticated"]


@pytest.mark.parametrize(
    ("email", "expect"),
    [
        ({"tls": "starttls"}, "does not offer STARTTLS"),
        ({"tls": "auto", "starttls": True}, "does not offer STARTTLS"),
        ({"tls": "auto"}, "refusing to send the SMTP password in plaintext"),  # the default
        ({"tls": "auto", "starttls": False}, "refusing to send the SMTP password in plaintext"),
    ],
)
async def test_no_plaintext_auth_unless_tls_none(
    bao: Bao,
    root: VaultClient,
    smtp: Smtp,
    tmp_path: Path,
    email: dict[str, Any],
    expect: str,
) -> None:
    """A server without STARTTLS: an error, and no AUTH (nor mail) on the plaintext link."""
    m = await make_mount(root, smtp.settings())
    env = environment(tmp_path, email=email)
    async with bao.client(kv_mount=m) as client:
        rec = await notify.send_email(env, client, run_report())
    assert rec["ok"] is False and expect in rec["detail"], rec
    assert "nothing was sent" in rec["detail"]
    assert smtp.logins == [] and smtp.received == []  # no credential sent in clear


async def test_default_config_does_not_allow_plaintext_auth() -> None:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert doc["notify"]["email"].get("tls", "auto") != "none"
    assert RotationConfig.load(DEFAULT_CONFIG).notify.email.tls == "auto"


# --------------------------------------------------------------------------- webhook


async def test_webhook_url_from_vault_slack_shape(
    bao: Bao, root: VaultClient, http: Http, tmp_path: Path, logs: LogLines
) -> None:
    m = await make_mount(root, None)
    hook_path = f"/services/T0001/B0002/{HOOK_TOKEN}"
    await root.kv.write(f"{m}/data/rotator/notify", {"webhook_url": http.url(hook_path)}, cas=0)
    env = environment(tmp_path, to=[])
    async with bao.client(kv_mount=m) as client:
        records = await notify.send_notifications(env, client, run_report())

    hook = only(records, "webhook")
    assert hook == {
        "channel": "webhook",
        "ok": True,
        "detail": f"posted to 127.0.0.1:{http.port} (HTTP 200)",
    }
    [req] = http.requests
    assert req["method"] == "POST" and req["path"] == hook_path
    assert req["headers"]["Content-Type"].startswith("application/json")
    doc = json.loads(req["body"])
    assert doc["text"] == "[maily-secrets] production: 2 rotated, 1 skipped, 1 failed"
    blocks = doc["blocks"]
    assert blocks[0]["type"] == "header" and blocks[0]["text"]["type"] == "plain_text"
    sections = [b for b in blocks if b["type"] == "section"]
    assert len(sections) == 4
    by_type = {
        s["fields"][0]["text"].split("*")[1]: " | ".join(f["text"] for f in s["fields"])
        for s in sections
    }
    assert set(by_type) == {"jwt", "database", "aws", "smtp"}
    assert "rot-jwt-5f1e" in by_type["jwt"] and "v12" in by_type["jwt"]
    assert "2030-04-15 03:00 UTC" in by_type["jwt"]
    assert "failed (verify)" in by_type["aws"] and "InvalidClientTokenId" in by_type["aws"]
    for s in sections:
        assert all(f["type"] == "mrkdwn" for f in s["fields"])

    body = req["body"].decode()
    for c in (SMTP_PASSWORD, *OTHER_SECRETS.values()):
        assert_absent(c, body, "the webhook payload")
    # the URL is a secret: only its host shows, in details and logs
    assert_no_canary(json.dumps(records), "the records")
    assert_no_canary(logs.text, "the logs")
    assert f"127.0.0.1:{http.port}" in logs.text


async def test_webhook_server_error_two_attempts_then_failed(
    bao: Bao,
    root: VaultClient,
    http: Http,
    tmp_path: Path,
    logs: LogLines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(notify, "WEBHOOK_RETRY_DELAY_S", 0.01)
    http.status = 503
    env = environment(tmp_path, to=[], webhook={"url": http.url(f"/hook/{HOOK_TOKEN}")})
    m = await make_mount(root, None)
    async with bao.client(kv_mount=m) as client:
        records = await notify.send_notifications(env, client, run_report())
    hook = only(records, "webhook")
    assert hook["ok"] is False
    assert hook["detail"] == (f"webhook 127.0.0.1:{http.port} answered HTTP 503 (after 2 attempts)")
    assert len(http.requests) == 2  # one retry, not a storm

    http.requests.clear()
    http.status = 404  # a client error is not retried
    async with bao.client(kv_mount=m) as client:
        hook = await notify.send_webhook(env, client, run_report())
    assert hook["ok"] is False and "HTTP 404 (after 1 attempt)" in hook["detail"]
    assert len(http.requests) == 1
    assert_no_canary(logs.text, "the logs")


async def test_webhook_down_is_a_failed_channel(
    bao: Bao, root: VaultClient, tmp_path: Path, logs: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "WEBHOOK_RETRY_DELAY_S", 0.01)
    down = free_port()
    m = await make_mount(root, None)
    url = f"http://127.0.0.1:{down}/services/T/B/{HOOK_TOKEN}"
    await root.kv.write(f"{m}/data/rotator/notify", {"webhook_url": url}, cas=0)
    env = environment(tmp_path, to=[])
    async with bao.client(kv_mount=m) as client:
        records = await notify.send_notifications(env, client, run_report())
    hook = only(records, "webhook")
    assert hook["ok"] is False
    assert hook["detail"].startswith(f"cannot reach webhook 127.0.0.1:{down}")
    assert "after 2 attempts" in hook["detail"]
    assert_no_canary(json.dumps(records), "the records")
    assert_no_canary(logs.text, "the logs")

    # a secret without webhook_url, and a URL that is not http(s): failed, URL not shown
    await root.kv.write(f"{m}/data/rotator/notify", {"webhook_url": f"ftp://x/{HOOK_TOKEN}"}, cas=1)
    async with bao.client(kv_mount=m) as client:
        hook = await notify.send_webhook(env, client, run_report())
    assert hook["ok"] is False and "not an http(s) URL" in hook["detail"]
    assert_no_canary(hook["detail"], "detail")
    await root.kv.write(f"{m}/data/rotator/notify", {"other": "x"}, cas=2)
    async with bao.client(kv_mount=m) as client:
        hook = await notify.send_webhook(env, client, run_report())
    assert hook == {
        "channel": "webhook",
        "ok": False,
        "detail": f"secret {m}/data/rotator/notify has no webhook_url",
    }


# --------------------------------------------------------------------------- metrics


def test_record_produces_the_expected_samples() -> None:
    report = run_report()
    reg = metrics.record(report)

    def v(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, {"env": "production", **labels})

    ls = "maily_secret_rotation_last_success_timestamp_seconds"
    # this run's success: the end of the type's step (started + duration)
    assert v(ls, type="jwt") == (T0 + dt.timedelta(seconds=1.25)).timestamp()
    assert v(ls, type="database") == (T0 + dt.timedelta(seconds=6.5)).timestamp()
    # failed / skipped: the last success known (not this run)
    assert v(ls, type="aws") == dt.datetime(2029, 10, 1, tzinfo=dt.UTC).timestamp()
    assert v(ls, type="smtp") == dt.datetime(2029, 12, 3, tzinfo=dt.UTC).timestamp()

    d = "maily_secret_rotation_duration_seconds"
    assert v(d, type="jwt") == 1.25 and v(d, type="database") == 4.5 and v(d, type="aws") == 2.0

    o = "maily_secret_rotation_last_outcome"
    assert v(o, type="jwt", outcome="rotated") == 1
    assert v(o, type="jwt", outcome="failed") == 0
    assert v(o, type="aws", outcome="failed") == 1
    assert v(o, type="aws", outcome="rotated") == 0
    assert v(o, type="smtp", outcome="skipped") == 1
    for t in ("jwt", "database", "aws", "smtp"):
        total = sum(v(o, type=t, outcome=x) or 0 for x in metrics.OUTCOMES)
        assert total == 1

    n = "maily_secret_rotation_next_due_timestamp_seconds"
    assert v(n, type="jwt") == dt.datetime(2030, 4, 15, 3, tzinfo=dt.UTC).timestamp()
    assert v(n, type="aws") == T0.timestamp()

    # a fresh registry per run: nothing in the process-global one
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value(d, {"env": "production", "type": "jwt"}) is None
    assert metrics.record(report) is not reg


async def test_push_to_a_pushgateway_stand_in(
    http: Http, monkeypatch: pytest.MonkeyPatch, logs: LogLines
) -> None:
    reg = metrics.record(run_report())
    monkeypatch.setenv("MAILY_PUSHGATEWAY_URL", http.url(""))
    res = await metrics.push_async(reg)  # URL from the environment
    assert res == {
        "channel": "pushgateway",
        "ok": True,
        "detail": f"pushed 4 group(s) to 127.0.0.1:{http.port} (job maily-secret-rotation)",
    }
    paths = sorted(r["path"] for r in http.requests)
    assert paths == sorted(
        f"/metrics/job/maily-secret-rotation/env/production/type/{t}"
        for t in ("jwt", "database", "aws", "smtp")
    )
    assert {r["method"] for r in http.requests} == {"PUT"}
    jwt = next(r for r in http.requests if r["path"].endswith("/jwt"))
    families = {f.name: f for f in text_string_to_metric_families(jwt["body"].decode())}
    assert set(families) == {
        "maily_secret_rotation_last_success_timestamp_seconds",
        "maily_secret_rotation_duration_seconds",
        "maily_secret_rotation_last_outcome",
        "maily_secret_rotation_next_due_timestamp_seconds",
    }
    assert all(
        s.labels["type"] == "jwt" and s.labels["env"] == "production"
        for f in families.values()
        for s in f.samples
    )
    [dur] = families["maily_secret_rotation_duration_seconds"].samples
    assert dur.value == 1.25

    # explicit grouping: one group with everything; basic auth from the URL, never shown
    http.requests.clear()
    password = canary("pushgw")
    gw = f"http://pusher:{password}@127.0.0.1:{http.port}"
    res = await asyncio.to_thread(metrics.push, reg, gw, "rot", {"env": "production"})
    assert res["ok"], res["detail"]
    [req] = http.requests
    assert req["path"] == "/metrics/job/rot/env/production"
    assert req["headers"]["Authorization"] == (
        "Basic " + base64.b64encode(f"pusher:{password}".encode()).decode()
    )
    body = req["body"].decode()
    assert (
        'maily_secret_rotation_last_outcome{env="production",outcome="failed",type="aws"} 1.0'
        in (body)
    )
    assert_absent(password, json.dumps(res) + logs.text, "push detail/logs")

    # gateway errors are reported, not raised
    http.status = 500
    res = await metrics.push_async(reg, http.url(""), grouping={"env": "production"})
    assert res["ok"] is False and "HTTP 500" in res["detail"]
    down = free_port()
    res = await metrics.push_async(reg, f"http://u:{password}@127.0.0.1:{down}")
    assert res["ok"] is False and f"127.0.0.1:{down}" in res["detail"]
    assert "0 of 4 pushed" in res["detail"]
    assert_absent(password, json.dumps(res) + logs.text, "push detail/logs")

    monkeypatch.delenv("MAILY_PUSHGATEWAY_URL")
    assert metrics.push(reg) == {"channel": "pushgateway", "ok": True, "detail": "not configured"}


def test_write_textfile(tmp_path: Path) -> None:
    reg = metrics.record(run_report())
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    out = textfile_dir / "maily_secret_rotation.prom"
    res = metrics.write_textfile(reg, out)
    assert res == {"channel": "textfile", "ok": True, "detail": f"wrote {out}"}
    samples = {
        (s.name, s.labels.get("type"), s.labels.get("outcome")): s.value
        for f in text_string_to_metric_families(out.read_text())
        for s in f.samples
    }
    assert samples[("maily_secret_rotation_last_outcome", "aws", "failed")] == 1
    assert samples[("maily_secret_rotation_duration_seconds", "database", None)] == 4.5
    assert list(textfile_dir.iterdir()) == [out]  # atomic write: no temp file left behind

    bad = metrics.write_textfile(reg, tmp_path / "missing-dir" / "x.prom")
    assert bad["ok"] is False and "cannot write metrics file" in bad["detail"]
