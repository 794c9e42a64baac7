"""Product-key search: which k of the N = n_keys^2 slots each head of each token reads, and how much."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import mark_no_reinit, tag_optim
from zoo.memory import cpu_kernels
from zoo.memory.bags import bag_read, sum_rows_by_slot, work_dtype
from zoo.memory.config import MemoryConfig

SEARCH_CHUNK_ELEMENTS = 1 << 22  # half scores materialised at once during the search (16 MiB fp32)


def norm_eps(kind: str, dtype: torch.dtype) -> float:
    """The eps ``normalise`` adds to the variance: F.layer_norm's default 1e-5 for ``layernorm``,
    F.rms_norm's (the dtype's machine epsilon) for ``rmsnorm``."""
    return 1e-5 if kind == "layernorm" else torch.finfo(dtype).eps


def normalise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Parameter-free layer/RMS normalisation over the last dim (``kind="none"`` returns ``x``)."""
    if kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=norm_eps(kind, x.dtype))
    if kind == "rmsnorm":
        return F.rms_norm(x, x.shape[-1:], eps=norm_eps(kind, x.dtype))
    return x


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


def best_pairs(
    top1: torch.Tensor, idx1: torch.Tensor, top2: torch.Tensor, idx2: torch.Tensor, knn: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each half's best candidates -> the ``knn`` best pairs by summed score.

    top1, idx1: (..., k1) scores sorted descending and sub-key indices of the first half; top2, idx2:
    (..., k2) of the second. Returns (pair sub-key indices (..., 2, knn), pair half scores
    (..., 2, knn)), pairs sorted by decreasing ``half1 + half2``. Requires ``knn <= k1 * k2``.
    """
    first, second = candidate_pairs(top1.shape[-1], top2.shape[-1], knn, top1.device)
    first, second = first.expand(*top1.shape[:-1], -1), second.expand(*top2.shape[:-1], -1)
    # gather with an expanded index: torch's CPU index_select along the last dim is ~15x slower
    top1, idx1 = top1.gather(-1, first), idx1.gather(-1, first)  # (..., C)
    top2, idx2 = top2.gather(-1, second), idx2.gather(-1, second)
    best = (top1 + top2).topk(knn, dim=-1).indices
    idx = torch.stack([idx1.gather(-1, best), idx2.gather(-1, best)], dim=-2)
    halves = torch.stack([top1.gather(-1, best), top2.gather(-1, best)], dim=-2)
    return idx, halves


def product_topk(scores1: torch.Tensor, scores2: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of ``scores1[..., i] + scores2[..., j]`` over all (i, j) pairs.

    scores1, scores2: (..., n_keys) -> (scores (..., knn), slot index i * n_keys + j (..., knn)),
    sorted by decreasing score. The best k sums can only use each half's own top k, so only k*k
    candidate sums are formed.
    """
    top1, idx1 = scores1.topk(knn, dim=-1)
    top2, idx2 = scores2.topk(knn, dim=-1)
    idx, halves = best_pairs(top1, idx1, top2, idx2, knn)
    return halves.sum(-2), idx[..., 0, :] * scores1.shape[-1] + idx[..., 1, :]


@torch.no_grad()
def search_pairs(
    q: torch.Tensor, keys_first: torch.Tensor, keys_second: torch.Tensor, knn: int, first_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact product-key search over the slots (i, j), i among ``keys_first``, j among ``keys_second``.

    q: (T, H, 2, d) query halves; keys_first: (H, n1, d); keys_second: (H, n2, d). Returns
    (sub-key indices (T, H, 2, knn), half scores (T, H, 2, knn)), best pair first; first-half indices
    are shifted by ``first_offset`` (the position of ``keys_first`` in the full first-half key set).
    Tokens go in chunks so the (chunk, H, n) scores stay small enough for the allocator to reuse.
    """

    def search(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores1 = torch.einsum("thd,hnd->thn", part[:, :, 0], keys_first)
        scores2 = torch.einsum("thd,hnd->thn", part[:, :, 1], keys_second)
        return rank_pairs(scores1, scores2, knn, first_offset)

    return in_token_chunks(q, keys_first.shape[1] + keys_second.shape[1], search)


def subkey_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q (t, H, 2, d) query halves, keys (H, 2, n, d) sub-keys -> every sub-key's score against its
    half of the query, (t, H, 2, n), by one batched matmul over (head, half)."""
    return torch.einsum("thsd,hsnd->thsn", q, keys)


@torch.no_grad()
def local_search(q: torch.Tensor, keys: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Search over every slot on this process: q (T, H, 2, d), keys (H, 2, n, d) -> (sub-key indices,
    half scores), each (T, H, 2, knn), as ``search_pairs`` gives them. Both halves are scored by one
    batched matmul and ranked by one top-k (the halves have the same n here), in token chunks."""

    def search(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = subkey_scores(part, keys)  # (t, H, 2, n)
        if cpu_kernels.enabled(scores):
            return rank_pairs(scores[:, :, 0], scores[:, :, 1], knn)
        top, idx = scores.topk(knn, dim=-1)  # (t, H, 2, knn) each
        return best_pairs(top[:, :, 0], idx[:, :, 0], top[:, :, 1], idx[:, :, 1], knn)

    return in_token_chunks(q, 2 * keys.shape[2], search)


def rank_pairs(
    scores1: torch.Tensor, scores2: torch.Tensor, knn: int, first_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-key scores of both halves, scores1 (t, H, n1) and scores2 (t, H, n2) -> the ``knn`` best
    pairs as ``best_pairs`` gives them, (sub-key indices, half scores) (t, H, 2, knn), first-half
    indices shifted by ``first_offset``: one pass of memzoo's CPU kernel per (token, head) where it
    serves, else each half's top-k and ``best_pairs``."""
    if cpu_kernels.enabled(scores1, scores2):
        t, heads = scores1.shape[:2]
        idx, halves = cpu_kernels.ops().pair_topk(scores1.flatten(0, 1), scores2.flatten(0, 1), knn, first_offset)
        return idx.view(t, heads, 2, knn), halves.view(t, heads, 2, knn)
    top1, idx1 = scores1.topk(min(knn, scores1.shape[-1]), dim=-1)
    top2, idx2 = scores2.topk(knn, dim=-1)
    return best_pairs(top1, idx1 + first_offset, top2, idx2, knn)


def in_token_chunks(q: torch.Tensor, keys_per_head: int, search) -> tuple[torch.Tensor, ...]:
    """``search`` over chunks of q's tokens, q (T, H, 2, d), each chunk scoring at most
    ``SEARCH_CHUNK_ELEMENTS`` (tokens x H x ``keys_per_head``) so the scores stay small enough for the
    allocator to reuse; its tensors (each with the chunk's tokens first) concatenated over the chunks."""
    chunk = max(1, SEARCH_CHUNK_ELEMENTS // (q.shape[1] * keys_per_head))
    found = [search(part) for part in q.split(chunk)]
    if len(found) == 1:
        return found[0]
    return tuple(torch.cat(parts) for parts in zip(*found))


class _SelectedScores(torch.autograd.Function):
    """``scores[t, h, s, j] = q[t, h, s] . keys[h, s, idx[t, h, s, j]]`` for already-found sub-keys
    of the selected pairs, with a backward that touches only those keys (no (T, H, 2, n_keys) gradient).

    q: (T, H, 2, d), keys: (H, 2, n, d), idx: (T, H, 2, k), selected: the scores themselves (no grad).
    """

    @staticmethod
    def forward(ctx, q, keys, idx, selected):
        ctx.save_for_backward(q, keys, idx)
        return selected.clone()

    @staticmethod
    def backward(ctx, grad):
        q, keys, idx = ctx.saved_tensors
        heads, halves, n_keys, dim = keys.shape
        rows = grad.flatten(0, 2)  # (T*H*2, k): row t*H*2 + h*2 + s scores keys[h, s]
        if cpu_kernels.enabled(q, keys, rows):
            grad_q, grad_keys = cpu_kernels.ops().selected_scores_backward(
                q.reshape(-1, dim), keys.reshape(-1, dim), idx.flatten(0, 2), rows, n_keys
            )
            return grad_q.view_as(q), grad_keys.view_as(keys), None, None
        offset = torch.arange(heads * halves, device=idx.device).view(1, heads, halves, 1) * n_keys
        flat_idx = (idx + offset).flatten(0, 2)  # (T*H*2, k) rows of keys.view(H*2*n, d)
        grad_q = grad_keys = None
        if ctx.needs_input_grad[0]:
            grad_q = bag_read(flat_idx, rows, keys.reshape(-1, dim)).view_as(q)
        if ctx.needs_input_grad[1]:
            unique, summed = sum_rows_by_slot(flat_idx, rows, q.reshape(-1, dim))
            grad_keys = torch.zeros_like(keys).view(-1, dim).index_copy_(0, unique, summed).view_as(keys)
        return grad_q, grad_keys, None, None


class ProductKeys(nn.Module):
    """Query projection + two sub-key sets per head + exact product top-k + softmax weights.

    Init: sub-keys ~ U(-1/sqrt(k_dim), 1/sqrt(k_dim)); query weight ~ N(0, 1/d_model) so that queries
    of a unit-RMS input have unit variance; query bias 0.
    """

    def __init__(self, d_model: int, config: MemoryConfig):
        super().__init__()
        self.config = config
        self.query = nn.Linear(d_model, config.heads * config.k_dim, bias=config.query_bias)
        half = config.k_dim // 2
        self.sub_keys = nn.Parameter(torch.empty(config.heads, 2, config.n_keys, half))  # (H, 2, n, k_dim/2)
        mark_no_reinit(self.query.weight)
        if self.query.bias is not None:
            mark_no_reinit(tag_optim(self.query.bias, weight_decay=0.0))
        mark_no_reinit(tag_optim(self.sub_keys, weight_decay=0.0))
        # (q (T, H, 2, d), keys (H, 2, n, d), knn) -> (indices, half scores) (T, H, 2, knn); the row
        # layout swaps in a search over sharded slots
        self.search = local_search
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.config.k_dim)
        nn.init.uniform_(self.sub_keys, -bound, bound)
        nn.init.normal_(self.query.weight, std=self.query.in_features**-0.5)
        if self.query.bias is not None:
            nn.init.zeros_(self.query.bias)

    def projected(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, D) -> (query halves (T, H, 2, k_dim/2), sub-keys (H, 2, n_keys, k_dim/2)), both in
        at least float32 and not yet normalised: only the query projection follows autocast (bf16
        scores would tie and reorder near-equal slots)."""
        cfg = self.config
        work = work_dtype(self.sub_keys)
        q = self.query(x)
        return q.to(work).view(x.shape[0], cfg.heads, 2, cfg.k_dim // 2), self.sub_keys.to(work)

    def normalised(self, q: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``projected``'s (q, keys), each normalised over its last dim (``query_norm``)."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            return normalise(q, self.config.query_norm), normalise(keys, self.config.query_norm)

    def select(self, q: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``normalised``' (q, keys) -> (slot indices (T, H, knn) long, softmax weights (T, H, knn)).

        The search (``self.search``: this process's slots, or a sharded search) runs without
        autograd; gradients reach the query and the sub-keys through the selected pairs only.
        """
        cfg = self.config
        with torch.autocast(device_type=q.device.type, enabled=False):
            idx, halves = self.search(q.detach(), keys.detach(), cfg.knn)  # (T, H, 2, knn) each
            halves = _SelectedScores.apply(q, keys, idx, halves)
            weights = torch.softmax(halves.sum(2) / cfg.temperature, dim=-1)
        return idx[:, :, 0] * cfg.n_keys + idx[:, :, 1], weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, D) -> (slot indices (T, H, knn) long, softmax weights (T, H, knn) in at least float32):
        ``select(*normalised(*projected(x)))``."""
        return self.select(*self.normalised(*self.projected(x)))
