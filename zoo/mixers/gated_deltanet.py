"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with
Delta Rule") with the parameter names and shapes of fla's ``fla.layers.GatedDeltaNet``, so a state
dict moves between the two.

Per head, with L2-normalised q_t, k_t, a scalar gate alpha_t = exp(g_t) in (0, 1] and a write
strength beta_t = sigmoid(b_t):

    S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T        S: (dk, dv)
    o_t = S_t^T q_t / sqrt(dk)

On CUDA with fla installed the recurrence runs on its ``chunk_gated_delta_rule`` kernel; everywhere
else on ``gated_delta_rule_chunked``, the chunked WY form in PyTorch (same numbers).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import linear, mark_no_reinit, tag_optim
from zoo.core.value_checks import is_real
from zoo.mixers import kernels
from zoo.mixers.fla_common import FlaLayoutMixer, LinearAttentionCache, RMSNormSwishGate, check_fla_options
from zoo.mixers.ssm_common import check_positive_ints, dt_bias_init, segment_sum, split_chunks

L2_EPS = 1e-6  # fla's l2norm: x / sqrt(sum x^2 + eps)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x: (..., d) -> x / sqrt(sum(x^2) + 1e-6) over the last dim, as fla normalises q and k."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + L2_EPS)


def gated_delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Chunked gated delta rule (the WY / UT-transform form): inside a chunk, the writes that the
    delta rule makes are found at once from a unit lower-triangular solve; the state is carried
    between chunks.

    q, k: (b, L, h, dk); v: (b, L, h, dv); log_decay (<= 0) and beta: (b, L, h); scale defaults to
    dk**-0.5. Returns o: (b, L, h, dv) of the recurrence in the module docstring.

    Inside a chunk with entering state S0 and gamma_t = log decay from the chunk's start through t,
    the write of step t is d_t = beta_t (v_t - alpha_t S_{t-1}^T k_t). Unrolling S_{t-1} gives
    (I + M) d = diag(beta) V - diag(beta exp(gamma)) K S0 with M[t, s] = beta_t exp(gamma_t - gamma_s)
    k_t.k_s for s < t, so d = U - W S0 with [U, W] = (I + M)^-1 [diag(beta) V, diag(beta exp(gamma)) K].
    Then o = (Q exp(gamma)) S0 + P d with P[t, s] = exp(gamma_t - gamma_s) q_t.k_s (s <= t), and the
    state leaving the chunk is exp(gamma_T) S0 + (K exp(gamma_T - gamma))^T d. Every exponent is <= 0.
    """
    if chunk_size < 1:
        raise ValueError(f"gated_deltanet chunk_size={chunk_size} must be >= 1")
    length, dk = q.shape[1], q.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    chunked = functools.partial(split_chunks, chunk_size=chunk_size)  # padded steps: beta = 0, no write

    q, k, v = (chunked(t).permute(0, 3, 1, 2, 4) for t in (q * scale, k, v))  # (b, h, n, T, d)
    log_decay, beta = (chunked(t).permute(0, 3, 1, 2) for t in (log_decay, beta))  # (b, h, n, T)
    decay = torch.exp(segment_sum(log_decay))  # (b, h, n, T, T): [t, s] = exp(gamma_t - gamma_s), 0 for s > t
    from_start = torch.exp(log_decay.cumsum(-1)).unsqueeze(-1)  # (b, h, n, T, 1): exp(gamma_t)
    to_end = decay[..., -1, :].unsqueeze(-1)  # (b, h, n, T, 1): exp(gamma_T - gamma_s)

    lower = (beta.unsqueeze(-1) * (k @ k.transpose(-1, -2)) * decay).tril(-1)  # M
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    rhs = torch.cat([beta.unsqueeze(-1) * v, (beta.unsqueeze(-1) * from_start) * k], dim=-1)
    u, w = torch.linalg.solve_triangular(eye + lower, rhs, upper=False, unitriangular=True).split(
        [v.shape[-1], dk], dim=-1
    )  # (b, h, n, T, dv), (b, h, n, T, dk)

    scores = (q @ k.transpose(-1, -2)) * decay  # P
    out_local = scores @ u  # the output's part that does not depend on the entering state
    q_state = q * from_start - scores @ w  # (b, h, n, T, dk): reads the entering state
    k_to_end = k * to_end
    chunk_decay = from_start[..., -1, :].unsqueeze(-1)  # (b, h, n, 1, 1): exp(gamma_T)

    state = q.new_zeros(*q.shape[:2], dk, v.shape[-1])  # (b, h, dk, dv)
    outs = []
    for c in range(q.shape[2]):
        outs.append(out_local[:, :, c] + q_state[:, :, c] @ state)
        writes = u[:, :, c] - w[:, :, c] @ state  # d, (b, h, T, dv)
        state = chunk_decay[:, :, c] * state + k_to_end[:, :, c].transpose(-1, -2) @ writes
    out = torch.stack(outs, dim=2)  # (b, h, n, T, dv)
    return out.permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :length]


class GatedDeltaNet(FlaLayoutMixer):
    """Gated DeltaNet mixer in fla's layout: q, k, v projections, each through a short causal conv +
    SiLU (SiLU alone without ``use_short_conv``); q, k L2-normalised per head; gate
    g = -exp(A_log) * softplus(a_proj(x) + dt_bias) and beta = sigmoid(b_proj(x)) per head (times 2
    with ``allow_neg_eigval``); per head RMSNorm of the output times silu(g_proj(x)); o_proj.

    Args follow ``fla.layers.GatedDeltaNet`` and its defaults (6 heads, expand_v 2, short conv of
    size 4 without bias, A ~ U(0, 16), softplus(dt_bias) log-uniform in [0.001, 0.1]) with one
    exception: fla's ``head_dim`` default of 256 is sized for its d_model 2048 (num_heads * head_dim =
    0.75 * d_model, fla's parameter budget with the output gate). Here ``head_dim=None`` keeps that
    proportion at any width: head_dim = 0.75 * d_model / num_heads; an integer sets it as in fla.
    ``chunk_size`` is the chunk length of the PyTorch path (fla's kernel tiles on its own). fla's
    options not listed here (grouped value heads, no output gate, sigmoid gate) are not supported.
    """

    STATE_FLOPS = 8  # per state element: decay, read with k, write, read with q (a multiply-add each)

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        num_heads: int = 6,
        head_dim: int | None = None,
        expand_v: float = 2.0,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        allow_neg_eigval: bool = False,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
    ):
        super().__init__()
        check_positive_ints("gated_deltanet", num_heads=num_heads, conv_size=conv_size, chunk_size=chunk_size)
        if head_dim is None:
            if (3 * d_model) % (4 * num_heads):
                raise ValueError(
                    f"gated_deltanet head_dim=None means 0.75 * d_model / num_heads: num_heads={num_heads} must "
                    f"divide 0.75 * d_model = 0.75 * {d_model} (or set head_dim)"
                )
            head_dim = 3 * d_model // (4 * num_heads)
        check_positive_ints("gated_deltanet", head_dim=head_dim)
        head_v_dim = head_dim * expand_v if is_real(expand_v) else math.nan
        if not (is_real(expand_v) and expand_v > 0 and math.isclose(head_v_dim, round(head_v_dim))):
            raise ValueError(
                f"gated_deltanet expand_v={expand_v!r} must be positive with head_dim * expand_v an integer (head_dim={head_dim})"
            )
        check_fla_options(
            "gated_deltanet", norm_eps, use_short_conv=use_short_conv, conv_bias=conv_bias, allow_neg_eigval=allow_neg_eigval
        )
        self.layer_idx = layer_idx
        self.chunk_size, self.allow_neg_eigval = chunk_size, allow_neg_eigval
        self._init_projections(d_model, num_heads, head_dim, round(head_v_dim), use_short_conv, conv_size, conv_bias)
        self.a_proj = linear(d_model, num_heads)
        self.b_proj = linear(d_model, num_heads)
        self.A_log = nn.Parameter(torch.log(torch.empty(num_heads).uniform_(0, 16)))
        self.dt_bias = nn.Parameter(dt_bias_init(num_heads, dt_min=0.001, dt_max=0.1, dt_floor=1e-4))
        for param in (self.A_log, self.dt_bias):
            mark_no_reinit(tag_optim(param, weight_decay=0.0))
        self.o_norm = RMSNormSwishGate(self.head_v_dim, eps=norm_eps)

    def uses_cuda_kernels(self, x: torch.Tensor) -> bool:
        """Whether forward runs fla's ``chunk_gated_delta_rule`` for ``x``: a CUDA input and an
        importable fla."""
        return x.is_cuda and kernels.fla_chunk_gated_delta_rule() is not None

    def _heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """(..., key_dim) x2, (..., value_dim) -> per head: q, k (..., H, dk) L2-normalised (in at least
        float32), v (..., H, dv)."""
        if not self.use_short_conv:  # fla applies SiLU itself when there is no conv to do it
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q, k, v = self._split_heads(q, k, v)
        work = torch.promote_types(q.dtype, torch.float32)
        return l2_normalize(q.to(work)).to(q.dtype), l2_normalize(k.to(work)).to(k.dtype), v

    def _gates(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: (..., D) -> log decay g <= 0 and beta, each (..., H), in at least float32."""
        work = torch.promote_types(hidden.dtype, torch.float32)
        a, b = self.a_proj(hidden).to(work), self.b_proj(hidden).to(work)
        log_decay = -torch.exp(self.A_log.to(work)) * F.softplus(a + self.dt_bias.to(work))
        beta = torch.sigmoid(b) * (2 if self.allow_neg_eigval else 1)
        return log_decay, beta

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, D) -> (B, L, D)."""
        q, k, v = self._heads(*self._project(hidden))
        log_decay, beta = self._gates(hidden)
        if self.uses_cuda_kernels(hidden):
            o, _ = kernels.fla_chunk_gated_delta_rule()(q, k, v, log_decay, beta.to(v.dtype))
        else:
            work = torch.promote_types(hidden.dtype, torch.float32)
            # bf16 autocast would run the chunk matmuls, the solve and the carried state in bf16
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                o = gated_delta_rule_chunked(q.to(work), k.to(work), v.to(work), log_decay, beta, self.chunk_size)
        return self._gated_output(o.to(hidden.dtype), hidden, self.o_norm)

    def step(self, hidden: torch.Tensor, cache: LinearAttentionCache) -> tuple[torch.Tensor, LinearAttentionCache]:
        """One token: hidden (B, D) -> (B, D); ``cache`` is updated in place and returned."""
        q, k, v = self._heads(*self._project_step(hidden, cache))
        log_decay, beta = (t.to(cache.state.dtype) for t in self._gates(hidden))  # (B, H)
        state = torch.exp(log_decay)[..., None, None] * cache.state
        writes = beta.unsqueeze(-1) * (v - (k.unsqueeze(-1) * state).sum(-2))  # (B, H, dv)
        cache.state.copy_(state + k.unsqueeze(-1) * writes.unsqueeze(-2))
        o = (q.unsqueeze(-1) * cache.state).sum(-2) * self.head_k_dim**-0.5  # (B, H, dv)
        return self._gated_output(o, hidden, self.o_norm), cache
