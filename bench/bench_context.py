"""What every benchmark module gets from the driver (``bench/run.py``), and how it answers.

A module ``bench/bench_<name>.py`` exposes ``figures(ctx: Context) -> list[dict]``.
Each dict is one figure::

    {
      "key": "cli_help", "title": "CLI start: --help", "description": "...",
      "unit": "ms", "better": "lower",            # or "higher" (rates)
      "variants": {"ours": {"label": "mailyctl --help", "rounds": [41.2, 40.8, ...]},
                   "bao":  {"label": "bao version",     "rounds": [...]}},
      "goals": [
        # a ratio of two variants, compared round by round (rounds are interleaved)
        {"label": "ours / bao", "num": "ours", "den": "bao", "op": "<=", "value": 1.5},
        # an absolute bound on one variant's median
        {"label": "wall time", "variant": "ours", "op": "<=", "value": 1.0},
      ],
      "notes": {...},                              # anything else worth keeping (JSON)
    }

A variant may also carry ``"cpu_us_per_op": [...]`` (the client's CPU per operation, per
round; the driver prints its median) or ``"error": "..."`` (it could not be measured: its
goals are not measured and the run's exit code is 1).  A ratio goal may carry
``"scale": k`` (numerator / (k * denominator)), e.g. 1,000 registrations against ten
times the cost of 100.  Variants of one figure are measured round by round in a rotating
order (:func:`interleave`), so that machine noise hits them alike.  No figure, note or
error text may hold a secret value or the token.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Context:
    root: Path  # the checkout measured: its src/ and mailyctl.py (may differ from bench's own)
    addr: str  # the driver's OpenBao dev server (bootstrapped: maily/ KV v2, transit, ...)
    token: str = field(repr=False)
    bao: str  # path of the `bao` binary
    python: str  # the bench environment's interpreter (has hvac, async-hvac)
    rounds: int
    quick: bool
    log: Callable[[str], None]
    runner: asyncio.Runner  # one loop for in-process async workloads
    scratch: Path  # a directory of this run's own, removed by the driver afterwards

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess: this server and token, the measured checkout first
        on the path, and none of the caller's own Vault/Maily settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("VAULT_", "BAO_", "MAILY_", "PYTHONPATH"))
        }
        env.update(
            VAULT_ADDR=self.addr,
            VAULT_TOKEN=self.token,
            PYTHONPATH=f"{self.root / 'src'}{os.pathsep}{self.root}",
        )
        env.update(extra)
        return env


def interleave(
    rounds: int,
    variants: dict[str, Callable[[], float]],
    log: Callable[[str], None] | None = None,
    title: str = "",
) -> dict[str, list[float]]:
    """Run each variant once per round, the order rotating each round; returns the values."""
    keys = list(variants)
    out: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for k in keys[shift:] + keys[:shift]:
            gc.collect()
            value = variants[k]()
            out[k].append(value)
            if log is not None:
                log(f"{title} round {r + 1}/{rounds}: {k} {value:,.4g}")
    return out
