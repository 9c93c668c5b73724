"""AWS IAM user access keys, rotated with plain boto3 through IAM's two key slots.

An IAM user may hold two access keys at once; that is the grace period. One rotation:

1. ``create_pending``  ``iam:CreateAccessKey``: the only moment AWS returns the secret
                       access key; the engine stores it in the rotation state right
                       after. A user with two keys already: the one that is neither the
                       key in Vault nor a pending one is deleted first when that is safe
                       (inactive, never used, or a previous key whose grace is over);
                       else nothing changes and a person is asked (``ActionRequired``);
2. ``apply``           idempotent: the key exists and is ``Active`` (re-activated if
                       somebody deactivated it); the key in use keeps working;
3. ``verify``          ``sts:GetCallerIdentity`` signed with the *new* key, retried for
                       up to ``verify_timeout`` seconds (IAM is eventually consistent),
                       and the caller must be the IAM user;
4. ``promote``         check-and-set write of ``aws_access_key``/``aws_secret_key`` in
                       the ``aws`` mapping of the consumer secret; other services'
                       entries and other keys of the mapping are kept.

``usage`` (who uses which key, for ``secrets status`` and the retire policy):
``iam:GetAccessKeyLastUsed`` of the key in Vault and of the previous key; a use
recorded after the promote (``since``) is a user (service, region, when). AWS records
last use with a delay of up to hours, so "idle" means "not used since the promote as
far as IAM has recorded"; with ``iam_credentials: self`` the rotator's own IAM calls
are uses of the current key.

After the grace period ``retire`` deactivates and deletes the previous key (already
gone is fine); ``rollback`` deletes the pending key; neither ever the key in Vault.
A crash between ``CreateAccessKey`` and saving the state leaves a key nobody knows the
secret of: never used, so the next ``create_pending`` deletes it and starts over.

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
    idle_after: 900             # seconds: a key last used longer ago counts as idle

The IAM permissions needed (``self``: on the user itself, e.g. resource
``arn:aws:iam::<account>:user/${aws:username}``): ``iam:ListAccessKeys``,
``iam:CreateAccessKey``, ``iam:UpdateAccessKey``, ``iam:DeleteAccessKey``,
``iam:GetAccessKeyLastUsed``. ``sts:GetCallerIdentity`` needs no permission.

The options model and the two-slot steps live in ``rotation/iam_keys.py``, shared
with the ``smtp`` rotator's ``ses`` provider. No log or error holds a secret access
key (key *ids* are not secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from ...errors import VaultError
from ...targets.aws_iam import (
    AwsCreds,
    AwsTarget,
    IamUserKeys,
    caller_arn,
    creds_from_mapping,
    user_from_arn,
)
from ..base import Adoption, RotationContext, RotationError, Rotator, RotatorConfigError
from ..iam_keys import (
    AwsOptions,
    activate_key,
    admin_creds,
    aws_call,
    create_key,
    free_slot,
    key_usage,
    verify_key,
)
from ..kit import (
    in_use,
    promote_fields,
)


# ---------------------------------------------------------------------------- the rotator
class AwsAccessKeyRotator(Rotator):
    """``aws``: a new access key for the IAM user, verified, then switched to."""

    type_name = "aws"
    two_slots = True

    # -- configuration and Vault -------------------------------------------------------
    async def _mapping(
        self, ctx: RotationContext, step: str
    ) -> tuple[AwsOptions, dict[str, Any], AwsTarget]:
        """The options, the ``key`` mapping of the consumer secret, where AWS is."""
        opts = AwsOptions.of(ctx, step)
        data, _ = await ctx.read_secret(step=step)
        mapping = data.get(opts.key)
        if not isinstance(mapping, dict):
            raise RotatorConfigError(
                f"aws {step}: {ctx.secret_path().data} has no {opts.key!r} mapping"
            )
        region = mapping.get("aws_region")
        return opts, mapping, opts.target(region if isinstance(region, str) else None)

    async def _setup(
        self, ctx: RotationContext, step: str, user: str | None = None, quick: bool = False
    ) -> tuple[AwsOptions, AwsTarget, AwsCreds | None, IamUserKeys]:
        """Options, where AWS is, the key in Vault, and the keys of the IAM user (``user``,
        else option iam_user, else the owner of the key in Vault)."""
        opts, mapping, target = await self._mapping(ctx, step)
        if quick:  # at most 5 s per call (the scheduler asks)
            target = opts.target(target.region, 5.0)
        current = creds_from_mapping(mapping)
        admin = await admin_creds(ctx, opts, step, current)
        user = user or opts.iam_user
        if user is None:
            if current is None:
                raise RotatorConfigError(
                    f"aws {step}: {ctx.secret_path().data} has no access key and option iam_user"
                    " is not set"
                )
            arn = await aws_call(
                f"aws {step}: sts:GetCallerIdentity with the key in Vault"
                f" ({current.access_key_id})",
                caller_arn,
                target,
                current,
                secrets=(current.secret_access_key,),
                config=True,
            )
            user = user_from_arn(arn)
            if user is None:
                raise RotatorConfigError(
                    f"aws {step}: the key in Vault belongs to {arn}, not an IAM user; set option"
                    " iam_user"
                )
        return opts, target, current, IamUserKeys(target, admin, user)

    async def _in_use(self, ctx: RotationContext, step: str, key_id: str) -> None:
        """The guard of rollback and retire: never delete the key in Vault."""
        key = AwsOptions.of(ctx, step).key
        if await in_use(
            ctx,
            step,
            key,
            lambda m: isinstance(m, dict) and m.get("aws_access_key") == key_id,
            unknown="not deleting any access key",
            what="access key",
            extra={"access_key_id": key_id},
        ):
            raise RotationError(
                f"aws {step}: {key_id} is (again) the key in {ctx.secret_path().data}; not"
                " deleting it"
            )

    # -- the protocol ----------------------------------------------------------------
    async def check(self, ctx: RotationContext) -> None:
        _, _, current, keys = await self._setup(ctx, "check")
        await free_slot(
            ctx, "check", keys, current.access_key_id if current else None, delete=False
        )

    async def created_at(self, ctx: RotationContext) -> datetime | None:
        """The creation time of the access key in Vault (else the secret's)."""
        try:
            if AwsOptions.of(ctx, "schedule").iam_credentials == "self":
                _, _, current, keys = await self._setup(ctx, "schedule", quick=True)
                for k in await aws_call("aws schedule", keys.access_keys):
                    if current and k.id == current.access_key_id and k.created is not None:
                        return k.created
        except (RotationError, VaultError):
            pass
        return await super().created_at(ctx)

    async def describe(self, ctx: RotationContext) -> str:
        try:
            opts, mapping, _ = await self._mapping(ctx, "describe")
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
        new, _ = await create_key(
            ctx, "create_pending", keys, current_id, message="aws: new access key created"
        )
        return {
            "iam_user": keys.user,
            "access_key_id": new.access_key_id,
            "secret_access_key": new.secret_access_key,
            "previous_access_key_id": current_id,
            "region": target.region,
        }

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Idempotent: the pending key exists and is active (it was made by create_pending)."""
        _, _, _, keys = await self._setup(ctx, "apply", str(pending["iam_user"]))
        key_id = str(pending["access_key_id"])
        await activate_key(ctx, "apply", keys, key_id)
        ctx.log.info(
            "aws: new access key active",
            extra={"type": ctx.type_name, "iam_user": keys.user, "access_key_id": key_id},
        )

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts, _, target = await self._mapping(ctx, "verify")
        creds = AwsCreds(str(pending["access_key_id"]), str(pending["secret_access_key"]))
        arn = await verify_key(
            "aws verify", target, creds, str(pending["iam_user"]), opts.verify_timeout
        )
        ctx.log.info(
            "aws: new access key works",
            extra={"type": ctx.type_name, "arn": arn, "access_key_id": creds.access_key_id},
        )

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        opts, mapping, _ = await self._mapping(ctx, "promote")
        path = ctx.secret_path().data
        key_id = str(pending["access_key_id"])
        previous = pending.get("previous_access_key_id")
        new = {**mapping, "aws_access_key": key_id, "aws_secret_key": pending["secret_access_key"]}

        def check(cur: dict[str, Any]) -> None:
            m = cur.get(opts.key)
            if not isinstance(m, dict):
                raise RotationError(f"aws promote: {path} lost its {opts.key!r} mapping")
            active = m.get("aws_access_key")
            if active not in (previous, key_id):
                raise RotationError(
                    f"aws promote: the access key in {path} changed to {active!r} during the"
                    f" rotation (expected {previous})"
                )
            if {**m, "aws_access_key": key_id, "aws_secret_key": new["aws_secret_key"]} != new:
                raise RotationError(
                    f"aws promote: the {opts.key!r} mapping of {path} changed during the"
                    " promote; run the rotation again"
                )

        return await promote_fields(
            ctx,
            {opts.key: new},
            check=check,
            message="consumer secret holds the new key",
            extra={"access_key_id": key_id},
        )

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Delete the pending key; never the key in Vault."""
        key_id = str(pending["access_key_id"])
        await self._in_use(ctx, "rollback", key_id)
        _, _, _, keys = await self._setup(ctx, "rollback", str(pending["iam_user"]))
        what = f"aws rollback: deleting the pending key {key_id}"
        gone = not await aws_call(what, keys.delete, key_id)
        ctx.log.info(
            "aws: pending access key deleted",
            extra={"type": ctx.type_name, "access_key_id": key_id, "already_gone": gone},
        )

    async def usage(
        self,
        ctx: RotationContext,
        retiring: Mapping[str, Any] | None,
        since: datetime | None = None,
    ) -> Adoption | None:
        """``iam:GetAccessKeyLastUsed`` of the key in Vault and of the previous key
        (``retiring``): a use recorded after ``since`` (the promote) is a user."""
        user = str(retiring["iam_user"]) if retiring and retiring.get("iam_user") else None
        opts, _, current, keys = await self._setup(ctx, "usage", user, quick=True)
        now = None
        if current is not None:
            now = await key_usage(ctx, "usage", keys, current.access_key_id, since, opts.idle_after)
            if opts.iam_credentials == "self":
                now = replace(
                    now,
                    note=f"{now.note}; the rotator's own IAM calls (iam_credentials: self)"
                    " are uses of this key",
                )
        previous = None
        key_id = retiring.get("access_key_id") if retiring else None
        if isinstance(key_id, str) and key_id:
            previous = await key_usage(ctx, "usage", keys, key_id, since, opts.idle_after)
        return Adoption(now, previous)

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        previous = pending.get("previous_access_key_id")
        if not previous:
            return None
        return {"access_key_id": previous, "iam_user": pending["iam_user"]}

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> None:
        """Deactivate, then delete the previous key (already gone is fine)."""
        key_id = str(retiring["access_key_id"])
        await self._in_use(ctx, "retire", key_id)
        _, _, _, keys = await self._setup(ctx, "retire", str(retiring["iam_user"]))
        what = f"aws retire: deleting the previous key {key_id} of {keys.user}"
        deleted = await aws_call(what, keys.delete, key_id)
        ctx.log.info(
            "aws: previous access key deleted",
            extra={"type": ctx.type_name, "access_key_id": key_id, "already_gone": not deleted},
        )
