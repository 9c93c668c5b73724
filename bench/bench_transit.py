"""Transit benchmark: 10,000 encryptions through ``Transit.encrypt_many`` versus hvac
(one ``encrypt_data`` call per item) and versus hand-built batch requests on a bare
aiohttp session, on a private OpenBao dev server.

    .venv/bin/python bench/bench_transit.py            # 7 interleaved rounds
    .venv/bin/python bench/bench_transit.py --quick    # 3 rounds, hvac on 300 items
    .venv/bin/python bench/bench_transit.py --json     # the JSON document on stdout

hvac sends one HTTP request per item, so it is timed on a sample (1,000 items; 300
with ``--quick``) and compared by throughput (items/s), i.e. scaled to 10,000.  The
aiohttp floor sends the same chunks (``batch_size`` items per request) with the same
number of requests in flight, and does nothing else (no retries, no typed errors).
Ratios compare medians.  Results go to ``bench/results/transit.json``; ``run(quick)``
returns the same document (bench/run.py can call it).  Plaintexts and the token are
never printed or written.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import hvac  # type: ignore[import-untyped]
from bench_report import Benchmark, Ratio, Variant
from bench_workloads import Clock, Sample
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from maily_secrets.dev.server import DevServer, bao_binary
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient
from maily_secrets.vault.transit import Transit

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "transit.json"
MOUNT = "transit"
KEY = "bench-transit-key"
ITEMS = 10_000
GOAL_VS_HVAC = 50.0
GOAL_VS_AIOHTTP = 0.8


class BenchError(RuntimeError):
    """A workload got something unexpected (never carries a plaintext)."""


def plaintexts(n: int) -> list[bytes]:
    """Random 48-byte values, about the size of a password or an API token."""
    return [secrets.token_bytes(48) for _ in range(n)]


def _check(ciphertexts: Sequence[Any], n: int, what: str) -> None:
    if len(ciphertexts) != n or not all(
        isinstance(c, str) and c.startswith("vault:v") for c in ciphertexts
    ):
        raise BenchError(f"{what}: unexpected ciphertexts")


# ---------------------------------------------------------------------------- workloads
async def ours(client: VaultClient, transit: Transit, items: list[bytes]) -> Sample:
    before = client.stats.total()
    clock = Clock()
    cts = await transit.encrypt_many(KEY, items)
    sample = clock.sample(len(items), client.stats.total() - before)
    _check(cts, len(items), "ours")
    return sample


async def bare_aiohttp(
    session: aiohttp.ClientSession,
    addr: str,
    token: str,
    items: list[bytes],
    batch_size: int,
    concurrency: int,
) -> Sample:
    """The floor: the same chunks, as many in flight, one session, nothing else."""
    url = f"{addr}/v1/{MOUNT}/encrypt/{KEY}"
    headers = {"X-Vault-Token": token}
    clock = Clock()
    b64 = [base64.b64encode(v).decode("ascii") for v in items]
    starts = list(range(0, len(b64), batch_size))
    results: list[list[str]] = [[] for _ in starts]
    todo = iter(range(len(starts)))

    async def worker() -> None:
        for ci in todo:
            s = starts[ci]
            body = {"batch_input": [{"plaintext": p} for p in b64[s : s + batch_size]]}
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    raise BenchError(f"aiohttp: HTTP {resp.status}")
                doc = await resp.json()
            results[ci] = [r["ciphertext"] for r in doc["data"]["batch_results"]]

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(starts)))))
    cts = [c for chunk in results for c in chunk]
    sample = clock.sample(len(items), len(starts))
    _check(cts, len(items), "aiohttp")
    return sample


def hvac_per_item(client: Any, items: list[bytes]) -> Sample:
    """hvac, one ``encrypt_data`` request per item (what hvac offers for single values)."""
    encrypt = client.secrets.transit.encrypt_data
    clock = Clock()
    cts = [
        encrypt(name=KEY, plaintext=base64.b64encode(v).decode("ascii"), mount_point=MOUNT)["data"][
            "ciphertext"
        ]
        for v in items
    ]
    sample = clock.sample(len(items), len(items))
    _check(cts, len(items), "hvac")
    return sample


# ---------------------------------------------------------------------------- the run
def _rotate(items: list[str], n: int) -> list[str]:
    n %= len(items)
    return items[n:] + items[:n]


def _measure(variant: Variant, fn: Callable[[], Sample], redact: Callable[[str], str]) -> None:
    if variant.error is not None:
        return
    gc.collect()
    try:
        variant.samples.append(fn())
    except Exception as exc:
        variant.error = redact(f"{type(exc).__name__}: {exc}")[:300]


def benchmark(
    addr: str, token: str, quick: bool, log: Callable[[str], None]
) -> tuple[Benchmark, dict[str, Any]]:
    rounds = 3 if quick else 7
    hvac_items = 300 if quick else 1000
    settings = VaultSettings(
        addr=addr, token=SecretStr(token), auth_method="token", snapshot_path=None
    )

    def redact(text: str) -> str:
        return text.replace(token, "***") if token else text

    items = plaintexts(ITEMS)
    b = Benchmark(
        key="transit_encrypt",
        title="transit encrypt",
        description=(
            f"{ITEMS:,} encryptions of 48 random bytes with key {KEY!r}: Transit.encrypt_many"
            " vs hvac encrypt_data one call per item (timed on"
            f" {hvac_items:,} items, compared by items/s) vs hand-built batch requests on a"
            " bare aiohttp session"
        ),
        variants={
            "ours": Variant("ours", "ours encrypt_many", "items/s"),
            "hvac": Variant("hvac", f"hvac per item (x{hvac_items:,}, scaled)", "items/s"),
            "aiohttp": Variant("aiohttp", "bare aiohttp batches", "items/s"),
        },
    )
    v = b.variants
    b.ratios.append(Ratio("ours / hvac", v["ours"], v["hvac"], GOAL_VS_HVAC))
    b.ratios.append(Ratio("ours / aiohttp", v["ours"], v["aiohttp"], GOAL_VS_AIOHTTP))

    with asyncio.Runner() as runner:
        client = VaultClient(settings)
        transit = Transit(client, mount=MOUNT)
        session: aiohttp.ClientSession | None = None
        hv = hvac.Client(url=addr, token=token)
        try:

            async def setup() -> aiohttp.ClientSession:
                mounts = (await client.read("sys/mounts")).data or {}
                if f"{MOUNT}/" not in mounts:
                    await client.write(f"sys/mounts/{MOUNT}", {"type": "transit"})
                await transit.create_key(KEY)
                return aiohttp.ClientSession()

            session = runner.run(setup())
            s = session
            runs: dict[str, Callable[[], Sample]] = {
                "ours": lambda: runner.run(ours(client, transit, items)),
                "hvac": lambda: hvac_per_item(hv, items[:hvac_items]),
                "aiohttp": lambda: runner.run(
                    bare_aiohttp(s, addr, token, items, transit.batch_size, transit.concurrency)
                ),
            }
            log("warm-up (untimed)")
            warm = items[:500]
            runner.run(transit.encrypt_many(KEY, warm))
            runner.run(bare_aiohttp(s, addr, token, warm, transit.batch_size, 2))
            hvac_per_item(hv, warm[:20])
            for r in range(rounds):
                for key in _rotate(list(runs), r):
                    _measure(v[key], runs[key], redact)
                    if v[key].samples and not v[key].error:
                        smp = v[key].samples[-1]
                        log(
                            f"round {r + 1}/{rounds}: {key:8s} {smp.rate:>10,.0f} items/s"
                            f" ({smp.ops:,} items, {smp.requests} requests,"
                            f" {smp.seconds:.3f}s)"
                        )
            # Untimed check: what ours encrypted decrypts back, in order.
            sample = items[:1000]

            async def verify() -> bool:
                cts = await transit.encrypt_many(KEY, sample)
                return await transit.decrypt_many(KEY, cts) == sample

            if not runner.run(verify()):
                v["ours"].error = "round trip check failed"
        finally:
            hv.adapter.close()

            async def close() -> None:
                if session is not None:
                    await session.close()
                await client.close()

            runner.run(close())

    notes = {
        "items": ITEMS,
        "hvac_items_timed": hvac_items,
        "hvac_scaled_seconds_for_10000": (round(ITEMS / m, 2) if (m := v["hvac"].median) else None),
        "batch_size": transit.batch_size,
        "concurrency": transit.concurrency,
        "requests_per_call_ours": [smp.requests for smp in v["ours"].samples],
        "rounds": rounds,
    }
    b.notes.update(notes)
    return b, notes


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
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "hvac": _version("hvac"),
        "aiohttp": _version("aiohttp"),
        "maily_secrets": _version("maily-secrets"),
        "openbao": _cmd([bao_binary(), "version"]) or None,
        "git_commit": _cmd(["git", "-C", str(HERE.parent), "rev-parse", "HEAD"]) or None,
    }


def run(
    quick: bool,
    *,
    addr: str | None = None,
    token: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its JSON document.

    Without ``addr``/``token`` a private dev server is started and stopped.
    """
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    if addr is not None and token is not None:
        bench, _ = benchmark(addr, token, quick, say)
    else:
        with tempfile.TemporaryDirectory(prefix="maily-bench-transit-") as tmp:
            server = DevServer(Path(tmp) / "bao")
            try:
                say("starting a private OpenBao dev server")
                info, _ = server.start(port=0)
                say(f"OpenBao at {info.addr}")
                bench, _ = benchmark(info.addr, info.token(), quick, say)
            finally:
                server.stop()
    errors = {f"{bench.key}.{v.key}": v.error for v in bench.variants.values() if v.error}
    return {
        "schema": 1,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "environment": environment(),
        "parameters": {"quick": quick},
        "benchmarks": {bench.key: bench.to_json()},
        "goals": {
            "all_met": all(r.met is True for r in bench.ratios),
            "missed": [f"{bench.key}: {r.label}" for r in bench.ratios if r.met is False],
            "not_measured": [f"{bench.key}: {r.label}" for r in bench.ratios if r.met is None],
        },
        "errors": errors,
    }


