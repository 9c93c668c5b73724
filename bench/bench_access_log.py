"""Cached read with the access log on (a JSON handler writing a real file) versus off.

One ``VaultService`` reads ``maily/data/config`` once (a miss), then times cached
``get_config()`` calls, interleaved round by round in two variants:

- ``on``: the ``maily_secrets.access`` logger at INFO with a ``logging.FileHandler`` and
  the project's ``maily_secrets.logs.JsonFormatter``, writing ``ctx.scratch``;
- ``off``: the same handler in place, the logger at WARNING (disabled for its events).

Only the public API and logging configuration are used, so the same module measures the
old code (``--root``). The figure is µs per cached read; the goal is on / off <= 2. The
notes keep how many lines and bytes the handler wrote per round: one per hit in the old
design, one aggregate per path per interval (plus one per miss, error, stale serve) in
the new one, whose pending aggregate is written by ``close()`` after the timed reads
(that write, about one event's cost per path per interval, is not in the timed loop).

    bench/.venv/bin/python bench/run.py --only access_log [--rounds 5] [--quick]

No value read and not the token is printed or written (the log holds key names only).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bench_context import Context, interleave

from maily_secrets.logs import JsonFormatter
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings

ACCESS = "maily_secrets.access"


def _settings(ctx: Context) -> VaultSettings:
    return VaultSettings(addr=ctx.addr, token=ctx.token, auth_method="token")


def figures(ctx: Context) -> list[dict[str, Any]]:
    seconds = 0.1 if ctx.quick else 0.3  # of cached reads per round and variant
    log_file = ctx.scratch / "access-log-bench.jsonl"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(ACCESS)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # only our handler: whatever the driver configured stays quiet
    lines: dict[str, list[int]] = {"on": [], "off": []}
    sizes: dict[str, list[int]] = {"on": [], "off": []}

    async def per_read_us(level: int) -> float:
        svc = VaultService(_settings(ctx))
        try:
            await svc.get_config()  # the miss: cached from here on
            logger.setLevel(level)
            for _ in range(200):  # warm the path
                await svc.get_config()
            n = 0
            batch = 500
            start = time.perf_counter()
            while True:
                for _ in range(batch):
                    await svc.get_config()
                n += batch
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    return elapsed / n * 1e6
        finally:
            await svc.close()  # writes what an aggregating access log holds
            logger.setLevel(logging.WARNING)

    def variant(name: str, level: int) -> float:
        handler.flush()
        before_size = log_file.stat().st_size if log_file.exists() else 0
        before_lines = _count_lines(log_file)
        us = ctx.runner.run(per_read_us(level))
        handler.flush()
        lines[name].append(_count_lines(log_file) - before_lines)
        sizes[name].append((log_file.stat().st_size if log_file.exists() else 0) - before_size)
        return us

    try:
        rounds = interleave(
            ctx.rounds,
            {
                "on": lambda: variant("on", logging.INFO),
                "off": lambda: variant("off", logging.WARNING),
            },
            ctx.log,
            "access log",
        )
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        log_file.unlink(missing_ok=True)
    return [
        {
            "key": "access_log_cached_read",
            "title": "Cached read: access log on vs off",
            "description": "µs per cached get_config() with maily_secrets.access at INFO"
            " (FileHandler + JsonFormatter, a real file) versus at WARNING; one service,"
            f" {seconds:g} s of reads per round and variant, rounds interleaved",
            "unit": "µs",
            "better": "lower",
            "variants": {
                "on": {"label": "access log on (JSON file)", "rounds": rounds["on"]},
                "off": {"label": "access log off", "rounds": rounds["off"]},
            },
            "goals": [{"label": "on / off", "num": "on", "den": "off", "op": "<=", "value": 2.0}],
            "notes": {
                "lines_written_per_round": lines,
                "bytes_written_per_round": sizes,
            },
        }
    ]


def _count_lines(path: Any) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0
