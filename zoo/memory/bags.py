"""Gradient of weighted bag reads with respect to the rows read, without a row per read."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sum_rows_by_slot(
    slots: torch.Tensor, weights: torch.Tensor, source: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For bag reads ``out[b] = sum_r weights[b, r] * table[slots[b, r]]`` and ``source = d out``,
    the table gradient's nonzero rows.

    slots, weights: (B, R); source: (B, d). Returns (unique slots (U,) ascending, rows (U, d)) with
    ``rows[u] = sum over (b, r) with slots[b, r] == unique[u] of weights[b, r] * source[b]``.
    Negative slots (reads another shard serves) are skipped.
    One sort of the B*R reads, then an embedding bag over ``source``: no (B*R, d) tensor is made.
    """
    flat = slots.flatten()
    order = flat.argsort()
    order = order[int((flat < 0).sum()) :]  # negatives sort first
    unique, counts = torch.unique_consecutive(flat[order], return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    bag = order // slots.shape[1]
    rows = F.embedding_bag(bag, source, offsets, mode="sum", per_sample_weights=weights.flatten()[order])
    return unique, rows


def bag_read(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """slots, weights (B, R), table (N, d) -> (B, d): ``sum_r weights[b, r] * table[slots[b, r]]``.
    A negative slot reads row 0 instead, so its weight must be 0 (a read another shard serves)."""
    return F.embedding_bag(slots.clamp(min=0), table, per_sample_weights=weights, mode="sum")
