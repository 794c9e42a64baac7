"""Reusable buffers for the value gradient on CPU, handed out again once nothing else holds them.

glibc serves every large allocation with fresh, zero-filled pages and returns them on free, so a
(rows touched x v_dim) gradient allocated anew each step (243 MB at 2^22 slots, d 128) costs more
page faults than its arithmetic. CUDA's caching allocator already recycles memory; this is for CPU.
"""

from __future__ import annotations

import torch

POOL_SIZE = 4  # buffers per table: one per memory layer reading it in a step, plus one step held over


def only_referenced_by_pool(buffer: torch.Tensor) -> bool:
    """Whether no tensor besides ``buffer`` itself (e.g. a gradient still alive) shares its storage.
    Needs torch's storage use count (a private binding); without it a buffer is never reused."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    storage = buffer.untyped_storage()
    return use_count(storage._cdata) <= 2  # ``buffer`` and the ``storage`` object just made


class Workspace:
    """A small pool of CPU float buffers: ``take(rows, cols, dtype)`` returns a (rows, cols) view of a
    buffer that nothing else references, growing or adding one when none fits."""

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []

    def take(self, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        numel = rows * cols
        for buffer in self.buffers:
            if buffer.dtype == dtype and buffer.numel() >= numel and only_referenced_by_pool(buffer):
                return buffer[:numel].view(rows, cols)
        fresh = torch.empty(numel + numel // 8, dtype=dtype)  # slack: the touched-row count varies per step
        self.buffers = [b for b in self.buffers if not only_referenced_by_pool(b)][: POOL_SIZE - 1] + [fresh]
        return fresh[:numel].view(rows, cols)
