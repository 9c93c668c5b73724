"""Tell people how a ``secrets rotate`` run went: email (SMTP) and a Slack-style webhook.

``send_notifications`` returns one record per channel::

    {"channel": "email" | "webhook", "ok": bool, "detail": str}

and never raises: a failed notification must not undo (or look like it undid) a
successful rotation. A channel that is not configured is skipped and reported as
``ok=True, detail="not configured"``.

What is sent is the :class:`RunReport` summary only (types, outcomes, rotation ids,
versions, next due dates, reasons), never a secret value. The SMTP credentials come
from Vault (``notify.email.smtp_secret``, keys ``smtp_host``, ``smtp_port``,
``smtp_username``, ``smtp_password``); they are used to log in and appear nowhere
else. A webhook URL is itself a credential (Slack's carry a token in the path): it
is never logged nor put in a detail, only its host is.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..cliname import command
from ..errors import SecretNotFound, VaultError
from ..paths import KV2Path
from ..targets.smtp import login_once, open_session, server_text
from ..vault.client import VaultClient
from .config import EmailNotify, ResolvedEnvironment, WebhookNotify
from .report import RunReport, TypeResult

log = logging.getLogger("maily_secrets.rotation.notify")

NOT_CONFIGURED = "not configured"
SMTP_TIMEOUT_S = 20.0
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_ATTEMPTS = 2
WEBHOOK_RETRY_DELAY_S = 1.0

# Subject order of the outcomes; any other status is appended after these.
_ORDER = ("rotated", "resumed", "retired", "planned", "skipped", "failed", "rolled_back", "busy")
_LABEL = {"rolled_back": "rolled back"}
_ICON = {
    "rotated": ":white_check_mark:",
    "retired": ":white_check_mark:",
    "resumed": ":white_check_mark:",
    "planned": ":memo:",
    "skipped": ":fast_forward:",
    "failed": ":x:",
    "rolled_back": ":leftwards_arrow_with_hook:",
    "busy": ":hourglass:",
}


def _record(channel: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"channel": channel, "ok": ok, "detail": detail}


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Defence in depth: blank out any known credential that shows up in ``text``."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[redacted]")
    return text


def _secret_path(client: VaultClient, name: str) -> KV2Path:
    """``config`` -> ``<client's kv mount>/data/config``; a full KV v2 path is taken as is."""
    if "/data/" in name:
        parsed = KV2Path.parse(name)
        if parsed is not None:
            return parsed
    return KV2Path.of(client.settings.kv_mount, name)


def _checked_path(client: VaultClient, name: str, setting: str) -> KV2Path:
    try:
        return _secret_path(client, name)
    except VaultError as exc:  # InvalidPath
        raise _NotifyError(f"{setting} is not a valid secret name: {exc}") from None


