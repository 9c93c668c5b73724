"""SMTP credentials (``smtp_username``/``smtp_password`` of ``maily/data/config``).

The provider that issues the credentials is pluggable (``options.provider``):

``ses``   Amazon SES. An SES SMTP password is derived from an IAM access key by AWS's
          published algorithm (:func:`ses_smtp_password`); the SMTP username is the
          access key id. The IAM user (``iam_user``, which needs ``ses:SendRawEmail``)
          holds up to two keys: that is the grace period, as for the ``aws`` type, and
          the same two-slot rules apply (see ``rotators/aws.py``): the key is created in
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
    # provider: ses (the AWS options of the aws type, see rotators/aws.py)
    iam_user: maily-ses-smtp           # required
    region: eu-west-1                  # default: from smtp_host email-smtp.<region>.amazonaws.com
    iam_credentials: default           # default (boto3's chain) or vault (+ iam_credentials_secret)
    endpoint_url: ...                  # a stand-in only
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BeforeValidator, ValidationInfo, field_validator

from ...targets import random_password
from ...targets.aws_iam import IamUserKeys, region_of_ses_host, ses_smtp_password
from ...targets.smtp import SmtpServer, login_check
from ..base import (
    ActionRequired,
    Adoption,
    RotationContext,
    RotationError,
    Rotator,
    RotatorConfigError,
    Usage,
)
from ..iam_keys import (
    AwsOptions,
    Text,
    activate_key,
    admin_creds,
    aws_call,
    create_key,
    free_slot,
    non_empty,
)
from ..kit import (
    PasswordLength,
    RotatorOptions,
    blocking,
    in_use,
    one_of,
    promote_fields,
    rotation_state,
    scrub,
    seconds_from,
)

PROVIDERS = ("ses", "hook")
TLS_MODES = ("auto", "starttls", "implicit", "none")
HOOK_ACTIONS = ("apply", "rollback", "retire")
# what a hook reads besides username and credential_id: the previous (apply, rollback)
# or the current (retire) credential
PREVIOUS = ("previous_username", "previous_credential_id")
CURRENT = ("current_username", "current_credential_id")
P = TypeVar("P", bound="SmtpOptions")
# never inherited by a hook: Vault tokens and the like, AWS secrets
_HOOK_ENV_DROP_PREFIXES = ("VAULT_", "BAO_", "MAILY_SECRETS_")
_HOOK_ENV_DROP = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MAILY_DEV_PG_PASSWORD"})


# ---------------------------------------------------------------------------- SMTP login
class SmtpError(RotationError):
    """An SMTP connection or login failed (message without any secret)."""


def smtp_session(
    server: SmtpServer, username: str | None = None, password: str | None = None
) -> str:
    """Blocking :func:`~maily_secrets.targets.smtp.login_check`: failures are SmtpError."""
    return login_check(server, username, password, fail=SmtpError)


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
def _provider(value: object) -> str:
    if value not in PROVIDERS:
        raise ValueError(
            f"must be one of {', '.join(PROVIDERS)}"
            + ("" if value is None else f" (got {value!r})")
        )
    return str(value)


def _cafile(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not os.path.isfile(value)):
        raise ValueError(f"{value!r} is not a readable file")
    return value


def _command(value: object) -> tuple[str, ...]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(a, str) and a for a in value)
    ):
        raise ValueError(
            "must be a command as a list of strings (argv; no shell), e.g."
            " [/usr/local/bin/smtp-password, --domain, example.com]"
        )
    cmd = value[0]
    if not (
        os.path.isfile(cmd) and os.access(cmd, os.X_OK) if os.sep in cmd else shutil.which(cmd)
    ):
        raise ValueError(f"{cmd!r} is not an executable file")
    return tuple(value)


#: seconds from 0 to 900; less than 1 is 1
Timeout = Annotated[float, seconds_from(0, 900), AfterValidator(lambda v: max(1.0, v))]


class SmtpOptions(RotatorOptions):
    """``types.smtp.options`` of both providers (see :class:`HookOptions`, :class:`SesOptions`)."""

    error_prefix: ClassVar[str] = "smtp {step}"

    provider: Annotated[str, BeforeValidator(_provider)]
    tls: Annotated[str, one_of(*TLS_MODES)] = "auto"
    cafile: Annotated[str | None, BeforeValidator(_cafile)] = None
    verify_timeout: Annotated[float, seconds_from(0, 900)] = 30.0
    smtp_timeout: Timeout = 10.0


class HookOptions(SmtpOptions):
    """``provider: hook``: the command that sets a password at the provider."""

    hook: Annotated[tuple[str, ...], BeforeValidator(_command)]
    retire_hook: tuple[str, ...] = ()
    hook_timeout: Timeout = 30.0
    username: Text = None
    password_length: PasswordLength = 32

    @field_validator("retire_hook", mode="before")
    @classmethod
    def _retire_hook(cls, value: object, info: ValidationInfo) -> tuple[str, ...]:
        if value is True:
            return tuple(info.data.get("hook") or ())
        return () if value in (None, False) else _command(value)


class SesOptions(SmtpOptions, AwsOptions):
    """``provider: ses``: the AWS options of the ``aws`` type, ``iam_user`` required and
    IAM called with boto3's chain or an admin secret (never the SMTP key itself)."""

    iam_user: Annotated[str, BeforeValidator(non_empty)]
    iam_credentials: Annotated[str, one_of("default", "vault")] = "default"


