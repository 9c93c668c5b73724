"""IAM access keys for the rotators that own one: the ``aws`` type and the ``smtp``
type's ``ses`` provider (an SES SMTP password is derived from an access key).

- :class:`AwsOptions`   the AWS options (mapping key, IAM user, region, endpoint, who
  calls IAM, timeouts), validated like every rotator's options;
- :func:`aws_call`      a blocking boto3 call of ``targets/aws_iam.py`` through
  ``kit.blocking`` (no secret access key in any message);
- :func:`admin_creds`   who calls IAM: the key itself, boto3's chain, or an admin secret;
- the two-slot steps:   :func:`free_slot` (delete a safe leftover, else ask a person),
  :func:`create_key`, :func:`activate_key`, :func:`verify_key` (STS, retried while IAM
  is eventually consistent);
- :func:`key_usage`     who still uses a key, as ``iam:GetAccessKeyLastUsed`` records it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from ..clock import rfc3339
from ..targets.aws_iam import (
    DEFAULT_REGION,
    ENDPOINT_ENV,
    AwsApiError,
    AwsCreds,
    AwsTarget,
    IamUserKeys,
    KnownKeys,
    SlotsFull,
    creds_from_mapping,
    key_identity,
    user_from_arn,
)
from .base import (
    ActionRequired,
    CredentialUser,
    RotationContext,
    RotationError,
    RotatorConfigError,
    Usage,
)
from .kit import (
    RotatorOptions,
    admin_secret,
    blocking,
    one_of,
    rotation_state,
    scrub,
    seconds_from,
)

T = TypeVar("T")
KEY_ID = "access_key_id"  # of the pending and retiring data in the rotation state
IAM_CREDENTIAL_MODES = ("self", "default", "vault")


# ---------------------------------------------------------------------------- options
def non_empty(value: object) -> str | None:
    """A string option, stripped (None stays None)."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError("must be a non-empty string")
    return value.strip() if value else None


