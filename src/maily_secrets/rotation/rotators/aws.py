"""AWS IAM user access keys, rotated with plain boto3 through IAM's two key slots.

An IAM user may hold two access keys at once; that is the grace period. One rotation:

1. ``create_pending``  ``iam:CreateAccessKey`` for the user. This is the only moment
                       AWS ever returns the secret access key, so the key is made here
                       and the engine stores it (id + secret) in the rotation state right
                       after. If the user already holds two keys, the one that is
                       neither the key in Vault nor the pending key of a rotation in
                       progress is deleted first when that is safe (inactive, never
                       used, or the previous key of an earlier rotation whose grace is
                       over); when it is still in use, nothing is changed and the
                       rotation asks for a person (``ActionRequired``);
2. ``apply``           idempotent: the key exists and is ``Active`` (re-activated if
                       somebody deactivated it). Nothing else to do: the key was made
                       in step 1, and the key in use keeps working;
3. ``verify``          ``sts:GetCallerIdentity`` signed with the *new* key, retried for
                       up to ``verify_timeout`` seconds (IAM is eventually consistent:
                       a new key can take several seconds to work everywhere), and the
                       caller must be the IAM user;
4. ``promote``         check-and-set read-modify-write of the ``aws`` mapping of the
                       consumer secret (``maily/data/credentials``): only
                       ``aws_access_key``/``aws_secret_key`` change; other services'
                       entries and other keys of the mapping are kept.

``retiring`` names the previous key id; once the grace period is over ``retire``
deactivates and then deletes it (already gone is fine). ``rollback`` deletes the
pending key (never the key in Vault).

A crash between ``CreateAccessKey`` and the engine saving the state leaves a key
nobody knows the secret of: it has never been used, so the next ``create_pending``
deletes it (see above) and starts over.

Options (``types.aws.options``), all optional::

    key: aws                    # the mapping inside the secret (default "aws")
    iam_user: maily-app         # default: the owner of the key in Vault (GetCallerIdentity)
    region: us-east-1           # default: aws_region of the mapping, else $AWS_REGION,
                                #          else us-east-1 (IAM itself is global)
    endpoint_url: http://...    # only for a stand-in (moto); default $MAILY_AWS_ENDPOINT_URL,
                                # else boto3's own configuration ($AWS_ENDPOINT_URL...)
    iam_credentials: self       # who calls IAM: "self" (the key in Vault rotates itself),
                                # "default" (boto3's default chain: IRSA, instance
                                # profile, environment) or "vault" (iam_credentials_secret)
    iam_credentials_secret: rotator/aws-admin   # aws_access_key, aws_secret_key
                                                # (+ aws_session_token) with "vault"
    verify_timeout: 60          # seconds to keep retrying the new key
    timeout: 10                 # seconds for one AWS API call

The IAM permissions needed (``self``: on the user itself, e.g. resource
``arn:aws:iam::<account>:user/${aws:username}``): ``iam:ListAccessKeys``,
``iam:CreateAccessKey``, ``iam:UpdateAccessKey``, ``iam:DeleteAccessKey``,
``iam:GetAccessKeyLastUsed``. ``sts:GetCallerIdentity`` needs no permission.

Nothing here logs or raises with a secret access key: errors carry AWS's error code
and message (which never echo a secret) and key *ids*, which AWS does not treat as
secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from ...errors import VaultError
from ...targets.aws_iam import (
    DEFAULT_REGION,
    AwsApiError,
    AwsCreds,
    AwsOptions,
    AwsTarget,
    IamUserKeys,
    activate_key,
    admin_creds,
    aws_call,
    caller_arn,
    create_key,
    creds_from_mapping,
    free_slot,
    parse_aws_options,
    user_from_arn,
    verify_key,
)
from ..base import RotationContext, RotationError, Rotator, RotatorConfigError

T = TypeVar("T")


# ---------------------------------------------------------------------------- the rotator
class AwsAccessKeyRotator(Rotator):
    """``aws``: a new access key for the IAM user, verified, then switched to."""

    type_name = "aws"
    two_slots = True

    # -- configuration and Vault -------------------------------------------------------
    def _opts(self, ctx: RotationContext, step: str) -> AwsOptions:
        opts, problems = parse_aws_options(ctx.options)
        if opts is None:
            raise RotatorConfigError(f"aws {step}: {'; '.join(problems)}")
        return opts

    async def _mapping(
        self, ctx: RotationContext, opts: AwsOptions, step: str
    ) -> tuple[dict[str, Any], int]:
        data, version = await ctx.read_secret(step=step)
        mapping = data.get(opts.key)
        if not isinstance(mapping, dict):
            raise RotatorConfigError(
                f"aws {step}: {ctx.secret_path().data} has no {opts.key!r} mapping"
            )
        return dict(mapping), version

    def _target(self, opts: AwsOptions, mapping: Mapping[str, Any]) -> AwsTarget:
        region = (
            opts.region
            or (mapping.get("aws_region") if isinstance(mapping.get("aws_region"), str) else None)
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )
        return AwsTarget(str(region), opts.endpoint_url, opts.timeout)

    async def _setup(
        self, ctx: RotationContext, step: str
    ) -> tuple[AwsOptions, AwsTarget, AwsCreds | None, IamUserKeys]:
        """Options, where AWS is, the key in Vault, and the IAM user's keys."""
        opts = self._opts(ctx, step)
        mapping, _ = await self._mapping(ctx, opts, step)
        target = self._target(opts, mapping)
        current = creds_from_mapping(mapping)
        admin = await admin_creds(ctx, opts, f"aws {step}", current)
        user = opts.iam_user
        if user is None:
            if current is None:
                raise RotatorConfigError(
                    f"aws {step}: {ctx.secret_path().data} has no access key and option iam_user"
                    " is not set"
                )
            arn = await self._config_call(
                f"aws {step}: sts:GetCallerIdentity with the key in Vault"
                f" ({current.access_key_id})",
                target,
                lambda: caller_arn(target, current),
                current.secret_access_key,
            )
            user = user_from_arn(arn)
            if user is None:
                raise RotatorConfigError(
                    f"aws {step}: the key in Vault belongs to {arn}, not an IAM user; set option"
                    " iam_user"
                )
        return opts, target, current, IamUserKeys(target, admin, user)

    @staticmethod
    async def _config_call(what: str, target: AwsTarget, fn: Callable[[], T], *secrets: str) -> T:
        """A call whose failure means the configuration is wrong (nothing changed)."""
        try:
            return await aws_call(what, target, fn, *secrets)
        except AwsApiError as exc:
            raise RotatorConfigError(str(exc)) from None

    # -- the protocol ----------------------------------------------------------------
    async def check(self, ctx: RotationContext) -> None:
        _, _, current, keys = await self._setup(ctx, "check")
        try:
            await free_slot(
                "aws check",
                ctx,
                keys,
                current.access_key_id if current else None,
                delete=False,
            )
        except AwsApiError as exc:
            raise RotatorConfigError(str(exc)) from None

    async def created_at(self, ctx: RotationContext) -> datetime | None:
        """The creation time of the access key in Vault (else the secret's)."""
        try:
            opts = self._opts(ctx, "schedule")
            mapping, _ = await self._mapping(ctx, opts, "schedule")
            current = creds_from_mapping(mapping)
            if current is not None and opts.iam_credentials == "self":
                target = self._target(opts, mapping)
                quick = AwsTarget(target.region, target.endpoint_url, min(target.timeout, 5.0))
                keys = IamUserKeys(quick, current, opts.iam_user or "")
                if not opts.iam_user:
                    arn = await aws_call("aws schedule", quick, lambda: caller_arn(quick, current))
                    keys.user = user_from_arn(arn) or ""
                if keys.user:
                    for k in await aws_call("aws schedule", quick, keys.list):
                        if k.id == current.access_key_id and k.created is not None:
                            return k.created
        except (RotationError, VaultError):
            pass
        return await super().created_at(ctx)

    async def describe(self, ctx: RotationContext) -> str:
        try:
            opts = self._opts(ctx, "describe")
            mapping, _ = await self._mapping(ctx, opts, "describe")
        except RotationError as exc:
            return f"cannot rotate aws: {exc}"
        current = creds_from_mapping(mapping)
        who = opts.iam_user or "the owner of the key in Vault"
        return (
            f"create a new access key for IAM user {who}"
            f" (in use: {current.access_key_id if current else 'none'}), verify it with STS,"
            f" write it to {ctx.secret_path().data}[{opts.key}]; the old key is deleted after"
            f" {ctx.grace}"
        )

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        _, target, current, keys = await self._setup(ctx, "create_pending")
        current_id = current.access_key_id if current else None
        new = await create_key(
            "aws create_pending", ctx, keys, current_id, message="aws: new access key created"
        )
        return {
            "iam_user": keys.user,
            "access_key_id": new.access_key_id,
            "secret_access_key": new.secret_access_key,
            "previous_access_key_id": current_id,
            "region": target.region,
        }

    async def _keys_for(
        self, ctx: RotationContext, pending: Mapping[str, Any], step: str
    ) -> tuple[AwsOptions, AwsTarget, dict[str, Any], IamUserKeys]:
        opts = self._opts(ctx, step)
        mapping, _ = await self._mapping(ctx, opts, step)
        target = self._target(opts, mapping)
        admin = await admin_creds(ctx, opts, f"aws {step}", creds_from_mapping(mapping))
        return opts, target, mapping, IamUserKeys(target, admin, str(pending["iam_user"]))

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Idempotent: the pending key exists and is active (it was made by create_pending)."""
        _, _, _, keys = await self._keys_for(ctx, pending, "apply")
        key_id = str(pending["access_key_id"])
        await activate_key("aws apply", keys, key_id)
        ctx.log.info(
            "aws: new access key active",
            extra={"type": ctx.type_name, "iam_user": keys.user, "access_key_id": key_id},
        )

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts = self._opts(ctx, "verify")
        mapping, _ = await self._mapping(ctx, opts, "verify")
        target = self._target(opts, mapping)
        creds = AwsCreds(str(pending["access_key_id"]), str(pending["secret_access_key"]))
        arn = await verify_key(
            "aws verify", target, creds, str(pending["iam_user"]), opts.verify_timeout
        )
        ctx.log.info(
            "aws: new access key works",
            extra={"type": ctx.type_name, "arn": arn, "access_key_id": creds.access_key_id},
        )

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        opts = self._opts(ctx, "promote")
        path = ctx.secret_path()
        key_id, secret = str(pending["access_key_id"]), str(pending["secret_access_key"])
        previous = pending.get("previous_access_key_id")
        mapping, version = await self._mapping(ctx, opts, "promote")
        if mapping.get("aws_access_key") == key_id and mapping.get("aws_secret_key") == secret:
            return version  # promoted already (a rerun after a crash)

        def change(cur: dict[str, Any]) -> dict[str, Any]:
            m = cur.get(opts.key)
            if not isinstance(m, dict):
                raise RotationError(f"aws promote: {path.data} lost its {opts.key!r} mapping")
            active = m.get("aws_access_key")
            if active not in (previous, key_id):
                raise RotationError(
                    f"aws promote: the access key in {path.data} changed to {active!r} during the"
                    f" rotation (expected {previous})"
                )
            m = dict(m)
            m["aws_access_key"] = key_id
            m["aws_secret_key"] = secret
            cur[opts.key] = m
            return cur

        new_version = await ctx.client.kv.update(path, change)
        ctx.log.info(
            "aws: consumer secret holds the new key",
            extra={
                "type": ctx.type_name,
                "path": path.data,
                "version": new_version,
                "access_key_id": key_id,
            },
        )
        return new_version

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Delete the pending key; never the key in Vault."""
        _, target, mapping, keys = await self._keys_for(ctx, pending, "rollback")
        key_id = str(pending["access_key_id"])
        if mapping.get("aws_access_key") == key_id:
            raise RotationError(
                f"aws rollback: {key_id} is the key in {ctx.secret_path().data}; not deleting it"
            )
        gone = not await aws_call(
            f"aws rollback: deleting the pending key {key_id}",
            target,
            lambda: keys.delete(key_id),
        )
        ctx.log.info(
            "aws: pending access key deleted",
            extra={"type": ctx.type_name, "access_key_id": key_id, "already_gone": gone},
        )

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        previous = pending.get("previous_access_key_id")
        if not previous:
            return None
        return {"access_key_id": previous, "iam_user": pending["iam_user"]}

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> None:
        """Deactivate, then delete the previous key (already gone is fine)."""
        _, target, mapping, keys = await self._keys_for(ctx, retiring, "retire")
        key_id = str(retiring["access_key_id"])
        if mapping.get("aws_access_key") == key_id:
            raise RotationError(
                f"aws retire: {key_id} is (again) the key in {ctx.secret_path().data}; not"
                " deleting it"
            )
        deleted = await aws_call(
            f"aws retire: deleting the previous key {key_id} of {keys.user}",
            target,
            lambda: keys.delete(key_id),
        )
        ctx.log.info(
            "aws: previous access key deleted",
            extra={"type": ctx.type_name, "access_key_id": key_id, "already_gone": not deleted},
        )
