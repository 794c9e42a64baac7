"""The value table: N learned rows of width v_dim, read as a weighted sum of k selected rows."""

from __future__ import annotations

import torch
from torch import nn

from zoo.core.tags import mark_no_reinit, tag_optim
from zoo.memory.ops import memory_ops, reference
from zoo.memory.product_keys import local_search
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
        values = torch.empty(min(block, n_slots - first), v_dim, dtype=torch.float32, device="cpu")  # as any context sets
        values.normal_(std=v_dim**-0.5, generator=generator)
        lo, hi = max(first, row_start), min(first + len(values), row_start + rows)
        out[lo - row_start : hi - row_start] = values[lo - first : hi - first, col_start : col_start + cols]
    return out


class _RowSparseRead(torch.autograd.Function):
    """``out[t] = sum_r weights[t, r] * table[slots[t, r]]`` whose table gradient is a coalesced sparse
    tensor holding one row per slot read (instead of one row per read), by the table's backend."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor, workspace) -> torch.Tensor:
        ctx.save_for_backward(table, slots, weights)
        ctx.workspace, ctx.ops = workspace, memory_ops(table.device, table.dtype)
        return ctx.ops.read(slots, weights, table)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        table, slots, weights = ctx.saved_tensors
        needs = (ctx.needs_input_grad[2], ctx.needs_input_grad[0])
        grad_weights, unique, rows = ctx.ops.read_backward(table, slots, weights, grad_out, ctx.workspace, needs)
        return (row_gradient(unique, rows.to(table.dtype), table.shape) if needs[1] else None), None, grad_weights, None


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
    A value table is its layout (``search``, ``read``, ``fuses_read``), as the sharded ones are.
    """

    search = staticmethod(local_search)  # the local layout searches every slot

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
                "shard_memory(model) gives each rank its part (LitLanguageModel.configure_model does); "
                "build with memory.parallel=none to hold the whole table in one process"
            )
        return read_rows(self.weight, slots, weights, self.sparse, self.workspace)

    def fuses_read(self, q: torch.Tensor, sub_keys: torch.Tensor) -> bool:
        """Whether ``fused_read`` serves: rows-only gradients; q, sub-keys, table of one dtype whose backend has it."""
        table = self.weight
        return self.sparse and q.dtype == sub_keys.dtype == table.dtype and memory_ops(table.device, table.dtype).FUSED_READ


def read_rows(
    table: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor, sparse: bool, workspace: Workspace | None = None
) -> torch.Tensor:
    """table (N, d), slots (T, R) long, weights (T, R) -> (T, d) weighted row sums in
    ``work_dtype(table)``; ``sparse``: the table gradient holds only the rows read (on CPU in
    ``workspace``'s memory when given). Negative slots are skipped (their weights must be 0). Runs
    outside autocast: weights stay in the work dtype."""
    weights = weights.to(reference.work_dtype(table))
    with torch.autocast(device_type=table.device.type, enabled=False):
        if sparse:
            return _RowSparseRead.apply(table, slots, weights, workspace)
        return reference.read(slots, weights, table)
