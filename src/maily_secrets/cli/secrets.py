"""``mailyctl secrets``: rotate, retire, status, history."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ..errors import ConfigurationError, VaultError
from ..logs import configure as configure_logs
from ..rotation.config import ConfigError, RotationConfig, format_duration, parse_duration
from ..rotation.engine import RotationEngine
from ..rotation.report import RunReport
from .common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Part,
    config_fail,
    fmt_time,
    is_terminal,
    print_json,
    print_table,
    say,
    styled,
)

_say = say

EXIT_BUSY = 3
T = TypeVar("T")

app = typer.Typer(
    help=(
        "Rotate secrets and inspect their schedule. Intervals, environments and where each"
        " secret type lives come from the rotation config (--config, $MAILY_ROTATION_CONFIG,"
        " or the built-in default)."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="Rotation config YAML (default: $MAILY_ROTATION_CONFIG, else the built-in one).",
        show_default=False,
    ),
]
EnvOpt = Annotated[
    str | None,
    typer.Option(
        "--env",
        metavar="NAME",
        help="Environment from the config (default: $MAILY_ENV, else the config's default).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
LogLevelOpt = Annotated[
    str,
    typer.Option(
        "--log-level",
        metavar="LEVEL",
        envvar="MAILY_LOG_LEVEL",
        help="Run log (JSON lines on stderr, never values): debug, info, warning, error.",
    ),
]


def _usage(message: str) -> NoReturn:
    say(styled("error:", "red"), " ", message, err=True)
    raise typer.Exit(EXIT_USAGE)


def _load(config: Path | None, env: str | None) -> tuple[RotationConfig, str]:
    try:
        cfg = RotationConfig.load(config)
        resolved = cfg.environment(env)
    except ConfigError as exc:
        _usage(str(exc))
    return cfg, resolved.name


def _logging(level: str) -> None:
    levels = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "error": logging.ERROR,
    }
    if level.lower() not in levels:
        _usage(f"unknown --log-level {level!r}; valid: {', '.join(levels)}")
    configure_logs(levels[level.lower()], stream=sys.stderr)


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``coro_fn()``; bad configuration exits 2, a Vault error exits 1 (one line each)."""

    async def main() -> T:
        return await coro_fn()

    try:
        return asyncio.run(main())
    except ConfigError as exc:
        _usage(str(exc))
    except ConfigurationError as exc:
        config_fail(exc)
    except VaultError as exc:
        say(styled("error:", "red"), " ", str(exc), err=True)
        raise typer.Exit(EXIT_FAILURE) from None


def _with_engine(
    cfg: RotationConfig,
    env_name: str,
    use: Callable[[RotationEngine], Awaitable[T]],
    **engine_kw: Any,
) -> T:
    """``use(engine)`` with an engine that is always closed, through :func:`_run`."""

    async def go() -> T:
        engine = RotationEngine(cfg, env_name, **engine_kw)
        try:
            return await use(engine)
        finally:
            await engine.close()

    return _run(go)


def _confirm(cfg: RotationConfig, env_name: str, question: str) -> None:
    """Ask on a terminal when the environment wants confirmation; exit 1 on no."""
    resolved = cfg.environment(env_name)
    if not resolved.confirm or not sys.stdin.isatty():
        return
    if not typer.confirm(f"{question} (Vault {resolved.vault_settings().addr})?", default=False):
        say("aborted; nothing changed", err=True)
        raise typer.Exit(EXIT_FAILURE)


def _run_pass(
    cfg: RotationConfig,
    env_name: str,
    use: Callable[[RotationEngine], Awaitable[RunReport]],
    as_json: bool,
) -> None:
    """One engine pass (rotate or retire) with progress lines, then its report; exit 3 when
    another run held the lock, 1 when a type failed."""

    def progress(type_name: str, message: str) -> None:
        say(styled(f"{type_name:>15}", "bold"), "  ", message, err=as_json)

    report = _with_engine(cfg, env_name, use, progress=progress)
    if as_json:
        print_json(report.to_json())
    else:
        _print_report(report)
    if any(r.status == "busy" for r in report.results):
        raise typer.Exit(EXIT_BUSY)
    if not report.ok:
        raise typer.Exit(EXIT_FAILURE)


def _parse_time(s: str) -> datetime | None:
    """Vault's ``created_time`` (RFC 3339, nanoseconds) as a datetime; None if absent."""
    try:
        return datetime.fromisoformat(s) if s else None
    except ValueError:
        return None


def _fmt_age(td: timedelta | None) -> str:
    if td is None:
        return "-"
    s = int(td.total_seconds())
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 60}m {s % 60}s"


_STATUS_STYLE = {
    "rotated": "green",
    "resumed": "green",
    "skipped": "dim",
    "planned": "cyan",
    "failed": "red",
    "rolled_back": "red",
    "busy": "yellow",
    "action_required": "yellow",
    "retired": "green",
}


