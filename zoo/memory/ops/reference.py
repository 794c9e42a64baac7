"""The memory's ops in PyTorch: the reference every other backend (``cpu``, ``triton``) is tested
against and falls back to, each op with the signature those share (``zoo.memory.ops``), and the
weighted bag reads of table rows and their gradients they are made of."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from zoo.core.private_api import embedding_bag_weights_backward
from zoo.memory.workspace import Workspace

FUSED_READ = False  # no one-step read of the whole layer (``zoo.memory.fused_read``)
ROW_CHUNK_ELEMENTS = 1 << 20  # rows updated at once by ``row_adam`` (4 MiB fp32 per temporary, cache-sized)


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


def read(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """slots, weights (B, R), table (N, d) -> (B, d) in ``work_dtype(table)``:
    ``sum_r weights[b, r] * table[slots[b, r]]``. A negative slot reads row 0 instead, so its weight
    must be 0 (a read another shard serves). A bfloat16 table is read with bfloat16 weights."""
    out = F.embedding_bag(slots.clamp(min=0), table, per_sample_weights=weights.to(table.dtype), mode="sum")
    return out.to(work_dtype(table))


def bag_weight_grad(slots: torch.Tensor, table: torch.Tensor, grad_out: torch.Tensor, reads: tuple | None = None) -> torch.Tensor:
    """slots (B, R), table (N, d), grad_out (B, d) -> (B, R): the gradient of ``read`` with respect
    to its weights, ``table[slots[b, r]] . grad_out[b]`` (0 for negative slots); ``reads``:
    ``sorted_reads(slots)`` when already computed. torch's own bag backward, fed the reads in slot
    order so the table is walked in order (2-3x faster on CPU than in token order)."""
    order = (reads if reads is not None else sorted_reads(slots))[0]
    reads_per_bag = slots.shape[1]
    dots = embedding_bag_weights_backward(
        grad_out.to(table.dtype).contiguous(),
        table,
        slots.flatten().index_select(0, order),
        torch.arange(0, slots.numel(), reads_per_bag, device=slots.device),  # offsets (mode sum ignores them)
        order // reads_per_bag,  # the bag (token) of each read
    )
    grad = torch.zeros(slots.numel(), dtype=dots.dtype, device=dots.device).index_copy_(0, order, dots)
    return grad.view_as(slots).to(work_dtype(table))


def read_backward(table, slots, weights, grad_out, workspace: Workspace | None, needs=(True, True)) -> tuple:
    """``read``'s gradients from grad_out (T, d): (weights' (T, R), unique slots read (U,) ascending, their
    rows (U, d) in ``workspace``'s memory on CPU), each None unless ``needs`` (weights', table's)."""
    reads = sorted_reads(slots)  # (order, unique, offsets, counts): both gradients walk the reads by slot
    grad_weights = unique = rows = None
    if needs[0]:
        grad_weights = bag_weight_grad(slots, table, grad_out, reads).to(weights.dtype)
    if needs[1]:
        reuse = workspace is not None and grad_out.device.type == "cpu"
        out = workspace.take(len(reads[1]), grad_out.shape[1], grad_out.dtype) if reuse else None
        unique, rows = sum_rows_by_slot(slots, weights, grad_out, reads, out)
    return grad_weights, unique, rows


