"""Product-key search: which k of the N = n_keys^2 slots each head of each token reads, and how much."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.memory.config import MemoryConfig
from zoo.tags import mark_no_reinit, tag_optim


def normalise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Parameter-free layer/RMS normalisation over the last dim (``kind="none"`` returns ``x``)."""
    if kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:])
    if kind == "rmsnorm":
        return F.rms_norm(x, x.shape[-1:])
    return x


def product_topk(
    scores1: torch.Tensor, scores2: torch.Tensor, knn: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of ``scores1[..., i] + scores2[..., j]`` over all (i, j) pairs.

    scores1, scores2: (..., n_keys) -> (scores (..., knn), slot index i * n_keys + j (..., knn)),
    sorted by decreasing score. The best k sums can only use each half's own top k, so only k*k
    candidate sums are formed.
    """
    n_keys = scores1.shape[-1]
    top1, idx1 = scores1.topk(knn, dim=-1)  # (..., k)
    top2, idx2 = scores2.topk(knn, dim=-1)
    sums = (top1.unsqueeze(-1) + top2.unsqueeze(-2)).flatten(-2)  # (..., k*k)
    best, flat = sums.topk(knn, dim=-1)
    slots = idx1.gather(-1, flat // knn) * n_keys + idx2.gather(-1, flat % knn)
    return best, slots


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

    def half_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, D) -> scores of each query half against its sub-keys, two tensors (T, H, n_keys)."""
        cfg = self.config
        q = self.query(x).view(x.shape[0], cfg.heads, 2, cfg.k_dim // 2)  # (T, H, 2, k_dim/2)
        q = normalise(q, cfg.query_norm)
        keys = normalise(self.sub_keys, cfg.query_norm)
        scores = torch.einsum("thsd,hsnd->thsn", q, keys)  # (T, H, 2, n_keys)
        return scores[:, :, 0], scores[:, :, 1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, D) -> (slot indices (T, H, knn) long, softmax weights (T, H, knn))."""
        scores1, scores2 = self.half_scores(x)
        scores, slots = product_topk(scores1, scores2, self.config.knn)
        weights = torch.softmax(scores / self.config.temperature, dim=-1)
        return slots, weights
