"""AWS IAM, where the ``aws`` credentials (and SES SMTP credentials) live: one IAM
user's access keys through plain boto3 (list, create, activate, delete, last used),
``sts:GetCallerIdentity`` to verify a key, and the SES SMTP password of a key. The
two-slot rules the ``aws`` and the ``smtp`` (``ses``) rotators follow (which key may
be deleted, :meth:`IamUserKeys.free_slot`) take what the rotation state knows as an
argument; the rotators own the rest (``rotation/rotators/aws.py``).

The IAM/STS calls block (call them through ``kit.blocking``) and raise
:class:`AwsApiError` or :class:`SlotsFull` (:class:`~maily_secrets.targets.TargetError`):
AWS's error code and message, which never echo a secret, and key *ids*, which AWS
does not treat as secret. botocore's DEBUG wire logs are silenced (:func:`silence_wire_debug`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..clock import rfc3339
from . import TargetError

ENDPOINT_ENV = "MAILY_AWS_ENDPOINT_URL"
DEFAULT_REGION = "us-east-1"
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


# ---------------------------------------------------------------------------- boto3
def _boto3() -> Any:
    try:
        import boto3  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - boto3 is a dependency
        raise AwsApiError(
            "boto3 is not installed (pip install boto3): AWS keys cannot be rotated"
        ) from None
    return boto3


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


class AwsApiError(TargetError):
    """An AWS API call failed; ``code`` is AWS's error code (or a botocore class name)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class SlotsFull(TargetError):
    """The IAM user holds two keys and neither may be deleted: only a person can help."""


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


def _translate(exc: BaseException, target: AwsTarget) -> AwsApiError:
    from botocore import exceptions as bx  # type: ignore[import-untyped]

    if isinstance(exc, bx.ClientError):
        err = (getattr(exc, "response", None) or {}).get("Error") or {}
        code = str(err.get("Code") or "ClientError")
        msg = " ".join(str(err.get("Message") or "").split())
        return AwsApiError(f"{code}: {msg}" if msg else code, code)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return AwsApiError(f"no AWS credentials found ({type(exc).__name__})", "NoCredentials")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return AwsApiError(f"cannot reach {target.describe()}", type(exc).__name__)
    if isinstance(exc, bx.ReadTimeoutError):
        return AwsApiError(f"{target.describe()} did not answer in time", "Timeout")
    if isinstance(exc, bx.BotoCoreError | OSError):
        return AwsApiError(f"{type(exc).__name__}: {exc}", type(exc).__name__)
    if isinstance(exc, ValueError):  # e.g. a malformed endpoint_url
        return AwsApiError(str(exc), "ValueError")
    raise exc


@contextmanager
def _errors(target: AwsTarget) -> Iterator[None]:
    """botocore, socket and boto3 errors inside the block -> :class:`AwsApiError`."""
    try:
        yield
    except AwsApiError:
        raise
    except Exception as exc:
        raise _translate(exc, target) from None