@functools.cache
def candidate_pairs(k1: int, k2: int, knn: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (i, j) in two descending-sorted candidate lists that can be among the ``knn`` best
    pairs: those with ``(i + 1) * (j + 1) <= knn``. Every pair (i', j') with i' <= i and j' <= j scores
    at least as much as (i, j), so a pair with more than ``knn`` such pairs is never needed: about
    knn * ln(knn) candidates remain instead of k1 * k2 (119 instead of 1024 at knn = 32).
    Returns (first positions, second positions), each (C,) long."""
    pairs = [(i, j) for i in range(k1) for j in range(k2) if (i + 1) * (j + 1) <= knn]
    first, second = zip(*pairs)
    return torch.tensor(first, device=device), torch.tensor(second, device=device)


def best_pairs(top1, idx1, top2, idx2, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each half's best candidates -> the ``knn`` best pairs by summed score.

    top1, idx1: (..., k1) scores sorted descending and sub-key indices of the first half; top2, idx2:
    (..., k2) of the second. Returns (pair sub-key indices (..., 2, knn), pair half scores
    (..., 2, knn)), pairs sorted by decreasing ``half1 + half2``. Requires ``knn <= k1 * k2``.
    """
    first, second = candidate_pairs(top1.shape[-1], top2.shape[-1], knn, top1.device)
    first, second = first.expand(*top1.shape[:-1], -1), second.expand(*top2.shape[:-1], -1)
    # gather with an expanded index: torch's CPU index_select along the last dim is much slower (docs/results.md)
    top1, idx1 = top1.gather(-1, first), idx1.gather(-1, first)  # (..., C)
    top2, idx2 = top2.gather(-1, second), idx2.gather(-1, second)
    best = (top1 + top2).topk(knn, dim=-1).indices
    idx = torch.stack([idx1.gather(-1, best), idx2.gather(-1, best)], dim=-2)
    halves = torch.stack([top1.gather(-1, best), top2.gather(-1, best)], dim=-2)
    return idx, halves


def top_pairs(scores: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both halves' sub-key scores, scores (t, H, 2, n) -> the ``knn`` best pairs, (sub-key indices,
    half scores) (t, H, 2, knn) as ``best_pairs`` gives them: one top-k over both halves."""
    top, idx = scores.topk(knn, dim=-1)  # (t, H, 2, knn) each
    return best_pairs(top[:, :, 0], idx[:, :, 0], top[:, :, 1], idx[:, :, 1], knn)


def rank_pairs(scores1, scores2, knn: int, first_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-key scores of each half, scores1 (t, H, n1) and scores2 (t, H, n2) -> ``top_pairs``'
    (t, H, 2, knn) pairs, first-half indices shifted by ``first_offset``."""
    top1, idx1 = scores1.topk(min(knn, scores1.shape[-1]), dim=-1)
    top2, idx2 = scores2.topk(knn, dim=-1)
    return best_pairs(top1, idx1 + first_offset, top2, idx2, knn)


def selected_scores_backward(q, keys, idx, grad, needs=(True, True)) -> tuple:
    """The gradients to q (T, H, 2, d) and keys (H, 2, n, d) of the selected scores
    ``q[t, h, s] . keys[h, s, idx[t, h, s, j]]`` (idx (T, H, 2, k)) from theirs, grad (T, H, 2, k),
    touching only the selected keys; ``needs``: whether q's / keys' are wanted (None where not)."""
    heads, halves, n_keys, dim = keys.shape
    rows = grad.flatten(0, 2)  # (T*H*2, k): row t*H*2 + h*2 + s scores keys[h, s]
    offset = torch.arange(heads * halves, device=idx.device).view(1, heads, halves, 1) * n_keys
    flat_idx = (idx + offset).flatten(0, 2)  # (T*H*2, k) rows of keys.view(H*2*n, d)
    grad_q = grad_keys = None
    if needs[0]:
        grad_q = read(flat_idx, rows, keys.reshape(-1, dim)).view_as(q)
    if needs[1]:
        unique, summed = sum_rows_by_slot(flat_idx, rows, q.reshape(-1, dim))
        grad_keys = torch.zeros_like(keys).view(-1, dim).index_copy_(0, unique, summed).view_as(keys)
    return grad_q, grad_keys


@torch.no_grad()
def row_adam(
    param, exp_avg, exp_avg_sq, rows, grad, lr: float, beta1: float, beta2: float, eps: float, step: int, workspace=None
):
    """Lazy Adam on ``rows`` only, in place: param (N, d) any float dtype, exp_avg (N, d) float32+,
    exp_avg_sq (N, d) or (N,) (one second moment per row, updated with the row's mean g^2), rows (U,)
    unique, grad (U, d). Arithmetic in the moments' dtype; param is written back in its own dtype.

    Per chunk of rows: the moments' rows gathered into ``workspace`` buffers (reused step after step:
    a fresh multi-MB temporary costs more in page faults than the arithmetic), updated in place and
    copied back; a parameter in the moments' dtype gets its step added in place (``index_add_``: one
    pass, no gather), another is gathered, updated and copied back in its own dtype."""
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    rowwise = exp_avg_sq.dim() == 1
    work = exp_avg.dtype
    width = param[0].numel()
    chunk = max(1, ROW_CHUNK_ELEMENTS // max(1, width))
    workspace = workspace or Workspace()
    for idx, g in zip(rows.split(chunk), grad.split(chunk)):
        n = idx.shape[0]
        g = g.to(work)
        v_cols, v_shape = (1, (n,)) if rowwise else (width, (n, width))
        m = torch.index_select(exp_avg, 0, idx, out=workspace.take(n, width, work)).lerp_(g, 1 - beta1)
        v = torch.index_select(exp_avg_sq, 0, idx, out=workspace.take(n, v_cols, work).view(v_shape))
        g_sq = torch.mul(g, g, out=workspace.take(n, width, work))
        v.mul_(beta2).add_(g_sq.mean(1) if rowwise else g_sq, alpha=1 - beta2)
        exp_avg.index_copy_(0, idx, m)
        exp_avg_sq.index_copy_(0, idx, v)
        denom = (torch.div(v, bias2) if rowwise else torch.div(v, bias2, out=g_sq)).sqrt_().add_(eps)
        # the step (-lr / b1) * m / denom, in m's buffer (m is stored already): AdamW's addcdiv, same rounding
        update = m.mul_(-lr / bias1).div_(denom.unsqueeze(1) if rowwise else denom)
        if param.dtype == work:
            param.index_add_(0, idx, update)
        else:
            param.index_copy_(0, idx, param.index_select(0, idx).to(work).add_(update).to(param.dtype))
        del m, v, g_sq, denom, update  # the buffers go back to the workspace for the next chunk


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """||x||^2 as a float64 scalar, accumulated in float64 (``vector_norm`` of a float64 copy)."""
    return torch.linalg.vector_norm(x, dtype=torch.float64) ** 2


def as_coalesced(grad: torch.Tensor) -> torch.Tensor:
    """An uncoalesced sparse row gradient -> one flagged coalesced: the order checked in O(rows) (autograd
    drops the flag of the sorted gradients the memory makes), ``coalesce()`` only when out of order
    or repeated. ``_indices()`` / ``_values()``: torch's documented accessors of an uncoalesced tensor."""
    rows = grad._indices()[0]
    if grad._indices().shape[0] == 1 and bool((rows[1:] > rows[:-1]).all()):
        return torch.sparse_coo_tensor(grad._indices(), grad._values(), grad.shape, is_coalesced=True, check_invariants=False)
    return grad.coalesce()
