"""Timing and memory helpers shared by the benchmarks in ``scripts/``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch


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


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int, steps: int = 5) -> float:
    """Achieved bytes/s of copying a float32 tensor of ``nbytes`` bytes into another (read + write
    counted), median of ``steps`` copies: the speed of the cache level or memory that holds
    2 x ``nbytes``."""
    src = torch.empty(max(1, nbytes // 4), device=device).uniform_()
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)
        synchronize(device)

    return 2 * src.numel() * 4 / median_seconds(copy, steps, 2)


def row_traffic_bytes(reads: int, touched_rows: int, v_dim: int, element_bytes: int) -> int:
    """The least bytes a sparse training step of a value table moves: each of the ``reads`` row reads
    (tokens x heads x knn) once forward and once backward (the weights' gradient), the touched rows'
    float32 gradient written once, and Adam reading that gradient and reading + writing each touched
    row's values (``element_bytes`` each), m and v (float32) once."""
    read = reads * v_dim
    rows = touched_rows * v_dim
    return 2 * read * element_bytes + 4 * rows + rows * (4 + 2 * element_bytes + 4 * 4)


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
