"""Maily Secrets benchmarks against hvac and a bare aiohttp loop, on one real OpenBao.

    .venv/bin/python bench/run.py            # full run (about a minute on 2 cores)
    .venv/bin/python bench/run.py --quick    # fewer secrets, rounds and seconds
    .venv/bin/python bench/run.py --json     # the JSON document on stdout, no table

A. Hot cached read: ``VaultService.get_config()`` served from the cache, versus
   hvac's ``read_secret_version`` of the same secret (one HTTP request per call).
B. Concurrent uncached reads of distinct paths: a fresh ``VaultService`` per round
   (every read a miss; its pool, connections and login count) with 64 concurrent
   readers, versus hvac from a 16-thread pool and a bare aiohttp loop with 64 workers.

Variants run interleaved round by round (the order rotates) so that machine noise
hits all of them alike; ratios compare medians.  Results go to
``bench/results/latest.json``.  The exit code is 0 even when a goal is missed:
benchmarks report, they do not assert (it is 1 only when a benchmark could not run).
Secret values and the token are never printed or written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench_report import Benchmark, Ratio, Variant, render
from bench_workloads import (
    Sample,
    concurrent_aiohttp,
    concurrent_hvac,
    concurrent_ours,
    hot_hvac,
    hot_ours,
    secret_names,
    seed,
)
from pydantic import SecretStr
from rich.console import Console

from maily_secrets.dev.bootstrap import bootstrap_dev
from maily_secrets.dev.server import DevServer, bao_binary
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "latest.json"

GOAL_HOT = 300.0
GOAL_VS_HVAC = 3.0
GOAL_VS_AIOHTTP = 0.8


@dataclass(frozen=True)
class Params:
    quick: bool
    secrets: int
    rounds: int
    hot_seconds: float
    concurrency: int = 64
    hvac_threads: int = 16
    warmup_paths: int = 128

    @classmethod
    def of(cls, args: argparse.Namespace) -> Params:
        quick = bool(args.quick)
        return cls(
            quick=quick,
            secrets=args.secrets or (500 if quick else 2000),
            rounds=args.rounds or (3 if quick else 5),
            hot_seconds=0.3 if quick else 1.0,
        )


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
    return redact(f"{type(exc).__name__}: {exc}")[:300]


def _isolate_env() -> None:
    """No Vault setting of the caller's shell (token, snapshot, mount...) leaks in."""
    for k in list(os.environ):
        if k.startswith(("VAULT_", "BAO_", "MAILY_SECRETS_")):
            del os.environ[k]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the server


def _measure(variant: Variant, fn: Callable[[], Sample]) -> Sample | None:
    if variant.error is not None:
        return None
    gc.collect()
    try:
        sample = fn()
    except Exception as exc:
        variant.error = _error_text(exc)
        return None
    variant.samples.append(sample)
    return sample


def _rotate(items: list[str], n: int) -> list[str]:
    n %= len(items)
    return items[n:] + items[:n]


# ---------------------------------------------------------------------------- the run
def run_benchmarks(
    addr: str, token: str, p: Params, log: Callable[[str], None]
) -> tuple[list[Benchmark], dict[str, Any]]:
    def settings(cache_ttl: float = 60.0) -> VaultSettings:
        return VaultSettings(
            addr=addr,
            token=SecretStr(token),
            auth_method="token",
            snapshot_path=None,
            cache_ttl=cache_ttl,
            max_staleness=3600.0,
        )

    admin_settings = settings()
    svc_settings = settings(cache_ttl=3600.0)  # the hot loop never expires an entry
    names = secret_names(p.secrets)
    notes: dict[str, Any] = {}

    with asyncio.Runner() as runner:

        async def setup() -> None:
            async with VaultClient(admin_settings) as c:
                await bootstrap_dev(c)
                t0 = time.perf_counter()
                await seed(c, names, p.concurrency)
                dt = time.perf_counter() - t0
                notes["seed_seconds"] = round(dt, 3)
                notes["seed_writes_per_s"] = round(len(names) / dt, 1)

        log("bootstrapping and seeding secrets")
        runner.run(setup())
        log(f"seeded {len(names)} secrets in {notes['seed_seconds']:.2f}s")

        # --- A: hot cached read --------------------------------------------------------
        a = Benchmark(
            key="hot_read",
            title="A. hot read",
            description=(
                "VaultService.get_config() from the cache (after warm-up) vs hvac"
                " read_secret_version(path='config', mount_point='maily') on the same server;"
                " one caller, sequential"
            ),
            variants={
                "ours": Variant("ours", "ours (cache hit)", "ops/s"),
                "hvac": Variant("hvac", "hvac", "ops/s"),
            },
        )
        a.ratios.append(Ratio("ours / hvac", a.variants["ours"], a.variants["hvac"], GOAL_HOT))
        hot_runs: dict[str, Callable[[], Sample]] = {
            "ours": lambda: runner.run(hot_ours(svc_settings, p.hot_seconds)),
            "hvac": lambda: hot_hvac(addr, token, p.hot_seconds),
        }
        for r in range(p.rounds):
            for key in _rotate(list(hot_runs), r):
                s = _measure(a.variants[key], hot_runs[key])
                if s is not None:
                    log(f"A round {r + 1}/{p.rounds}: {key:7s} {s.rate:>12,.0f} ops/s")
        a.notes["http_requests_in_timed_loop_ours"] = [
            s.requests for s in a.variants["ours"].samples
        ]

        # --- B: concurrent uncached reads ----------------------------------------------
        b = Benchmark(
            key="concurrent_uncached",
            title="B. uncached",
            description=(
                f"{p.secrets} distinct KV v2 paths, each read once per round: ours (fresh"
                f" VaultService per round, {p.concurrency} concurrent readers) vs hvac"
                f" ({p.hvac_threads} threads, one client each) vs bare aiohttp"
                f" ({p.concurrency} workers, one session)"
            ),
            variants={
                "ours": Variant("ours", f"ours x{p.concurrency}", "reads/s"),
                "hvac": Variant("hvac", f"hvac {p.hvac_threads} threads", "reads/s"),
                "aiohttp": Variant("aiohttp", f"aiohttp x{p.concurrency}", "reads/s"),
            },
        )
        v = b.variants
        b.ratios.append(Ratio("ours / hvac", v["ours"], v["hvac"], GOAL_VS_HVAC))
        b.ratios.append(Ratio("ours / aiohttp", v["ours"], v["aiohttp"], GOAL_VS_AIOHTTP))

        def conc_runs(paths: list[str]) -> dict[str, Callable[[], Sample]]:
            return {
                "ours": lambda: runner.run(concurrent_ours(svc_settings, paths, p.concurrency)),
                "hvac": lambda: concurrent_hvac(addr, token, paths, p.hvac_threads),
                "aiohttp": lambda: runner.run(
                    concurrent_aiohttp(addr, token, paths, p.concurrency)
                ),
            }

        log("B warm-up (untimed)")
        for key, fn in conc_runs(names[: p.warmup_paths]).items():
            try:
                fn()
            except Exception as exc:
                v[key].error = f"warm-up: {_error_text(exc)}"
        timed = conc_runs(names)
        for r in range(p.rounds):
            for key in _rotate(list(timed), r):
                s = _measure(v[key], timed[key])
                if s is not None:
                    log(f"B round {r + 1}/{p.rounds}: {key:7s} {s.rate:>12,.0f} reads/s")
        b.notes["http_requests_per_round_ours"] = [s.requests for s in v["ours"].samples]

    return [a, b], notes


