"""Product-key search: which k of the N = n_keys^2 slots each head of each token reads, and how much."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import mark_no_reinit, tag_optim
from zoo.memory.config import MemoryConfig
from zoo.memory.ops import memory_ops
from zoo.memory.ops.reference import rank_pairs, work_dtype

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


def product_topk(scores1: torch.Tensor, scores2: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of ``scores1[..., i] + scores2[..., j]`` over all (i, j) pairs.

    scores1, scores2: (..., n_keys) -> (scores (..., knn), slot index i * n_keys + j (..., knn)),
    sorted by decreasing score. The best k sums can only use each half's own top k, so only k*k
    candidate sums are formed.
    """
    idx, halves = rank_pairs(scores1, scores2, knn)
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
        return memory_ops(scores1.device, scores1.dtype).rank_pairs(scores1, scores2, knn, first_offset)

    return in_token_chunks(q, keys_first.shape[1] + keys_second.shape[1], search)


def subkey_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q (t, H, 2, d) query halves, keys (H, 2, n, d) sub-keys -> every sub-key's score against its
    half of the query, (t, H, 2, n), by one batched matmul over (head, half)."""
    return torch.einsum("thsd,hsnd->thsn", q, keys)


@torch.no_grad()
def local_search(q: torch.Tensor, keys: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The local and column layouts' ``search`` over every slot: q (T, H, 2, d), keys (H, 2, n, d) ->
    ``search_pairs``' (T, H, 2, knn) pairs, both halves scored by one batched matmul, in token chunks."""

    def search(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = subkey_scores(part, keys)  # (t, H, 2, n)
        return memory_ops(scores.device, scores.dtype).top_pairs(scores, knn)

    return in_token_chunks(q, 2 * keys.shape[2], search)


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
        ops = memory_ops(q.device, q.dtype)
        return *ops.selected_scores_backward(q, keys, idx, grad, tuple(ctx.needs_input_grad[:2])), None, None


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

    def select(self, q: torch.Tensor, keys: torch.Tensor, search=local_search) -> tuple[torch.Tensor, torch.Tensor]:
        """``normalised``' (q, keys) -> (slot indices (T, H, knn) long, softmax weights (T, H, knn)).

        ``search`` (the value table's layout's), (q (T, H, 2, d), keys (H, 2, n, d), knn) -> (indices,
        half scores) (T, H, 2, knn), runs without autograd; gradients reach the query and the
        sub-keys through the selected pairs only.
        """
        cfg = self.config
        with torch.autocast(device_type=q.device.type, enabled=False):
            idx, halves = search(q.detach(), keys.detach(), cfg.knn)  # (T, H, 2, knn) each
            halves = _SelectedScores.apply(q, keys, idx, halves)
            weights = torch.softmax(halves.sum(2) / cfg.temperature, dim=-1)
        return idx[:, :, 0] * cfg.n_keys + idx[:, :, 1], weights

    def forward(self, x: torch.Tensor, search=local_search) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, D) -> (slot indices (T, H, knn) long, softmax weights (T, H, knn) in at least float32):
        ``select(*normalised(*projected(x)), search)``."""
        return self.select(*self.normalised(*self.projected(x)), search)