def _mapping_key(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must name the mapping inside the secret")
    return value


def _endpoint_url(value: object) -> str | None:
    url = non_empty(value) if value is not None else os.environ.get(ENDPOINT_ENV) or None
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError(f"(or ${ENDPOINT_ENV}) must be an http(s) URL")
    return url


#: an optional non-empty string option
Text = Annotated[str | None, BeforeValidator(non_empty)]


class AwsOptions(RotatorOptions):
    """``types.aws.options`` (and the AWS part of ``smtp`` with ``provider: ses``)."""

    error_prefix: ClassVar[str] = "aws {step}"

    key: Annotated[str, BeforeValidator(_mapping_key)] = "aws"
    iam_user: Text = None
    region: Text = None
    endpoint_url: Annotated[str | None, BeforeValidator(_endpoint_url)] = Field(
        None, validate_default=True
    )
    iam_credentials: Annotated[str, one_of(*IAM_CREDENTIAL_MODES)] = "self"
    iam_credentials_secret: Text = Field(None, validate_default=True)
    verify_timeout: Annotated[float, seconds_from(0, 900)] = 60.0
    timeout: Annotated[float, seconds_from(1, 120)] = 10.0
    #: a key whose last recorded use is older than this counts as idle (IAM keeps one
    #: last-use time per key, not who is connected now)
    idle_after: Annotated[float, seconds_from(0, 7 * 86400)] = 900.0

    @field_validator("iam_credentials_secret")
    @classmethod
    def _needed_with_vault(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("iam_credentials") == "vault":
            raise ValueError("is required with iam_credentials: vault")
        return value.strip("/") if value else None

    def target(self, region: str | None = None, timeout: float | None = None) -> AwsTarget:
        """Where AWS is (``region``: else option region, $AWS_REGION, us-east-1)."""
        return AwsTarget(
            self.region
            or region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION,
            self.endpoint_url,
            min(self.timeout, timeout or self.timeout),
        )


# ---------------------------------------------------------------------------- IAM calls
async def aws_call(
    what: str,
    fn: Callable[..., T],
    *args: Any,
    secrets: tuple[str | None, ...] = (),
    config: bool = False,
) -> T:
    """A blocking boto3 call (``targets/aws_iam.py``) through ``kit.blocking``: an
    :class:`AwsApiError` becomes a :class:`RotationError` naming ``what`` (a
    :class:`RotatorConfigError` with ``config``: nothing has changed yet). Neither
    ``secrets`` nor, for a method of :class:`IamUserKeys`, the secret of the
    credentials calling IAM appear in it."""
    keys = getattr(fn, "__self__", None)
    return await blocking(
        what,
        fn,
        *args,
        errors=(AwsApiError,),
        secrets=(*secrets, *(keys.secrets if isinstance(keys, IamUserKeys) else ())),
        raise_as=RotatorConfigError if config else RotationError,
    )


async def admin_creds(
    ctx: RotationContext, opts: AwsOptions, step: str, self_creds: AwsCreds | None
) -> AwsCreds | None:
    """The credentials that call IAM (None: boto3's default chain)."""
    if opts.iam_credentials == "default":
        return None
    if opts.iam_credentials == "self":
        if self_creds is None:
            raise RotatorConfigError(
                f"{ctx.type_name} {step}: there is no access key in Vault to rotate itself"
            )
        return self_creds
    assert opts.iam_credentials_secret is not None
    keys = ("aws_access_key", "aws_secret_key")
    return creds_from_mapping(await admin_secret(ctx, opts.iam_credentials_secret, step, keys))


# ---------------------------------------------------------------------------- two slots
async def free_slot(
    ctx: RotationContext,
    step: str,
    keys: IamUserKeys,
    current: str | None,
    *,
    delete: bool,
    require_current: bool = True,
) -> tuple[str | None, list[str]]:
    """:meth:`IamUserKeys.free_slot`, knowing the keys of the rotation state (unreadable:
    an error, never "none known"). A user whose two keys are both needed is
    :class:`ActionRequired`; an AWS error a configuration error (nothing changed)."""
    state = await rotation_state(ctx, step, "not deleting any access key")
    pending: set[str] = set()
    if state and state.in_progress and isinstance((state.pending or {}).get(KEY_ID), str):
        pending.add(str((state.pending or {})[KEY_ID]))
    retiring = {
        str(r.data[KEY_ID]): r.after
        for r in (state.retiring if state else [])
        if isinstance(r.data.get(KEY_ID), str)
    }
    known = KnownKeys(frozenset(pending), retiring)
    what = f"{ctx.type_name} {step}"
    try:
        args = (current, known, ctx.now(), delete, require_current)
        current, doomed = await aws_call(what, keys.free_slot, *args, config=True)
    except SlotsFull as exc:
        raise ActionRequired(str(exc)) from None
    for key_id in doomed if delete else ():
        ctx.log.info(
            "aws: deleted a leftover access key",
            extra={"iam_user": keys.user, "access_key_id": key_id, "type": ctx.type_name},
        )
    return current, doomed


async def create_key(
    ctx: RotationContext,
    step: str,
    keys: IamUserKeys,
    current: str | None,
    *,
    message: str,
    require_current: bool = True,
) -> tuple[AwsCreds, str | None]:
    """Free a slot (:func:`free_slot`, deleting a safe leftover), then
    ``iam:CreateAccessKey``: the only moment AWS returns the secret. Returns the new
    key and ``current`` (None if it is not one of the user's and need not be)."""
    current, _ = await free_slot(
        ctx, step, keys, current, delete=True, require_current=require_current
    )
    what = f"{ctx.type_name} {step}: iam:CreateAccessKey for {keys.user}"
    new = await aws_call(what, keys.create)
    ctx.log.info(
        message,
        extra={
            "type": ctx.type_name,
            "iam_user": keys.user,
            "access_key_id": new.access_key_id,
            "rotation_id": ctx.rotation_id,
        },
    )
    return new, current


async def activate_key(ctx: RotationContext, step: str, keys: IamUserKeys, key_id: str) -> None:
    """Idempotent: the pending key ``key_id`` still exists on the IAM user and is
    ``Active`` (re-activated if somebody deactivated it)."""
    what = f"{ctx.type_name} {step}"
    if not await aws_call(f"{what}: activating {key_id} of {keys.user}", keys.activate, key_id):
        raise RotationError(
            f"{what}: the pending key {key_id} no longer exists on IAM user {keys.user}"
            " (deleted outside the rotation)"
        )


async def verify_key(
    what: str, target: AwsTarget, creds: AwsCreds, user: str, within: float
) -> str:
    """``sts:GetCallerIdentity`` with ``creds`` until it works (at most ``within`` s)."""
    deadline, delay = time.monotonic() + within, 0.5
    secret = creds.secret_access_key
    call = f"{what}: sts:GetCallerIdentity with the new key {creds.access_key_id}"
    while True:
        arn, refused = await aws_call(call, key_identity, target, creds, secrets=(secret,))
        if arn is not None:
            break
        if time.monotonic() + delay > deadline:
            raise RotationError(f"{call}: {scrub(refused, secret)}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    if user_from_arn(arn) != user:
        raise RotationError(
            f"{what}: the new key {creds.access_key_id} authenticates as {arn}, not IAM user {user}"
        )
    return arn


# ---------------------------------------------------------------------------- who uses a key
#: what ``iam:GetAccessKeyLastUsed`` can and cannot tell (in every Usage.note)
LAST_USED_NOTE = (
    "as far as IAM has recorded: AWS updates a key's last use with a delay (up to hours),"
    " so no use since the promote means none recorded yet, and one client or many look alike"
)


async def key_usage(
    ctx: RotationContext,
    step: str,
    keys: IamUserKeys,
    key_id: str,
    since: datetime | None,
    idle_after: float,
) -> Usage:
    """Who uses ``key_id``: its last recorded use, if after ``since`` (the promote; None:
    any use) and within the last ``idle_after`` seconds (IAM keeps one last use per key,
    so a key last used before that is idle), as one :class:`CredentialUser` (service,
    region, when): ``count`` is 1 ("at least one"). A key that no longer exists has no
    users. An AWS error raises (never "idle")."""
    what = f"{ctx.type_name} {step}: iam:GetAccessKeyLastUsed for {key_id}"
    use = await aws_call(what, keys.last_use, key_id)
    if use is None:
        return Usage(key_id, users=(), note=f"no such key (deleted); {LAST_USED_NOTE}")
    quiet = ctx.now() - timedelta(seconds=idle_after)  # the engine's clock
    if use.when is None or (since is not None and use.when <= since) or use.when <= quiet:
        last = "never used" if use.when is None else f"last used {rfc3339(use.when, ms=False)}"
        return Usage(key_id, users=(), note=f"{last}; {LAST_USED_NOTE}")
    where = f" in {use.region}" if use.region else ""
    user = CredentialUser(
        1, application=use.service, detail=f"last used {rfc3339(use.when, ms=False)}{where}"
    )
    return Usage(key_id, users=(user,), note=LAST_USED_NOTE)
