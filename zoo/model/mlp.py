"""SwiGLU feed-forward channel (Shazeer 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import linear, mark_residual_projection, parameter_count
from zoo.core.value_checks import check_bool, check_int


class SwiGLU(nn.Module):
    """``W2(silu(W1 x) * W3 x)``.

    Args:
        d_model: width D.
        layer_idx: layer position (unused by the computation; part of the channel signature).
        hidden_dim: inner width; default 8/3 * D rounded up to a multiple of 8, which gives the same
            parameter count as a 4*D GELU MLP.
        bias: whether the projections have biases.
    """

    def __init__(self, d_model: int, layer_idx: int = 0, hidden_dim: int | None = None, bias: bool = False):
        super().__init__()
        check_int("mlp hidden_dim", hidden_dim, low=1, null="8/3 d_model rounded up to a multiple of 8")
        check_bool("mlp bias", bias)
        if hidden_dim is None:
            hidden_dim = 8 * math.ceil(8 * d_model / 3 / 8)
        self.layer_idx = layer_idx
        self.w1 = linear(d_model, hidden_dim, bias=bias)
        self.w3 = linear(d_model, hidden_dim, bias=bias)
        self.w2 = mark_residual_projection(linear(hidden_dim, d_model, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def active_parameters(self) -> int:
        """Parameters one token uses: all of them."""
        return parameter_count(self)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: one multiply-add per weight (2 FLOPs)."""
        return 2 * self.active_parameters()
