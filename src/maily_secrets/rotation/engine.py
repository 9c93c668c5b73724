"""The rotation engine: schedules, the lock, and the two-phase protocol for every type.

    engine = RotationEngine(RotationConfig.load(), "production")
    report = await engine.run(["jwt", "database"], due_only=False)

For each type, sequentially, under one lock per environment:

- a rotation left in progress by a run that died is resumed from the step it
  reached (same rotation id), so a crash at any point ends consistent;
- otherwise, with ``due_only``, a type is skipped until its interval has passed;
  a two-slot type (two login roles, two IAM keys) is skipped while the previous
  credential is still in its grace period (``force`` overrides);
- ``check`` -> ``create_pending`` (stored in the state) -> ``apply`` -> ``verify``
  -> ``promote`` (check-and-set) -> finished; a failed verification rolls back;
- what earlier rotations kept for their grace period is retired by the type's retire
  policy (``retirement.py``: when its target shows it idle, at the end of the grace,
  never; ending its sessions at a hard deadline), with who still uses it observed on the
  target (``Rotator.usage``) and named in the report.

``retire_due`` does only that last part (``mailyctl secrets retire``); ``run(...,
wait_retire=...)`` keeps watching after the promote, holding the lock, until the new
rotation's previous credential is retired or the wait ends (``--wait-retire``).

Every step writes the state (a new KV v2 version) before the next begins.
``MAILY_ROTATION_CRASH_AFTER=<step>`` is a fault-injection point for tests: the
process exits abruptly right after writing that step (no cleanup, lock held),
exactly like a killed pod.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ..cliname import command
from ..clock import SYSTEM_CLOCK, Clock, rfc3339
from ..errors import VaultError
from ..paths import KV2Path
from ..vault.client import VaultClient
from .base import (
    ActionRequired,
    Adoption,
    PendingLost,
    RotationContext,
    RotationError,
    Rotator,
    rotator_for,
    secret_created_at,
)
from .config import ConfigError, RotationConfig, format_duration
from .lock import LockBusy, LockLost, VaultLock
from .report import RunReport, TypeResult
from .retirement import Decision, RetireItem, RetirePolicy, decide
from .rotators import DATED_BY_SECRET
from .state import Retiring, RotationState, StateStore

log = logging.getLogger("maily_secrets.rotation")
CRASH_ENV = "MAILY_ROTATION_CRASH_AFTER"
#: how often ``--wait-retire`` looks at who still uses the previous credential
SETTLE_INTERVAL_S = 5.0
Progress = Callable[[str, str], None]  # (type, message)


def default_actor() -> str:
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def new_rotation_id(type_name: str) -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{type_name}-{uuid.uuid4().hex[:8]}"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class RotationEngine:
    def __init__(
        self,
        config: RotationConfig,
        env_name: str | None = None,
        *,
        client: VaultClient | None = None,
        actor: str | None = None,
        progress: Progress | None = None,
        now: Callable[[], datetime] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.env = config.environment(env_name)
        self._client = client
        self._own_client = client is None
        self.actor = actor or default_actor()
        self.progress = progress or (lambda t, m: None)
        #: time for the lock (expiry, heartbeat) and, unless ``now`` is given, for due
        #: dates and grace periods: tests inject a ManualClock instead of waiting
        self.clock = clock or SYSTEM_CLOCK
        clk = self.clock
        self.now = now or (lambda: datetime.fromtimestamp(clk.time(), UTC))
        self._crash_after = os.environ.get(CRASH_ENV) or None
        self._lock: VaultLock | None = None
        #: seconds between two looks at the target while ``wait_retire`` (clock time)
        self.settle_interval = SETTLE_INTERVAL_S

    @property
    def client(self) -> VaultClient:
        if self._client is None:
            self._client = VaultClient(self.env.vault_settings())
        return self._client

    @property
    def store(self) -> StateStore:
        return StateStore(self.client, self.client.settings.kv_mount, self.env.env.state_prefix)

    async def close(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.close()

    # ------------------------------------------------------------------ schedule
    async def _baseline(self, type_name: str) -> datetime | None:
        """When the secret first existed (the age of a never-rotated type)."""
        try:
            ctx = self._context(type_name, "schedule")
            impl = ctx.type_config.rotator or type_name
            if impl in DATED_BY_SECRET and impl not in Rotator.registry:
                return await secret_created_at(ctx)  # the same, without importing it
            rotator = rotator_for(type_name, ctx.type_config.rotator)
            return await rotator.created_at(ctx)
        except (RotationError, VaultError):
            return None

    async def schedule(self, type_name: str, state: RotationState | None) -> dict[str, Any]:
        interval = self.env.interval(type_name)
        last = state.last_success_at if state else None
        baseline = last or await self._baseline(type_name)
        now = self.now()
        next_due = baseline + interval if baseline else now
        return {
            "interval": interval,
            "last_rotated": last,
            "baseline": baseline,
            "next_due": next_due,
            "due": now >= next_due,
            "age": (now - baseline) if baseline else None,
        }

    async def status(self, concurrency: int = 64) -> list[dict[str, Any]]:
        """One row per type of the config: where, last rotated, age, interval, next due."""
        names = self.config.type_names
        states = await self.store.read_many(names)
        sem = asyncio.Semaphore(concurrency)

        async def row(t: str) -> dict[str, Any]:
            state, _ = states[t]
            async with sem:
                sched = await self.schedule(t, state)
            return {
                "type": t,
                "secret": self._where(t),
                "last_rotated": sched["last_rotated"],
                "age_s": sched["age"].total_seconds() if sched["age"] else None,
                "interval": format_duration(sched["interval"]),
                "interval_s": sched["interval"].total_seconds(),
                "next_due": sched["next_due"],
                "overdue": bool(sched["due"]),
                "in_progress": bool(state and state.in_progress),
                "last_outcome": state.outcome if state else None,
                "last_rotation_id": state.last_rotation_id if state else None,
                "retiring": len(state.retiring) if state else 0,
                # who uses the new and the previous credential: looked at on the target
                # only for a type with something retiring (nothing imported otherwise)
                "adoption": await self.adoption(t, state) if state and state.retiring else None,
            }

        return list(await asyncio.gather(*(row(t) for t in names)))

    async def adoption(self, type_name: str, state: RotationState) -> dict[str, Any]:
        """Live, for ``status``: who uses the current credential and each retiring one (on
        its target), what the retire policy would do now, and what the last run saw."""
        policy = self.policy(type_name)
        doc: dict[str, Any] = {
            "retire": policy.mode,
            "policy": policy.describe(),
            "current": None,
            "previous": [],
        }
        try:
            rotator = rotator_for(type_name, self.env.type(type_name).rotator)
        except RotationError as exc:
            doc["error"] = _error_text(exc)
            return doc
        now = self.now()
        for item in state.retiring:
            ctx = self._context(type_name, "status", state=state)
            observed = await self.observe(rotator, ctx, type_name, item)
            promoted = self._promoted_at(type_name, item)
            d = decide(policy, now, RetireItem(promoted, item.retired_at), observed)
            seen = observed if isinstance(observed, Adoption) else None
            if seen is not None and seen.current is not None and doc["current"] is None:
                doc["current"] = seen.current.public()
            doc["previous"].append(
                {
                    "rotation_id": item.rotation_id,
                    "promoted_at": promoted,
                    "earliest": promoted + policy.min_grace,
                    "grace_end": promoted + policy.grace,
                    "hard_deadline": (
                        promoted + policy.hard_deadline if policy.hard_deadline else None
                    ),
                    "retired_at": item.retired_at,
                    "usage": seen.previous.public() if seen and seen.previous else None,
                    "observable": observed is not None and not isinstance(observed, BaseException),
                    "error": _error_text(observed) if isinstance(observed, BaseException) else "",
                    "action": d.action,
                    "reason": d.reason,
                    "last_observed": item.observed,
                    "last_observed_at": item.observed_at,
                }
            )
        return doc

    # ------------------------------------------------------------------ the run
    async def run(
        self,
        types: list[str] | None = None,
        *,
        due_only: bool = False,
        dry_run: bool = False,
        force: bool = False,
        notify: bool = False,
        wait_retire: timedelta | None = None,
    ) -> RunReport:
        """Rotate ``types``; with ``wait_retire``, then watch each new rotation's previous
        credential (holding the lock) and retire it as soon as its policy allows, for at
        most that long."""
        names = types if types is not None else self.config.type_names
        unknown = [t for t in names if t not in self.config.types]
        if unknown:
            raise ConfigError(
                f"unknown secret type(s) {', '.join(unknown)};"
                f" valid: {', '.join(self.config.type_names)}"
            )
        run_id = uuid.uuid4().hex[:12]
        report = RunReport(
            env=self.env.name,
            run_id=run_id,
            actor=self.actor,
            started_at=self.now(),
            dry_run=dry_run,
            due_only=due_only,
        )
        log.info(
            "rotation run started",
            extra={
                "env": self.env.name,
                "run_id": run_id,
                "types": names,
                "due_only": due_only,
                "dry_run": dry_run,
                "actor": self.actor,
            },
        )
        if dry_run:
            for t in names:
                report.results.append(await self._plan(t, due_only, force))
        else:
            settle = None if wait_retire is None else (lambda: self._settle(report, wait_retire))
            await self._locked_pass(
                run_id, names, report, lambda t: self._rotate_type(t, due_only, force), settle
            )
        report.finished_at = self.now()
        if notify and not dry_run:
            from .notify import send_notifications

            report.notifications = await send_notifications(self.env, self.client, report)
        try:
            await self._metrics(report)
        except Exception as exc:  # metrics never replace the outcome they describe
            report.warnings.append(f"metrics not recorded: {type(exc).__name__}")
            log.error("rotation metrics failed: %s", type(exc).__name__)
        log.info(
            "rotation run finished",
            extra={
                "env": self.env.name,
                "run_id": run_id,
                "ok": report.ok,
                "results": {r.type: r.status for r in report.results},
            },
        )
        return report

    def _not_started(self, t: str, why: str) -> TypeResult:
        res = TypeResult(
            t,
            "failed",
            secret=self._where(t),
            reason=f"not started: this run lost the rotation lock ({why})",
        )
        self.progress(t, f"failed: {res.reason}")
        return res

    async def _release(self, lock: VaultLock, report: RunReport) -> None:
        """Free the lock; a failure is a warning of the report, never its replacement."""
        try:
            await lock.release()
        except Exception as exc:  # the outcome of the run stands; the lock expires by itself
            text = (
                f"the rotation lock could not be released ({_error_text(exc)}); it expires"
                f" by itself within {format_duration(self.env.env.lock_ttl)}"
            )
            report.warnings.append(text)
            log.error(text, extra={"run_id": report.run_id})

    async def _guard(self, res: TypeResult, step: str) -> None:
        """Before every step: this run must still hold the lock (else stop, state kept)."""
        res.step = step
        if self._lock is not None:
            await self._lock.ensure_held()

    async def _metrics(self, report: RunReport) -> None:
        """Prometheus metrics of the run: Pushgateway and/or textfile, when configured."""
        pushgateway = os.environ.get("MAILY_PUSHGATEWAY_URL")
        textfile = os.environ.get("MAILY_METRICS_TEXTFILE")
        if report.dry_run or not (pushgateway or textfile):
            return  # nowhere to send them: no prometheus_client import either
        from . import metrics

        registry = metrics.record(report)
        if pushgateway:
            rec = await metrics.push_async(registry)  # one group per {env, type}
            report.notifications.append(rec)
        if textfile:
            rec = await asyncio.to_thread(metrics.write_textfile, registry, textfile)
            report.notifications.append(rec)

    def _context(
        self,
        type_name: str,
        rotation_id: str,
        *,
        force: bool = False,
        state: RotationState | None = None,
    ) -> RotationContext:
        return RotationContext(
            env=self.env,
            type_name=type_name,
            type_config=self.env.type(type_name),
            client=self.client,
            rotation_id=rotation_id,
            log=log,
            now=self.now,
            force=force,
            state=state,
        )

    async def _plan(self, t: str, due_only: bool, force: bool) -> TypeResult:
        state, _ = await self.store.read(t)
        sched = await self.schedule(t, state)
        res = TypeResult(
            t,
            "planned",
            secret=self._where(t),
            next_due=sched["next_due"],
            last_rotated=sched["last_rotated"],
        )
        try:
            rotator = rotator_for(t, self.env.type(t).rotator)
            ctx = self._context(t, "dry-run")
            await rotator.check(ctx)
            if state is not None and state.in_progress:
                res.reason = f"would resume rotation {state.rotation_id} after step {state.step}"
            elif due_only and not sched["due"]:
                res.status, res.reason = (
                    "skipped",
                    f"not due until {rfc3339(sched['next_due'], ms=False)}",
                )
            elif (gate := self._grace_gate(rotator, ctx, state, force)) is not None:
                res.status, res.reason = "skipped", gate
            else:
                res.reason = await rotator.describe(ctx)
        except ActionRequired as exc:
            res.status, res.reason = "action_required", str(exc)
        except (RotationError, VaultError) as exc:
            res.status, res.reason = "failed", _error_text(exc)
        self.progress(t, f"{res.status}: {res.reason}")
        return res

    def _where(self, t: str) -> str:
        secret = self.env.type(t).secret
        if KV2Path.parse(secret) is not None or "/keys/" in secret:
            return secret
        return f"{self.client.settings.kv_mount}/data/{secret}"

    def _grace_gate(
        self, rotator: Rotator, ctx: RotationContext, state: RotationState | None, force: bool
    ) -> str | None:
        if not rotator.two_slots or force or state is None or state.last_success_at is None:
            return None
        if state.last_rotation_id and not any(
            i.rotation_id == state.last_rotation_id for i in state.retiring
        ):
            return None  # its previous credential is retired already: nobody to cut off
        until = state.last_success_at + ctx.grace
        if self.now() < until:
            return (
                f"the previous credential is in its grace period until {rfc3339(until, ms=False)}"
                " (a rotation now would cut off its holders); --force overrides"
            )
        return None

    async def _rotate_type(self, t: str, due_only: bool, force: bool) -> TypeResult:
        started = time.monotonic()
        res = TypeResult(t, "skipped", secret=self._where(t), started_at=self.now())
        try:
            await self._rotate_type_inner(t, due_only, force, res)
        except LockLost as exc:
            res.status = "failed"
            res.reason = (
                f"stopped before step {res.step or 'start'}: this run lost the rotation lock"
                f" ({exc}); the next run resumes from the saved state"
            )
            log.error(
                "rotation of %s stopped: lock lost",
                t,
                extra={"type": t, "rotation_id": res.rotation_id, "step": res.step},
            )
        except ActionRequired as exc:
            res.status = "action_required"
            res.reason = str(exc)
            log.warning("%s needs a person: %s", t, res.reason, extra={"type": t})
        except (RotationError, VaultError, ConfigError) as exc:
            res.status = "failed"
            res.reason = _error_text(exc)
            log.error(
                "rotation of %s failed: %s",
                t,
                res.reason,
                extra={"type": t, "rotation_id": res.rotation_id, "step": res.step},
            )
        except Exception as exc:  # a rotator bug must not abort the other types
            res.status = "failed"
            res.reason = (
                f"unexpected {type(exc).__name__} at step {res.step or 'start'}"
                " (a bug in the rotator; the message is withheld in case it holds a value)"
            )
            log.error(
                "rotation of %s failed unexpectedly: %s",
                t,
                type(exc).__name__,
                extra={
                    "type": t,
                    "rotation_id": res.rotation_id,
                    "step": res.step,
                    "where": "".join(traceback.format_tb(exc.__traceback__)[-3:]),
                },
            )
        res.duration_s = round(time.monotonic() - started, 3)
        try:
            state, _ = await self.store.read(t)
            sched = await self.schedule(t, state)
            res.next_due, res.last_rotated = sched["next_due"], sched["last_rotated"]
        except VaultError:
            pass
        self.progress(t, f"{res.status}" + (f": {res.reason}" if res.reason else ""))
        return res

    async def _rotate_type_inner(
        self, t: str, due_only: bool, force: bool, res: TypeResult
    ) -> None:
        store = self.store
        state, version = await store.read(t)
        rotator = rotator_for(t, self.env.type(t).rotator)

        # 1. retire what earlier rotations kept for their grace period
        if state is not None and state.retiring and not state.in_progress:
            version, _ = await self._retire(rotator, state, version, res, final=True)
            res.step = None

        # 2. resume an interrupted rotation, or start a new one
        if state is not None and state.in_progress:
            assert state.rotation_id is not None and state.pending is not None
            ctx = self._context(t, state.rotation_id, force=force, state=state)
            res.rotation_id = state.rotation_id
            self.progress(t, f"resuming {state.rotation_id} after step {state.step}")
            log.info(
                "resuming rotation",
                extra={"type": t, "rotation_id": state.rotation_id, "step": state.step},
            )
            resumed = True
        else:
            sched = await self.schedule(t, state)
            if due_only and not sched["due"]:
                res.reason = f"not due until {rfc3339(sched['next_due'], ms=False)}"
                return
            ctx = self._context(t, new_rotation_id(t), force=force, state=state)
            gate = self._grace_gate(rotator, ctx, state, force)
            if gate is not None:
                res.reason = gate
                return
            res.rotation_id = ctx.rotation_id
            await rotator.check(ctx)
            await self._guard(res, "create_pending")
            self.progress(t, "creating the new credential")
            pending = await rotator.create_pending(ctx)
            prev = state or RotationState(type=t, env=self.env.name)
            state = prev.model_copy(
                update={
                    "rotation_id": ctx.rotation_id,
                    "step": "created",
                    "outcome": "in_progress",
                    "by": self.actor,
                    "started_at": self.now(),
                    "error": "",
                    "pending": pending,
                }
            )
            version = await self._save(state, version)
            resumed = False

        pending = state.pending or {}
        step = state.step
        if step == "created":
            await self._guard(res, "apply")
            self.progress(t, "applying to the target system")
            try:
                await rotator.apply(ctx, pending)
            except PendingLost as exc:
                await self._rollback(rotator, ctx, state, version, exc, res)
                return
            state.step = "applied"
            version = await self._save(state, version)
            step = "applied"
        if step == "applied":
            await self._guard(res, "verify")
            self.progress(t, "verifying the new credential")
            try:
                await rotator.verify(ctx, pending)
            except (RotationError, VaultError, OSError) as exc:
                await self._rollback(rotator, ctx, state, version, exc, res)
                return
            state.step = "verified"
            version = await self._save(state, version)
            step = "verified"
        if step == "verified":
            await self._guard(res, "promote")
            self.progress(t, "promoting (check-and-set)")
            state.last_version = await rotator.promote(ctx, pending)
            state.step = "promoted"
            version = await self._save(state, version)
            step = "promoted"
        if step == "promoted":
            await self._restart_workloads(t, ctx, res)
            await self._guard(res, "finish")
            retiring = rotator.retiring(ctx, pending)
            if retiring:
                state.retiring.append(
                    Retiring(
                        after=self.now() + ctx.grace,
                        data=retiring,
                        rotation_id=ctx.rotation_id,
                        promoted_at=self.now(),
                    )
                )
            state.step = "finished"
            state.outcome = "success"
            state.pending = None
            state.last_success_at = self.now()
            state.last_rotation_id = ctx.rotation_id
            version = await self._save(state, version)
        res.status = "resumed" if resumed else "rotated"
        res.step = "finished"
        res.version = state.last_version
        note = await rotator.follow_up(ctx, pending)
        if note:
            res.status, res.reason = "action_required", note
        log.info(
            "rotated",
            extra={
                "type": t,
                "rotation_id": ctx.rotation_id,
                "version": state.last_version,
                "resumed": resumed,
            },
        )

    async def _restart_workloads(self, t: str, ctx: RotationContext, res: TypeResult) -> None:
        """After the promote, before finishing: restart the Deployments annotated
        ``maily.io/restart-on-rotation`` for this type, one at a time (rotation/restarts.py),
        when the environment configures ``restarts``. If one is not restarted (a rollout
        failed or timed out, RBAC refused, a Deployment is paused), the rotation stays at
        ``promoted``: the previous credential is not scheduled for retirement, the type
        is reported failed, and the next run resumes here."""
        cfg = self.env.env.restarts
        if cfg is None:
            return
        from .restarts import restart_workloads

        await self._guard(res, "restart")
        outcome = await restart_workloads(
            cfg,
            t,
            ctx.rotation_id,
            clock=self.clock,
            progress=lambda m: self.progress(t, m),
            guard=lambda: self._guard(res, "restart"),
        )
        res.notes.extend(outcome.notes())
        if outcome.hold_retirement:
            raise RotationError(outcome.hold_reason())

    async def _save(self, state: RotationState, version: int) -> int:
        new_version = await self.store.write(state, cas=version)
        if self._crash_after and state.step == self._crash_after:
            # fault injection (tests): die like a killed pod, right after this step
            logging.shutdown()
            os._exit(70)
        return new_version

    async def _rollback(
        self,
        rotator: Rotator,
        ctx: RotationContext,
        state: RotationState,
        version: int,
        exc: BaseException,
        res: TypeResult,
    ) -> None:
        log.error(
            "verification failed, rolling back",
            extra={
                "type": ctx.type_name,
                "rotation_id": ctx.rotation_id,
                "error": type(exc).__name__,
            },
        )
        self.progress(ctx.type_name, "verification failed: rolling back")
        rollback_error = ""
        try:
            await rotator.rollback(ctx, state.pending or {})
        except (RotationError, VaultError, OSError) as rb:
            rollback_error = f"; rollback also failed: {_error_text(rb)}"
        state.step = "rolled_back"
        state.outcome = "rolled_back"
        state.error = _error_text(exc) + rollback_error
        state.pending = None
        await self._save(state, version)
        res.status = "rolled_back"
        res.reason = (
            f"verification failed ({_error_text(exc)}); rolled back, the credential in use"
            " was not replaced" + rollback_error
        )

    # ------------------------------------------------------------------ retirement
    def policy(self, type_name: str) -> RetirePolicy:
        return RetirePolicy.of(self.env.type(type_name))

    def _promoted_at(self, type_name: str, item: Retiring) -> datetime:
        """When the item's rotation promoted (states stored before: end of grace - grace)."""
        if item.promoted_at is not None:
            return item.promoted_at
        return item.after - (self.env.type(type_name).grace or timedelta(0))

    async def observe(
        self, rotator: Rotator, ctx: RotationContext, type_name: str, item: Retiring
    ) -> Adoption | BaseException | None:
        """``rotator.usage`` for one retiring item: its Adoption, None (the target cannot
        tell), or the error that kept us from seeing (never taken for "idle")."""
        try:
            return await rotator.usage(ctx, item.data, since=self._promoted_at(type_name, item))
        except (RotationError, VaultError, OSError) as exc:
            return exc
        except Exception as exc:  # a rotator bug: the message may hold a value
            return RotationError(f"usage() failed unexpectedly ({type(exc).__name__})")

    @staticmethod
    def _record_observation(
        item: Retiring, observed: Adoption | BaseException | None, now: datetime
    ) -> bool:
        """Keep what was seen in the item (public identifiers only); True if it changed."""
        doc = observed.public() if isinstance(observed, Adoption) else None
        error = _error_text(observed) if isinstance(observed, BaseException) else ""
        if doc == item.observed and error == item.observed_error:
            return False
        item.observed, item.observed_error, item.observed_at = doc, error, now
        return True

    @staticmethod
    def _public_decision(item: Retiring, d: Decision) -> dict[str, Any]:
        return {
            "rotation_id": item.rotation_id,
            "action": d.action,
            "reason": d.reason,
            "next_check": d.next_check,
            "stragglers": [u.public() for u in d.stragglers],
        }

    async def _retire(
        self,
        rotator: Rotator,
        state: RotationState,
        version: int,
        res: TypeResult,
        *,
        final: bool,
    ) -> tuple[int, list[tuple[Retiring, Decision]]]:
        """Apply the retire policy to every retiring item of ``state`` (saved with CAS when
        anything changed): the new version and each item's decision (one whose retire
        failed is reported as a "wait"). ``final``: this is the run's last look, so what
        keeps waiting with users past its grace is named in the report (not on every
        settle round)."""
        policy = self.policy(state.type)
        keep: list[Retiring] = []
        changed = False
        retired = 0
        decisions: list[tuple[Retiring, Decision]] = []
        for item in state.retiring:
            ctx = self._context(state.type, item.rotation_id, state=state)
            observed = await self.observe(rotator, ctx, state.type, item)
            now = self.now()
            changed |= self._record_observation(item, observed, now)
            d = decide(
                policy,
                now,
                RetireItem(self._promoted_at(state.type, item), item.retired_at),
                observed,
            )
            decisions.append((item, d))
            if d.action == "forget":
                changed = True
                continue
            if not d.retires:
                keep.append(item)
                grace_over = now >= item.after
                if final and d.stragglers and (grace_over or d.action == "keep_forever"):
                    self._stragglers(res, item, d, "still in use")
                continue
            await self._guard(res, "retire")
            ctx.end_sessions = d.end_sessions
            try:
                note = await rotator.retire(ctx, item.data)
            except (RotationError, VaultError, OSError) as exc:
                log.warning(
                    "retiring after %s failed; will retry: %s",
                    item.rotation_id,
                    _error_text(exc),
                    extra={"type": state.type},
                )
                text = (
                    f"retiring what rotation {item.rotation_id} kept failed (will retry):"
                    f" {_error_text(exc)}"
                )
                if text not in res.notes:  # --wait-retire tries every few seconds
                    res.notes.append(text)
                keep.append(item)
                decisions[-1] = (item, replace(d, action="wait", reason=f"{d.reason}; failed"))
                continue
            retired += 1
            changed = True
            if note:
                res.notes.append(note)
            if d.stragglers:
                self._stragglers(res, item, d, "retired while in use")
            log.info(
                "previous credential retired",
                extra={
                    "type": state.type,
                    "rotation_id": item.rotation_id,
                    "action": d.action,
                    "reason": d.reason,
                },
            )
            if d.keep:  # at_grace with a hard deadline: end its sessions then
                item.retired_at = now
                keep.append(item)
        res.retirement = [self._public_decision(i, d) for i, d in decisions]
        if changed:
            state.retiring = keep
            version = await self.store.write(state, cas=version)
        if retired:
            self.progress(state.type, f"retired {retired} previous credential(s)")
        return version, decisions

    def _stragglers(self, res: TypeResult, item: Retiring, d: Decision, what: str) -> None:
        credential = d.previous.credential if d.previous else "the previous credential"
        text = f"{credential} {what} ({item.rotation_id}): {d.reason}"
        if text not in res.notes:
            res.notes.append(text)
        for u in d.stragglers:
            entry = {"credential": credential, "rotation_id": item.rotation_id, **u.public()}
            if entry not in res.stragglers:
                res.stragglers.append(entry)

    async def _retire_type(self, t: str) -> TypeResult:
        """``retire_due`` for one type: what its policy allows now, no rotation."""
        res = TypeResult(t, "skipped", secret=self._where(t), started_at=self.now())
        started = time.monotonic()
        try:
            state, version = await self.store.read(t)
            if state is None or not state.retiring:
                res.reason = "nothing to retire"
            elif state.in_progress:
                res.reason = (
                    f"rotation {state.rotation_id} is in progress (step {state.step});"
                    f" {command('secrets', 'rotate')} resumes it, then retires"
                )
            else:
                rotator = rotator_for(t, self.env.type(t).rotator)
                before = len(state.retiring)
                _, decisions = await self._retire(rotator, state, version, res, final=True)
                done = [d for _, d in decisions if d.retires]
                if done:
                    res.status = "retired"
                    res.reason = "; ".join(d.reason for d in done)
                else:
                    res.reason = "; ".join(d.reason for _, d in decisions) or (
                        f"{before} retiring, nothing due"
                    )
        except LockLost as exc:
            res.status, res.reason = "failed", f"stopped: this run lost the rotation lock ({exc})"
        except (RotationError, VaultError, ConfigError) as exc:
            res.status, res.reason = "failed", _error_text(exc)
        except Exception as exc:  # a rotator bug must not abort the other types
            res.status = "failed"
            res.reason = f"unexpected {type(exc).__name__} while retiring (message withheld)"
            log.error("retiring %s failed unexpectedly: %s", t, type(exc).__name__)
        res.duration_s = round(time.monotonic() - started, 3)
        self.progress(t, f"{res.status}" + (f": {res.reason}" if res.reason else ""))
        return res

    async def retire_due(
        self, types: list[str] | None = None, *, notify: bool = False
    ) -> RunReport:
        """Retire what the types' retire policies allow now (no rotation), under the lock."""
        names = types if types is not None else self.config.type_names
        unknown = [t for t in names if t not in self.config.types]
        if unknown:
            raise ConfigError(
                f"unknown secret type(s) {', '.join(unknown)};"
                f" valid: {', '.join(self.config.type_names)}"
            )
        run_id = uuid.uuid4().hex[:12]
        report = RunReport(
            env=self.env.name,
            run_id=run_id,
            actor=self.actor,
            started_at=self.now(),
            due_only=True,
        )
        await self._locked_pass(run_id, names, report, self._retire_type)
        report.finished_at = self.now()
        if notify:
            from .notify import send_notifications

            report.notifications = await send_notifications(self.env, self.client, report)
        return report

    async def _locked_pass(
        self,
        run_id: str,
        names: list[str],
        report: RunReport,
        one: Callable[[str], Awaitable[TypeResult]],
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Take the environment's lock and run ``one`` for each type in turn, then ``then``;
        every type is "busy" when another run holds the lock, and the types after a lost
        lock are not started. The lock is released (and its release reported) whatever
        happens."""
        lock = VaultLock(
            self.client,
            KV2Path(self.client.settings.kv_mount, f"{self.env.env.state_prefix}/_lock"),
            run_id,
            self.actor,
            self.env.env.lock_ttl,
            clock=self.clock,
        )
        try:
            await lock.acquire()
        except LockBusy as exc:
            for t in names:
                report.results.append(TypeResult(t, "busy", reason=str(exc)))
                self.progress(t, "busy: another rotation is running")
            return
        self._lock = lock
        try:
            for t in names:
                if lock.lost is not None:
                    report.results.append(self._not_started(t, lock.lost))
                    continue
                report.results.append(await one(t))
            if then is not None:
                await then()
        finally:
            self._lock = None
            await self._release(lock, report)

    async def _settle(self, report: RunReport, wait: timedelta) -> None:
        """``--wait-retire``: after the rotations of this run, look at who uses each one's
        previous credential every ``settle_interval`` seconds (the engine's clock) and
        retire it as soon as its policy allows, until retired or ``wait`` has passed."""
        watching = {
            r.type: r
            for r in report.results
            if r.status in ("rotated", "resumed", "action_required") and r.rotation_id
        }
        end = self.clock.monotonic() + wait.total_seconds()
        last: dict[str, list[tuple[Retiring, Decision]]] = {}
        first = True
        while watching:
            if not first:
                remaining = end - self.clock.monotonic()
                if remaining <= 0:
                    break
                await self.clock.sleep(min(self.settle_interval, remaining))
            first = False
            for t, res in list(watching.items()):
                try:
                    if self._lock is not None:
                        await self._lock.ensure_held()
                    state, version = await self.store.read(t)
                    mine = [
                        i
                        for i in (state.retiring if state else [])
                        if i.rotation_id == res.rotation_id
                    ]
                    if state is None or not mine:
                        watching.pop(t)
                        continue
                    rotator = rotator_for(t, self.env.type(t).rotator)
                    _, last[t] = await self._retire(rotator, state, version, res, final=False)
                    ours = [d for i, d in last[t] if i.rotation_id == res.rotation_id]
                    if all(d.retires and not d.keep for d in ours) or any(
                        d.action in ("keep_forever", "forget") for d in ours
                    ):
                        watching.pop(t)
                except LockLost as exc:
                    res.notes.append(
                        f"--wait-retire stopped: this run lost the rotation lock ({exc})"
                    )
                    return
                except (RotationError, VaultError) as exc:
                    text = f"--wait-retire: {_error_text(exc)} (will retry)"
                    if text not in res.notes:  # once, not every few seconds
                        res.notes.append(text)
        for t, res in watching.items():
            waiting = [(i, d) for i, d in last.get(t, []) if i.rotation_id == res.rotation_id]
            for item, d in waiting:
                if d.stragglers:
                    self._stragglers(res, item, d, "still in use")
                res.notes.append(
                    f"--wait-retire {format_duration(wait)} ended; the previous credential is"
                    f" still retiring: {d.reason}"
                )
