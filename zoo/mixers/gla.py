"""Gated linear attention (GLA; Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training") with the parameter names and shapes of fla's
``fla.layers.GatedLinearAttention``, so a state dict moves between the two.

Per head, with a data-dependent decay per key channel, alpha_t = exp(g_t) in (0, 1]^dk:

    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T        S: (dk, dv)
    o_t = S_t^T q_t / sqrt(dk)

On CUDA with fla installed the recurrence runs on its ``chunk_gla`` kernel; everywhere else on
``gla_chunked``, a chunked-parallel form in PyTorch (same numbers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import linear
from zoo.core.value_checks import is_real
from zoo.mixers import kernels
from zoo.mixers.fla_common import FlaLayoutMixer, LinearAttentionCache, RMSNormSwishGate, check_fla_options, checked_width
from zoo.mixers.ssm_common import check_positive_ints, split_chunks

SUB_CHUNK = 16  # longest block inside a chunk whose decays are taken step by step (see _anchored_scores)
FACTORED_SPAN = 20.0  # largest log decay of a chunk for which exp(-cum) stays small enough to factor (e^20 ~ 5e8)


def intra_chunk_scores(q: torch.Tensor, k: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """q, k, cum: (..., T, dk), cum the log decay from the chunk's start through each step ->
    scores (..., T, T) with [t, s] = sum_d q_td k_sd exp(cum_td - cum_sd) for s <= t, 0 for s > t.

    When no chunk decays by more than ``FACTORED_SPAN`` (in log space, on any channel), one matmul
    of q exp(cum) and k exp(-cum) gives them (the usual case: fla's default gate decays a chunk of 64
    by about e^-3); otherwise ``_anchored_scores``, which never exponentiates a positive number.
    """
    if -cum[..., -1, :].min() <= FACTORED_SPAN:  # cum falls along the chunk: its last step has the most decay
        return _factored_scores(q, k, cum)
    return _anchored_scores(q, k, cum)


def _factored_scores(q: torch.Tensor, k: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """``intra_chunk_scores`` as (q exp(cum)) (k exp(-cum))^T, masked to s <= t; needs -cum small."""
    scores = (q * torch.exp(cum)) @ (k * torch.exp(-cum)).transpose(-1, -2)
    return scores.tril()


def _anchored_scores(q: torch.Tensor, k: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """``intra_chunk_scores`` for any decay.

    exp(cum_t - cum_s) as exp(cum_t) * exp(-cum_s) overflows once a chunk decays by more than the
    float range. Instead the chunk is cut into sub-chunks; for s in an earlier sub-chunk than t the
    decay goes through an anchor p (the first step of t's sub-chunk, s < p <= t):
    exp(cum_t - cum_p) * exp(cum_p - cum_s), two factors <= 1, so both sides are plain matmuls. The
    blocks on the diagonal take exp(cum_t - cum_s) per pair and channel (<= 1 as well).
    """
    length = q.shape[-2]
    sub = max(d for d in range(1, min(SUB_CHUNK, length) + 1) if length % d == 0)
    n_sub = length // sub
    blocks = [t.unflatten(-2, (n_sub, sub)) for t in (q, k, cum)]  # (..., m, c, dk)
    anchor = blocks[2][..., :1, :]  # (..., m, 1, dk): log decay at each sub-chunk's first step
    q_from_anchor = blocks[0] * torch.exp(blocks[2] - anchor)  # (..., m, c, dk)
    position = torch.arange(length, device=q.device)
    before = position < (position[::sub]).unsqueeze(-1)  # (m, T): s precedes sub-chunk i's anchor
    # mask before exp: where s >= anchor the exponent is positive and could overflow (inf * 0 = nan)
    to_anchor = torch.where(before[:, :, None], anchor - cum.unsqueeze(-3), float("-inf"))  # (..., m, T, dk)
    earlier = q_from_anchor @ (k.unsqueeze(-3) * torch.exp(to_anchor)).transpose(-1, -2)  # (..., m, c, T)

    causal = torch.ones(sub, sub, dtype=torch.bool, device=q.device).tril()
    pair_decay = torch.where(causal[:, :, None], blocks[2].unsqueeze(-2) - blocks[2].unsqueeze(-3), float("-inf"))
    diagonal = (blocks[0].unsqueeze(-2) * blocks[1].unsqueeze(-3) * torch.exp(pair_decay)).sum(-1)  # (..., m, c, c)
    eye = torch.eye(n_sub, dtype=q.dtype, device=q.device)
    on_diagonal = torch.einsum("...its,ij->...itjs", diagonal, eye).flatten(-2)  # (..., m, c, T)
    return (earlier + on_diagonal).flatten(-3, -2)


def gla_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    chunk_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Chunked GLA: attention-like inside chunks of ``chunk_size`` steps, the state carried between
    chunks.

    q, k, log_decay: (b, L, h, dk), log_decay <= 0; v: (b, L, h, dv); scale defaults to dk**-0.5.
    Returns o: (b, L, h, dv) with o_t = S_t^T q_t * scale, S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_t^T.
    """
    if chunk_size < 1:
        raise ValueError(f"gla chunk_size={chunk_size} must be >= 1")
    batch, length, heads, dk = q.shape
    scale = dk**-0.5 if scale is None else scale

    def chunked(t):  # (b, L, h, d) -> (b, h, n, T, d); padded steps: no decay, no input
        return split_chunks(t, chunk_size).permute(0, 3, 1, 2, 4)

    q, k, v, log_decay = chunked(q * scale), chunked(k), chunked(v), chunked(log_decay)
    cum = log_decay.cumsum(-2)  # (b, h, n, T, dk): log decay from the chunk's start through step t
    out = intra_chunk_scores(q, k, cum) @ v  # (b, h, n, T, dv)

    total = cum[..., -1:, :]  # (b, h, n, 1, dk): the whole chunk's log decay
    chunk_states = (k * torch.exp(total - cum)).transpose(-1, -2) @ v  # (b, h, n, dk, dv), from a zero start
    state = torch.zeros_like(chunk_states[:, :, 0])
    entering = []
    for c in range(chunk_states.shape[2]):
        entering.append(state)
        state = torch.exp(total[:, :, c]).transpose(-1, -2) * state + chunk_states[:, :, c]
    out = out + (q * torch.exp(cum)) @ torch.stack(entering, dim=2)
    return out.permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :length]


