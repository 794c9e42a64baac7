"""The value table: N learned rows of width v_dim, read as a weighted sum of k selected rows."""

from __future__ import annotations

import torch
from torch import nn

from zoo.core.tags import mark_no_reinit, tag_optim
from zoo.memory import cpu_kernels
from zoo.memory.bags import bag_read, bag_weight_grad, sorted_reads, sum_rows_by_slot, work_dtype
from zoo.memory.workspace import Workspace

VALUE_GROUP = "memory_values"
INIT_BLOCK_ELEMENTS = 1 << 20  # values per init generator (4 MiB of float32): all a rank draws beyond its part
_SEED_STRIDE = 0x9E3779B9  # odd: block b's generator seed, seed + b * stride mod 2^32, differs for every b


@torch.no_grad()
def draw_values_(out: torch.Tensor, seed: int, n_slots: int, v_dim: int, row_start: int = 0, col_start: int = 0) -> torch.Tensor:
    """Fill ``out`` (R, C) with rows ``[row_start, row_start + R)`` and columns ``[col_start,
    col_start + C)`` of the (n_slots, v_dim) table ~ N(0, v_dim^-0.5) that ``seed`` stands for.

    The table is drawn in float32 by blocks of rows, each block from its own generator (seeded by
    the seed and the block's index), so any part is the same numbers whichever process draws it and
    however the table is split; drawing a part needs one block of memory beyond ``out``.
    """
    block = max(1, INIT_BLOCK_ELEMENTS // v_dim)
    rows, cols = out.shape
    for first in range(row_start - row_start % block, row_start + rows, block):
        generator = torch.Generator().manual_seed((seed + (first // block) * _SEED_STRIDE) % 2**32)
        values = torch.empty(min(block, n_slots - first), v_dim).normal_(std=v_dim**-0.5, generator=generator)
        lo, hi = max(first, row_start), min(first + len(values), row_start + rows)
        out[lo - row_start : hi - row_start] = values[lo - first : hi - first, col_start : col_start + cols]
    return out


def fast_kernels(table: torch.Tensor):
    """memzoo's Triton kernels for a CUDA float32 / bfloat16 table (``zoo.memory.triton_ops``), or
    None: on CPU, for float64, or without Triton, reads run the PyTorch path (the reference; same
    numbers up to summation order)."""
    if not table.is_cuda or table.dtype not in (torch.float32, torch.bfloat16):
        return None
    from zoo.memory import triton_ops

    return triton_ops if triton_ops.available() else None


class _RowSparseRead(torch.autograd.Function):
    """``out[t] = sum_r weights[t, r] * table[slots[t, r]]`` whose table gradient is a coalesced sparse
    tensor holding one row per slot read (instead of one row per read)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor, workspace) -> torch.Tensor:
        ctx.save_for_backward(table, slots, weights)
        ctx.workspace = workspace
        kernels = fast_kernels(table)
        return kernels.bag_read(slots, weights, table) if kernels else bag_read(slots, weights, table)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        table, slots, weights = ctx.saved_tensors
        if cpu_kernels.enabled(table, weights, grad_out):
            return _cpu_backward(table, slots, weights, grad_out, ctx.workspace)
        kernels = fast_kernels(table)
        reads = sorted_reads(slots)  # (order, unique, offsets, counts): both gradients walk the reads by slot
        grad_table = grad_weights = None
        if ctx.needs_input_grad[2]:
            if kernels:
                grad_weights = kernels.bag_weight_grad(slots, table, grad_out)
            else:
                grad_weights = bag_weight_grad(slots, table, grad_out, reads)
            grad_weights = grad_weights.to(weights.dtype)
        if ctx.needs_input_grad[0]:
            order, unique, offsets, counts = reads
            if kernels:
                weights_sorted = weights.flatten().index_select(0, order).float()
                rows = kernels.rows_grad(order, offsets, counts, weights_sorted, grad_out, slots.shape[1])
            else:
                reuse = ctx.workspace is not None and grad_out.device.type == "cpu"  # CUDA's allocator caches already
                out = ctx.workspace.take(len(unique), grad_out.shape[1], grad_out.dtype) if reuse else None
                unique, rows = sum_rows_by_slot(slots, weights, grad_out, reads, out)
            grad_table = row_gradient(unique, rows.to(table.dtype), table.shape)
        return grad_table, None, grad_weights, None


def _cpu_backward(table, slots, weights, grad_out, workspace):
    """``_RowSparseRead``'s gradients (table, None, weights, None) from memzoo's CPU kernel: the
    weights' gradient and the rows of each slot read, summed in one pass (in ``workspace``'s memory)."""
    out = workspace.take(slots.numel(), table.shape[1], table.dtype) if workspace is not None else None
    grad_weights, unique, rows = cpu_kernels.ops().bag_backward(table, slots, weights, grad_out, out)
    return row_gradient(unique, rows, table.shape), None, grad_weights, None


def row_gradient(unique: torch.Tensor, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A table's gradient (``shape``) that holds only the rows read: unique (U,) ascending slots and
    their rows (U, d), as a coalesced sparse tensor (the order is not checked again)."""
    return torch.sparse_coo_tensor(unique.unsqueeze(0), rows, shape, is_coalesced=True, check_invariants=False)


class ValueTable(nn.Module):
    """Local (unsharded) value table, ``weight`` (N, v_dim) ~ N(0, v_dim^-0.5) (``draw_values_`` of
    ``init_seed``, a number drawn from torch's global generator), stored in ``dtype``.

    The weight is tagged for its own optimizer group (``memory_values``: own lr, no weight decay,
    and ``sparse`` when rows-only updates are on, with its ``second_moment`` layout). One table object
    may serve several layers. On the ``meta`` device (a sharded memory's table) nothing is allocated:
    ``zoo.memory.sharding.shard_memory`` gives each rank its part, drawn from the same seed.
    """

    def __init__(
        self,
        n_slots: int,
        v_dim: int,
        lr: float,
        sparse: bool,
        dtype: torch.dtype = torch.float32,
        second_moment: str = "full",
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.n_slots, self.v_dim, self.sparse = n_slots, v_dim, sparse
        self.weight = nn.Parameter(torch.empty(n_slots, v_dim, dtype=dtype, device=device))
        tags = dict(group=VALUE_GROUP, lr=lr, weight_decay=0.0, sparse=sparse)
        if sparse:
            tags["second_moment"] = second_moment
        mark_no_reinit(tag_optim(self.weight, **tags))
        self.workspace = Workspace()  # the CPU gradient rows' memory, reused across steps
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # drawn on the CPU generator for a meta table too (also under torch.device("meta")): every layout draws the same
        self.init_seed = int(torch.randint(2**32, (), device="cpu"))
        if not self.weight.is_meta:
            draw_values_(self.weight, self.init_seed, self.n_slots, self.v_dim)

    def read(self, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """slots (T, R) long, weights (T, R) -> sum_r weights[t, r] * weight[slots[t, r]], (T, v_dim)
        in float32 (float64 for a float64 table), whatever the table's storage dtype.

        A bag read: no (T, N) matrix is formed. With ``sparse`` the weight's gradient is a sparse
        tensor holding only the rows read, each once.
        """
        if self.weight.is_meta:
            raise ValueError(
                "this value table is on the meta device (a memory.parallel rows / columns table): "
                "shard_memory(model) gives each rank its part (Lightning's ShardedMemory callback does at setup); "
                "build with memory.parallel=none to hold the whole table in one process"
            )
        return read_rows(self.weight, slots, weights, self.sparse, self.workspace)


def read_rows(
    table: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor, sparse: bool, workspace: Workspace | None = None
) -> torch.Tensor:
    """table (N, d), slots (T, R) long, weights (T, R) -> (T, d) weighted row sums in
    ``work_dtype(table)``; ``sparse``: the table gradient holds only the rows read (on CPU in
    ``workspace``'s memory when given). Negative slots are skipped (their weights must be 0). Runs
    outside autocast: weights stay in the work dtype."""
    weights = weights.to(work_dtype(table))
    with torch.autocast(device_type=table.device.type, enabled=False):
        if sparse:
            return _RowSparseRead.apply(table, slots, weights, workspace)
        return bag_read(slots, weights, table)
