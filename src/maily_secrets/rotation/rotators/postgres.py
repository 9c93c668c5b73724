"""PostgreSQL passwords, rotated with zero downtime through two login roles.

The application logs in as one of two login roles (``maily_app``/``maily_app_b``)
that are both ``INHERIT`` members of one ``NOLOGIN`` group role holding every grant
(``bootstrap.ensure_postgres_login_roles`` sets this up), so whichever of the two is
in use, the application can do exactly the same things.

One rotation:

1. ``create_pending``  the login role *not* named by ``db_username`` in the consumer
                       secret, and a new random 32-character (URL/DSN-safe) password;
2. ``apply``           as the rotator's admin (credentials in Vault, at the type's
                       ``admin_secret``), ``ALTER ROLE <other> WITH LOGIN INHERIT
                       PASSWORD '<SCRAM verifier>'``: the verifier is computed here, so
                       the plaintext never reaches the server (nor its statement log,
                       ``pg_stat_activity`` or ``pg_stat_statements``); the role is made
                       a member of the group when it is not;
3. ``verify``          a new connection as that role with that password;
4. ``promote``         ``db_username``/``db_password`` of the consumer secret, by a
                       check-and-set read-modify-write (other keys of the same secret,
                       rotated by other types, are kept).

The previous role keeps its password for the grace period (``grace``), so that no
client fails mid-rotation; this rotator is ``two_slots``: two rotations closer than
``grace`` would cut off holders of the previous credential. ``usage`` tells who has
sessions open as the current and the previous role (``pg_stat_activity``: count,
``application_name``, ``client_addr``), which the engine's retire policy uses (by
default the previous role is retired once none of its sessions is left). ``retire``
first reports who still has sessions open as that role, then sets a random password
nobody knows on it (never logged), so the previous password stops logging in. Open
sessions are not terminated, except at a hard deadline (``ctx.end_sessions``): then
``pg_terminate_backend`` ends them, which the admin may only as a member of
``pg_signal_backend`` (``ensure_postgres_login_roles(rotator=...)`` grants it) or a
superuser. ``client_addr`` of other roles' sessions is visible to the admin only with
``pg_read_all_stats`` (else reported as hidden). The role in use is never retired (a
later rotation may have flipped back to it).

Options (``types.database.options``)::

    admin_secret: rotator/postgres-admin    # host, port, dbname, username, password
                                            # (+ optional sslmode)
    login_roles: [maily_app, maily_app_b]
    group: maily_app_group                  # optional, the default shown
    connect_timeout: 5                      # optional, seconds
    password_length: 32                     # optional

The admin needs ``CREATEROLE`` (PostgreSQL 16+: plus ``ADMIN OPTION`` on both login
roles and the group, which ``ensure_postgres_login_roles(rotator=...)`` grants); it
need not be a superuser.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, ClassVar

import psycopg
from pydantic import BeforeValidator, SecretStr

from ...errors import PermissionDenied, SecretNotFound, VaultError
from ...targets import random_password
from ...targets.postgres import (
    PostgresTarget,
    alter_password_statement,
    describe_sessions,
    end_sessions,
    grant_membership_statement,
    may_end_sessions,
    membership,
    open_sessions,
    scram_sha256_verifier,
    scrub,
)
from ..base import (
    Adoption,
    CredentialUser,
    RotationContext,
    RotationError,
    Rotator,
    RotatorConfigError,
    Usage,
)
from ..kit import (
    PasswordLength,
    RotatorOptions,
    Seconds,
    SecretName,
    admin_secret,
    in_use,
    promote_fields,
)

ADMIN_FIELDS = ("host", "port", "dbname", "username", "password")
DEFAULT_GROUP = "maily_app_group"


# ---------------------------------------------------------------------------- options
def _login_roles(value: object) -> tuple[str, str]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(r, str) and r for r in value)
        or value[0] == value[1]
    ):
        raise ValueError("must name two different login roles")
    return (value[0], value[1])


def _role(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must name the group role")
    return value


class PostgresOptions(RotatorOptions):
    error_prefix: ClassVar[str] = "database {step}"

    admin_secret: SecretName
    login_roles: Annotated[tuple[str, str], BeforeValidator(_login_roles)]
    group: Annotated[str, BeforeValidator(_role)] = DEFAULT_GROUP
    connect_timeout: Seconds = 5.0
    password_length: PasswordLength = 32


def _admin_target(data: Mapping[str, Any]) -> tuple[PostgresTarget | None, list[str]]:
    missing = [f for f in ADMIN_FIELDS if data.get(f) in (None, "")]
    if missing:
        return None, [f"lacks {', '.join(missing)}"]
    try:
        port = int(data["port"])
    except (TypeError, ValueError):
        return None, ["has a port that is not a number"]
    sslmode = data.get("sslmode")
    return (
        PostgresTarget(
            host=str(data["host"]),
            port=port,
            user=str(data["username"]),
            password=SecretStr(str(data["password"])),
            dbname=str(data["dbname"]),
            sslmode=str(sslmode) if sslmode else None,
        ),
        [],
    )


# ---------------------------------------------------------------------------- the rotator
class PostgresTwoRoleRotator(Rotator):
    """``database``: a new password on the idle one of two login roles, then switch to it."""

    type_name = "database"
    two_slots = True

    # -- reading Vault ---------------------------------------------------------------
    async def _admin(
        self, ctx: RotationContext, opts: PostgresOptions, step: str
    ) -> PostgresTarget:
        path = ctx.secret_path(opts.admin_secret)
        data = await admin_secret(ctx, opts.admin_secret, step)
        target, problems = _admin_target(data)
        if target is None:
            raise RotatorConfigError(
                f"database {step}: the admin secret {path.data} {'; '.join(problems)}"
            )
        return target

    @staticmethod
    def _other(opts: PostgresOptions, active: str) -> str:
        a, b = opts.login_roles
        return b if active == a else a

    # -- talking to PostgreSQL -------------------------------------------------------
    @asynccontextmanager
    async def _admin_conn(
        self, admin: PostgresTarget, opts: PostgresOptions, step: str, role: str
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        secret = admin.password.get_secret_value() if admin.password else None
        kw = {
            **admin.connect_kwargs(),
            "connect_timeout": max(1, round(opts.connect_timeout)),
            "application_name": "maily-rotator",
        }
        try:
            conn = await psycopg.AsyncConnection.connect(**kw, autocommit=True)
        except psycopg.Error as exc:
            raise RotationError(
                f"database {step} ({role}): cannot connect to {admin.describe()}"
                f" as the rotator admin: {scrub(str(exc), secret)}"
            ) from None
        try:
            async with conn:
                await conn.execute("SET lock_timeout = '10s'")
                await conn.execute("SET statement_timeout = '30s'")
                yield conn
        except psycopg.Error as exc:
            raise RotationError(
                f"database {step} ({role}): PostgreSQL {admin.describe()} refused:"
                f" {scrub(str(exc), secret)}"
            ) from None

    async def _set_password(
        self,
        conn: psycopg.AsyncConnection[Any],
        admin: PostgresTarget,
        opts: PostgresOptions,
        role: str,
        password: str,
        step: str,
        *,
        ensure_login: bool,
    ) -> bool:
        """Set ``password`` (as a verifier) on ``role``; False when the role is missing."""
        cur = await conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))
        row = await cur.fetchone()
        if row is None:
            return False
        if row[0]:
            raise RotationError(
                f"database {step}: login role {role} on {admin.describe()} is a superuser;"
                " refusing to rotate it"
            )
        async with conn.transaction():
            await conn.execute(
                alter_password_statement(role, scram_sha256_verifier(password), login=ensure_login)
            )
            if ensure_login:
                member = await membership(conn, role, opts.group)
                if member is None:
                    raise RotationError(
                        f"database {step}: group role {opts.group} does not exist on"
                        f" {admin.describe()} (run ensure_postgres_login_roles)"
                    )
                if not all(member):
                    await conn.execute(
                        grant_membership_statement(opts.group, role, conn.info.server_version)
                    )
        return True

    # -- the protocol ----------------------------------------------------------------
    async def check(self, ctx: RotationContext) -> None:
        opts, problems = PostgresOptions.problems(ctx.options)
        admin: PostgresTarget | None = None
        if opts is not None:
            path = ctx.secret_path(opts.admin_secret)
            try:
                admin, bad = _admin_target((await ctx.client.kv.read(path)).data)
                problems += [f"the admin secret {path.data} {p}" for p in bad]
            except SecretNotFound:
                problems.append(f"the admin secret {path.data} does not exist")
            except PermissionDenied:
                problems.append(f"this token may not read the admin secret {path.data}")
        consumer = ctx.secret_path()
        try:
            data = (await ctx.client.kv.read(consumer)).data
            active = data.get("db_username")
            if not active:
                problems.append(f"{consumer.data} has no db_username")
            elif opts is not None and active not in opts.login_roles:
                problems.append(
                    f"db_username of {consumer.data} is {active!r}, not one of the login"
                    f" roles {', '.join(opts.login_roles)}"
                )
        except SecretNotFound:
            problems.append(f"the consumer secret {consumer.data} does not exist")
        if problems or opts is None or admin is None:
            raise RotatorConfigError(f"database rotation cannot start: {'; '.join(problems)}")
        await self._check_server(ctx, opts, admin)

    async def _check_server(
        self, ctx: RotationContext, opts: PostgresOptions, admin: PostgresTarget
    ) -> None:
        """Read only: the roles exist and the admin may change their passwords."""
        problems: list[str] = []
        try:
            async with self._admin_conn(admin, opts, "check", "/".join(opts.login_roles)) as c:
                cur = await c.execute(
                    "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY(%s)",
                    ([*opts.login_roles, opts.group],),
                )
                found = {str(r[0]): bool(r[1]) for r in await cur.fetchall()}
                cur = await c.execute(
                    "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
                )
                row = await cur.fetchone()
        except RotationError as exc:
            raise RotatorConfigError(str(exc)) from None
        missing = [r for r in (*opts.login_roles, opts.group) if r not in found]
        if missing:
            problems.append(
                f"role(s) {', '.join(missing)} missing on {admin.describe()}"
                " (run ensure_postgres_login_roles)"
            )
        supers = [r for r in opts.login_roles if found.get(r)]
        if supers:
            problems.append(f"login role(s) {', '.join(supers)} are superusers")
        if not (row and row[0]):
            problems.append(f"the admin {admin.user} has neither SUPERUSER nor CREATEROLE")
        if problems:
            raise RotatorConfigError(f"database rotation cannot start: {'; '.join(problems)}")

    async def describe(self, ctx: RotationContext) -> str:
        opts, problems = PostgresOptions.problems(ctx.options)
        if opts is None:
            return f"cannot rotate database: {'; '.join(problems)}"
        try:
            data, _ = await ctx.read_secret(step="describe")
        except (RotationError, VaultError) as exc:
            return f"cannot rotate database: {exc}"
        active = str(data.get("db_username") or "?")
        return (
            f"set a new password on {self._other(opts, active)}, then point db_username"
            f" at it (currently {active})"
        )

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        opts = PostgresOptions.of(ctx, "create_pending")
        data, _ = await ctx.read_secret(step="create_pending")
        active = data.get("db_username")
        if active not in opts.login_roles:
            raise RotatorConfigError(
                f"database create_pending: db_username of {ctx.secret_path().data} is"
                f" {active!r}, not one of the login roles {', '.join(opts.login_roles)}"
            )
        target = self._other(opts, str(active))
        return {
            "role": target,
            "password": random_password(opts.password_length),
            "previous_role": active,
        }

    async def _guard_not_active(
        self, ctx: RotationContext, pending: dict[str, Any], step: str, *, allow_same: bool
    ) -> bool:
        """Never change the password of the role in use. True: already promoted."""
        data, _ = await ctx.read_secret(step=step)
        if data.get("db_username") != pending["role"]:
            return False
        if allow_same and data.get("db_password") == pending["password"]:
            return True
        raise RotationError(
            f"database {step}: {pending['role']} is the login role in use"
            f" ({ctx.secret_path().data}); refusing to change its password"
        )

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts = PostgresOptions.of(ctx, "apply")
        role = str(pending["role"])
        if role not in opts.login_roles:
            raise RotatorConfigError(f"database apply: {role} is not one of the login roles")
        if await self._guard_not_active(ctx, pending, "apply", allow_same=True):
            return  # promoted already: the password is set and in use
        admin = await self._admin(ctx, opts, "apply")
        async with self._admin_conn(admin, opts, "apply", role) as conn:
            if not await self._set_password(
                conn, admin, opts, role, str(pending["password"]), "apply", ensure_login=True
            ):
                raise RotationError(
                    f"database apply: login role {role} does not exist on {admin.describe()}"
                    " (run ensure_postgres_login_roles)"
                )
        ctx.log.info(
            "database: new password set",
            extra={"role": role, "host": admin.host, "step": "apply"},
        )

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts = PostgresOptions.of(ctx, "verify")
        role, password = str(pending["role"]), str(pending["password"])
        admin = await self._admin(ctx, opts, "verify")
        data, _ = await ctx.read_secret(step="verify")
        # where the application connects (the consumer secret), else where the admin does
        host = str(data.get("db_host") or admin.host)
        port = int(data.get("db_port") or admin.port)
        dbname = str(data.get("db_name") or admin.dbname)
        kw: dict[str, Any] = {
            "host": host,
            "port": port,
            "dbname": dbname,
            "user": role,
            "password": password,
            "connect_timeout": max(1, round(opts.connect_timeout)),
            "application_name": "maily-rotator-verify",
        }
        sslmode = data.get("db_sslmode") or admin.sslmode
        if sslmode:
            kw["sslmode"] = str(sslmode)
        where = f"{role}@{host}:{port}/{dbname}"
        try:
            conn = await psycopg.AsyncConnection.connect(**kw, autocommit=True)
            async with conn:
                cur = await conn.execute(
                    "SELECT session_user, current_user, pg_has_role(session_user, %s, 'USAGE')",
                    (opts.group,),
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise RotationError(
                f"database verify: login as {where} failed: {scrub(str(exc), password)}"
            ) from None
        if row is None or row[0] != role or row[1] not in (role, opts.group):
            raise RotationError(f"database verify: logged in as {where} but ran as another role")
        if not row[2]:
            raise RotationError(
                f"database verify: {where} does not inherit the privileges of {opts.group}"
            )
        ctx.log.info("database: new password works", extra={"role": role, "host": host})

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        role, password = str(pending["role"]), str(pending["password"])

        def not_stale(cur: dict[str, Any]) -> None:
            if cur.get("db_username") == role and cur.get("db_password") != password:
                raise RotationError(
                    f"database promote: {ctx.secret_path().data} already names {role} with"
                    " another password; this pending credential is stale"
                )

        return await promote_fields(
            ctx,
            {"db_username": role, "db_password": password},
            expect=("db_username", pending.get("previous_role")),
            check=not_stale,
            message="consumer secret points at the new role",
            extra={"role": role},
        )

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Give the target role a random password nobody knows; the active one is untouched."""
        opts = PostgresOptions.of(ctx, "rollback")
        role = str(pending["role"])
        await self._guard_not_active(ctx, pending, "rollback", allow_same=False)
        admin, found, _ = await self._scramble(ctx, opts, role, "rollback")
        ctx.log.info(
            "database: pending password discarded",
            extra={"role": role, "host": admin.host, "found": found},
        )

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        previous = pending.get("previous_role")
        if not previous or previous == pending.get("role"):
            return None
        return {"role": str(previous)}

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> str | None:
        """After the grace: report the previous role's open sessions, then give it a random
        password nobody knows. Never the role in use; anything unreadable is an error."""
        opts = PostgresOptions.of(ctx, "retire")
        role = str(retiring.get("role") or "")
        if role not in opts.login_roles:
            raise RotatorConfigError(
                f"database retire: {role or '(none)'} is not one of the login roles"
                f" {', '.join(opts.login_roles)}; not retiring it"
            )
        if await in_use(
            ctx,
            "retire",
            "db_username",
            lambda active: active == role,
            unknown="cannot tell which login role is in use, so none is retired",
            what="role",
            extra={"role": role},
        ):
            return f"{role} is the login role in use again (a later rotation); not retired"
        admin, found, sessions = await self._scramble(ctx, opts, role, "retire")
        if not found:
            return f"previous login role {role} no longer exists on {admin.describe()}"
        ended = ""
        if ctx.end_sessions and sessions:
            n = await self._end_sessions(ctx, opts, admin, role)
            ended = f"; at the hard deadline {n} of its session(s) were ended"
        total = sum(n for n, _, _ in sessions)
        ctx.log.log(
            logging.WARNING if total else logging.INFO,
            "database: previous login role retired",
            extra={
                "role": role,
                "host": admin.host,
                "open_sessions": total,
                "sessions": [
                    {"count": n, "application_name": app, "client_addr": addr}
                    for n, app, addr in sessions
                ],
            },
        )
        return (
            f"retired previous login role {role} (its password no longer works): "
            + describe_sessions(sessions)
            + ended
        )

    async def _end_sessions(
        self, ctx: RotationContext, opts: PostgresOptions, admin: PostgresTarget, role: str
    ) -> int:
        async with self._admin_conn(admin, opts, "retire", role) as conn:
            if not await may_end_sessions(conn, role):
                raise RotationError(
                    f"database retire: the hard deadline has passed but the admin {admin.user}"
                    f" may not end the sessions of {role} on {admin.describe()}: grant it"
                    f" pg_signal_backend (GRANT pg_signal_backend TO {admin.user}, or"
                    " ensure_postgres_login_roles(rotator=...)); its password is already"
                    " unknown, the sessions keep running until then"
                )
            n = await end_sessions(conn, role)
        ctx.log.warning(
            "database: sessions of the previous login role ended at the hard deadline",
            extra={"role": role, "host": admin.host, "ended": n},
        )
        return n

    async def usage(
        self,
        ctx: RotationContext,
        retiring: Mapping[str, Any] | None,
        since: datetime | None = None,
    ) -> Adoption | None:
        """Sessions open as the login role in use and as the previous one (``retiring``),
        from ``pg_stat_activity``. Reads only; an unreachable server raises."""
        opts = PostgresOptions.of(ctx, "usage")
        data, _ = await ctx.read_secret(step="usage")
        current = str(data.get("db_username") or "")
        previous = str((retiring or {}).get("role") or "") or None
        admin = await self._admin(ctx, opts, "usage")
        roles = [r for r in (current, previous) if r]
        async with self._admin_conn(admin, opts, "usage", "/".join(roles)) as conn:
            seen = {r: await open_sessions(conn, r) for r in roles}

        def of(role: str) -> Usage:
            rows = seen.get(role, [])
            users = tuple(CredentialUser(n, app, addr) for n, app, addr in rows)
            hidden = any(addr is None for _, _, addr in rows)
            note = "client_addr hidden: grant pg_read_all_stats to the rotator" if hidden else ""
            return Usage(role, users=users, note=note)

        prev: Usage | None = None
        if previous is not None:
            if previous == current:  # a later rotation flipped back to it
                prev = Usage(previous, note="it is the login role in use again")
            else:
                prev = of(previous)
        return Adoption(current=of(current) if current else None, previous=prev)

    async def _scramble(
        self, ctx: RotationContext, opts: PostgresOptions, role: str, step: str
    ) -> tuple[PostgresTarget, bool, list[tuple[int, str, str | None]]]:
        """Give ``role`` a random password nobody knows: (admin, role found, its sessions
        before the change)."""
        admin = await self._admin(ctx, opts, step)
        async with self._admin_conn(admin, opts, step, role) as conn:
            sessions = await open_sessions(conn, role)
            found = await self._set_password(
                conn,
                admin,
                opts,
                role,
                random_password(opts.password_length),
                step,
                ensure_login=False,
            )
        return admin, found, sessions