class GatedLinearAttention(FlaLayoutMixer):
    """GLA mixer in fla's layout: q, k, v projections (each with a short causal conv + SiLU when
    ``use_short_conv``); per-key-channel decay g = logsigmoid(gk_proj(x)) / gate_logit_normalizer
    through a rank-``gate_low_rank_dim`` projection; per head RMSNorm of the output times
    silu(g_proj(x)); o_proj.

    Args follow ``fla.layers.GatedLinearAttention`` and its defaults: key width d_model * expand_k,
    value width d_model * expand_v, both split into ``num_heads`` heads; ``clamp_min`` floors g. One
    exception: ``use_short_conv`` defaults to True (fla: False), because zoology gives every mixer a
    short causal convolution for a fair comparison and Gated DeltaNet has one by default; set it to
    False for fla's default layer. ``chunk_size`` is the chunk length of the PyTorch path (fla's
    kernel tiles on its own). fla's options not listed here (MQA heads, feature maps, other gates) are
    not supported.
    """

    STATE_FLOPS = 6  # per state element: decay and write (2 multiply-adds), read with q (1)

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        norm_eps: float = 1e-5,
        gate_logit_normalizer: float = 16,
        gate_low_rank_dim: int = 16,
        clamp_min: float | None = None,
        chunk_size: int = 64,
    ):
        super().__init__()
        check_positive_ints(
            "gla", num_heads=num_heads, conv_size=conv_size, gate_low_rank_dim=gate_low_rank_dim, chunk_size=chunk_size
        )
        key_dim = checked_width("gla", "expand_k", expand_k, d_model, num_heads)
        value_dim = checked_width("gla", "expand_v", expand_v, d_model, num_heads)
        if not (is_real(gate_logit_normalizer) and gate_logit_normalizer > 0):
            raise ValueError(f"gla gate_logit_normalizer={gate_logit_normalizer!r} must be > 0 and finite")
        check_fla_options("gla", norm_eps, use_short_conv=use_short_conv, conv_bias=conv_bias)
        if clamp_min is not None and not (is_real(clamp_min) and clamp_min < 0):
            raise ValueError(f"gla clamp_min={clamp_min!r} must be None or < 0 (a floor on the log decay)")
        self.layer_idx = layer_idx
        self.chunk_size, self.gate_logit_normalizer, self.clamp_min = chunk_size, gate_logit_normalizer, clamp_min
        self._init_projections(
            d_model, num_heads, key_dim // num_heads, value_dim // num_heads, use_short_conv, conv_size, conv_bias
        )
        self.gk_proj = nn.Sequential(linear(d_model, gate_low_rank_dim), linear(gate_low_rank_dim, key_dim, bias=True))
        self.g_norm_swish_gate = RMSNormSwishGate(self.head_v_dim, eps=norm_eps)

    def uses_cuda_kernels(self, x: torch.Tensor) -> bool:
        """Whether forward runs fla's ``chunk_gla`` for ``x``: a CUDA input and an importable fla."""
        return x.is_cuda and kernels.fla_chunk_gla() is not None

    def _log_decay(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (..., D) -> g: (..., H, dk), log decay <= 0 per key channel, in at least float32."""
        work = torch.promote_types(hidden.dtype, torch.float32)
        g = F.logsigmoid(self.gk_proj(hidden).to(work)) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            g = g.clamp_min(self.clamp_min)
        return g.unflatten(-1, (self.num_heads, self.head_k_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, D) -> (B, L, D)."""
        q, k, v = self._split_heads(*self._project(hidden))
        g = self._log_decay(hidden)
        if self.uses_cuda_kernels(hidden):
            o, _ = kernels.fla_chunk_gla()(q, k, v, g)
        else:
            work = torch.promote_types(hidden.dtype, torch.float32)
            # bf16 autocast would run the chunk matmuls and the carried state in bf16; keep them in work dtype
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                o = gla_chunked(q.to(work), k.to(work), v.to(work), g, self.chunk_size)
        return self._gated_output(o.to(hidden.dtype), hidden, self.g_norm_swish_gate)

    def step(self, hidden: torch.Tensor, cache: LinearAttentionCache) -> tuple[torch.Tensor, LinearAttentionCache]:
        """One token: hidden (B, D) -> (B, D); ``cache`` is updated in place and returned."""
        q, k, v = self._split_heads(*self._project_step(hidden, cache))
        decay = torch.exp(self._log_decay(hidden))  # (B, H, dk)
        cache.state.copy_(decay.unsqueeze(-1) * cache.state + k.unsqueeze(-1) * v.unsqueeze(-2))
        o = (q.unsqueeze(-1) * cache.state).sum(-2) * self.head_k_dim**-0.5  # (B, H, dv)
        return self._gated_output(o, hidden, self.g_norm_swish_gate), cache