def _mrkdwn(text: str) -> str:
    """Slack's three control characters, so a reason cannot turn into a link or mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------- text


def summary_counts(report: RunReport) -> str:
    """``"2 rotated, 1 failed"`` (statuses in a fixed order; ``"nothing to do"`` if empty)."""
    counts: Counter[str] = Counter(r.status for r in report.results)
    order = [s for s in _ORDER if s in counts] + sorted(s for s in counts if s not in _ORDER)
    parts = [f"{counts[s]} {_LABEL.get(s, s)}" for s in order]
    return ", ".join(parts) if parts else "nothing to do"


def subject_line(report: RunReport) -> str:
    dry = " (dry run)" if report.dry_run else ""
    return f"[maily-secrets] {report.env}: {summary_counts(report)}{dry}"


def _ts(dt: datetime | None) -> str:
    if dt is None:
        return "-"
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def _outcome(r: TypeResult) -> str:
    out = _LABEL.get(r.status, r.status)
    if r.step and not r.ok:
        out += f" ({r.step})"
    return out


def straggler_lines(report: RunReport) -> list[str]:
    """Who still used a previous credential (retired anyway, or still retiring past its
    grace), by application and address, so that someone can find them; no values."""
    out = []
    for r in report.results:
        for u in r.stragglers:
            out.append(
                f"{r.type}: {u.get('count')} x application {u.get('application') or '(no name)'}"
                f" from {u.get('address') or '(address hidden)'} still used"
                f" {u.get('credential')} (rotation {u.get('rotation_id')})"
            )
    return out


def _rows(report: RunReport) -> list[list[str]]:
    return [
        [
            r.type,
            _outcome(r),
            r.rotation_id or "-",
            str(r.version) if r.version is not None else "-",
            _ts(r.next_due),
            " ".join((r.reason or "").split()) or "-",
        ]
        for r in report.results
    ]


def email_body(report: RunReport) -> str:
    """The plain-text body: a header and a table of the results (no values, ever)."""
    head = ["type", "outcome", "rotation id", "version", "next due", "reason"]
    rows = _rows(report)
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head) - 1)]

    def line(cells: list[str]) -> str:
        fixed = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True))
        return f"{fixed}  {cells[-1]}".rstrip()

    lines = [
        f"Secret rotation in {report.env}: {summary_counts(report)}"
        + (" (dry run: nothing was changed)" if report.dry_run else ""),
        "",
        f"run id:    {report.run_id}",
        f"actor:     {report.actor}",
        f"started:   {_ts(report.started_at)}",
        f"finished:  {_ts(report.finished_at)}",
        f"result:    {'ok' if report.ok else 'NEEDS ATTENTION'}",
        "",
    ]
    if rows:
        lines += [line(head), line(["-" * w for w in widths] + ["-" * len(head[-1])])]
        lines += [line(r) for r in rows]
    else:
        lines.append("No secret type was selected.")
    notes = [f"{r.type}: {' '.join(n.split())}" for r in report.results for n in r.notes]
    if notes:
        lines += ["", "Also done:", *(f"  - {n}" for n in notes)]
    stragglers = straggler_lines(report)
    if stragglers:
        lines += ["", "Still using a previous credential:", *(f"  - {x}" for x in stragglers)]
    if report.warnings:
        lines += ["", "Warnings:", *(f"  - {' '.join(x.split())}" for x in report.warnings)]
    lines += [
        "",
        "This message lists types, outcomes and versions only; it never contains a secret.",
        f"Details: {command('secrets', 'status')} (and the audit log of the rotation run).",
        "",
    ]
    return "\n".join(lines)


def webhook_payload(report: RunReport) -> dict[str, Any]:
    """A Slack-compatible message: ``text`` (fallback/notification) plus ``blocks``."""
    text = subject_line(report)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": text[:150]}},
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": _mrkdwn(
                        f"run `{report.run_id}` by {report.actor}"
                        f" · started {_ts(report.started_at)}"
                    )
                    + (" · *dry run*" if report.dry_run else ""),
                }
            ],
        },
    ]
    shown = report.results[:45]  # Slack allows 50 blocks per message
    for r, row in zip(shown, _rows(report), strict=False):
        fields = [
            f"*{r.type}*\n{_ICON.get(r.status, '')} {row[1]}".strip(),
            f"*rotation*\n{row[2]} · v{row[3]}"
            if r.version is not None
            else f"*rotation*\n{row[2]}",
            f"*next due*\n{row[4]}",
        ]
        if r.reason:
            fields.append(f"*reason*\n{row[5][:1900]}")
        blocks.append(
            {"type": "section", "fields": [{"type": "mrkdwn", "text": _mrkdwn(f)} for f in fields]}
        )
    extra = [f"*{r.type}*: {n}" for r in report.results for n in r.notes]
    extra += [f":warning: {x}" for x in straggler_lines(report)]
    extra += [f":warning: {x}" for x in report.warnings]
    if extra:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _mrkdwn("\n".join(extra))[:2900]},
            }
        )
    if len(report.results) > len(shown):
        more = len(report.results) - len(shown)
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"... and {more} more"}]}
        )
    return {"text": text, "blocks": blocks}


# --------------------------------------------------------------------------- email


@dataclass(frozen=True)
class _Smtp:
    host: str
    port: int
    username: str
    password: str = field(repr=False)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class _NotifyError(Exception):
    """A channel failed; the message is safe to show (no values, no webhook URL)."""


async def _smtp_settings(client: VaultClient, cfg: EmailNotify) -> _Smtp:
    path = _checked_path(client, cfg.smtp_secret, "notify.email.smtp_secret")
    try:
        data = (await client.kv.read(path)).data
    except SecretNotFound:
        raise _NotifyError(f"SMTP settings secret {path.data} does not exist") from None
    except VaultError as exc:
        raise _NotifyError(f"cannot read SMTP settings from {path.data}: {exc}") from None
    host = str(data.get("smtp_host") or "").strip()
    if not host:
        raise _NotifyError(f"SMTP settings secret {path.data} has no smtp_host")
    raw_port = data.get("smtp_port") or 587
    try:
        port = int(raw_port)
        if not 0 < port < 65536:
            raise ValueError
    except (TypeError, ValueError):
        raise _NotifyError(f"smtp_port in {path.data} is not a port number") from None
    return _Smtp(
        host=host,
        port=port,
        username=str(data.get("smtp_username") or ""),
        password=str(data.get("smtp_password") or ""),
    )


def _build_message(report: RunReport, cfg: EmailNotify) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject_line(report)
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="maily-secrets")
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Maily-Rotation-Run"] = report.run_id
    msg.set_content(email_body(report))
    return msg


def _smtp_send(smtp: _Smtp, cfg: EmailNotify, msg: EmailMessage, to: list[str]) -> str:
    """Blocking: connect, TLS as configured, AUTH, send. Returns a detail; raises _NotifyError.

    The SMTP password never crosses a plaintext connection unless ``tls: none`` says
    so: with STARTTLS expected and not offered, nothing is sent (no AUTH, no mail).
    """
    creds = (smtp.password, smtp.username)

    def redact(text: str) -> str:
        return _scrub(text, creds)

    mode = cfg.tls
    if mode == "auto" and cfg.starttls is True:
        mode = "starttls"
    implicit = mode == "implicit" or (mode == "auto" and smtp.port == 465)
    want_starttls = not implicit and mode in ("auto", "starttls") and cfg.starttls is not False
    ctx = ssl.create_default_context()
    with open_session(
        smtp.host,
        smtp.port,
        implicit=implicit,
        context=ctx,
        timeout=SMTP_TIMEOUT_S,
        fail=_NotifyError,
        redact=redact,
    ) as session:
        conn = session.conn
        try:
            if want_starttls:
                if conn.has_extn("starttls"):
                    session.starttls(ctx)
                elif mode == "starttls":
                    raise _NotifyError(
                        f"SMTP server {smtp.where} does not offer STARTTLS"
                        " (notify.email.tls is starttls); nothing was sent"
                    )
            if smtp.username:
                if not session.tls and mode != "none":
                    raise _NotifyError(
                        f"SMTP server {smtp.where}: no TLS (STARTTLS not offered or turned"
                        " off); refusing to send the SMTP password in plaintext (set"
                        " notify.email.tls: none to allow it); nothing was sent"
                    )
                if not conn.has_extn("auth"):
                    raise _NotifyError(
                        f"SMTP server {smtp.where} does not offer AUTH"
                        + ("" if session.tls else " without TLS")
                    )
                if not session.tls:
                    log.warning(
                        "SMTP login without TLS (notify.email.tls: none)",
                        extra={"channel": "email", "smtp_host": smtp.where},
                    )
                login_once(conn, smtp.username, smtp.password)
            refused = conn.send_message(msg, from_addr=None, to_addrs=to)
        except smtplib.SMTPAuthenticationError as exc:
            raise _NotifyError(
                f"SMTP authentication to {smtp.where} failed with the credentials from Vault"
                f" ({exc.smtp_code} {server_text(exc.smtp_error, redact)})"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({str(v[0]) for v in exc.recipients.values()})
            raise _NotifyError(
                f"SMTP server {smtp.where} refused all {len(to)} recipient(s) ({', '.join(codes)})"
            ) from None
        except smtplib.SMTPSenderRefused as exc:
            raise _NotifyError(
                f"SMTP server {smtp.where} refused the sender address"
                f" ({exc.smtp_code} {server_text(exc.smtp_error, redact)})"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise _NotifyError(
                f"SMTP server {smtp.where} does not support a needed command"
            ) from None
    sent = len(to) - len(refused)
    security = "TLS" if session.tls else "no TLS"
    if refused:
        codes = sorted({str(v[0]) for v in refused.values()})
        raise _NotifyError(
            f"sent to {sent} of {len(to)} recipients via {smtp.where};"
            f" {len(refused)} refused ({', '.join(codes)})"
        )
    return f"sent to {sent} recipient(s) via {smtp.where} ({security})"


async def send_email(
    env: ResolvedEnvironment, client: VaultClient, report: RunReport
) -> dict[str, Any]:
    cfg = env.notify.email
    if not cfg.to:
        return _record("email", True, NOT_CONFIGURED)
    try:
        smtp = await _smtp_settings(client, cfg)
        msg = _build_message(report, cfg)
        detail = await asyncio.to_thread(_smtp_send, smtp, cfg, msg, list(cfg.to))
    except _NotifyError as exc:
        log.warning(
            "rotation email not sent",
            extra={"channel": "email", "outcome": "failed", "why": str(exc)},
        )
        return _record("email", False, str(exc))
    log.info("rotation email sent", extra={"channel": "email", "outcome": "sent", "why": detail})
    return _record("email", True, detail)


# --------------------------------------------------------------------------- webhook


async def _webhook_url(client: VaultClient, cfg: WebhookNotify) -> str | None:
    """The URL (a secret); ``None`` when no webhook is configured."""
    if cfg.url:
        return cfg.url
    if not cfg.url_secret:
        return None
    path = _checked_path(client, cfg.url_secret, "notify.webhook.url_secret")
    try:
        data = (await client.kv.read(path)).data
    except SecretNotFound:
        # The shipped config names rotator/notify; an environment without it has no webhook.
        return None
    except VaultError as exc:
        raise _NotifyError(f"cannot read the webhook URL from {path.data}: {exc}") from None
    url = str(data.get("webhook_url") or "").strip()
    if not url:
        raise _NotifyError(f"secret {path.data} has no webhook_url")
    return url


def _host_of(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


async def _post(url: str, payload: dict[str, Any], host: str) -> str:
    timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
    last = ""
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            retry = False
            try:
                async with session.post(url, json=payload, allow_redirects=False) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return f"posted to {host} (HTTP {resp.status})"
                    last = f"webhook {host} answered HTTP {resp.status}"
                    retry = resp.status >= 500 or resp.status == 429
            except TimeoutError:
                last, retry = f"webhook {host} timed out after {WEBHOOK_TIMEOUT_S:g}s", True
            except aiohttp.ClientConnectionError as exc:
                # str() of aiohttp errors can include the full URL: name the type only.
                last, retry = f"cannot reach webhook {host}: {type(exc).__name__}", True
            except aiohttp.ClientError as exc:
                last = f"webhook {host} failed: {type(exc).__name__}"
            if not retry or attempt == WEBHOOK_ATTEMPTS:
                break
            await asyncio.sleep(WEBHOOK_RETRY_DELAY_S)
    raise _NotifyError(f"{last} (after {attempt} attempt{'s' if attempt > 1 else ''})")


async def send_webhook(
    env: ResolvedEnvironment, client: VaultClient, report: RunReport
) -> dict[str, Any]:
    cfg = env.notify.webhook
    try:
        url = await _webhook_url(client, cfg)
        if url is None:
            return _record("webhook", True, NOT_CONFIGURED)
        host = _host_of(url)
        if urlsplit(url).scheme not in ("http", "https") or host == "?":
            raise _NotifyError("the webhook URL is not an http(s) URL (not shown: it is a secret)")
        detail = await _post(url, webhook_payload(report), host)
    except _NotifyError as exc:
        log.warning(
            "rotation webhook not sent",
            extra={"channel": "webhook", "outcome": "failed", "why": str(exc)},
        )
        return _record("webhook", False, str(exc))
    log.info(
        "rotation webhook sent", extra={"channel": "webhook", "outcome": "sent", "why": detail}
    )
    return _record("webhook", True, detail)


# --------------------------------------------------------------------------- entry point


async def _guarded(channel: str, coro: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await coro
        return result
    except Exception as exc:  # a notification never fails the run
        # No traceback: an exception's text may hold a URL (the webhook's is a secret).
        log.error(
            "rotation notification crashed",
            extra={"channel": channel, "outcome": "failed", "error": type(exc).__name__},
        )
        return _record(channel, False, f"unexpected error: {type(exc).__name__}")


async def send_notifications(
    env: ResolvedEnvironment, client: VaultClient, report: RunReport
) -> list[dict[str, Any]]:
    """Send the run summary on every configured channel; one record per channel, no raise."""
    results = await asyncio.gather(
        _guarded("email", send_email(env, client, report)),
        _guarded("webhook", send_webhook(env, client, report)),
    )
    return list(results)


__all__ = [
    "NOT_CONFIGURED",
    "email_body",
    "send_email",
    "send_notifications",
    "send_webhook",
    "subject_line",
    "summary_counts",
    "webhook_payload",
]
