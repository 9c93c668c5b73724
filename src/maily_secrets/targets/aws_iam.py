"""AWS IAM, where the ``aws`` credentials (and SES SMTP credentials) live: one IAM
user's access keys through plain boto3 (list, create, activate, delete, last used),
``sts:GetCallerIdentity`` to verify a key, and the two-slot rules both the ``aws``
and the ``smtp`` (``ses``) rotators follow: when a third key may replace a leftover
(:func:`free_slot`), and who calls IAM (:func:`admin_creds`).

Nothing here logs or raises with a secret access key: errors carry AWS's error code
and message (which never echo a secret) and key *ids*, which AWS does not treat as
secret. botocore's DEBUG wire logs are silenced (:func:`silence_wire_debug`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from ..errors import PermissionDenied, SecretNotFound, VaultError
from ..rotation.base import ActionRequired, RotationContext, RotationError, RotatorConfigError
from ..rotation.state import StateStore

ENDPOINT_ENV = "MAILY_AWS_ENDPOINT_URL"
DEFAULT_REGION = "us-east-1"
IAM_CREDENTIAL_MODES = ("self", "default", "vault")
# errors that mean "this key does not work (yet)": IAM is eventually consistent
NOT_YET_VALID = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "AuthFailure",
        "InvalidAccessKeyId",
    }
)
T = TypeVar("T")


# ---------------------------------------------------------------------------- boto3
def _boto3() -> Any:
    try:
        import boto3  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - boto3 is a dependency
        raise RotatorConfigError(
            "boto3 is not installed (pip install boto3): AWS keys cannot be rotated"
        ) from None
    return boto3


def scrub(text: str, *values: str | None) -> str:
    """One line of an error text without any of ``values`` (at most 300 characters)."""
    line = " ".join(str(text).split())
    for v in values:
        if v:
            line = line.replace(v, "******")
    return line[:300]


@dataclass(frozen=True)
class AwsCreds:
    """An access key; the secret never appears in a repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AwsTarget:
    """Where AWS is: region, endpoint (a stand-in), timeouts."""

    region: str
    endpoint_url: str | None
    timeout: float

    def describe(self) -> str:
        return self.endpoint_url or f"AWS ({self.region})"


class AwsApiError(RotationError):
    """An AWS API call failed; ``code`` is AWS's error code (or a botocore class name)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class _NoWireDebug(logging.Filter):
    """Drop botocore's DEBUG wire records: ``botocore.parsers`` logs whole response bodies
    at DEBUG, and the body of ``CreateAccessKey`` holds the new secret access key."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO


_WIRE_LOGGERS = ("botocore.parsers", "botocore.endpoint", "botocore.awsrequest", "botocore.auth")
_wire_filter = _NoWireDebug()


def silence_wire_debug() -> None:
    """Idempotent: a secret must not reach a log even with --log-level=debug."""
    for name in _WIRE_LOGGERS:
        lg = logging.getLogger(name)
        if _wire_filter not in lg.filters:
            lg.addFilter(_wire_filter)


