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
    unique, counts = torch.unique_consecutive(flat.index_select(0, order), return_counts=True)
    return order, unique, torch.cumsum(counts, 0) - counts, counts


def sum_rows_by_slot(
    slots: torch.Tensor,
    weights: torch.Tensor,
    source: torch.Tensor,
    reads: tuple | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For bag reads ``out[b] = sum_r weights[b, r] * table[slots[b, r]]`` and ``source = d out``,
    the table gradient's nonzero rows.

    slots, weights: (B, R); source: (B, d); reads: ``sorted_reads(slots)`` when already computed;
    out: an optional (U, d) buffer for the rows. Returns (unique slots (U,) ascending, rows (U, d))
    with ``rows[u] = sum over (b, r) with slots[b, r] == unique[u] of weights[b, r] * source[b]``.
    Negative slots are skipped. No (B*R, d) tensor is made: each slot's first read is gathered and
    scaled into ``out``, and only slots read more than once are summed by an embedding bag.
    """
    order, unique, offsets, counts = reads if reads is not None else sorted_reads(slots)
    bag = order // slots.shape[1]
    sorted_weights = weights.flatten().index_select(0, order).to(source.dtype)
    if out is None:
        out = source.new_empty(unique.shape[0], source.shape[1])
    torch.index_select(source, 0, bag.index_select(0, offsets), out=out)
    out.mul_(sorted_weights.index_select(0, offsets).unsqueeze(1))
    repeated = (counts > 1).nonzero().squeeze(1)
    if repeated.numel():
        starts, lengths = offsets.index_select(0, repeated), counts.index_select(0, repeated)
        reads_of = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
        reads_of = reads_of + torch.arange(reads_of.shape[0], device=reads_of.device)  # positions in ``order``
        bag_offsets = torch.cumsum(lengths, 0) - lengths
        sums = F.embedding_bag(
            bag.index_select(0, reads_of),
            source,
            bag_offsets,
            mode="sum",
            per_sample_weights=sorted_weights.index_select(0, reads_of),
        )
        out.index_copy_(0, repeated, sums)
    return unique, out


def bag_read(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """slots, weights (B, R), table (N, d) -> (B, d) in ``work_dtype(table)``:
    ``sum_r weights[b, r] * table[slots[b, r]]``. A negative slot reads row 0 instead, so its weight
    must be 0 (a read another shard serves). A bfloat16 table is read with bfloat16 weights."""
    out = F.embedding_bag(slots.clamp(min=0), table, per_sample_weights=weights.to(table.dtype), mode="sum")
    return out.to(work_dtype(table))


def bag_weight_grad(slots: torch.Tensor, table: torch.Tensor, grad_out: torch.Tensor, reads: tuple | None = None) -> torch.Tensor:
    """slots (B, R), table (N, d), grad_out (B, d) -> (B, R): the gradient of ``bag_read`` with respect
    to its weights, ``table[slots[b, r]] . grad_out[b]`` (0 for negative slots); ``reads``:
    ``sorted_reads(slots)`` when already computed. torch's own bag backward, fed the reads in slot
    order so the table is walked in order (2-3x faster on CPU than in token order)."""
    order = (reads if reads is not None else sorted_reads(slots))[0]
    reads_per_bag = slots.shape[1]
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_out.to(table.dtype).contiguous(),
        table,
        slots.flatten().index_select(0, order),
        torch.arange(0, slots.numel(), reads_per_bag, device=slots.device),  # offsets (mode sum ignores them)
        order // reads_per_bag,
        0,
        -1,  # the bag (token) of each read, mode sum, no padding index
    )
    grad = torch.zeros(slots.numel(), dtype=dots.dtype, device=dots.device).index_copy_(0, order, dots)
    return grad.view_as(slots).to(work_dtype(table))
