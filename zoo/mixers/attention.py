"""Causal multi-head self-attention with rotary position embedding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import linear, mark_residual_projection, parameter_count
from zoo.core.value_checks import check_bool, check_real, is_int
from zoo.mixers.rotary import Rotary


@dataclass
class KVCache:
    """Keys and values of the positions seen so far: (B, H, max_len, head_dim) each, ``length`` used."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0


class Attention(nn.Module):
    """Causal attention: fused QKV projection, rotary on q and k, ``F.scaled_dot_product_attention``;
    grouped-query (Ainslie et al. 2023) when ``num_kv_heads < num_heads``.

    Args:
        d_model: model width D; must be divisible by ``num_heads``.
        layer_idx: position of this layer in the stack (kept for caches and logging).
        num_heads: number of query heads H; head dim = D / H (must be even for rotary).
        num_kv_heads: key/value heads G, dividing H (query head i reads key/value head i // (H / G),
            as Llama's ``num_key_value_heads``); None = H (multi-head attention). The fused projection
            is laid out [q (H*hd); k (G*hd); v (G*hd)].
        rotary_base: base of the rotary frequencies.
        bias: whether the projections have biases.
        dropout: attention-probability dropout during training.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        rotary_base: float = 10000.0,
        bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not is_int(num_heads) or num_heads < 1 or d_model % num_heads:
            raise ValueError(f"attention num_heads={num_heads!r} must be a positive divisor of d_model={d_model}")
        if num_kv_heads is None:
            num_kv_heads = num_heads
        if not is_int(num_kv_heads) or num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"attention num_kv_heads={num_kv_heads!r} must be a positive divisor of num_heads={num_heads} "
                "(or null = num_heads)"
            )
        check_real("attention rotary_base", rotary_base, low=0, low_open=True)
        check_real("attention dropout", dropout, low=0, high=1, high_open=True)
        check_bool("attention bias", bias)
        head_dim = d_model // num_heads
        if head_dim % 2:
            raise ValueError(f"attention head dim d_model/num_heads={head_dim} must be even for rotary embedding")
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.qkv = linear(d_model, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias)
        self.out_proj = mark_residual_projection(linear(d_model, d_model, bias=bias))
        self.rotary = Rotary(head_dim, base=rotary_base)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token (2 per multiply-add): the projections, plus q.k scores and the
        weighted sum of values over the causal context (seq_len / 2 positions on average)."""
        return 2 * parameter_count(self) + 2 * 2 * (seq_len // 2) * self.num_heads * self.head_dim

    def state_size(self, seq_len: int) -> int:
        """Bytes of inference state per sequence of ``seq_len`` tokens: the keys and values cached."""
        return 2 * seq_len * self.num_kv_heads * self.head_dim * self.qkv.weight.element_size()

    def allocate_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> "KVCache":
        """Empty key/value cache for ``step``, room for ``max_len`` positions."""
        weight = self.qkv.weight
        shape = (batch_size, self.num_kv_heads, max_len, self.head_dim)
        device, dtype = device or weight.device, dtype or weight.dtype
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, D) -> q (B, H, L, hd), k and v (B, G, L, hd), before rotary."""
        sizes = [self.num_heads * self.head_dim] + 2 * [self.num_kv_heads * self.head_dim]
        q, k, v = self.qkv(x).split(sizes, dim=-1)
        return tuple(t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2) for t in (q, k, v))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options) -> torch.Tensor:
        """q (B, H, L, hd), k and v (B, G, S, hd) -> (B, H, L, hd); each key/value head serves H / G
        consecutive query heads."""
        if self.num_kv_heads != self.num_heads:
            repeat = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        return F.scaled_dot_product_attention(q, k, v, **options)

    def project_token(self, hidden: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden (B, D) at ``position`` -> q (B, H, 1, hd), k and v (B, G, 1, hd), q and k rotated."""
        q, k, v = self._heads(hidden.unsqueeze(1))
        return self.rotary(q, offset=position), self.rotary(k, offset=position), v

    def _cache_slot(self, cache: "KVCache") -> int:
        """Where ``step`` writes the next token's key and value: the next free position."""
        if cache.length >= cache.keys.shape[2]:
            raise ValueError(f"attention cache is full ({cache.keys.shape[2]} positions); allocate a longer one")
        return cache.length

    def step(self, hidden: torch.Tensor, cache: "KVCache") -> tuple[torch.Tensor, "KVCache"]:
        """One token: hidden (B, D) -> (B, D), attending to the cached positions and itself; the
        token's key and value are written into ``cache`` (in place, at ``_cache_slot``)."""
        slot = self._cache_slot(cache)
        q, k, v = self.project_token(hidden, cache.length)
        cache.keys[:, :, slot] = k[:, :, 0]
        cache.values[:, :, slot] = v[:, :, 0]
        cache.length += 1
        used = min(cache.length, cache.keys.shape[2])
        y = self._attend(q, cache.keys[:, :, :used], cache.values[:, :, :used])
        return self.out_proj(y.flatten(1)), cache

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
        """q (B, H, L, hd), k and v (B, G, L, hd) -> (B, H, L, hd); position t attends to positions <= t."""
        return self._attend(q, k, v, is_causal=True, dropout_p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D), through ``_causal``."""
        q, k, v = self._heads(x)
        y = self._causal(self.rotary(q), self.rotary(k), v, self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).flatten(2))