def _client(service: str, target: AwsTarget, creds: AwsCreds | None) -> Any:
    boto3 = _boto3()
    silence_wire_debug()
    from botocore.config import Config  # type: ignore[import-untyped]

    kw: dict[str, Any] = {
        "region_name": target.region,
        "config": Config(
            connect_timeout=max(1.0, target.timeout / 2),
            read_timeout=target.timeout,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    }
    if target.endpoint_url:
        kw["endpoint_url"] = target.endpoint_url
    if creds is not None:
        kw["aws_access_key_id"] = creds.access_key_id
        kw["aws_secret_access_key"] = creds.secret_access_key
        if creds.session_token:
            kw["aws_session_token"] = creds.session_token
    # a fresh session: nothing of the caller's default session (profile...) leaks in
    return boto3.session.Session().client(service, **kw)


def _translate(what: str, exc: BaseException, target: AwsTarget, *secrets: str | None) -> Exception:
    from botocore import exceptions as bx  # type: ignore[import-untyped]

    if isinstance(exc, bx.ClientError):
        err = (getattr(exc, "response", None) or {}).get("Error") or {}
        code = str(err.get("Code") or "ClientError")
        msg = scrub(str(err.get("Message") or ""), *secrets)
        return AwsApiError(f"{what}: {code}: {msg}" if msg else f"{what}: {code}", code)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return RotatorConfigError(f"{what}: no AWS credentials found ({type(exc).__name__})")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return AwsApiError(f"{what}: cannot reach {target.describe()}", type(exc).__name__)
    if isinstance(exc, bx.ReadTimeoutError):
        return AwsApiError(f"{what}: {target.describe()} did not answer in time", "Timeout")
    if isinstance(exc, bx.BotoCoreError):
        return AwsApiError(f"{what}: {type(exc).__name__}: {scrub(str(exc), *secrets)}")
    if isinstance(exc, ValueError):  # e.g. a malformed endpoint_url
        return RotatorConfigError(f"{what}: {scrub(str(exc), *secrets)}")
    if isinstance(exc, OSError):
        return AwsApiError(f"{what}: {type(exc).__name__}: {scrub(str(exc), *secrets)}")
    raise exc


async def aws_call(what: str, target: AwsTarget, fn: Callable[[], T], *secrets: str | None) -> T:
    """Run a blocking boto3 call in a thread; botocore errors -> AwsApiError (no secrets)."""

    def run() -> T:
        try:
            return fn()
        except Exception as exc:
            raise _translate(what, exc, target, *secrets) from None

    return await asyncio.to_thread(run)


def user_from_arn(arn: str) -> str | None:
    """``arn:aws:iam::123:user/path/name`` -> ``name``; None for roles, root, others."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "iam" or not parts[5].startswith("user/"):
        return None
    return parts[5].rsplit("/", 1)[-1] or None


@dataclass(frozen=True)
class AccessKey:
    id: str
    status: str
    created: datetime | None


class IamUserKeys:
    """Blocking IAM operations on one user's access keys (use through ``aws_call``)."""

    def __init__(self, target: AwsTarget, creds: AwsCreds | None, user: str) -> None:
        self.target, self.creds, self.user = target, creds, user

    def _iam(self) -> Any:
        return _client("iam", self.target, self.creds)

    def list(self) -> list[AccessKey]:
        out: list[AccessKey] = []
        pages = self._iam().get_paginator("list_access_keys").paginate(UserName=self.user)
        for page in pages:
            for k in page.get("AccessKeyMetadata") or []:
                created = k.get("CreateDate")
                out.append(
                    AccessKey(
                        str(k["AccessKeyId"]),
                        str(k.get("Status") or ""),
                        created if isinstance(created, datetime) else None,
                    )
                )
        return out

    def last_used(self, key_id: str) -> tuple[datetime | None, str]:
        r = self._iam().get_access_key_last_used(AccessKeyId=key_id)
        info = r.get("AccessKeyLastUsed") or {}
        when = info.get("LastUsedDate")
        return (when if isinstance(when, datetime) else None), str(info.get("ServiceName") or "")

    def create(self) -> AwsCreds:
        r = self._iam().create_access_key(UserName=self.user)
        k = r["AccessKey"]
        return AwsCreds(str(k["AccessKeyId"]), str(k["SecretAccessKey"]))

    def set_status(self, key_id: str, status: str) -> None:
        self._iam().update_access_key(UserName=self.user, AccessKeyId=key_id, Status=status)

    def delete(self, key_id: str) -> bool:
        """Deactivate, then delete. False when the key was already gone."""
        iam = self._iam()
        try:
            iam.update_access_key(UserName=self.user, AccessKeyId=key_id, Status="Inactive")
            iam.delete_access_key(UserName=self.user, AccessKeyId=key_id)
        except iam.exceptions.NoSuchEntityException:
            return False
        return True


def caller_arn(target: AwsTarget, creds: AwsCreds | None) -> str:
    """Blocking: ``sts:GetCallerIdentity`` (always allowed, needs no IAM permission)."""
    return str(_client("sts", target, creds).get_caller_identity()["Arn"])


# ---------------------------------------------------------------------------- options
@dataclass(frozen=True)
class AwsOptions:
    iam_user: str | None
    region: str | None
    endpoint_url: str | None
    iam_credentials: str
    iam_credentials_secret: str | None
    verify_timeout: float
    timeout: float
    key: str = "aws"


def _number(
    o: Mapping[str, Any], name: str, default: float, lo: float, hi: float, problems: list[str]
) -> float:
    raw = o.get(name, default)
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
        if not lo <= value <= hi:
            raise ValueError
    except (TypeError, ValueError):
        problems.append(f"option {name} must be a number of seconds from {lo:g} to {hi:g}")
        return default
    return value


def _text(o: Mapping[str, Any], name: str, problems: list[str]) -> str | None:
    raw = o.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        problems.append(f"option {name} must be a non-empty string")
        return None
    return raw.strip()


def parse_aws_options(
    o: Mapping[str, Any], *, default_credentials: str = "self", allow_self: bool = True
) -> tuple[AwsOptions | None, list[str]]:
    """The AWS part of a type's options (shared by ``aws`` and ``smtp`` with ``ses``)."""
    problems: list[str] = []
    key = o.get("key", "aws")
    if not isinstance(key, str) or not key:
        problems.append("option key must name the mapping inside the secret")
        key = "aws"
    iam_user = _text(o, "iam_user", problems)
    region = _text(o, "region", problems)
    endpoint = _text(o, "endpoint_url", problems)
    if endpoint is None:
        endpoint = os.environ.get(ENDPOINT_ENV) or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        problems.append("option endpoint_url (or $MAILY_AWS_ENDPOINT_URL) must be an http(s) URL")
    modes = (
        IAM_CREDENTIAL_MODES
        if allow_self
        else tuple(m for m in IAM_CREDENTIAL_MODES if m != "self")
    )
    mode = o.get("iam_credentials", default_credentials)
    if mode not in modes:
        problems.append(f"option iam_credentials must be one of {', '.join(modes)}")
        mode = default_credentials
    secret = _text(o, "iam_credentials_secret", problems)
    if mode == "vault" and secret is None:
        problems.append("option iam_credentials_secret is required with iam_credentials: vault")
    verify_timeout = _number(o, "verify_timeout", 60.0, 0.0, 900.0, problems)
    timeout = _number(o, "timeout", 10.0, 1.0, 120.0, problems)
    if problems:
        return None, problems
    return (
        AwsOptions(
            iam_user=iam_user,
            region=region,
            endpoint_url=endpoint,
            iam_credentials=str(mode),
            iam_credentials_secret=secret.strip("/") if secret else None,
            verify_timeout=verify_timeout,
            timeout=timeout,
            key=key,
        ),
        [],
    )


def creds_from_mapping(data: Mapping[str, Any]) -> AwsCreds | None:
    akid, secret = data.get("aws_access_key"), data.get("aws_secret_key")
    if not isinstance(akid, str) or not akid or not isinstance(secret, str) or not secret:
        return None
    token = data.get("aws_session_token")
    return AwsCreds(akid, secret, token if isinstance(token, str) and token else None)


async def admin_creds(
    ctx: RotationContext, opts: AwsOptions, what: str, self_creds: AwsCreds | None
) -> AwsCreds | None:
    """The credentials that call IAM (None: boto3's default chain)."""
    if opts.iam_credentials == "default":
        return None
    if opts.iam_credentials == "self":
        if self_creds is None:
            raise RotatorConfigError(f"{what}: there is no access key in Vault to rotate itself")
        return self_creds
    assert opts.iam_credentials_secret is not None
    path = ctx.secret_path(opts.iam_credentials_secret)
    try:
        data = (await ctx.client.kv.read(path)).data
    except SecretNotFound:
        raise RotatorConfigError(
            f"{what}: the IAM credentials secret {path.data} does not exist"
        ) from None
    except PermissionDenied:
        raise RotatorConfigError(
            f"{what}: this token may not read the IAM credentials secret {path.data}"
        ) from None
    creds = creds_from_mapping(data)
    if creds is None:
        raise RotatorConfigError(
            f"{what}: the IAM credentials secret {path.data} lacks aws_access_key/aws_secret_key"
        )
    return creds


# ---------------------------------------------------------------------------- two slots
@dataclass(frozen=True)
class KnownKeys:
    """Keys the engine's state knows: the pending key of a rotation in progress and the
    previous keys kept for their grace period (id -> end of grace)."""

    pending: frozenset[str] = frozenset()
    retiring: Mapping[str, datetime] = field(default_factory=dict)


async def known_keys(ctx: RotationContext, what: str, id_field: str = "access_key_id") -> KnownKeys:
    """The keys the rotation state knows. A state that cannot be read is an error, never
    "no keys known": that would make the pending key of a rotation in progress, or a
    previous key in its grace period, look like a leftover to delete."""
    store = StateStore(ctx.client, ctx.kv_mount, ctx.env.env.state_prefix)
    try:
        state, _ = await store.read(ctx.type_name)
    except (VaultError, ValueError) as exc:
        raise RotationError(
            f"{what}: cannot read the rotation state {store.path(ctx.type_name).data}"
            f" ({type(exc).__name__}); not deleting any access key"
        ) from None
    if state is None:
        return KnownKeys()
    pending: set[str] = set()
    if state.in_progress and state.pending and isinstance(state.pending.get(id_field), str):
        pending.add(str(state.pending[id_field]))
    retiring = {
        str(r.data[id_field]): r.after
        for r in state.retiring
        if isinstance(r.data.get(id_field), str)
    }
    return KnownKeys(frozenset(pending), retiring)


def _two(user: str, current: str | None, other: str) -> str:
    both = f"{current} (in Vault) and {other}" if current else f"{other} and another"
    return f"IAM user {user} already holds two access keys: {both}"


async def free_slot(
    what: str,
    ctx: RotationContext,
    keys: IamUserKeys,
    current: str | None,
    *,
    delete: bool,
    require_current: bool = True,
) -> list[str]:
    """Make sure the IAM user can take one more key.

    With two keys already, the one that is not ``current`` may be deleted when that is
    safe: it is inactive, was never used, or is the previous key of an earlier rotation
    whose grace period is over. Otherwise raise ``ActionRequired`` (nothing changed).
    Returns the ids deleted (``delete=False``: that would be deleted; used by ``check``).
    ``current`` must be one of the user's keys, unless ``require_current`` is false (then
    a ``current`` that is not is ignored: e.g. SMTP credentials not made by this rotator).
    """
    listed = await aws_call(f"{what}: iam:ListAccessKeys for {keys.user}", keys.target, keys.list)
    if current is not None and current not in {k.id for k in listed}:
        if not require_current:
            current = None
        else:
            raise RotatorConfigError(
                f"{what}: the access key in Vault ({current}) is not one of IAM user {keys.user}'s"
            )
    if len(listed) < 2:
        return []
    known = await known_keys(ctx, what)
    others = [k for k in listed if k.id != current]
    doomed: list[str] = []
    for k in others:
        if k.id in known.pending:
            raise ActionRequired(
                f"{_two(keys.user, current, k.id)}, the pending key of a rotation in"
                " progress; rerun the rotation to resume it"
            )
        after = known.retiring.get(k.id)
        if after is not None:
            if after > ctx.now():
                raise ActionRequired(
                    f"{_two(keys.user, current, k.id)}, the previous key, in its grace period until"
                    f" {after:%Y-%m-%d %H:%M:%S} UTC; rotate after that (or delete {k.id} by hand"
                    " if nobody uses it)"
                )
            doomed.append(k.id)
            continue
        if k.status != "Active":
            doomed.append(k.id)
            continue
        used, service = await aws_call(
            f"{what}: iam:GetAccessKeyLastUsed",
            keys.target,
            functools.partial(keys.last_used, k.id),
        )
        if used is None:
            doomed.append(k.id)  # never used: e.g. made by a run that died before saving it
            continue
        raise ActionRequired(
            f"{_two(keys.user, current, k.id)}, which is active and was last used"
            f" {used:%Y-%m-%d %H:%M} UTC"
            f"{f' ({service})' if service else ''} but is unknown to the rotator; deactivate or"
            f" delete it (aws iam delete-access-key --user-name {keys.user} --access-key-id"
            f" {k.id}) and rotate again"
        )
    if delete:
        for key_id in doomed:
            await aws_call(
                f"{what}: deleting leftover key {key_id} of {keys.user}",
                keys.target,
                functools.partial(keys.delete, key_id),
            )
            ctx.log.info(
                "aws: deleted a leftover access key",
                extra={"iam_user": keys.user, "access_key_id": key_id, "type": ctx.type_name},
            )
    return doomed


async def create_key(
    what: str,
    ctx: RotationContext,
    keys: IamUserKeys,
    current: str | None,
    *,
    message: str,
    require_current: bool = True,
) -> AwsCreds:
    """Free a slot (:func:`free_slot`, deleting a safe leftover), then
    ``iam:CreateAccessKey``: the only moment AWS returns the secret. A failure before
    the key is made is a configuration error (nothing that matters changed)."""
    try:
        await free_slot(what, ctx, keys, current, delete=True, require_current=require_current)
    except AwsApiError as exc:  # before anything that matters changed
        raise RotatorConfigError(str(exc)) from None
    new = await aws_call(f"{what}: iam:CreateAccessKey for {keys.user}", keys.target, keys.create)
    ctx.log.info(
        message,
        extra={
            "type": ctx.type_name,
            "iam_user": keys.user,
            "access_key_id": new.access_key_id,
            "rotation_id": ctx.rotation_id,
        },
    )
    return new


async def activate_key(what: str, keys: IamUserKeys, key_id: str) -> None:
    """Idempotent: the pending key ``key_id`` still exists on the IAM user and is
    ``Active`` (re-activated if somebody deactivated it)."""
    listed = await aws_call(f"{what}: iam:ListAccessKeys for {keys.user}", keys.target, keys.list)
    found = next((k for k in listed if k.id == key_id), None)
    if found is None:
        raise RotationError(
            f"{what}: the pending key {key_id} no longer exists on IAM user {keys.user}"
            " (deleted outside the rotation)"
        )
    if found.status != "Active":
        await aws_call(
            f"{what}: activating {key_id}",
            keys.target,
            lambda: keys.set_status(key_id, "Active"),
        )


async def verify_key(
    what: str, target: AwsTarget, creds: AwsCreds, user: str, within: float
) -> str:
    """``sts:GetCallerIdentity`` with ``creds`` until it works (at most ``within`` s)."""
    deadline = time.monotonic() + within
    delay = 0.5
    while True:
        try:
            arn = await aws_call(
                f"{what}: sts:GetCallerIdentity with the new key {creds.access_key_id}",
                target,
                lambda: caller_arn(target, creds),
                creds.secret_access_key,
            )
            break
        except AwsApiError as exc:
            if exc.code not in NOT_YET_VALID or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    owner = user_from_arn(arn)
    if owner != user:
        raise RotationError(
            f"{what}: the new key {creds.access_key_id} authenticates as {arn}, not IAM user {user}"
        )
    return arn
