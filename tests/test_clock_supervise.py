"""The injectable clock and the supervision helpers (pure logic, no server needed)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from maily_secrets.clock import ManualClock, settle
from maily_secrets.supervise import backoff_delay, supervised


async def test_manual_clock_wakes_sleepers_only_when_advanced_past_their_deadline() -> None:
    clock = ManualClock()
    woke: list[str] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("a", 5)), asyncio.create_task(sleeper("b", 10))]
    await settle()
    assert clock.sleepers == 2
    await clock.advance(4.9)
    assert woke == []
    await clock.advance(0.1)
    assert woke == ["a"]
    await clock.advance(100)
    assert woke == ["a", "b"]
    await asyncio.gather(*tasks)
    assert clock.monotonic() == pytest.approx(1_105.0)


def test_backoff_never_overflows_and_respects_the_cap() -> None:
    for attempt in (0, 1, 10, 1023, 1024, 10**6):
        d = backoff_delay(attempt, 0.1, 2.0)
        assert 0 < d <= 2.0
    assert backoff_delay(0, 0.1, 2.0, jitter=0) == pytest.approx(0.1)
    assert backoff_delay(3, 0.1, 2.0, jitter=0) == pytest.approx(0.8)
    assert backoff_delay(5000, 0.1, 2.0, jitter=0) == pytest.approx(2.0)


async def test_supervised_restarts_a_crashing_task_with_growing_capped_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs < 5:
            raise RuntimeError("boom")

    task = asyncio.create_task(supervised("unit-test-task", body, clock=clock, base=1, cap=4))
    with caplog.at_level(logging.ERROR, logger="maily_secrets.supervise"):
        await clock.run_until_idle()
    await task
    assert runs == 5
    crashes = [r for r in caplog.records if "unit-test-task" in r.getMessage()]
    assert len(crashes) == 4
    # the whole run took at most 1 + 2 + 4 + 4 seconds of the injected clock
    assert clock.monotonic() - 1_000 <= 11


async def test_supervised_is_stopped_by_cancellation() -> None:
    clock = ManualClock()

    async def body() -> None:
        raise RuntimeError("always")

    task = asyncio.create_task(supervised("cancel-me", body, clock=clock, base=1, cap=1))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