# ---------------------------------------------------------------------------- main
def render(console: Console, doc: dict[str, Any]) -> None:
    b = doc["benchmarks"]["transit_encrypt"]
    notes = b["notes"]
    table = Table(title=f"Transit: {notes['items']:,} encryptions", title_justify="left")
    table.add_column("Variant", no_wrap=True)
    table.add_column("Median items/s", justify="right")
    table.add_column(f"Time for {notes['items']:,}", justify="right")
    table.add_column("Requests", justify="right")
    table.add_column("CPU µs/item", justify="right")
    for v in b["variants"].values():
        if v["error"]:
            table.add_row(v["label"], f"[red]error: {v['error']}[/red]", "", "", "")
            continue
        med = v["median"] or 0.0
        reqs = v["rounds"][-1]["http_requests"] if v["rounds"] else None
        table.add_row(
            v["label"],
            f"{med:,.0f}",
            f"{notes['items'] / med:.2f}s" if med else "-",
            f"{reqs:,}" if reqs is not None else "-",
            "-" if v["client_cpu_us_per_op"] is None else f"{v['client_cpu_us_per_op']:.1f}",
        )
    console.print(table)
    ratios = Table(title="Ratios (medians) against goals", title_justify="left")
    for col in ("Ratio", "Value", "Goal", "Status"):
        ratios.add_column(col, justify="right" if col in ("Value", "Goal") else "left")
    for r in b["ratios"]:
        val = r["value"]
        status = (
            "[yellow]n/a[/yellow]"
            if r["met"] is None
            else "[green]met[/green]"
            if r["met"]
            else "[bold red]MISSED[/bold red]"
        )
        ratios.add_row(
            r["label"], "-" if val is None else f"{val:,.2f}x", f">= {r['goal']:g}x", status
        )
    console.print(ratios)
    console.print(
        f"[dim]hvac was timed on {notes['hvac_items_timed']:,} items (one request each) and"
        f" scaled to {notes['items']:,} by throughput; ours and aiohttp send"
        f" {notes['batch_size']}-item batches, {notes['concurrency']} in flight;"
        f" {notes['rounds']} interleaved rounds.[/dim]"
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="3 rounds, hvac on 300 items")
    ap.add_argument("--json", action="store_true", help="print the JSON document, no table")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = ap.parse_args(argv)
    for k in list(os.environ):  # no Vault setting of the caller's shell leaks in
        if k.startswith(("VAULT_", "BAO_", "MAILY_SECRETS_")):
            del os.environ[k]
    signal.signal(signal.SIGTERM, _on_sigterm)
    err = Console(stderr=True, highlight=False)

    def log(msg: str) -> None:
        err.print(f"[dim]bench:[/dim] {msg}")

    try:
        doc = run(args.quick, log=log)
    except Exception as exc:
        err.print(f"[bold red]benchmark failed:[/bold red] {type(exc).__name__}: {exc}"[:400])
        return 1
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
        render(Console(highlight=False), doc)
        if doc["goals"]["missed"]:
            err.print(f"[bold red]goals missed:[/bold red] {', '.join(doc['goals']['missed'])}")
    log(f"done in {doc['duration_s']:.0f}s; results in {args.output}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
