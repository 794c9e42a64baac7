"""Mamba-2 (SSD, Dao & Gu 2024) mixer with mamba-ssm's parameter names and shapes.

A state dict of ``mamba_ssm.modules.mamba2.Mamba2`` (rmsnorm=True, D_has_hdim=False) loads into this
module. Per head h, with B and C shared by the heads of a group:

    h_t = exp(dt_t * A_h) h_{t-1} + dt_t * x_t B_t^T        h: (headdim, d_state)
    y_t = h_t C_t + D_h * x_t

On CUDA with mamba-ssm installed the scan runs on its ``mamba_chunk_scan_combined`` kernel; everywhere
else on ``ssd_chunked``, the chunked algorithm of the paper in PyTorch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import linear, mark_no_reinit, mark_residual_projection, parameter_count, tag_optim
from zoo.core.value_checks import check_bool, check_real, is_real
from zoo.mixers import kernels
from zoo.mixers.ssm_common import (
    causal_conv_silu,
    causal_conv_silu_step,
    check_dt_options,
    check_positive_ints,
    dt_bias_init,
    segment_sum,
    split_chunks,
)


def _states_entering_chunks(chunk_states: torch.Tensor, chunk_decay: torch.Tensor) -> torch.Tensor:
    """chunk_states: (b, c, g, r, p, n), each chunk's end state from a zero start; chunk_decay:
    (b, g, r, c), each chunk's total decay -> the state entering each chunk, (b, c, g, r, p, n)."""
    state = torch.zeros_like(chunk_states[:, 0])
    entering = []
    for c in range(chunk_states.shape[1]):
        entering.append(state)
        state = chunk_decay[..., c, None, None] * state + chunk_states[:, c]
    return torch.stack(entering, dim=1)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
) -> torch.Tensor:
    """Chunked SSD scan: attention-like inside chunks of ``chunk_size`` steps, a state carried
    between chunks.

    x: (b, L, h, p); dt: (b, L, h) step sizes, already positive; A: (h,) negative; B, C: (b, L, g, n)
    with g dividing h (head i reads group i // (h / g)); D: (h,) or None. Returns y: (b, L, h, p).
    """
    if chunk_size < 1:
        raise ValueError(f"ssd chunk_size={chunk_size} must be >= 1")
    batch, length, nheads, headdim = x.shape
    ngroups = B.shape[2]
    n_chunks = -(-length // chunk_size)
    chunked = functools.partial(split_chunks, chunk_size=chunk_size)  # padded steps: dt = 0, no input

    # heads as (g, r): group g, head r within it, so C B^T is computed once per group
    dt_heads = dt.unflatten(2, (ngroups, -1))  # (b, L, g, r)
    dtx = chunked(x.unflatten(2, (ngroups, -1)) * dt_heads.unsqueeze(-1))  # (b, c, T, g, r, p)
    Bc, Cc = chunked(B), chunked(C)  # (b, c, T, g, n)
    log_decay = chunked(dt_heads * A.view(ngroups, -1)).permute(0, 3, 4, 1, 2)  # (b, g, r, c, T), <= 0
    decay = torch.exp(segment_sum(log_decay))  # (b, g, r, c, T, T): from step s to step t >= s

    scores = torch.einsum("bctgn,bcsgn->bgcts", Cc, Bc).unsqueeze(2) * decay
    y = torch.einsum("bgrcts,bcsgrp->bctgrp", scores, dtx)

    chunk_states = torch.einsum("bcsgrp,bgrcs,bcsgn->bcgrpn", dtx, decay[..., -1, :], Bc)
    entering = _states_entering_chunks(chunk_states, torch.exp(log_decay.sum(-1)))
    from_start = torch.exp(log_decay.cumsum(-1))  # (b, g, r, c, T): from the chunk's entry to step t
    y = y + torch.einsum("bctgn,bcgrpn,bgrct->bctgrp", Cc, entering, from_start)

    y = y.reshape(batch, n_chunks * chunk_size, nheads, headdim)[:, :length]
    return y if D is None else y + x * D[:, None]


class GatedRMSNorm(nn.Module):
    """rmsnorm(x * silu(z)) * weight, normalised over groups of ``group_size`` channels
    (mamba-ssm's ``RMSNormGated`` with norm_before_gate=False)."""

    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: (..., dim) -> (..., dim), in x's dtype (computed in at least float32)."""
        work = torch.promote_types(x.dtype, torch.float32)
        gated = x.to(work) * F.silu(z.to(work))
        groups = gated.unflatten(-1, (-1, self.group_size))
        normed = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight).to(x.dtype)


