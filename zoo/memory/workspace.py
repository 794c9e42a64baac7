"""Reusable buffers for the value gradient on CPU, handed out again once nothing else holds them.

glibc serves every large allocation with fresh, zero-filled pages and returns them on free, so a
(rows touched x v_dim) gradient allocated anew each step costs more page faults than its arithmetic
(numbers: docs/results.md, "Cost as the memory grows"). CUDA's caching allocator already recycles memory.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

POOL_SIZE = 4  # buffers per table: one per memory layer reading it in a step, plus one step held over


class Workspace:
    """A small pool of CPU byte buffers: ``take(rows, cols, dtype)`` returns a (rows, cols) tensor in a
    buffer nothing else references, adding one when none fits. A loan is a fresh numpy view wrapped by
    ``torch.from_numpy``, whose storage holds it while any tensor shares it (a gradient made from the
    rows too); the pool keeps a weak reference to the view, dead once the loan is returned."""

    def __init__(self) -> None:
        self.buffers: list[tuple[np.ndarray, weakref.ref | None]] = []  # (memory, the loan's view), oldest first

    def take(self, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        nbytes = rows * cols * dtype.itemsize
        fits = [
            i for i, (memory, loan) in enumerate(self.buffers) if memory.nbytes >= nbytes and (loan is None or loan() is None)
        ]
        if not fits:  # a new buffer, with slack (the touched-row count varies per step); the oldest goes
            self.buffers = self.buffers[1 - POOL_SIZE :] + [(np.empty(nbytes + nbytes // 8, np.uint8), None)]
            fits = [len(self.buffers) - 1]
        memory = self.buffers[fits[0]][0]
        view = memory[:nbytes]  # a new array object per loan: its life is the loan's
        self.buffers[fits[0]] = (memory, weakref.ref(view))
        return torch.from_numpy(view).view(dtype).view(rows, cols)
