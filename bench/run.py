"""Maily Secrets benchmarks: every figure of issues 13 and 14 in one run, on one real OpenBao.

    bench/.venv/bin/python bench/run.py                 # full run (make bench)
    bench/.venv/bin/python bench/run.py --quick         # fewer rounds and reads
    bench/.venv/bin/python bench/run.py --only cold,ts  # some modules only
    bench/.venv/bin/python bench/run.py --root /work/wt/baseline   # measure another checkout
    bench/.venv/bin/python bench/run.py --json          # the JSON document on stdout

Starts one OpenBao dev server, bootstraps it, builds a :class:`bench_context.Context` and
runs every module of :data:`MODULES` (``bench_<name>.figures(ctx)``) and the TypeScript
script (``node bench/ts/cold_reads.mjs``); each answers with figure dicts whose variants
were measured round by round, interleaved.  Prints one table per figure (median and range
of each variant; for each goal the ratio of medians and the range of the per-round
ratios, met or missed), writes ``bench/results/latest.json`` (figures, parameters, the
machine) and draws ``bench/results/latest.png`` (``chart.py``).

A module that is missing or raises becomes a figure with an error; the run goes on and
the exit code is 1 at the end.  A missed goal does not change the exit code (benchmarks
report, they do not assert).  The token and secret values are never printed or written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODULES = (
    "cold",
    "access_log",
    "registration",
    "cli",
    "memory",
    "feed",
    "adoption",
)  # bench_<name>.py
TS = "ts"  # bench/ts/cold_reads.mjs
TS_SCRIPT = HERE / "ts" / "cold_reads.mjs"
TS_TIMEOUT = 600.0


class Redactor:
    """Removes the token from any text that leaves the process (error messages)."""

    def __init__(self) -> None:
        self.secrets: list[str] = []

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s:
                text = text.replace(s, "***")
        return text


redact = Redactor()


def _error_text(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:500]


def _isolate_env() -> None:
    """No Vault setting of the caller's shell (token, snapshot, mount...) leaks in."""
    for k in list(os.environ):
        if k.startswith(("VAULT_", "BAO_", "MAILY_")):
            del os.environ[k]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the server


def _use_root(root: Path) -> None:
    """The measured checkout's ``src`` (and root) first on ``sys.path``, before any import
    of ``maily_secrets``; the bench's own directory stays importable."""
    for p in (str(root), str(root / "src")):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    if str(HERE) not in sys.path:
        sys.path.append(str(HERE))


# ---------------------------------------------------------------------------- the modules
def run_module(name: str, ctx: Any) -> list[dict[str, Any]]:
    """``bench_<name>.figures(ctx)``; an import error or exception is an error figure."""
    from bench_report import error_figure

    mod_name = f"bench_{name}"
    try:
        mod = importlib.import_module(mod_name)
        figures = mod.figures(ctx)
        if not isinstance(figures, list) or not all(isinstance(f, dict) for f in figures):
            raise TypeError(f"{mod_name}.figures() did not return a list of dicts")
        return [{**f, "module": name} for f in figures]
    except Exception as exc:
        ctx.log(f"[red]{mod_name} failed:[/red] {_error_text(exc)}")
        tb = redact("".join(traceback.format_exception(exc, limit=-3)))
        return [{**error_figure(name, mod_name, _error_text(exc)), "traceback": tb, "module": name}]


def run_ts(ctx: Any, script: Path = TS_SCRIPT) -> list[dict[str, Any]]:
    """``node bench/ts/cold_reads.mjs --rounds N [--quick]``: a JSON list on stdout."""
    from bench_report import error_figure

    argv = ["node", str(script), "--rounds", str(ctx.rounds)] + (["--quick"] if ctx.quick else [])
    try:
        if not script.exists():
            raise FileNotFoundError(f"{script.relative_to(HERE.parent)} is not there")
        proc = subprocess.run(
            argv,
            env=ctx.env(),
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            timeout=TS_TIMEOUT,
            cwd=script.parent,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"node exited with {proc.returncode}")
        figures = json.loads(proc.stdout)
        if not isinstance(figures, list) or not all(isinstance(f, dict) for f in figures):
            raise TypeError("cold_reads.mjs did not print a JSON list of figure dicts")
        return [{**f, "module": TS} for f in figures]
    except Exception as exc:
        ctx.log(f"[red]{script.name} failed:[/red] {_error_text(exc)}")
        return [{**error_figure(TS, script.name, _error_text(exc)), "module": TS}]