@dataclass
class Mamba2Cache:
    """Recurrent state of one Mamba-2 layer: the last d_conv inputs of the conv and the SSM state."""

    conv_state: torch.Tensor  # (B, conv_dim, d_conv)
    ssm_state: torch.Tensor  # (B, nheads, headdim, d_state)


class Mamba2(nn.Module):
    """SSD mixer: in_proj -> [z, xBC, dt]; causal depthwise conv + SiLU on xBC -> x, B, C; SSD scan
    per head; gated RMSNorm with silu(z); out_proj.

    Args mirror mamba-ssm: d_inner = expand * d_model, split into nheads = d_inner / headdim heads
    that share B and C within each of ``ngroups`` groups; A = -exp(A_log) per head with
    A ~ U(A_init_range); dt = softplus(dt_raw + dt_bias) with dt_bias initialised so that
    softplus(dt_bias) is log-uniform in [dt_min, dt_max] (floored at dt_init_floor); D = 1 per head.
    ``chunk_size`` is the SSD chunk length on both paths.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 32,
        ngroups: int = 1,
        chunk_size: int = 64,
        A_init_range: tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        rmsnorm_eps: float = 1e-5,
    ):
        super().__init__()
        check_positive_ints(
            "mamba2", d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim, ngroups=ngroups
        )
        check_positive_ints("mamba2", chunk_size=chunk_size)
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(
                f"mamba2 headdim={headdim} must divide d_inner = expand * d_model = {expand} * {d_model} = {d_inner}"
            )
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"mamba2 ngroups={ngroups} must divide nheads = d_inner / headdim = {nheads}")
        if not (
            isinstance(A_init_range, (list, tuple))
            and len(A_init_range) == 2
            and all(map(is_real, A_init_range))
            and 0 < A_init_range[0] <= A_init_range[1]
        ):
            shown = tuple(A_init_range) if isinstance(A_init_range, (list, tuple)) else A_init_range
            raise ValueError(f"mamba2 A_init_range={shown!r} must satisfy 0 < low <= high (two finite numbers)")
        low, high = A_init_range
        check_dt_options("mamba2", dt_min, dt_max, dt_init_floor)
        check_real("mamba2 rmsnorm_eps", rmsnorm_eps, low=0, low_open=True)
        check_bool("mamba2 conv_bias", conv_bias)
        check_bool("mamba2 bias", bias)
        self.layer_idx = layer_idx
        self.d_inner, self.d_state, self.d_conv, self.chunk_size = d_inner, d_state, d_conv, chunk_size
        self.headdim, self.nheads, self.ngroups = headdim, nheads, ngroups
        self.conv_dim = conv_dim = d_inner + 2 * ngroups * d_state

        self.in_proj = linear(d_model, d_inner + conv_dim + nheads, bias=bias)  # -> [z, xBC, dt]
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(dt_bias_init(nheads, dt_min, dt_max, dt_init_floor))  # softplus(dt_bias) = dt
        self.A_log = nn.Parameter(torch.log(torch.empty(nheads).uniform_(low, high)))
        self.D = nn.Parameter(torch.ones(nheads))
        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // ngroups, eps=rmsnorm_eps)
        self.out_proj = mark_residual_projection(linear(d_inner, d_model, bias=bias))

        for param in (self.A_log, self.D, self.dt_bias):
            mark_no_reinit(tag_optim(param, weight_decay=0.0))
        for param in (self.conv1d.weight, self.norm.weight):
            mark_no_reinit(param)
        tag_optim(self.norm.weight, weight_decay=0.0)  # like every other norm of the model
        if conv_bias:
            mark_no_reinit(tag_optim(self.conv1d.bias, weight_decay=0.0))

    def uses_cuda_kernels(self, x: torch.Tensor) -> bool:
        """Whether forward runs mamba-ssm's SSD kernel for ``x``: a CUDA input and an importable mamba-ssm
        (looked up once per process)."""
        return x.is_cuda and kernels.mamba_chunk_scan() is not None

    def _split_xbc(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xbc: (..., conv_dim) -> x (..., nheads, headdim), B and C (..., ngroups, d_state)."""
        groups = self.ngroups * self.d_state
        x, b, c = xbc.split([self.d_inner, groups, groups], dim=-1)
        group_shape = (self.ngroups, self.d_state)
        return x.unflatten(-1, (self.nheads, self.headdim)), b.unflatten(-1, group_shape), c.unflatten(-1, group_shape)

    def _scan(self, x, dt, b, c) -> torch.Tensor:
        """x: (B, L, h, p), dt before bias and softplus: (B, L, h), b, c: (B, L, g, n) -> (B, L, h, p)."""
        if self.uses_cuda_kernels(x):
            return kernels.mamba_chunk_scan()(
                x,
                dt,
                -torch.exp(self.A_log.float()),
                b,
                c,
                chunk_size=self.chunk_size,
                D=self.D,
                dt_bias=self.dt_bias,
                dt_softplus=True,
            )
        work = torch.promote_types(x.dtype, torch.float32)
        # bf16 autocast would run the chunk matmuls and the carried state in bf16; keep them in work dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            dt = F.softplus(dt.to(work) + self.dt_bias.to(work))
            A = -torch.exp(self.A_log.to(work))
            return ssd_chunked(x.to(work), dt, A, b.to(work), c.to(work), self.chunk_size, self.D.to(work))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, D) -> (B, L, D)."""
        z, xbc, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        x, b, c = self._split_xbc(causal_conv_silu(xbc.transpose(1, 2), self.conv1d).transpose(1, 2))
        y = self._scan(x, dt, b, c)  # (B, L, nheads, headdim)
        return self.out_proj(self.norm(y.flatten(-2), z))

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token (2 per multiply-add): the projections and convolution, plus the
        scan's state update and readout (about 6 per state element, as for Mamba)."""
        return 2 * parameter_count(self) + 6 * self.d_inner * self.d_state

    def state_size(self, seq_len: int) -> int:
        """Bytes of inference state per sequence (any length): convolution window + SSM state."""
        elements = self.conv_dim * self.d_conv + self.nheads * self.headdim * self.d_state
        return elements * self.in_proj.weight.element_size()

    def allocate_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> Mamba2Cache:
        """Zero state for ``step`` (a fixed size: ``max_len`` is not needed): conv_state
        (B, conv_dim, d_conv), ssm_state (B, nheads, headdim, d_state)."""
        weight = self.in_proj.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        return Mamba2Cache(
            conv_state=torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype),
            ssm_state=torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=dtype),
        )

    def step(self, hidden: torch.Tensor, cache: Mamba2Cache) -> tuple[torch.Tensor, Mamba2Cache]:
        """One token: hidden (B, D) -> (B, D); ``cache`` is updated in place and returned."""
        z, xbc, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        x, b, c = self._split_xbc(causal_conv_silu_step(xbc, cache.conv_state, self.conv1d))  # (B,h,p), (B,g,n) x2
        heads_per_group = self.nheads // self.ngroups
        b, c = b.repeat_interleave(heads_per_group, dim=1), c.repeat_interleave(heads_per_group, dim=1)
        dt = F.softplus(dt + self.dt_bias)  # (B, h)
        decay = torch.exp(dt * -torch.exp(self.A_log))
        drive = (dt.unsqueeze(-1) * x).unsqueeze(-1) * b.unsqueeze(-2)  # (B, h, p, n)
        cache.ssm_state.copy_(cache.ssm_state * decay[..., None, None] + drive)
        y = (cache.ssm_state * c.unsqueeze(-2)).sum(-1) + self.D[:, None] * x  # (B, h, p)
        return self.out_proj(self.norm(y.flatten(-2), z)), cache