def user_from_arn(arn: str) -> str | None:
    """``arn:aws:iam::123:user/path/name`` -> ``name``; None for roles, root, others."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "iam" or not parts[5].startswith("user/"):
        return None
    return parts[5].rsplit("/", 1)[-1] or None


@dataclass(frozen=True)
class KeyLastUse:
    """``iam:GetAccessKeyLastUsed`` of one key: ``when`` None means never used (as far as
    IAM has recorded: AWS updates it with a delay, typically within hours)."""

    key_id: str
    when: datetime | None
    service: str
    region: str


@dataclass(frozen=True)
class AccessKey:
    id: str
    status: str
    created: datetime | None


class IamUserKeys:
    """Blocking IAM operations on one user's access keys (use through ``kit.blocking``)."""

    def __init__(self, target: AwsTarget, creds: AwsCreds | None, user: str) -> None:
        self.target, self.creds, self.user = target, creds, user

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """The secret values of the credentials that call IAM (to scrub from errors)."""
        return (self.creds.secret_access_key, self.creds.session_token) if self.creds else ()

    def _iam(self) -> Any:
        return _client("iam", self.target, self.creds)

    def access_keys(self) -> list[AccessKey]:
        out: list[AccessKey] = []
        with _errors(self.target):
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
        """When ``key_id`` was last used, and by which service (who uses it)."""
        use = self.last_use(key_id)
        return (None, "") if use is None else (use.when, use.service)

    def last_use(self, key_id: str) -> KeyLastUse | None:
        """``iam:GetAccessKeyLastUsed``: when, by which service, in which region ``key_id``
        was last used (as far as IAM has recorded it). None when there is no such key."""
        with _errors(self.target):
            iam = self._iam()
            try:
                r = iam.get_access_key_last_used(AccessKeyId=key_id)
            except iam.exceptions.NoSuchEntityException:
                return None
        info = r.get("AccessKeyLastUsed") or {}
        when = info.get("LastUsedDate")

        def text(name: str) -> str:  # AWS says "N/A" for a key never used
            v = str(info.get(name) or "")
            return "" if v == "N/A" else v

        return KeyLastUse(
            key_id,
            when if isinstance(when, datetime) else None,
            text("ServiceName"),
            text("Region"),
        )

    def create(self) -> AwsCreds:
        with _errors(self.target):
            k = self._iam().create_access_key(UserName=self.user)["AccessKey"]
        return AwsCreds(str(k["AccessKeyId"]), str(k["SecretAccessKey"]))

    def activate(self, key_id: str) -> bool:
        """Idempotent: ``key_id`` is ``Active``. False when the user has no such key."""
        found = next((k for k in self.access_keys() if k.id == key_id), None)
        if found is not None and found.status != "Active":
            with _errors(self.target):
                self._iam().update_access_key(
                    UserName=self.user, AccessKeyId=key_id, Status="Active"
                )
        return found is not None

    def delete(self, key_id: str) -> bool:
        """Deactivate, then delete. False when the key was already gone."""
        with _errors(self.target):
            iam = self._iam()
            try:
                iam.update_access_key(UserName=self.user, AccessKeyId=key_id, Status="Inactive")
                iam.delete_access_key(UserName=self.user, AccessKeyId=key_id)
            except iam.exceptions.NoSuchEntityException:
                return False
        return True

    def free_slot(
        self,
        current: str | None,
        known: KnownKeys,
        now: datetime,
        delete: bool,
        require_current: bool = True,
    ) -> tuple[str | None, list[str]]:
        """Make sure the user can take one more key.

        With two keys already, the one that is not ``current`` may be deleted when that
        is safe: it is inactive, was never used, or is the previous key of an earlier
        rotation whose grace period is over (at ``now``). Otherwise :class:`SlotsFull`
        (nothing changed). Returns ``current`` and the ids deleted (``delete=False``:
        that would be). ``current`` must be one of the user's keys, unless
        ``require_current`` is false (then one that is not is ignored and None returned:
        e.g. SMTP credentials made by somebody else).
        """
        listed = self.access_keys()
        if current is not None and current not in {k.id for k in listed}:
            if require_current:
                raise AwsApiError(
                    f"the access key in Vault ({current}) is not one of IAM user {self.user}'s"
                )
            current = None
        doomed: list[str] = []
        for k in listed if len(listed) >= 2 else ():
            if k.id == current:
                continue
            two = f"IAM user {self.user} already holds two access keys: " + (
                f"{current} (in Vault) and {k.id}" if current else f"{k.id} and another"
            )
            after = known.retiring.get(k.id)
            if k.id in known.pending:
                raise SlotsFull(
                    f"{two}, the pending key of a rotation in progress; rerun the rotation"
                    " to resume it"
                )
            if after is not None and after > now:
                raise SlotsFull(
                    f"{two}, the previous key, in its grace period until"
                    f" {rfc3339(after, ms=False)}; rotate after that (or delete {k.id} by"
                    " hand if nobody uses it)"
                )
            used, service = (
                (None, "") if after is not None or k.status != "Active" else self.last_used(k.id)
            )
            if used is not None:
                raise SlotsFull(
                    f"{two}, which is active and was last used {rfc3339(used, ms=False)}"
                    f"{f' ({service})' if service else ''} but is unknown to the rotator;"
                    f" deactivate or delete it (aws iam delete-access-key --user-name"
                    f" {self.user} --access-key-id {k.id}) and rotate again"
                )
            doomed.append(k.id)  # never used: e.g. made by a run that died before saving it
        for key_id in doomed if delete else ():
            self.delete(key_id)
        return current, doomed


@dataclass(frozen=True)
class KnownKeys:
    """Keys the rotation state knows: the pending key of a rotation in progress and the
    previous keys kept for their grace period (id -> end of grace)."""

    pending: frozenset[str] = frozenset()
    retiring: Mapping[str, datetime] = field(default_factory=dict)


def caller_arn(target: AwsTarget, creds: AwsCreds | None) -> str:
    """``sts:GetCallerIdentity`` (always allowed, needs no IAM permission)."""
    with _errors(target):
        return str(_client("sts", target, creds).get_caller_identity()["Arn"])


def key_identity(target: AwsTarget, creds: AwsCreds) -> tuple[str | None, str]:
    """(the ARN ``creds`` authenticate as, "") or, when AWS refuses the key in a way that
    may pass (IAM is eventually consistent: :data:`NOT_YET_VALID`), (None, the reason)."""
    try:
        return caller_arn(target, creds), ""
    except AwsApiError as exc:
        if exc.code not in NOT_YET_VALID:
            raise
        return None, str(exc)


def creds_from_mapping(data: Mapping[str, Any]) -> AwsCreds | None:
    """The access key of a secret's ``aws_access_key``/``aws_secret_key`` (+ token)."""
    akid, secret = data.get("aws_access_key"), data.get("aws_secret_key")
    if not isinstance(akid, str) or not akid or not isinstance(secret, str) or not secret:
        return None
    token = data.get("aws_session_token")
    return AwsCreds(akid, secret, token if isinstance(token, str) and token else None)


# ---------------------------------------------------------------------------- SES SMTP
_SES_HOST = re.compile(r"^email-smtp(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com$")
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
    """The region of an SES SMTP endpoint (``email-smtp.<region>.amazonaws.com``)."""
    m = _SES_HOST.match(host.strip().lower())
    return m.group(1) if m else None
