"""SMTP credentials (``smtp_username``/``smtp_password`` of ``maily/data/config``).

The provider that issues the credentials is pluggable (``options.provider``):

``ses``   Amazon SES. An SES SMTP password is derived from an IAM access key by AWS's
          published algorithm (:func:`ses_smtp_password`); the SMTP username is the
          access key id. The IAM user (``iam_user``, which needs ``ses:SendRawEmail``)
          holds up to two keys: that is the grace period, as for the ``aws`` type, and
          the same two-slot rules apply (see ``targets/aws_iam.py``): the key is created in
          ``create_pending`` (the only moment its secret exists), ``apply`` makes sure it
          is active, ``retire`` deletes the previous key after the grace period,
          ``rollback`` deletes the pending one.

``hook``  Any other provider: an operator-supplied command (``options.hook``, an argv
          list; no shell) sets the new password at the provider. Protocol:

          * called as ``<hook argv...> <action>`` with action ``apply`` or ``rollback``
            (and ``retire`` through ``retire_hook``, if configured);
          * standard input: one JSON object ``{"action", "username", "password",
            "credential_id", "previous_username", "previous_credential_id",
            "smtp_host", "smtp_port"}`` (``password`` only for ``apply``). The password
            reaches the hook this way only: never in argv nor in the environment (which
            is the rotator's own minus every ``VAULT_*``/``BAO_*``/``MAILY_SECRETS_*``
            variable and AWS secret keys, plus ``MAILY_SMTP_ACTION`` and
            ``MAILY_SMTP_USERNAME``);
          * ``apply`` must *add* the password (the one in use keeps working until
            ``retire``) and be idempotent for the same ``credential_id`` (it is called
            again when a rotation resumes after a crash); ``rollback`` removes
            ``credential_id``; ``retire`` removes the previous credential
            (``credential_id`` names it; null for one this rotator did not make: then
            every other password of ``username`` but ``current_credential_id``);
          * exit status 0 is success; otherwise the rotation fails with the hook's
            exit code and the end of its stderr (scrubbed of the password).

          ``credential_id`` is the rotation id that made the password.

Both providers: ``verify`` is a real SMTP login (AUTH after TLS: implicit or
STARTTLS; plaintext only with ``tls: none``) with the new credentials at
``smtp_host``:``smtp_port`` of the secret,
retried for up to ``verify_timeout`` seconds (a provider may take a moment); ``promote``
is a check-and-set read-modify-write of ``smtp_username``/``smtp_password`` (other
keys of the secret, rotated by other types, are kept).

Options (``types.smtp.options``)::

    provider: hook                     # or ses (required)
    tls: auto                          # auto (implicit TLS on 465, else STARTTLS, which
                                       # the server must offer), starttls, implicit, or
                                       # none: plaintext AUTH, only when said explicitly
    cafile: /etc/ssl/smtp-ca.pem       # optional CA bundle for the server certificate
    verify_timeout: 30                 # seconds to keep retrying the login
    smtp_timeout: 10                   # seconds for one SMTP connection
    # provider: hook
    hook: [/usr/local/bin/smtp-password, --domain, mail.example.com]
    retire_hook: true                  # or an argv list; absent: nothing is retired
    hook_timeout: 30
    username: maily                    # default: smtp_username of the secret
    password_length: 32
    # provider: ses (the AWS options of the aws type, see targets/aws_iam.py)
    iam_user: maily-ses-smtp           # required
    region: eu-west-1                  # default: from smtp_host email-smtp.<region>.amazonaws.com
    iam_credentials: default           # default (boto3's chain) or vault (+ iam_credentials_secret)
    endpoint_url: ...                  # a stand-in only
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import smtplib
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import VaultError
from ...targets import random_password
from ...targets.aws_iam import (
    AwsApiError,
    AwsOptions,
    AwsTarget,
    IamUserKeys,
    activate_key,
    admin_creds,
    aws_call,
    create_key,
    free_slot,
    parse_aws_options,
    scrub,
)
from ...targets.smtp import login_once, open_session, server_text
from ..base import (
    ActionRequired,
    RotationContext,
    RotationError,
    Rotator,
    RotatorConfigError,
)
from ..kit import blocking, duration_seconds, password_length, promote_fields
from ..state import StateStore

PROVIDERS = ("ses", "hook")
TLS_MODES = ("auto", "starttls", "implicit", "none")
HOOK_ACTIONS = ("apply", "rollback", "retire")
_SES_HOST = re.compile(r"^email-smtp(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com$")
# never inherited by a hook: Vault tokens and the like, AWS secrets
_HOOK_ENV_DROP_PREFIXES = ("VAULT_", "BAO_", "MAILY_SECRETS_")
_HOOK_ENV_DROP = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MAILY_DEV_PG_PASSWORD"})


# ---------------------------------------------------------------------------- SES
SES_DATE = "11111111"
SES_SERVICE = "ses"
SES_TERMINAL = "aws4_request"
SES_MESSAGE = "SendRawEmail"
SES_VERSION = 0x04


def ses_smtp_password(secret_access_key: str, region: str) -> str:
    """The Amazon SES SMTP password of an IAM secret access key, for one region.

    AWS's published algorithm (SES developer guide, "Obtaining Amazon SES SMTP
    credentials"): a SigV4-style HMAC-SHA256 chain ``"AWS4" + secret`` -> date
    ``11111111`` -> region -> ``ses`` -> ``aws4_request`` -> ``SendRawEmail``; the
    version byte ``0x04`` followed by the signature, base64-encoded.
    """

    def sign(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()

    sig = sign(("AWS4" + secret_access_key).encode("utf-8"), SES_DATE)
    for part in (region, SES_SERVICE, SES_TERMINAL, SES_MESSAGE):
        sig = sign(sig, part)
    return base64.b64encode(bytes([SES_VERSION]) + sig).decode("ascii")


def region_of_ses_host(host: str) -> str | None:
    m = _SES_HOST.match(host.strip().lower())
    return m.group(1) if m else None


# ---------------------------------------------------------------------------- SMTP login
class SmtpError(RotationError):
    """An SMTP connection or login failed (message without any secret)."""


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    tls: str  # one of TLS_MODES
    cafile: str | None
    timeout: float

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def smtp_session(
    server: SmtpServer, username: str | None = None, password: str | None = None
) -> str:
    """Blocking: connect, EHLO, TLS as configured, and (with credentials) AUTH.

    Without credentials it only checks that the server answers and offers AUTH.
    Returns a short description ("STARTTLS", "TLS", "no TLS"); raises SmtpError.
    """
    secrets = [s for s in (password,) if s]

    def redact(text: str) -> str:
        return scrub(text, *secrets)

    implicit = server.tls == "implicit" or (server.tls == "auto" and server.port == 465)
    try:
        ctx = ssl.create_default_context(cafile=server.cafile) if server.tls != "none" else None
    except (OSError, ssl.SSLError) as exc:
        raise RotatorConfigError(
            f"smtp: cannot load the CA bundle {server.cafile}: {type(exc).__name__}"
        ) from None
    with open_session(
        server.host,
        server.port,
        implicit=implicit,
        context=ctx,
        timeout=server.timeout,
        fail=SmtpError,
        redact=redact,
    ) as session:
        if not implicit and server.tls in ("auto", "starttls"):
            if not session.conn.has_extn("starttls"):
                # never AUTH in plaintext unless the configuration says tls: none
                raise SmtpError(
                    f"SMTP server {server.where} does not offer STARTTLS (option tls:"
                    f" {server.tls}); refusing to log in without TLS (tls: none allows it)"
                )
            session.starttls(ctx)
        if not session.conn.has_extn("auth"):
            raise SmtpError(
                f"SMTP server {server.where} does not offer AUTH"
                + ("" if session.tls else " without TLS")
            )
        if username is not None and password is not None:
            try:
                login_once(session.conn, username, password)
            except smtplib.SMTPAuthenticationError as exc:
                raise SmtpError(
                    f"SMTP login as {username} at {server.where} was refused"
                    f" ({exc.smtp_code} {server_text(exc.smtp_error, redact)})"
                ) from None
        return session.security


# ---------------------------------------------------------------------------- the hook
def hook_environment(action: str, username: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_HOOK_ENV_DROP_PREFIXES) and k not in _HOOK_ENV_DROP
    }
    env["MAILY_SMTP_ACTION"] = action
    env["MAILY_SMTP_USERNAME"] = username
    return env


async def run_hook(
    argv: Sequence[str],
    action: str,
    payload: Mapping[str, Any],
    *,
    limit: float,
    secrets: Sequence[str] = (),
) -> None:
    """Run the hook: ``argv + [action]``, ``payload`` as JSON on stdin. Raises on failure."""
    name = os.path.basename(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            action,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=hook_environment(action, str(payload.get("username") or "")),
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as exc:
        raise RotatorConfigError(
            f"smtp {action}: cannot run the hook {argv[0]}: {exc.strerror or type(exc).__name__}"
        ) from None
    data = json.dumps({"action": action, **payload}).encode() + b"\n"
    try:
        _, err = await asyncio.wait_for(proc.communicate(data), limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise RotationError(
            f"smtp {action}: the hook {name} did not finish within {limit:g}s"
        ) from None
    if proc.returncode != 0:
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        tail = scrub(" | ".join(lines[-3:]), *secrets) if lines else "no output on stderr"
        raise RotationError(
            f"smtp {action}: the hook {name} exited with code {proc.returncode}: {tail[:300]}"
        )


# ---------------------------------------------------------------------------- options
@dataclass(frozen=True)
class SmtpOptions:
    provider: str
    tls: str
    cafile: str | None
    verify_timeout: float
    smtp_timeout: float
    # hook
    hook: tuple[str, ...] = ()
    retire_hook: tuple[str, ...] = ()
    hook_timeout: float = 30.0
    username: str | None = None
    password_length: int = 32
    # ses
    aws: AwsOptions | None = None


def _argv(o: Mapping[str, Any], name: str, problems: list[str]) -> tuple[str, ...] | None:
    raw = o.get(name)
    if raw is None:
        return None
    if (
        not isinstance(raw, list | tuple)
        or not raw
        or not all(isinstance(a, str) and a for a in raw)
    ):
        problems.append(
            f"option {name} must be a command as a list of strings (argv; no shell), e.g."
            " [/usr/local/bin/smtp-password, --domain, example.com]"
        )
        return None
    return tuple(raw)


def _seconds(o: Mapping[str, Any], name: str, default: float, problems: list[str]) -> float:
    try:
        v = duration_seconds(o.get(name, default), positive=False)
        if v > 900:
            raise ValueError
    except ValueError:
        problems.append(f"option {name} must be a number of seconds from 0 to 900")
        return default
    return v


def parse_smtp_options(o: Mapping[str, Any]) -> tuple[SmtpOptions | None, list[str]]:
    problems: list[str] = []
    provider = o.get("provider")
    if provider not in PROVIDERS:
        problems.append(
            f"option provider must be one of {', '.join(PROVIDERS)}"
            + ("" if provider is None else f" (got {provider!r})")
        )
    tls = o.get("tls", "auto")
    if tls not in TLS_MODES:
        problems.append(f"option tls must be one of {', '.join(TLS_MODES)}")
        tls = "auto"
    cafile = o.get("cafile")
    if cafile is not None and (not isinstance(cafile, str) or not os.path.isfile(cafile)):
        problems.append(f"option cafile {cafile!r} is not a readable file")
    verify_timeout = _seconds(o, "verify_timeout", 30.0, problems)
    smtp_timeout = max(1.0, _seconds(o, "smtp_timeout", 10.0, problems))
    hook = retire_hook = None
    hook_timeout, length, username, aws = 30.0, 32, None, None
    if provider == "hook":
        hook = _argv(o, "hook", problems)
        if hook is None and "hook" not in o:
            problems.append("option hook (the command that sets the password) is not set")
        elif hook is not None and not _executable(hook[0]):
            problems.append(f"the hook command {hook[0]!r} is not an executable file")
        raw_retire = o.get("retire_hook")
        if raw_retire is True:
            retire_hook = hook
        elif raw_retire not in (None, False):
            retire_hook = _argv(o, "retire_hook", problems)
            if retire_hook is not None and not _executable(retire_hook[0]):
                problems.append(f"the retire_hook command {retire_hook[0]!r} is not executable")
        hook_timeout = max(1.0, _seconds(o, "hook_timeout", 30.0, problems))
        raw_user = o.get("username")
        if raw_user is not None and (not isinstance(raw_user, str) or not raw_user):
            problems.append("option username must be a non-empty string")
        username = raw_user if isinstance(raw_user, str) and raw_user else None
        try:
            length = password_length(o.get("password_length", 32))
        except ValueError as exc:
            problems.append(f"option password_length {exc}")
    elif provider == "ses":
        aws, aws_problems = parse_aws_options(
            {"verify_timeout": verify_timeout, **o}, default_credentials="default", allow_self=False
        )
        problems += aws_problems
        if "iam_user" not in o:
            problems.append("option iam_user (the IAM user of the SES SMTP credentials) is not set")
    if problems:
        return None, problems
    return (
        SmtpOptions(
            provider=str(provider),
            tls=str(tls),
            cafile=cafile if isinstance(cafile, str) else None,
            verify_timeout=verify_timeout,
            smtp_timeout=smtp_timeout,
            hook=hook or (),
            retire_hook=retire_hook or (),
            hook_timeout=hook_timeout,
            username=username,
            password_length=length,
            aws=aws,
        ),
        [],
    )


def _executable(cmd: str) -> bool:
    if os.sep in cmd:
        return os.path.isfile(cmd) and os.access(cmd, os.X_OK)
    return shutil.which(cmd) is not None


# ---------------------------------------------------------------------------- the rotator
class SmtpRotator(Rotator):
    """``smtp``: new SMTP credentials from the provider, verified by logging in, promoted."""

    type_name = "smtp"
    two_slots = True

    # -- configuration and Vault -------------------------------------------------------
    def _opts(self, ctx: RotationContext, step: str) -> SmtpOptions:
        if ctx.options.get("provider") is None:
            raise ActionRequired(
                "no SMTP provider is configured (types.smtp.options.provider: ses or hook):"
                " change the SMTP password at the provider by hand, then smtp_username/"
                f"smtp_password in {ctx.secret_path().data}"
            )
        opts, problems = parse_smtp_options(ctx.options)
        if opts is None:
            raise RotatorConfigError(f"smtp {step}: {'; '.join(problems)}")
        return opts

    async def _consumer(self, ctx: RotationContext, step: str) -> tuple[dict[str, Any], int]:
        return await ctx.read_secret(step=step)

    def _server(
        self, ctx: RotationContext, opts: SmtpOptions, data: Mapping[str, Any], step: str
    ) -> SmtpServer:
        path = ctx.secret_path().data
        host = str(data.get("smtp_host") or "").strip()
        if not host:
            raise RotatorConfigError(f"smtp {step}: {path} has no smtp_host")
        try:
            port = int(data.get("smtp_port") or 587)
            if not 0 < port < 65536:
                raise ValueError
        except (TypeError, ValueError):
            raise RotatorConfigError(f"smtp {step}: smtp_port in {path} is not a port") from None
        return SmtpServer(host, port, opts.tls, opts.cafile, opts.smtp_timeout)

    def _ses(
        self, opts: SmtpOptions, server: SmtpServer, step: str
    ) -> tuple[AwsOptions, AwsTarget, str]:
        aws = opts.aws
        assert aws is not None and aws.iam_user is not None
        region = aws.region or region_of_ses_host(server.host)
        if region is None:
            raise RotatorConfigError(
                f"smtp {step}: option region is not set and smtp_host {server.host} is not"
                " email-smtp.<region>.amazonaws.com (the SES SMTP password depends on the region)"
            )
        return aws, AwsTarget(region, aws.endpoint_url, aws.timeout), region

    async def _ses_keys(
        self, ctx: RotationContext, opts: SmtpOptions, server: SmtpServer, step: str
    ) -> tuple[IamUserKeys, str]:
        aws, target, region = self._ses(opts, server, step)
        admin = await admin_creds(ctx, aws, f"smtp {step}", None)
        assert aws.iam_user is not None
        return IamUserKeys(target, admin, aws.iam_user), region

    async def _login(self, server: SmtpServer, username: str, password: str, within: float) -> str:
        deadline = time.monotonic() + within
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(smtp_session, server, username, password)
            except RotatorConfigError:
                raise
            except SmtpError:
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- the protocol ----------------------------------------------------------------
    async def check(self, ctx: RotationContext) -> None:
        opts = self._opts(ctx, "check")
        data, _ = await self._consumer(ctx, "check")
        server = self._server(ctx, opts, data, "check")
        if opts.provider == "hook" and not (opts.username or data.get("smtp_username")):
            raise RotatorConfigError(
                f"smtp check: no SMTP username: set option username or smtp_username in"
                f" {ctx.secret_path().data}"
            )
        if opts.provider == "ses":
            keys, _ = await self._ses_keys(ctx, opts, server, "check")
            try:
                await free_slot(
                    "smtp check",
                    ctx,
                    keys,
                    str(data.get("smtp_username") or "") or None,
                    delete=False,
                    require_current=False,
                )
            except AwsApiError as exc:
                raise RotatorConfigError(str(exc)) from None
        await blocking(
            "smtp check", smtp_session, server, errors=(SmtpError,), raise_as=RotatorConfigError
        )

    async def describe(self, ctx: RotationContext) -> str:
        try:
            opts = self._opts(ctx, "describe")
            data, _ = await self._consumer(ctx, "describe")
            server = self._server(ctx, opts, data, "describe")
        except RotationError as exc:
            return f"cannot rotate smtp: {exc}"
        where = f"{ctx.secret_path().data} (smtp_username/smtp_password)"
        if opts.provider == "ses":
            assert opts.aws is not None
            return (
                f"create an IAM access key for {opts.aws.iam_user}, derive its SES SMTP password,"
                f" log in at {server.where}, write {where}; the old key is deleted after"
                f" {ctx.grace}"
            )
        return (
            f"set a new password through the hook {os.path.basename(opts.hook[0])}, log in at"
            f" {server.where}, write {where}"
            + (f"; the old one is retired after {ctx.grace}" if opts.retire_hook else "")
        )

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        opts = self._opts(ctx, "create_pending")
        data, _ = await self._consumer(ctx, "create_pending")
        server = self._server(ctx, opts, data, "create_pending")
        previous_username = str(data.get("smtp_username") or "") or None
        if opts.provider == "ses":
            keys, region = await self._ses_keys(ctx, opts, server, "create_pending")
            try:
                listed = await aws_call(
                    f"smtp create_pending: iam:ListAccessKeys for {keys.user}",
                    keys.target,
                    keys.list,
                )
                ids = {k.id for k in listed}
            except AwsApiError as exc:  # before anything that matters changed
                raise RotatorConfigError(str(exc)) from None
            previous_key = previous_username if previous_username in ids else None
            new = await create_key(
                "smtp create_pending",
                ctx,
                keys,
                previous_key,
                message="smtp: new SES access key created",
                require_current=False,
            )
            return {
                "provider": "ses",
                "username": new.access_key_id,
                "password": ses_smtp_password(new.secret_access_key, region),
                "access_key_id": new.access_key_id,
                "iam_user": keys.user,
                "region": region,
                "previous_username": previous_username,
                "previous_access_key_id": previous_key,
            }
        username = opts.username or previous_username
        if not username:
            raise RotatorConfigError(
                "smtp create_pending: no SMTP username: set option username or smtp_username"
            )
        return {
            "provider": "hook",
            "username": username,
            "password": random_password(opts.password_length),
            "credential_id": ctx.rotation_id,
            "previous_username": previous_username,
            "previous_credential_id": await self._previous_credential_id(ctx),
        }

    async def _previous_credential_id(self, ctx: RotationContext) -> str | None:
        """The rotation id that made the credential in use (None: not made by a rotation)."""
        store = StateStore(ctx.client, ctx.kv_mount, ctx.env.env.state_prefix)
        try:
            state, _ = await store.read(ctx.type_name)
        except (VaultError, ValueError) as exc:
            # never guess None: the retire hook would then remove *every* other password
            raise RotationError(
                f"smtp create_pending: cannot read the rotation state"
                f" {store.path(ctx.type_name).data} ({type(exc).__name__})"
            ) from None
        if state is None or state.last_success_at is None:
            return None
        return state.last_rotation_id

    def _hook_payload(
        self, pending: Mapping[str, Any], server: SmtpServer | None
    ) -> dict[str, Any]:
        return {
            "username": pending.get("username"),
            "credential_id": pending.get("credential_id"),
            "previous_username": pending.get("previous_username"),
            "previous_credential_id": pending.get("previous_credential_id"),
            "smtp_host": server.host if server else None,
            "smtp_port": server.port if server else None,
        }

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts = self._opts(ctx, "apply")
        data, _ = await self._consumer(ctx, "apply")
        server = self._server(ctx, opts, data, "apply")
        password = str(pending["password"])
        if pending.get("provider") == "ses":
            keys, _ = await self._ses_keys(ctx, opts, server, "apply")
            keys.user = str(pending["iam_user"])
            key_id = str(pending["access_key_id"])
            await activate_key("smtp apply", keys, key_id)
        else:
            self._require_hook(opts, "apply")
            payload = {**self._hook_payload(pending, server), "password": password}
            await run_hook(opts.hook, "apply", payload, limit=opts.hook_timeout, secrets=[password])
        ctx.log.info(
            "smtp: new credential set at the provider",
            extra={
                "type": ctx.type_name,
                "provider": pending.get("provider"),
                "username": pending.get("username"),
            },
        )

    @staticmethod
    def _require_hook(opts: SmtpOptions, step: str) -> None:
        if opts.provider != "hook" or not opts.hook:
            raise RotatorConfigError(
                f"smtp {step}: this rotation was started with provider hook, but option hook"
                " is not set any more"
            )

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts = self._opts(ctx, "verify")
        data, _ = await self._consumer(ctx, "verify")
        server = self._server(ctx, opts, data, "verify")
        username, password = str(pending["username"]), str(pending["password"])
        security = await self._login(server, username, password, opts.verify_timeout)
        ctx.log.info(
            "smtp: new credential works",
            extra={
                "type": ctx.type_name,
                "username": username,
                "smtp_host": server.where,
                "tls": security,
            },
        )

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        username, password = str(pending["username"]), str(pending["password"])
        return await promote_fields(
            ctx,
            {"smtp_username": username, "smtp_password": password},
            expect=("smtp_username", pending.get("previous_username")),
        )

    async def _in_use(self, ctx: RotationContext, username: str, password: str | None) -> bool:
        data, _ = await self._consumer(ctx, "rollback")
        if data.get("smtp_username") != username:
            return False
        return password is None or data.get("smtp_password") == password

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Remove the pending credential at the provider; never the one in use."""
        opts = self._opts(ctx, "rollback")
        data, _ = await self._consumer(ctx, "rollback")
        server = self._server(ctx, opts, data, "rollback")
        if await self._in_use(ctx, str(pending["username"]), str(pending["password"])):
            raise RotationError(
                f"smtp rollback: the pending credential is the one in {ctx.secret_path().data};"
                " not removing it"
            )
        if pending.get("provider") == "ses":
            keys, _ = await self._ses_keys(ctx, opts, server, "rollback")
            keys.user = str(pending["iam_user"])
            key_id = str(pending["access_key_id"])
            await aws_call(
                f"smtp rollback: deleting the pending key {key_id}",
                keys.target,
                lambda: keys.delete(key_id),
            )
        else:
            self._require_hook(opts, "rollback")
            await run_hook(
                opts.hook,
                "rollback",
                self._hook_payload(pending, server),
                limit=opts.hook_timeout,
                secrets=[str(pending["password"])],
            )
        ctx.log.info(
            "smtp: pending credential removed",
            extra={"type": ctx.type_name, "provider": pending.get("provider")},
        )

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        if pending.get("provider") == "ses":
            previous = pending.get("previous_access_key_id")
            if not previous:
                return None
            return {"provider": "ses", "access_key_id": previous, "iam_user": pending["iam_user"]}
        opts, _ = parse_smtp_options(ctx.options)
        if opts is None or not opts.retire_hook or not pending.get("previous_username"):
            return None
        return {
            "provider": "hook",
            "username": pending.get("previous_username"),
            "credential_id": pending.get("previous_credential_id"),
            "current_username": pending.get("username"),
            "current_credential_id": pending.get("credential_id"),
        }

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> None:
        opts = self._opts(ctx, "retire")
        data, _ = await self._consumer(ctx, "retire")
        server = self._server(ctx, opts, data, "retire")
        if retiring.get("provider") == "ses":
            key_id = str(retiring["access_key_id"])
            if data.get("smtp_username") == key_id:
                raise RotationError(
                    f"smtp retire: {key_id} is (again) the SMTP username in"
                    f" {ctx.secret_path().data}; not deleting its key"
                )
            keys, _ = await self._ses_keys(ctx, opts, server, "retire")
            keys.user = str(retiring["iam_user"])
            deleted = await aws_call(
                f"smtp retire: deleting the previous key {key_id} of {keys.user}",
                keys.target,
                lambda: keys.delete(key_id),
            )
            ctx.log.info(
                "smtp: previous SES key deleted",
                extra={"type": ctx.type_name, "access_key_id": key_id, "already_gone": not deleted},
            )
            return
        if not opts.retire_hook:
            return  # the retire hook was removed from the configuration since
        payload = {
            "username": retiring.get("username"),
            "credential_id": retiring.get("credential_id"),
            "current_username": retiring.get("current_username"),
            "current_credential_id": retiring.get("current_credential_id"),
            "smtp_host": server.host,
            "smtp_port": server.port,
        }
        password = str(data.get("smtp_password") or "")
        await run_hook(
            opts.retire_hook, "retire", payload, limit=opts.hook_timeout, secrets=[password]
        )
        ctx.log.info(
            "smtp: previous credential retired",
            extra={"type": ctx.type_name, "username": retiring.get("username")},
        )