def _print_report(report: RunReport) -> None:
    title = f"rotation run {report.run_id} in {report.env}" + (
        " (dry run)" if report.dry_run else ""
    )
    rows: list[list[Part]] = [
        [
            r.type,
            styled(r.status, _STATUS_STYLE.get(r.status, "")),
            r.secret,
            str(r.version or "-"),
            fmt_time(r.next_due),
            r.reason or (r.rotation_id or ""),
        ]
        for r in report.results
    ]
    print_table(title, ("type", "outcome", "secret", "version", "next due", "detail"), rows)
    for r in report.results:
        for note in getattr(r, "notes", None) or []:
            say(f"{r.type}: {note}")
        for u in getattr(r, "stragglers", None) or []:
            say(
                styled(f"{r.type}: still using {u.get('credential')}", "yellow"),
                f" {u.get('count')} x application_name={u.get('application') or '(none)'}"
                f" address={u.get('address') or '(hidden)'}",
            )
    for w in getattr(report, "warnings", None) or []:
        say(styled("warning", "yellow"), " ", w)
    for n in report.notifications:
        mark = styled("sent", "green") if n.get("ok") else styled("failed", "red")
        say(f"notify {n.get('channel')}: ", mark, f" {n.get('detail', '')}")


@app.command(short_help="Rotate secrets (verified, CAS).")
def rotate(
    secret_types: Annotated[
        str | None,
        typer.Option(
            "--secret-types",
            metavar="TYPES",
            help="Comma-separated types to rotate (e.g. jwt,aws) or 'all' (the default).",
            show_default=False,
        ),
    ] = None,
    env: EnvOpt = None,
    notify: Annotated[
        bool, typer.Option("--notify", help="Send a summary to administrators (email/webhook).")
    ] = False,
    due: Annotated[
        bool, typer.Option("--due", help="Rotate only types past their interval (the CronJob).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (production).")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Rotate a two-slot credential even while the previous one is in its grace period.",
        ),
    ] = False,
    wait_retire: Annotated[
        str | None,
        typer.Option(
            "--wait-retire",
            metavar="DURATION",
            help=(
                "After the promote, keep watching who still uses the previous credential"
                " (every few seconds, holding the lock) and retire it as soon as the type's"
                " retire policy allows, for at most DURATION (e.g. 10m); what is still"
                " retiring then is left to a later run or 'secrets retire'."
            ),
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Rotate secrets: new credential -> set on the target -> verify -> promote (CAS).

    The previous credential keeps working until the type's retire policy retires it
    (rotation config, per type: retire: when_idle (default: once its target shows no
    users, at the earliest after min_grace), at_grace, never; hard_deadline ends its
    sessions). Each run retires what is due first; --wait-retire also waits for the
    new rotation's previous credential.

    Exit codes: 0 all rotated or skipped, 1 a type failed, 2 bad input (nothing
    changed), 3 another rotation holds the lock.
    """
    _logging(log_level)
    cfg, env_name = _load(config, env)
    try:
        types = cfg.parse_types(secret_types)
    except ConfigError as exc:
        _usage(str(exc))
    wait: timedelta | None = None
    if wait_retire is not None:
        try:
            wait = parse_duration(wait_retire)
        except ValueError as exc:
            _usage(f"--wait-retire: {exc}")
        if dry_run:
            _usage("--wait-retire and --dry-run exclude each other (a dry run retires nothing)")
    if not yes and not dry_run:
        _confirm(cfg, env_name, f"Rotate {', '.join(types)} in {env_name}")
    _run_pass(
        cfg,
        env_name,
        lambda e: e.run(
            types, due_only=due, dry_run=dry_run, force=force, notify=notify, wait_retire=wait
        ),
        as_json,
    )


@app.command(short_help="Retire previous credentials that their policy allows now.")
def retire(
    secret_types: Annotated[
        str | None,
        typer.Option(
            "--secret-types",
            metavar="TYPES",
            help="Comma-separated types (e.g. database,redis) or 'all' (the default).",
            show_default=False,
        ),
    ] = None,
    env: EnvOpt = None,
    notify: Annotated[
        bool, typer.Option("--notify", help="Send a summary to administrators (email/webhook).")
    ] = False,
    as_json: JsonOpt = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (production).")
    ] = False,
    config: ConfigOpt = None,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Retire what earlier rotations kept, where the type's retire policy allows it now.

    No rotation. For each retiring previous credential the target is asked who still
    uses it (PostgreSQL: sessions of the previous login role, with application_name and
    client address), then, by the type's `retire` setting:
    when_idle (default) retires it once nothing uses it, at the earliest `min_grace`
    after the promote (a target that cannot tell, at the end of `grace`); at_grace
    retires it at the end of `grace` even if used, naming who still uses it; never keeps
    it. Past `hard_deadline` it is retired even if used and its sessions are ended.

    Exit codes: 0 done (retired or nothing due), 1 a type failed, 2 bad input,
    3 another rotation holds the lock.
    """
    _logging(log_level)
    cfg, env_name = _load(config, env)
    try:
        types = cfg.parse_types(secret_types)
    except ConfigError as exc:
        _usage(str(exc))
    if not yes:
        _confirm(cfg, env_name, f"Retire what is due of {', '.join(types)} in {env_name}")
    _run_pass(cfg, env_name, lambda e: e.retire_due(types, notify=notify), as_json)


def _usage_line(u: dict[str, Any] | None) -> str:
    """One line of a ``Usage.public()``: who uses the credential (no values)."""
    if not u:
        return "not observable"
    if not u.get("observable"):
        return f"{u.get('credential')}: users not observable ({u.get('note') or 'unknown'})"
    users = u.get("users") or []
    if not users:
        return f"{u.get('credential')}: no users"
    parts = [
        f"{x.get('count')} x {x.get('application') or '(no name)'}"
        f" from {x.get('address') or '(hidden)'}"
        for x in users[:5]
    ]
    more = f"; and {len(users) - 5} more" if len(users) > 5 else ""
    return f"{u.get('credential')}: {u.get('total')} in use: {'; '.join(parts)}{more}"


def _print_adoption(rows: list[dict[str, Any]]) -> None:
    """Below the table on a terminal; on stderr when stdout is piped, so that the table
    stays one line per type for scripts (``--json`` has it all)."""
    err = not is_terminal(False)

    def say(*parts: Part) -> None:
        _say(*parts, err=err)

    for r in rows:
        doc = r.get("adoption")
        if not doc:
            continue
        say(styled(f"{r['type']}", "bold"), f"  retire: {doc.get('policy')}")
        if doc.get("error"):
            say(f"  error: {doc['error']}")
        if doc.get("current") is not None:
            say(f"  current   {_usage_line(doc['current'])}")
        for item in doc.get("previous") or []:
            seen = (
                _usage_line(item.get("usage"))
                if not item.get("error")
                else f"cannot see ({item['error']})"
            )
            say(f"  previous  {seen}")
            say(f"            {item.get('action')}: {item.get('reason')}")


@app.command(short_help="Last rotated, age, next due per type.")
def status(
    env: EnvOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Per secret type: where it lives, last rotated, age, interval, next due (overdue in red).

    For a type whose previous credential is still retiring, also who uses the new and
    the previous credential, as its target shows it now (PostgreSQL: sessions per login
    role with application_name and client address; JSON: "adoption"), and what its
    retire policy will do (below the table; on stderr when stdout is piped). Types with
    nothing retiring cost no look at their target.

    Exit code 0, or 1 when Vault cannot be read.
    """
    _logging(log_level)
    cfg, env_name = _load(config, env)

    rows = _with_engine(cfg, env_name, lambda e: e.status())
    if as_json:
        types = [{k: v for k, v in r.items() if k != "interval"} for r in rows]
        print_json({"env": env_name, "generated_at": datetime.now(UTC), "types": types})
        return
    table: list[list[Part]] = []
    for r in rows:
        state: Part
        if r["in_progress"]:
            state = styled("in progress (resumes on next run)", "yellow")
        elif r["overdue"]:
            state = styled("OVERDUE", "bold red")
        elif r["last_outcome"] in ("failed", "rolled_back"):
            state = styled(f"last run {r['last_outcome']}", "red")
        else:
            state = styled("ok", "green")
        age = timedelta(seconds=r["age_s"]) if r["age_s"] is not None else None
        table.append(
            [
                r["type"],
                r["secret"],
                fmt_time(r["last_rotated"]),
                _fmt_age(age),
                r["interval"],
                fmt_time(r["next_due"]),
                state,
            ]
        )
    print_table(
        f"secret rotation status: {env_name}",
        ("type", "secret", "last rotated", "age", "interval", "next due", "state"),
        table,
    )
    _print_adoption(rows)


@app.command(short_help="Every step of every rotation of TYPE.")
def history(
    secret_type: Annotated[str, typer.Argument(metavar="TYPE", help="A secret type, e.g. jwt.")],
    env: EnvOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Every recorded step of every rotation of TYPE: when, by whom, rotation id, outcome.

    Never values: the pending credential a step stored is not shown.
    """
    _logging(log_level)
    cfg, env_name = _load(config, env)
    try:
        (t_name,) = cfg.parse_types(secret_type)
    except (ConfigError, ValueError) as exc:
        _usage(str(exc))

    async def steps(engine: RotationEngine) -> list[dict[str, Any]]:
        rows = []
        for version, created, state in await engine.store.history(t_name):
            doc = state.public(mode="python") if state else {"deleted": True}
            rows.append({"version": version, "time": _parse_time(created), **doc})
        return rows

    rows = _with_engine(cfg, env_name, steps)
    if as_json:
        print_json({"env": env_name, "type": t_name, "history": rows})
        return
    if not rows:
        say(f"no rotation of {t_name} recorded in {env_name}")
        return
    print_table(
        f"rotation history of {t_name} in {env_name}",
        ("version", "time", "by", "rotation id", "step", "outcome", "error"),
        [
            [
                str(r["version"]),
                fmt_time(r.get("time"), never=""),
                r.get("by", ""),
                r.get("rotation_id") or "",
                r.get("step") or "",
                r.get("outcome") or "",
                " ".join((r.get("error") or "").split()),
            ]
            for r in rows
        ],
    )


@app.command(
    "set",
    short_help="Store a new value of one API key.",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def set_(
    ctx: typer.Context,
    secret: Annotated[
        str, typer.Argument(metavar="SECRET", help="The secret holding the key: api-keys.")
    ],
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key, e.g. stripe.")],
    new: Annotated[
        bool,
        typer.Option("--new", help="Add a key that is not in the rotation config (kind manual)."),
    ] = False,
    env: EnvOpt = None,
    config: ConfigOpt = None,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Store a new value of one API key, e.g. after rolling it in the vendor's dashboard.

    The value comes from stdin (... | mailyctl secrets set api-keys stripe) or a
    hidden prompt, never from the command line (shell history, ps). Written with
    check-and-set; the time (and who) is recorded as the key's last rotation. Prints
    the new version, never the value.

    Exit codes: 0 stored, 1 Vault failed, 2 bad input (nothing written).
    """
    from ..api_keys import key_name_problem, set_api_key
    from ..paths import KV2Path
    from ..rotation.base import RotatorConfigError
    from ..rotation.engine import default_actor
    from ..rotation.rotators.api_keys import KeySpec, key_specs, uses_api_keys_rotator
    from ..vault.client import VaultClient

    _logging(log_level)
    if ctx.args:
        # never echo them: one of them may well be the value
        named = sorted({a.split("=", 1)[0] for a in ctx.args if a.startswith("-")})
        _usage(
            f"unexpected argument(s) ({len(ctx.args)}, not shown"
            + (f"; unknown option(s) {', '.join(named)}" if named else "")
            + "): the value is never taken from the command line; pipe it on stdin or"
            " type it at the prompt"
        )
    cfg, env_name = _load(config, env)
    resolved = cfg.environment(env_name)
    types = {
        t: tc for t, tc in cfg.types.items() if uses_api_keys_rotator(t, tc) and tc.secret == secret
    }
    if not types:
        valid = sorted({tc.secret for t, tc in cfg.types.items() if uses_api_keys_rotator(t, tc)})
        _usage(
            "only API keys can be set this way; SECRET must be one of: "
            + (", ".join(valid) or "none (no type uses the api_keys rotator)")
        )
    specs: dict[str, KeySpec] = {}
    grace = timedelta(0)
    try:
        for tc in types.values():
            specs.update(key_specs(tc.options))
            grace = max(grace, tc.grace or timedelta(0))
    except RotatorConfigError as exc:
        _usage(str(exc))
    spec = specs.get(name)
    if spec is None:
        if not new:
            _usage(
                f"NAME is not a key of {secret} in the rotation config; valid: "
                f"{', '.join(sorted(specs))} (--new adds a key that is rotated by hand)"
            )
        problem = key_name_problem(name)
        if problem:
            _usage(f"invalid NAME: {problem}")
        spec = KeySpec(name=name, configured=False)

    value: str
    if sys.stdin.isatty():
        value = typer.prompt(
            f"New value of {name} (input hidden)", hide_input=True, confirmation_prompt=True
        )
    else:
        value = sys.stdin.read()
    value = value.strip()
    if not value:
        _usage("empty value; nothing written")
    if any(c.isspace() for c in value) or not value.isprintable():
        _usage("the value must be one line without spaces or control characters; nothing written")

    settings = resolved.vault_settings()
    path = KV2Path(settings.kv_mount, secret)

    async def go() -> int:
        async with VaultClient(settings) as client:
            return await set_api_key(client, path, spec, value, actor=default_actor(), grace=grace)

    version = _run(go)
    extra = (
        f"; the previous value stays valid for {format_duration(grace)}"
        if spec.kind == "internal" and grace
        else ""
    )
    say(
        f"stored {name} in {path.data}: version {version} (value not shown);"
        f" recorded as rotated now{extra}"
    )
