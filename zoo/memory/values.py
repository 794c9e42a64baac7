"""The value table: N learned rows of width v_dim, read as a weighted sum of k selected rows."""

from __future__ import annotations

import torch
from torch import nn

from zoo.memory.bags import bag_read, sum_rows_by_slot
from zoo.tags import mark_no_reinit, tag_optim

VALUE_GROUP = "memory_values"


class _RowSparseRead(torch.autograd.Function):
    """``embedding_bag(slots, table, weights)`` whose table gradient is a coalesced sparse tensor
    holding one row per slot read (instead of one row per read)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(table, slots, weights)
        return bag_read(slots, weights, table)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        table, slots, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[2]:
            with torch.enable_grad():  # torch's own bag backward for the weights (no row gather)
                w = weights.detach().requires_grad_()
                read = bag_read(slots, w, table.detach())
                (grad_weights,) = torch.autograd.grad(read, w, grad_out)
        if ctx.needs_input_grad[0]:
            unique, rows = sum_rows_by_slot(slots, weights, grad_out)
            grad_table = torch.sparse_coo_tensor(
                unique.unsqueeze(0), rows, table.shape, is_coalesced=True, check_invariants=False
            )
        return grad_table, None, grad_weights


class ValueTable(nn.Module):
    """Local (unsharded) value table, ``weight`` (N, v_dim) ~ N(0, v_dim^-0.5).

    The weight is tagged for its own optimizer group (``memory_values``: own lr, no weight decay,
    and ``sparse`` when rows-only updates are on). One table object may serve several layers.
    """

    def __init__(self, n_slots: int, v_dim: int, lr: float, sparse: bool):
        super().__init__()
        self.n_slots, self.v_dim, self.sparse = n_slots, v_dim, sparse
        self.weight = nn.Parameter(torch.empty(n_slots, v_dim))
        mark_no_reinit(tag_optim(self.weight, group=VALUE_GROUP, lr=lr, weight_decay=0.0, sparse=sparse))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.v_dim**-0.5)

    def read(self, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """slots (T, R) long, weights (T, R) -> sum_r weights[t, r] * weight[slots[t, r]], (T, v_dim).

        An embedding bag: no (T, N) matrix is formed. With ``sparse`` the weight's gradient is a
        sparse tensor holding only the rows read, each once.
        """
        return read_rows(self.weight, slots, weights, self.sparse)


def read_rows(table: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor, sparse: bool) -> torch.Tensor:
    """table (N, d), slots (T, R) long, weights (T, R) -> (T, d) weighted row sums; ``sparse``: the
    table gradient holds only the rows read. Negative slots are skipped (their weights must be 0)."""
    weights = weights.to(table.dtype)
    if sparse:
        return _RowSparseRead.apply(table, slots, weights)
    return bag_read(slots, weights, table)