# ---------------------------------------------------------------------------- the machine
def _cmd(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _proc_field(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip() == key:
                return v.strip()
    return None


def _node_package_version(name: str) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((HERE / "ts" / "node_modules" / name / "package.json").read_text())
        return str(doc.get("version"))
    return None


def machine(root: Path, bao: str) -> dict[str, Any]:
    import maily_secrets

    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    status = _cmd(["git", "status", "--porcelain"], cwd=root)
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_mib": round(int(mem_kb.split()[0]) / 1024) if mem_kb else None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "node": _cmd(["node", "--version"]),
        "openbao": _cmd([bao, "version"]),
        "libraries": {
            "maily_secrets": getattr(maily_secrets, "__version__", None),
            "maily_secrets_from": str(Path(maily_secrets.__file__).resolve().parent),
            **{d: _version(d) for d in ("aiohttp", "hvac", "async-hvac", "matplotlib")},
            "node-vault": _node_package_version("node-vault"),
        },
        "root": str(root),
        "git_commit": _cmd(["git", "rev-parse", "HEAD"], cwd=root),
        "git_dirty": None if status is None else bool(status),
        "bench_git_commit": _cmd(["git", "rev-parse", "HEAD"], cwd=HERE),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--root",
        type=Path,
        default=HERE.parent,
        help="the checkout measured (its src/ and mailyctl.py); default this one",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="interleaved rounds per variant (default 5; --quick 3)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds and reads")
    ap.add_argument(
        "--only", default="", help=f"comma-separated modules: {', '.join((*MODULES, TS))}"
    )
    ap.add_argument("--json", action="store_true", help="print the JSON document, no table")
    ap.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "latest.json",
        help="JSON results file (the chart goes beside it, .png)",
    )
    args = ap.parse_args(argv)
    if args.rounds < 0:
        ap.error("--rounds must be positive")
    known = (*MODULES, TS)
    only = [n.strip().removeprefix("bench_") for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in known]
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(known)}")
    args.selected = [n for n in known if not only or n in only]
    args.root = args.root.resolve()
    if not (args.root / "src" / "maily_secrets").is_dir():
        ap.error(f"--root {args.root}: no src/maily_secrets there")
    args.rounds = args.rounds or (3 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _use_root(args.root)
    _isolate_env()
    signal.signal(signal.SIGTERM, _on_sigterm)

    from bench_context import Context
    from bench_report import render, summarize, verdicts
    from pydantic import SecretStr
    from rich.console import Console

    from maily_secrets.dev.bootstrap import bootstrap_dev
    from maily_secrets.dev.server import DevServer, bao_binary
    from maily_secrets.settings import VaultSettings
    from maily_secrets.vault.client import VaultClient

    err = Console(stderr=True, highlight=False)

    def log(msg: str) -> None:
        err.print(f"[dim]bench:[/dim] {msg}")

    load_before = _load()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    figures: list[dict[str, Any]] = []
    bao = bao_binary()
    try:
        with tempfile.TemporaryDirectory(prefix="maily-bench-") as tmp, asyncio.Runner() as runner:
            server = DevServer(Path(tmp) / "bao")
            try:
                log("starting a private OpenBao dev server")
                info, _ = server.start(port=0)
                token = info.token()
                redact.secrets.append(token)
                log(f"OpenBao at {info.addr}; measuring {args.root}")

                async def bootstrap() -> None:
                    settings = VaultSettings(
                        addr=info.addr,
                        token=SecretStr(token),
                        auth_method="token",
                        snapshot_path=None,
                    )
                    async with VaultClient(settings) as c:
                        await bootstrap_dev(c)

                runner.run(bootstrap())
                scratch = Path(tmp) / "scratch"
                scratch.mkdir()
                ctx = Context(
                    root=args.root,
                    addr=info.addr,
                    token=token,
                    bao=bao,
                    python=sys.executable,
                    rounds=args.rounds,
                    quick=args.quick,
                    log=log,
                    runner=runner,
                    scratch=scratch,
                )
                for name in args.selected:
                    log(f"--- {name}")
                    t0 = time.perf_counter()
                    figures += run_ts(ctx) if name == TS else run_module(name, ctx)
                    timings[name] = round(time.perf_counter() - t0, 1)
                    log(f"{name}: {timings[name]:.0f}s")
            finally:
                server.stop()
    except Exception as exc:
        err.print(f"[bold red]benchmark failed:[/bold red] {_error_text(exc)}")
        return 1

    summaries = [summarize(f) for f in figures]
    verdict = verdicts(summaries)
    doc: dict[str, Any] = {
        "schema": 2,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "module_seconds": timings,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "parameters": {
            "rounds": args.rounds,
            "quick": args.quick,
            "modules": args.selected,
            "root": str(args.root),
        },
        "machine": {**machine(args.root, bao), "load_before": load_before, "load_after": _load()},
        "goals": verdict,
        "summaries": summaries,
        "figures": figures,
    }
    text = redact(json.dumps(doc, indent=2, default=str))
    png = args.output.with_suffix(".png")
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    except OSError as exc:
        err.print(f"[yellow]cannot write {args.output}: {exc.strerror}[/yellow]")
    try:
        from chart import draw

        draw(summaries, png, subtitle=_subtitle(doc))
    except Exception as exc:
        err.print(f"[yellow]no chart: {_error_text(exc)}[/yellow]")

    if args.json:
        sys.stdout.write(text + "\n")
    else:
        out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        render(out, summaries)
        m = doc["machine"]
        out.print(
            f"[dim]{m['cpu_model']}, {m['cores']} cores, load {m['load_before']} -> "
            f"{m['load_after']}; {args.rounds} interleaved rounds; ratios: of medians, range: "
            f"of per-round ratios.\nMeasured {args.root} at {str(m['git_commit'])[:10]}"
            f"{' (dirty)' if m['git_dirty'] else ''}. Results: {args.output}, {png}[/dim]"
        )
    if verdict["missed"]:
        err.print(f"[bold red]goals missed:[/bold red] {', '.join(verdict['missed'])}")
    if verdict["errors"]:
        err.print(f"[bold red]errors in:[/bold red] {', '.join(verdict['errors'])}")
    log(f"done in {doc['duration_s']:.0f}s")
    return 1 if verdict["errors"] else 0


def _subtitle(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (
        f"{doc['timestamp']}  {m['cores']} cores  load {m['load_before'][0]}->"
        f"{m['load_after'][0]}  {doc['parameters']['rounds']} rounds  "
        f"{str(m['git_commit'])[:10]}{' dirty' if m['git_dirty'] else ''}"
    )


if __name__ == "__main__":
    sys.exit(main())
