"""Measurement helpers shared by the older sample-based scripts (``bench_transit.py``)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    ops: int
    seconds: float  # wall clock
    cpu: float  # CPU seconds of this process (all threads): the client's own cost
    requests: int | None = None  # HTTP requests sent, when we can count them

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu / self.ops * 1e6 if self.ops else 0.0


class Clock:
    """Wall and process CPU time from one starting point."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def sample(self, ops: int, requests: int | None = None) -> Sample:
        wall, cpu = self.wall(), time.process_time() - self.cpu0
        return Sample(ops, wall, cpu, requests)
