"""Weighted bag reads of table rows and their gradients, in PyTorch (the reference and CPU path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def work_dtype(table: torch.Tensor) -> torch.dtype:
    """The dtype reads accumulate and return in: float32, or the table's when wider (float64)."""
    return torch.promote_types(table.dtype, torch.float32)


def sorted_reads(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """slots (B, R) -> the non-negative reads grouped by slot: (order (M,): flat read index b * R + r of
    each read in slot order, unique slots (U,) ascending, offsets (U,) and counts (U,) of each slot's
    reads in ``order``). Negative slots (reads another shard serves) are left out."""
    flat = slots.flatten()
    order = flat.argsort()
    order = order[int((flat < 0).sum()) :]  # negatives sort first
    unique, counts = torch.unique_consecutive(flat[order], return_counts=True)
    return order, unique, torch.cumsum(counts, 0) - counts, counts


def sum_rows_by_slot(
    slots: torch.Tensor, weights: torch.Tensor, source: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For bag reads ``out[b] = sum_r weights[b, r] * table[slots[b, r]]`` and ``source = d out``,
    the table gradient's nonzero rows.

    slots, weights: (B, R); source: (B, d). Returns (unique slots (U,) ascending, rows (U, d)) with
    ``rows[u] = sum over (b, r) with slots[b, r] == unique[u] of weights[b, r] * source[b]``.
    Negative slots are skipped. One sort of the B*R reads, then an embedding bag over ``source``:
    no (B*R, d) tensor is made.
    """
    order, unique, offsets, _ = sorted_reads(slots)
    bag = order // slots.shape[1]
    rows = F.embedding_bag(bag, source, offsets, mode="sum", per_sample_weights=weights.flatten()[order].to(source.dtype))
    return unique, rows


def bag_read(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """slots, weights (B, R), table (N, d) -> (B, d) in ``work_dtype(table)``:
    ``sum_r weights[b, r] * table[slots[b, r]]``. A negative slot reads row 0 instead, so its weight
    must be 0 (a read another shard serves). A bfloat16 table is read with bfloat16 weights."""
    out = F.embedding_bag(slots.clamp(min=0), table, per_sample_weights=weights.to(table.dtype), mode="sum")
    return out.to(work_dtype(table))


def bag_weight_grad(slots: torch.Tensor, table: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """slots (B, R), table (N, d), grad_out (B, d) -> (B, R): the gradient of ``bag_read`` with respect
    to its weights, ``table[slots[b, r]] . grad_out[b]`` (torch's own bag backward: no row gather)."""
    with torch.enable_grad():
        weights = torch.zeros(slots.shape, dtype=table.dtype, device=table.device, requires_grad=True)
        out = F.embedding_bag(slots.clamp(min=0), table.detach(), per_sample_weights=weights, mode="sum")
        (grad,) = torch.autograd.grad(out, weights, grad_out.to(table.dtype))
    return grad.to(work_dtype(table))
