"""Pieces the mixers with flash-linear-attention's layer layout (GLA, Gated DeltaNet) share: q, k, v
projections with optional short convolutions, the per-head RMSNorm with a swish output gate, and the
inference cache (short-conv windows + one (key, value) state per head)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.mixers.ssm_common import causal_conv_silu, causal_conv_silu_step
from zoo.tags import mark_no_reinit, tag_optim


@dataclass
class LinearAttentionCache:
    """Recurrent state of one GLA / Gated DeltaNet layer: the last ``conv_size`` inputs of the q, k
    and v short convolutions (None without them) and the state of every head."""

    q_conv_state: torch.Tensor | None  # (B, key_dim, conv_size)
    k_conv_state: torch.Tensor | None  # (B, key_dim, conv_size)
    v_conv_state: torch.Tensor | None  # (B, value_dim, conv_size)
    state: torch.Tensor  # (B, H, head_k_dim, head_v_dim)


class RMSNormSwishGate(nn.Module):
    """rmsnorm(x) * weight * silu(gate) over the last dim: fla's ``FusedRMSNormGated`` with the swish
    gate (normalise, then gate; Mamba-2's ``GatedRMSNorm`` gates first)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        mark_no_reinit(tag_optim(self.weight, weight_decay=0.0))  # like every other norm of the model

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x, gate: (..., dim) -> (..., dim), in x's dtype (computed in at least float32)."""
        work = torch.promote_types(x.dtype, torch.float32)
        x32 = x.to(work)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(work) * F.silu(gate.to(work))).to(x.dtype)


def checked_width(mixer: str, name: str, value: float, d_model: int, num_heads: int) -> int:
    """d_model * ``value`` (an expansion ratio) as an integer divisible by num_heads, or a ValueError."""
    width = d_model * value
    if not (isinstance(value, (int, float)) and value > 0 and math.isclose(width, round(width))):
        raise ValueError(f"{mixer} {name}={value!r} must be positive with d_model * {name} an integer (d_model={d_model})")
    if round(width) % num_heads:
        raise ValueError(
            f"{mixer} num_heads={num_heads} must divide d_model * {name} = {d_model} * {value} = {round(width)}"
        )
    return round(width)


def check_positive_ints(mixer: str, **values) -> None:
    """ValueError naming the first option that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{mixer} {name}={value!r} must be a positive integer")


def short_conv(channels: int, conv_size: int, bias: bool) -> nn.Conv1d:
    """Depthwise causal conv in fla's ``ShortConvolution`` layout: weight (channels, 1, conv_size)."""
    conv = nn.Conv1d(channels, channels, conv_size, groups=channels, padding=conv_size - 1, bias=bias)
    mark_no_reinit(conv.weight)  # keeps PyTorch's (and fla's) conv init
    if bias:
        mark_no_reinit(tag_optim(conv.bias, weight_decay=0.0))
    return conv


def project_qkv(x: torch.Tensor, projections, convs) -> list[torch.Tensor]:
    """x: (B, L, D) -> [q, k, v], each (B, L, width): the projection, then silu(causal conv) when
    ``convs`` (one conv per projection) is not None."""
    outs = [proj(x) for proj in projections]
    if convs is None:
        return outs
    return [causal_conv_silu(o.transpose(1, 2), conv).transpose(1, 2) for o, conv in zip(outs, convs)]


def project_qkv_step(x: torch.Tensor, projections, convs, cache: LinearAttentionCache) -> list[torch.Tensor]:
    """One token of ``project_qkv``: x (B, D) -> [q, k, v], each (B, width); the conv windows in
    ``cache`` advance in place."""
    outs = [proj(x) for proj in projections]
    if convs is None:
        return outs
    states = (cache.q_conv_state, cache.k_conv_state, cache.v_conv_state)
    return [causal_conv_silu_step(o, state, conv) for o, state, conv in zip(outs, states, convs)]


def allocate_linear_attention_cache(
    batch_size: int,
    conv_widths: tuple[int, int, int] | None,
    conv_size: int,
    state_shape: tuple[int, int, int],
    device,
    dtype,
) -> LinearAttentionCache:
    """Zero cache: conv windows (B, width, conv_size) for q, k, v (None when ``conv_widths`` is None)
    and the state (B, *state_shape)."""
    windows = [None] * 3 if conv_widths is None else [
        torch.zeros(batch_size, width, conv_size, device=device, dtype=dtype) for width in conv_widths
    ]
    return LinearAttentionCache(*windows, state=torch.zeros(batch_size, *state_shape, device=device, dtype=dtype))


def cache_elements(conv_widths: tuple[int, int, int] | None, conv_size: int, state_shape: tuple[int, int, int]) -> int:
    """Elements one sequence's ``LinearAttentionCache`` holds."""
    return (0 if conv_widths is None else sum(conv_widths) * conv_size) + math.prod(state_shape)
