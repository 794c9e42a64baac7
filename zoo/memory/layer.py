"""The memory+ channel: ``W2(mem(x) * silu(W1 x))``, optionally times ``sigmoid(w_g . x)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import linear, mark_residual_projection, parameter_count
from zoo.memory import fused_read
from zoo.memory.config import MemoryConfig
from zoo.memory.product_keys import ProductKeys
from zoo.memory.usage import UsageTracker
from zoo.memory.values import ValueTable


def make_value_table(config: MemoryConfig, d_model: int) -> ValueTable:
    """A fresh value table sized by ``config``; on the meta device (nothing allocated) for a sharded
    ``config.parallel``, whose ranks each materialise only their part (``shard_memory``)."""
    return ValueTable(
        config.n_slots,
        config.resolved_v_dim(d_model),
        lr=config.resolved_value_lr(),
        sparse=config.sparse_updates,
        dtype=getattr(torch, config.value_dtype),
        second_moment=config.second_moment,
        device="meta" if config.parallel != "none" else None,
    )


class MemoryPlus(nn.Module):
    """Product-key memory channel (Berges et al. 2024).

    Args:
        d_model: width D.
        layer_idx: layer position.
        config: a checked ``MemoryConfig`` (``ModelConfig.validate`` / ``build_model`` check it once).
        values: a ``ValueTable`` to share with other layers; None creates this layer's own.

    ``mem(x)`` sums, over heads, the softmax-weighted value rows of the head's top-k slots. W1 and W2
    (D <-> v_dim) use the model's GPT init, W2 as a residual projection; the gate bias starts at 0.
    """

    def __init__(self, d_model: int, layer_idx: int, config: MemoryConfig, values: ValueTable | None = None):
        super().__init__()
        v_dim = config.resolved_v_dim(d_model)
        if values is not None and (values.v_dim != v_dim or values.n_slots != config.n_slots):
            raise ValueError(
                f"shared value table is ({values.n_slots}, {values.v_dim}) but layer {layer_idx} needs "
                f"(n_keys^2={config.n_slots}, v_dim={v_dim})"
            )
        self.layer_idx = layer_idx
        self.d_model = d_model
        self.config = config
        self.keys = ProductKeys(d_model, config)
        self.values = values if values is not None else make_value_table(config, d_model)
        self.w1 = linear(d_model, v_dim)
        self.w2 = mark_residual_projection(linear(v_dim, d_model))
        self.gate = linear(d_model, 1, bias=True) if config.gate else None
        self.usage = UsageTracker()

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, D) -> mem(x): (T, v_dim). On CPU with memzoo's kernels, the search, the weights and
        the read of this process's whole table (the query normalisation too) go as one autograd step
        (``fused_read``)."""
        q, keys = self.keys.projected(x)
        if self.values.fuses_read(q, keys):
            out, slots, weights = fused_read.product_key_read(q, keys, self.values, self.config)
        else:
            slots, weights = self.keys.select(*self.keys.normalised(q, keys), self.values.search)  # (T, H, k) each
            out = self.values.read(slots.flatten(1), weights.flatten(1))
        self.usage.update(slots, weights, self.config.n_slots)
        return out

    def active_parameters(self) -> int:
        """Parameters one token uses: query, sub-keys (each scored once), W1, W2, the gate, and the
        heads * knn value rows it reads (not the whole table)."""
        reads = self.config.heads * self.config.knn * self.values.v_dim
        return parameter_count(self, skip="values") + reads

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: one multiply-add (2 FLOPs) per active parameter."""
        return 2 * self.active_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        flat = x.reshape(-1, x.shape[-1])
        out = self.w2(self.read(flat) * F.silu(self.w1(flat)))
        if self.gate is not None:
            out = torch.sigmoid(self.gate(flat)) * out
        return out.view_as(x)


def memory_layers(model: nn.Module) -> dict[int, MemoryPlus]:
    """``model``'s memory channels by layer index (empty for a model without memory)."""
    return {m.layer_idx: m for m in model.modules() if isinstance(m, MemoryPlus)}
