"""Timing helper shared by the benchmarks in ``scripts/``."""

from __future__ import annotations

import time
from collections.abc import Callable


def median_seconds(step: Callable[[], None], steps: int, warmup: int) -> float:
    """Median wall time of ``step()`` over ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
