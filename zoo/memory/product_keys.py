"""Product-key search: which k of the N = n_keys^2 slots each head of each token reads, and how much."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.memory.bags import bag_read, sum_rows_by_slot
from zoo.memory.config import MemoryConfig
from zoo.tags import mark_no_reinit, tag_optim


SEARCH_CHUNK_ELEMENTS = 1 << 22  # half scores materialised at once during the search (16 MiB fp32)


def normalise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Parameter-free layer/RMS normalisation over the last dim (``kind="none"`` returns ``x``)."""
    if kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:])
    if kind == "rmsnorm":
        return F.rms_norm(x, x.shape[-1:])
    return x


def combine_halves(
    top1: torch.Tensor, idx1: torch.Tensor, top2: torch.Tensor, idx2: torch.Tensor, n_keys: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each half's top k (scores and sub-key indices, (..., k)) -> the best k of the k*k sums:
    (scores (..., k) descending, slot index i * n_keys + j (..., k))."""
    knn = top1.shape[-1]
    sums = (top1.unsqueeze(-1) + top2.unsqueeze(-2)).flatten(-2)  # (..., k*k)
    best, flat = sums.topk(knn, dim=-1)
    slots = idx1.gather(-1, flat // knn) * n_keys + idx2.gather(-1, flat % knn)
    return best, slots


def product_topk(
    scores1: torch.Tensor, scores2: torch.Tensor, knn: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of ``scores1[..., i] + scores2[..., j]`` over all (i, j) pairs.

    scores1, scores2: (..., n_keys) -> (scores (..., knn), slot index i * n_keys + j (..., knn)),
    sorted by decreasing score. The best k sums can only use each half's own top k, so only k*k
    candidate sums are formed.
    """
    top1, idx1 = scores1.topk(knn, dim=-1)
    top2, idx2 = scores2.topk(knn, dim=-1)
    return combine_halves(top1, idx1, top2, idx2, scores1.shape[-1])


class _SelectedScores(torch.autograd.Function):
    """``scores[t, h, s, j] = q[t, h, s] . keys[h, s, idx[t, h, s, j]]`` for already-found top-k
    sub-keys, with a backward that touches only the selected keys (no (T, H, 2, n_keys) gradient).

    q: (T, H, 2, d), keys: (H, 2, n, d), idx: (T, H, 2, k), selected: the scores themselves (no grad).
    """

    @staticmethod
    def forward(ctx, q, keys, idx, selected):
        heads, halves, n_keys, dim = keys.shape
        offset = torch.arange(heads * halves, device=idx.device).view(1, heads, halves, 1) * n_keys
        flat_idx = (idx + offset).flatten(0, 2)  # (T*H*2, k) rows of keys.view(H*2*n, d)
        ctx.save_for_backward(q, keys, flat_idx)
        return selected.clone()

    @staticmethod
    def backward(ctx, grad):
        q, keys, flat_idx = ctx.saved_tensors
        grad_rows = grad.flatten(0, 2)  # (T*H*2, k)
        grad_q = grad_keys = None
        if ctx.needs_input_grad[0]:
            grad_q = bag_read(flat_idx, grad_rows, keys.reshape(-1, keys.shape[-1])).view_as(q)
        if ctx.needs_input_grad[1]:
            unique, rows = sum_rows_by_slot(flat_idx, grad_rows, q.reshape(-1, q.shape[-1]))
            grad_keys = torch.zeros_like(keys).view(-1, keys.shape[-1]).index_copy_(0, unique, rows).view_as(keys)
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.config.k_dim)
        nn.init.uniform_(self.sub_keys, -bound, bound)
        nn.init.normal_(self.query.weight, std=self.query.in_features**-0.5)
        if self.query.bias is not None:
            nn.init.zeros_(self.query.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, D) -> (slot indices (T, H, knn) long, softmax weights (T, H, knn)).

        The (T, H, 2, n_keys) half scores are computed without autograd; gradients reach the query
        and the sub-keys through the k selected scores of each half only.
        """
        cfg = self.config
        q = normalise(self.query(x).view(x.shape[0], cfg.heads, 2, cfg.k_dim // 2), cfg.query_norm)
        keys = normalise(self.sub_keys, cfg.query_norm)  # (H, 2, n_keys, k_dim/2)
        with torch.no_grad():
            # tokens in chunks: the (chunk, H, 2, n_keys) scores stay small enough for the allocator
            # to reuse, instead of a fresh (T, H, 2, n_keys) block faulted in at every step
            chunk = max(1, SEARCH_CHUNK_ELEMENTS // (cfg.heads * 2 * cfg.n_keys))
            found = [torch.einsum("thsd,hsnd->thsn", part, keys).topk(cfg.knn, dim=-1) for part in q.split(chunk)]
            top = torch.cat([f.values for f in found])  # (T, H, 2, k)
            idx = torch.cat([f.indices for f in found])
        top = _SelectedScores.apply(q, keys, idx, top)
        scores, slots = combine_halves(top[:, :, 0], idx[:, :, 0], top[:, :, 1], idx[:, :, 1], cfg.n_keys)
        weights = torch.softmax(scores / cfg.temperature, dim=-1)
        return slots, weights
