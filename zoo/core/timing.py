"""Timing and memory helpers shared by the benchmarks in ``scripts/``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def median(values: list[float]) -> float:
    """The middle of ``values`` (the upper one of the two middles for an even count)."""
    return sorted(values)[len(values) // 2]


def median_seconds(step: Callable[[], None], steps: int, warmup: int) -> float:
    """Median wall time of ``step()`` over ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return median(times)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/self/status has no {field} (peak memory is measured on Linux only)")


def reset_peak_rss() -> int:
    """Start a new peak window for this process's resident memory (Linux: writing 5 to
    /proc/self/clear_refs sets the peak, VmHWM, to the current RSS); returns the RSS now, bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    """This process's peak resident memory (bytes) since the last ``reset_peak_rss``."""
    return _status_bytes("VmHWM")
