"""What the mixers in flash-linear-attention's layer layout (GLA, Gated DeltaNet) share: q, k, v
projections with optional short convolutions, the per-head RMSNorm with a swish output gate, the
inference cache (short-conv windows + one (key, value) state per head), and the answers to the mixer
interface's questions about FLOPs and state size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import linear, mark_no_reinit, mark_residual_projection, parameter_count, tag_optim
from zoo.core.value_checks import check_bool, is_real
from zoo.mixers.ssm_common import causal_conv_silu, causal_conv_silu_step


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


def check_fla_options(mixer: str, norm_eps: float, **flags) -> None:
    """ValueError unless ``norm_eps`` is a finite number > 0 and every flag a bool."""
    if not (is_real(norm_eps) and norm_eps > 0):
        raise ValueError(f"{mixer} norm_eps={norm_eps!r} must be > 0 and finite")
    for name, value in flags.items():
        check_bool(f"{mixer} {name}", value)


def checked_width(mixer: str, name: str, value: float, d_model: int, num_heads: int) -> int:
    """d_model * ``value`` (an expansion ratio) as an integer divisible by num_heads, or a ValueError."""
    width = d_model * value if is_real(value) else math.nan
    if not (is_real(value) and value > 0 and math.isclose(width, round(width))):
        raise ValueError(f"{mixer} {name}={value!r} must be positive with d_model * {name} an integer (d_model={d_model})")
    if round(width) % num_heads:
        raise ValueError(f"{mixer} num_heads={num_heads} must divide d_model * {name} = {d_model} * {value} = {round(width)}")
    return round(width)


def short_conv(channels: int, conv_size: int, bias: bool) -> nn.Conv1d:
    """Depthwise causal conv in fla's ``ShortConvolution`` layout: weight (channels, 1, conv_size)."""
    conv = nn.Conv1d(channels, channels, conv_size, groups=channels, padding=conv_size - 1, bias=bias)
    mark_no_reinit(conv.weight)  # keeps PyTorch's (and fla's) conv init
    if bias:
        mark_no_reinit(tag_optim(conv.bias, weight_decay=0.0))
    return conv


class FlaLayoutMixer(nn.Module):
    """Base of the mixers in fla's layout. ``_init_projections`` makes fla's q_proj, k_proj, v_proj,
    (with short convs) q_conv1d, k_conv1d, v_conv1d, and the output gate g_proj and o_proj; the
    subclass adds its decay and write gates and its norm, and says with ``STATE_FLOPS`` how many
    FLOPs its recurrence spends per state element per token."""

    STATE_FLOPS: int

    def _init_projections(
        self,
        d_model: int,
        num_heads: int,
        head_k_dim: int,
        head_v_dim: int,
        use_short_conv: bool,
        conv_size: int,
        conv_bias: bool,
    ) -> None:
        self.num_heads, self.head_k_dim, self.head_v_dim = num_heads, head_k_dim, head_v_dim
        self.key_dim, self.value_dim = num_heads * head_k_dim, num_heads * head_v_dim
        self.use_short_conv, self.conv_size = use_short_conv, conv_size
        self.q_proj = linear(d_model, self.key_dim)
        self.k_proj = linear(d_model, self.key_dim)
        self.v_proj = linear(d_model, self.value_dim)
        if use_short_conv:
            self.q_conv1d = short_conv(self.key_dim, conv_size, conv_bias)
            self.k_conv1d = short_conv(self.key_dim, conv_size, conv_bias)
            self.v_conv1d = short_conv(self.value_dim, conv_size, conv_bias)
        self.g_proj = linear(d_model, self.value_dim)
        self.o_proj = mark_residual_projection(linear(self.value_dim, d_model))

    def _split_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """(..., key_dim) x2, (..., value_dim) -> (..., H, dk) x2, (..., H, dv)."""
        keys = (self.num_heads, self.head_k_dim)
        return q.unflatten(-1, keys), k.unflatten(-1, keys), v.unflatten(-1, (self.num_heads, self.head_v_dim))

    def _gated_output(self, o: torch.Tensor, hidden: torch.Tensor, norm: RMSNormSwishGate) -> torch.Tensor:
        """o: (..., H, dv) the heads' outputs, hidden: (..., D) the mixer's input -> (..., D):
        o_proj(norm(o) * silu(g_proj(hidden)))."""
        gate = self.g_proj(hidden).unflatten(-1, (self.num_heads, self.head_v_dim))
        return self.o_proj(norm(o, gate).flatten(-2))

    def _conv_widths(self) -> tuple[int, int, int] | None:
        return (self.key_dim, self.key_dim, self.value_dim) if self.use_short_conv else None

    def _state_shape(self) -> tuple[int, int, int]:
        return self.num_heads, self.head_k_dim, self.head_v_dim

    def _project(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """hidden: (B, L, D) -> [q, k, v], (B, L, key_dim) x2 and (B, L, value_dim): the projections,
        then silu(causal conv) with short convs."""
        outs = [self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)]
        if not self.use_short_conv:
            return outs
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        return [causal_conv_silu(o.transpose(1, 2), conv).transpose(1, 2) for o, conv in zip(outs, convs)]

    def _project_step(self, hidden: torch.Tensor, cache: LinearAttentionCache) -> list[torch.Tensor]:
        """One token of ``_project``: hidden (B, D) -> [q, k, v], each (B, width); the conv windows in
        ``cache`` advance in place."""
        outs = [self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)]
        if not self.use_short_conv:
            return outs
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        states = (cache.q_conv_state, cache.k_conv_state, cache.v_conv_state)
        return [causal_conv_silu_step(o, state, conv) for o, state, conv in zip(outs, states, convs)]

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token (2 per multiply-add): the parameters' (projections, convs, gates,
        norm), plus ``STATE_FLOPS`` per element of the heads' states for the recurrence."""
        return 2 * parameter_count(self) + self.STATE_FLOPS * math.prod(self._state_shape())

    def state_size(self, seq_len: int) -> int:
        """Bytes of inference state per sequence (any length): the conv windows + the heads' states."""
        widths = self._conv_widths()
        elements = (0 if widths is None else sum(widths) * self.conv_size) + math.prod(self._state_shape())
        return elements * self.q_proj.weight.element_size()

    def allocate_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> LinearAttentionCache:
        """Zero state for ``step`` (a fixed size: ``max_len`` is not needed): conv windows
        (B, width, conv_size) for q, k, v (None without short convs), state (B, H, dk, dv)."""
        weight = self.q_proj.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        widths = self._conv_widths()
        windows = (
            [None] * 3
            if widths is None
            else [torch.zeros(batch_size, width, self.conv_size, device=device, dtype=dtype) for width in widths]
        )
        state = torch.zeros(batch_size, *self._state_shape(), device=device, dtype=dtype)
        return LinearAttentionCache(*windows, state=state)