def smtp_options(ctx: RotationContext, step: str) -> HookOptions | SesOptions:
    """The options of the configured provider (none configured: only a person can)."""
    provider = ctx.options.get("provider")
    if provider is None:
        raise ActionRequired(
            "no SMTP provider is configured (types.smtp.options.provider: ses or hook):"
            " change the SMTP password at the provider by hand, then smtp_username/"
            f"smtp_password in {ctx.secret_path().data}"
        )
    if provider == "ses":
        return SesOptions.of(ctx, step)
    if provider == "hook":
        return HookOptions.of(ctx, step)
    _, problems = SmtpOptions.problems({"provider": provider})
    raise RotatorConfigError(f"smtp {step}: {'; '.join(problems)}")


# ---------------------------------------------------------------------------- the rotator
class SmtpRotator(Rotator):
    """``smtp``: new SMTP credentials from the provider, verified by logging in, promoted."""

    type_name = "smtp"
    two_slots = True

    # -- configuration and Vault -------------------------------------------------------
    async def _setup(
        self, ctx: RotationContext, step: str
    ) -> tuple[HookOptions | SesOptions, dict[str, Any], SmtpServer]:
        """The options, the consumer secret, and the SMTP server it names."""
        opts = smtp_options(ctx, step)
        data, _ = await ctx.read_secret(step=step)
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
        return opts, data, SmtpServer(host, port, opts.tls, opts.cafile, opts.smtp_timeout)

    async def _ses_keys(
        self, ctx: RotationContext, opts: SesOptions, server: SmtpServer, step: str, user: str = ""
    ) -> tuple[IamUserKeys, str]:
        """The IAM user's keys (``user``: of the rotation) and the SES region."""
        region = opts.region or region_of_ses_host(server.host)
        if region is None:
            raise RotatorConfigError(
                f"smtp {step}: option region is not set and smtp_host {server.host} is not"
                " email-smtp.<region>.amazonaws.com (the SES SMTP password depends on the region)"
            )
        admin = await admin_creds(ctx, opts, step, None)
        return IamUserKeys(opts.target(region), admin, user or opts.iam_user), region

    @staticmethod
    def _started_with(kind: type[P], opts: HookOptions | SesOptions, step: str) -> P:
        """The options, of the provider the rotation was started with."""
        if not isinstance(opts, kind):
            started = "ses" if kind is SesOptions else "hook"
            raise RotatorConfigError(
                f"smtp {step}: this rotation was started with provider {started}, but option"
                f" provider is {opts.provider} now"
            )
        return opts

    async def _login(self, server: SmtpServer, username: str, password: str, within: float) -> str:
        deadline = time.monotonic() + within
        delay = 0.5
        while True:
            try:
                return await blocking(
                    "smtp verify",
                    smtp_session,
                    server,
                    username,
                    password,
                    errors=(SmtpError,),
                    secrets=(password,),
                    raise_as=SmtpError,
                )
            except SmtpError:
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- the protocol ----------------------------------------------------------------
    async def check(self, ctx: RotationContext) -> None:
        opts, data, server = await self._setup(ctx, "check")
        if isinstance(opts, HookOptions) and not (opts.username or data.get("smtp_username")):
            raise RotatorConfigError(
                f"smtp check: no SMTP username: set option username or smtp_username in"
                f" {ctx.secret_path().data}"
            )
        if isinstance(opts, SesOptions):
            keys, _ = await self._ses_keys(ctx, opts, server, "check")
            current = str(data.get("smtp_username") or "") or None
            await free_slot(ctx, "check", keys, current, delete=False, require_current=False)
        await blocking(
            "smtp check", smtp_session, server, errors=(SmtpError,), raise_as=RotatorConfigError
        )

    async def describe(self, ctx: RotationContext) -> str:
        try:
            opts, _, server = await self._setup(ctx, "describe")
        except RotationError as exc:
            return f"cannot rotate smtp: {exc}"
        where = f"{ctx.secret_path().data} (smtp_username/smtp_password)"
        if isinstance(opts, SesOptions):
            return (
                f"create an IAM access key for {opts.iam_user}, derive its SES SMTP password,"
                f" log in at {server.where}, write {where}; the old key is deleted after"
                f" {ctx.grace}"
            )
        return (
            f"set a new password through the hook {os.path.basename(opts.hook[0])}, log in at"
            f" {server.where}, write {where}"
            + (f"; the old one is retired after {ctx.grace}" if opts.retire_hook else "")
        )

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        opts, data, server = await self._setup(ctx, "create_pending")
        previous_username = str(data.get("smtp_username") or "") or None
        if isinstance(opts, SesOptions):
            keys, region = await self._ses_keys(ctx, opts, server, "create_pending")
            new, previous_key = await create_key(
                ctx,
                "create_pending",
                keys,
                previous_username,
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
        # the rotation id that made the credential in use (None: not made by a rotation);
        # never guessed: None tells the retire hook to remove *every* other password
        state = await rotation_state(ctx, "create_pending")
        made_by = state.last_rotation_id if state and state.last_success_at else None
        return {
            "provider": "hook",
            "username": username,
            "password": random_password(opts.password_length),
            "credential_id": ctx.rotation_id,
            "previous_username": previous_username,
            "previous_credential_id": made_by,
        }

    @staticmethod
    def _payload(credential: Mapping[str, Any], server: SmtpServer, *keys: str) -> dict[str, Any]:
        """What a hook reads on stdin: ``keys`` of the pending/retiring data, the server."""
        return {
            **{k: credential.get(k) for k in ("username", "credential_id", *keys)},
            "smtp_host": server.host,
            "smtp_port": server.port,
        }

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts, _, server = await self._setup(ctx, "apply")
        password = str(pending["password"])
        if pending.get("provider") == "ses":
            ses = self._started_with(SesOptions, opts, "apply")
            keys, _ = await self._ses_keys(ctx, ses, server, "apply", str(pending["iam_user"]))
            await activate_key(ctx, "apply", keys, str(pending["access_key_id"]))
        else:
            hook = self._started_with(HookOptions, opts, "apply")
            payload = {**self._payload(pending, server, *PREVIOUS), "password": password}
            await run_hook(hook.hook, "apply", payload, limit=hook.hook_timeout, secrets=[password])
        ctx.log.info(
            "smtp: new credential set at the provider",
            extra={
                "type": ctx.type_name,
                "provider": pending.get("provider"),
                "username": pending.get("username"),
            },
        )

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts, _, server = await self._setup(ctx, "verify")
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

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Remove the pending credential at the provider; never the one in use."""
        opts, _, server = await self._setup(ctx, "rollback")
        password = str(pending["password"])
        if await in_use(
            ctx,
            "rollback",
            "smtp_password",
            lambda current: current == password,
            unknown="not removing the pending credential",
            what="pending credential",
        ):
            raise RotationError(
                f"smtp rollback: the pending credential is the one in {ctx.secret_path().data};"
                " not removing it"
            )
        if pending.get("provider") == "ses":
            ses = self._started_with(SesOptions, opts, "rollback")
            keys, _ = await self._ses_keys(ctx, ses, server, "rollback", str(pending["iam_user"]))
            key_id = str(pending["access_key_id"])
            await aws_call(f"smtp rollback: deleting the pending key {key_id}", keys.delete, key_id)
        else:
            hook = self._started_with(HookOptions, opts, "rollback")
            payload = self._payload(pending, server, *PREVIOUS)
            await run_hook(
                hook.hook, "rollback", payload, limit=hook.hook_timeout, secrets=[password]
            )
        ctx.log.info(
            "smtp: pending credential removed",
            extra={"type": ctx.type_name, "provider": pending.get("provider")},
        )

    async def usage(
        self,
        ctx: RotationContext,
        retiring: Mapping[str, Any] | None,
        since: datetime | None = None,
    ) -> Adoption | None:
        """Not observable: an SMTP provider does not tell the rotator which clients log in
        with which password (one username, two passwords during the grace)."""
        data, _ = await ctx.read_secret(step="usage")
        note = (
            "the SMTP provider does not report which clients log in with which credential;"
            " retire after the grace period (adapters.smtp_sender switches on the next"
            " connection)"
        )
        current = Usage(str(data.get("smtp_username") or "smtp"), observable=False, note=note)
        previous = None
        if retiring:
            name = retiring.get("username") or retiring.get("access_key_id") or "previous"
            previous = Usage(f"{name} (previous)", observable=False, note=note)
        return Adoption(current, previous)

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        if pending.get("provider") == "ses":
            previous = pending.get("previous_access_key_id")
            if not previous:
                return None
            return {"provider": "ses", "access_key_id": previous, "iam_user": pending["iam_user"]}
        opts, _ = HookOptions.problems(ctx.options)
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
        opts, data, server = await self._setup(ctx, "retire")
        if retiring.get("provider") == "ses":
            ses = self._started_with(SesOptions, opts, "retire")
            key_id = str(retiring["access_key_id"])
            if await in_use(
                ctx,
                "retire",
                "smtp_username",
                lambda current: current == key_id,
                unknown="not deleting any SES key",
                what="SES key",
                extra={"access_key_id": key_id},
            ):
                raise RotationError(
                    f"smtp retire: {key_id} is (again) the SMTP username in"
                    f" {ctx.secret_path().data}; not deleting its key"
                )
            keys, _ = await self._ses_keys(ctx, ses, server, "retire", str(retiring["iam_user"]))
            deleted = await aws_call(
                f"smtp retire: deleting the previous key {key_id} of {keys.user}",
                keys.delete,
                key_id,
            )
            ctx.log.info(
                "smtp: previous SES key deleted",
                extra={"type": ctx.type_name, "access_key_id": key_id, "already_gone": not deleted},
            )
            return
        if not isinstance(opts, HookOptions) or not opts.retire_hook:
            return  # the retire hook was removed from the configuration since
        payload = self._payload(retiring, server, *CURRENT)
        password = str(data.get("smtp_password") or "")
        await run_hook(
            opts.retire_hook, "retire", payload, limit=opts.hook_timeout, secrets=[password]
        )
        ctx.log.info(
            "smtp: previous credential retired",
            extra={"type": ctx.type_name, "username": retiring.get("username")},
        )
