"""Background work that survives: capped backoff and supervised tasks.

Every background loop of the library (watchers, token renewal, lease renewal, the
snapshot writer) computes its retry delays with :func:`backoff_delay`, which caps
the exponent (``2.0 ** 1024`` overflows) and adds jitter, and runs under
:func:`supervised`: a crash is logged with the task's name and the task is
started again after a capped, growing delay; cancellation stops it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from .clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("maily_secrets.supervise")

_MAX_EXPONENT = 32  # 2**32 * any sane base is far past any cap


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    *,
    jitter: float = 0.5,
    rng: Callable[[float, float], float] = random.uniform,
) -> float:
    """Delay before retry number ``attempt`` (0-based): ``base * 2**attempt``, capped.

    Never overflows, whatever ``attempt`` is. With ``jitter=0.5`` the delay is drawn
    from ``[d/2, d]`` ("equal jitter"), so many clients that failed together do not
    retry together; ``jitter=0`` gives exactly ``d``.
    """
    exp = min(max(0, int(attempt)), _MAX_EXPONENT)
    d = min(float(cap), float(base) * (2.0**exp))
    if jitter <= 0:
        return d
    return rng(d * (1.0 - jitter), d)


async def supervised(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    clock: Clock | None = None,
    base: float = 0.5,
    cap: float = 30.0,
    logger: logging.Logger | None = None,
    on_crash: Callable[[BaseException], None] | None = None,
) -> None:
    """Run ``body()`` until it returns; when it raises, log and run it again.

    The delay between restarts grows from ``base`` to ``cap`` (jittered) and goes
    back to ``base`` once a run lasted longer than ``cap``. ``CancelledError`` is
    never swallowed. ``name`` must name the work and never contain a secret.
    """
    clock = clock or SYSTEM_CLOCK
    logger = logger or log
    crashes = 0
    while True:
        started = clock.monotonic()
        try:
            await body()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if clock.monotonic() - started > cap:
                crashes = 0
            delay = backoff_delay(crashes, base, cap)
            crashes += 1
            logger.error(
                "background task %s crashed (%s); restarting in %.1fs",
                name,
                type(exc).__name__,
                delay,
                exc_info=exc,
                extra={"task": name, "error": type(exc).__name__, "restarts": crashes},
            )
            if on_crash is not None:
                on_crash(exc)
            await clock.sleep(delay)
