"""Sliding-window causal attention: position t attends to positions t - window + 1 .. t only.

Compute and inference state are linear in length: the forward pass works in query blocks of
``window`` positions, each attending to its own block and the one before it (a banded mask), and
the inference cache is a ring buffer of the last ``window`` keys and values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.core.tags import parameter_count
from zoo.mixers.attention import Attention, KVCache
from zoo.mixers.ssm_common import check_positive_ints


class SlidingWindowAttention(Attention):
    """Causal MHA restricted to the last ``window`` positions (the token itself included), with
    rotary embedding. The parameters are ``Attention``'s: a state dict moves between the two.

    Args:
        window: positions each token attends to (>= 1); a sequence no longer than ``window`` is
            plain causal attention.
        d_model, layer_idx, num_heads, num_kv_heads, rotary_base, bias, dropout: as for ``Attention``.
    """

    def __init__(self, d_model: int, layer_idx: int = 0, window: int = 64, **attention_options):
        check_positive_ints("sliding_window", window=window)
        super().__init__(d_model, layer_idx, **attention_options)
        self.window = window

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: the projections, plus scores and weighted values over the
        average causal context ``seq_len / 2``, capped at the window (an upper bound past it)."""
        context = min(seq_len // 2, self.window)
        return 2 * parameter_count(self) + 2 * 2 * context * self.num_heads * self.head_dim

    def state_size(self, seq_len: int) -> int:
        """Bytes of inference state per sequence: keys and values of at most ``window`` positions."""
        return super().state_size(min(seq_len, self.window))

    def allocate_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        """A ring buffer of ``min(max_len, window)`` positions; ``length`` counts every token seen."""
        return super().allocate_cache(batch_size, min(max_len, self.window), device, dtype)

    def _cache_slot(self, cache: KVCache) -> int:
        """The oldest slot of the ring buffer: rotary is applied at the absolute position before
        caching, so the order of the slots does not matter."""
        return cache.length % cache.keys.shape[2]

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
        """q (B, H, L, hd), k and v (B, G, L, hd) -> (B, H, L, hd); position t attends to positions
        max(0, t - window + 1) .. t. Query block b (``window`` positions) attends to key blocks b - 1
        and b under the band mask; L is padded up to whole blocks."""
        if q.shape[2] <= self.window:
            return super()._causal(q, k, v, dropout)
        w, length = self.window, q.shape[2]
        blocks = -(-length // w)
        pad = blocks * w - length
        # one block of zeros in front (the block before the first) and the tail padding behind
        q = F.pad(q, (0, 0, 0, pad)).unflatten(2, (blocks, w))  # (B, H, nb, w, hd)
        k, v = (F.pad(t, (0, 0, w, pad)).unflatten(2, (blocks + 1, w)) for t in (k, v))
        keys = torch.cat([k[:, :, :-1], k[:, :, 1:]], dim=3)  # (B, H, nb, 2w, hd): blocks b - 1, b
        values = torch.cat([v[:, :, :-1], v[:, :, 1:]], dim=3)
        query_pos = torch.arange(blocks, device=q.device)[:, None, None] * w + torch.arange(w, device=q.device)[:, None]
        key_pos = torch.arange(blocks, device=q.device)[:, None, None] * w - w + torch.arange(2 * w, device=q.device)
        behind = query_pos - key_pos  # (nb, w, 2w)
        mask = (behind >= 0) & (behind < w) & (key_pos >= 0)
        y = self._attend(q, keys, values, attn_mask=mask, dropout_p=dropout)
        return y.flatten(2, 3)[:, :, :length]