# ---------------------------------------------------------------------------- metadata
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cmd(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment() -> dict[str, Any]:
    root = str(HERE.parent)
    dirty = _cmd(["git", "-C", root, "status", "--porcelain", "--", "src"])
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "hvac": _version("hvac"),
        "aiohttp": _version("aiohttp"),
        "maily_secrets": _version("maily-secrets"),
        "openbao": _cmd([bao_binary(), "version"]) or None,
        "git_commit": _cmd(["git", "-C", root, "rev-parse", "HEAD"]) or None,
        "src_dirty": None if dirty is None else bool(dirty),
    }


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer secrets, rounds and seconds")
    ap.add_argument("--json", action="store_true", help="print the JSON document, no table")
    ap.add_argument(
        "--rounds", type=int, default=0, help="rounds per variant (default 5; --quick 3)"
    )
    ap.add_argument("--secrets", type=int, default=0, help="distinct paths in B (default 2000)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = ap.parse_args(argv)
    if args.rounds < 0 or args.secrets < 0:
        ap.error("--rounds and --secrets must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = Params.of(args)
    _isolate_env()
    signal.signal(signal.SIGTERM, _on_sigterm)
    err = Console(stderr=True, highlight=False)

    def log(msg: str) -> None:
        err.print(f"[dim]bench:[/dim] {msg}")

    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="maily-bench-") as tmp:
            server = DevServer(Path(tmp) / "bao")
            try:
                log("starting a private OpenBao dev server")
                info, _ = server.start(port=0)
                token = info.token()
                redact.secrets.append(token)
                log(f"OpenBao at {info.addr}")
                benchmarks, notes = run_benchmarks(info.addr, token, p, log)
            finally:
                server.stop()
    except Exception as exc:
        err.print(f"[bold red]benchmark failed:[/bold red] {_error_text(exc)}")
        return 1

    meta: dict[str, Any] = {
        "environment": environment(),
        "parameters": {
            "quick": p.quick,
            "secrets": p.secrets,
            "rounds": p.rounds,
            "hot_seconds_per_round": p.hot_seconds,
            "concurrency": p.concurrency,
            "hvac_threads": p.hvac_threads,
        },
        "output": str(args.output),
    }
    ratios = [r for b in benchmarks for r in b.ratios]
    errors = {
        f"{b.key}.{v.key}": v.error for b in benchmarks for v in b.variants.values() if v.error
    }
    doc: dict[str, Any] = {
        "schema": 1,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        **{k: meta[k] for k in ("environment", "parameters")},
        "setup": notes,
        "benchmarks": {b.key: b.to_json() for b in benchmarks},
        "goals": {
            "all_met": all(r.met is True for r in ratios),
            "missed": [
                f"{b.key}: {r.label}" for b in benchmarks for r in b.ratios if r.met is False
            ],
            "not_measured": [
                f"{b.key}: {r.label}" for b in benchmarks for r in b.ratios if r.met is None
            ],
        },
        "errors": errors,
    }
    text = json.dumps(doc, indent=2)
    with contextlib.suppress(OSError):
        args.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        args.output.write_text(text + "\n")
    except OSError as exc:
        err.print(f"[yellow]cannot write {args.output}: {exc.strerror}[/yellow]")

    if args.json:
        sys.stdout.write(text + "\n")
    else:
        render(Console(highlight=False), benchmarks, meta)
        if doc["goals"]["missed"]:
            err.print(f"[bold red]goals missed:[/bold red] {', '.join(doc['goals']['missed'])}")
    log(f"done in {doc['duration_s']:.0f}s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
