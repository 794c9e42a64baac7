"""Mamba (selective SSM, Gu & Dao 2023) mixer with mamba-ssm's parameter names and shapes.

A state dict of ``mamba_ssm.modules.mamba_simple.Mamba`` loads into this module and gives the same
output. On CUDA with mamba-ssm installed the scan (and the causal conv, with causal-conv1d) run on
its kernels; everywhere else on ``zoo.mixers.scan.selective_scan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.core.tags import linear, mark_no_reinit, mark_residual_projection, parameter_count, tag_optim
from zoo.core.value_checks import check_bool, check_real, is_int
from zoo.mixers import kernels
from zoo.mixers.scan import selective_scan
from zoo.mixers.ssm_common import causal_conv_silu, causal_conv_silu_step, check_dt_options, check_positive_ints, dt_bias_init


@dataclass
class MambaCache:
    """Recurrent state of one Mamba layer: the last d_conv inputs of the conv and the SSM state."""

    conv_state: torch.Tensor  # (B, d_inner, d_conv)
    ssm_state: torch.Tensor  # (B, d_inner, d_state)


class Mamba(nn.Module):
    """Selective-SSM mixer: in_proj -> causal depthwise conv + SiLU -> selective scan gated by
    silu(z) -> out_proj.

    Args mirror mamba-ssm: d_state 16, d_conv 4, expand 2, dt_rank "auto" = ceil(d_model / 16);
    dt is log-uniform in [dt_min, dt_max] (floored at dt_init_floor) through the inverse softplus of
    ``dt_proj.bias``; ``dt_proj.weight`` ~ U(+-dt_scale / sqrt(dt_rank)); A = -[1..d_state] per
    channel (stored as ``A_log``); D = 1. ``chunk_size`` sets the CPU scan's chunk length.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int = 64,
    ):
        super().__init__()
        check_positive_ints("mamba", d_state=d_state, d_conv=d_conv, expand=expand, chunk_size=chunk_size)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not is_int(dt_rank) or dt_rank < 1:
            raise ValueError(f"mamba dt_rank={dt_rank!r} must be 'auto' or a positive integer")
        check_dt_options("mamba", dt_min, dt_max, dt_init_floor)
        check_real("mamba dt_scale", dt_scale, low=0, low_open=True)
        check_bool("mamba conv_bias", conv_bias)
        check_bool("mamba bias", bias)
        self.layer_idx = layer_idx
        self.d_state, self.d_conv, self.dt_rank, self.chunk_size = d_state, d_conv, dt_rank, chunk_size
        self.d_inner = d_inner = expand * d_model

        self.in_proj = linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = linear(d_inner, dt_rank + 2 * d_state)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = mark_residual_projection(linear(d_inner, d_model, bias=bias))

        with torch.no_grad():
            std = dt_scale * dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))  # softplus(bias) = dt
        for param in (self.dt_proj.weight, self.dt_proj.bias, self.conv1d.weight, self.A_log, self.D):
            mark_no_reinit(param)
        if conv_bias:
            mark_no_reinit(tag_optim(self.conv1d.bias, weight_decay=0.0))
        for param in (self.A_log, self.D, self.dt_proj.bias):
            tag_optim(param, weight_decay=0.0)

    def uses_cuda_kernels(self, x: torch.Tensor) -> bool:
        """Whether forward runs mamba-ssm's kernels for ``x``: a CUDA input and an importable mamba-ssm
        (looked up once per process)."""
        return x.is_cuda and kernels.mamba_selective_scan() is not None

    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (..., d_inner) -> dt before bias (..., d_inner), B (..., d_state), C (..., d_state)."""
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt @ W^T rather than F.linear: autograd then forms W's gradient as dt^T @ grad (a
        # (dt_rank, d_inner) result), which BLAS runs several times faster than grad^T @ dt on CPU
        return dt @ self.dt_proj.weight.t(), b, c

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, D) -> (B, L, D)."""
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = causal_conv_silu(x, self.conv1d)
        dt, b, c = self._ssm_inputs(x.transpose(1, 2))  # (B, L, .)
        scan = kernels.mamba_selective_scan() if self.uses_cuda_kernels(x) else None
        options = {} if scan is not None else {"chunk_size": self.chunk_size}
        y = (scan or selective_scan)(
            x,
            dt.transpose(1, 2),
            -torch.exp(self.A_log.float()),
            b.transpose(1, 2),
            c.transpose(1, 2),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            **options,
        )
        return self.out_proj(y.transpose(1, 2))

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token (2 per multiply-add): the projections and convolution, plus the
        selective scan's state update and readout (about 6 per state element)."""
        return 2 * parameter_count(self) + 6 * self.d_inner * self.d_state

    def state_size(self, seq_len: int) -> int:
        """Bytes of inference state per sequence (any length): convolution window + SSM state."""
        return (self.d_inner * self.d_conv + self.d_inner * self.d_state) * self.in_proj.weight.element_size()

    def allocate_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> MambaCache:
        """Zero state for ``step`` (a fixed size: ``max_len`` is not needed)."""
        weight = self.in_proj.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        return MambaCache(
            conv_state=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            ssm_state=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def step(self, hidden: torch.Tensor, cache: MambaCache) -> tuple[torch.Tensor, MambaCache]:
        """One token: hidden (B, D) -> (B, D); ``cache`` is updated in place and returned."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, d_inner)
        x = causal_conv_silu_step(x, cache.conv_state, self.conv1d)
        dt, b, c = self._ssm_inputs(x)
        dt = F.softplus(dt + self.dt_proj.bias)
        decay = torch.exp(dt.unsqueeze(-1) * -torch.exp(self.A_log))  # (B, d_inner, d_state)
        cache.ssm_state.copy_(cache.ssm_state * decay + (dt * x).unsqueeze(-1) * b.unsqueeze(1))
        y = (cache.ssm_state * c.unsqueeze(1)).sum(-1) + self.D * x
        return self.out_proj(y * F.silu(z)), cache
