"""Pieces the recurrent and convolutional mixers share: option checks, dt initialisation, the causal
depthwise conv, and the chunking of a sequence for chunked-parallel scans."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from zoo.core.value_checks import check_real, is_int, is_real
from zoo.mixers import kernels


def check_positive_ints(mixer: str, **values) -> None:
    """ValueError naming the first option that is not a positive integer."""
    for name, value in values.items():
        if not is_int(value) or value < 1:
            raise ValueError(f"{mixer} {name}={value!r} must be a positive integer")


def check_dt_options(mixer: str, dt_min: object, dt_max: object, dt_init_floor: object) -> None:
    """The time-step range of ``mixer`` (mamba, mamba2): 0 < dt_min <= dt_max and dt_init_floor >= 0,
    all finite; ``ValueError`` naming them otherwise."""
    if not (is_real(dt_min) and is_real(dt_max) and 0 < dt_min <= dt_max):
        raise ValueError(f"{mixer} dt_min={dt_min!r}, dt_max={dt_max!r}: need 0 < dt_min <= dt_max, finite")
    check_real(f"{mixer} dt_init_floor", dt_init_floor, low=0)


def dt_bias_init(size: int, dt_min: float, dt_max: float, dt_floor: float) -> torch.Tensor:
    """(size,) biases b with softplus(b) = dt, dt log-uniform in [dt_min, dt_max] floored at dt_floor."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def causal_conv(x: torch.Tensor, conv1d: nn.Conv1d) -> torch.Tensor:
    """x: (B, C, L) -> causal depthwise conv(x), no activation, (B, C, L); causal-conv1d's kernel on
    CUDA when present."""
    conv_fn = kernels.causal_conv1d() if x.is_cuda else None
    if conv_fn is not None:
        return conv_fn(x, conv1d.weight.squeeze(1), conv1d.bias, activation=None)
    return conv1d(x)[..., : x.shape[-1]]


def causal_conv_step(x: torch.Tensor, conv_state: torch.Tensor, conv1d: nn.Conv1d) -> torch.Tensor:
    """One step of ``causal_conv`` without activation: x (B, C) is pushed into conv_state
    (B, C, kernel width) in place; returns (B, C)."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = (conv_state * conv1d.weight.squeeze(1)).sum(-1)
    return out if conv1d.bias is None else out + conv1d.bias


class _CausalConvSilu(torch.autograd.Function):
    """silu(causal depthwise conv) as one multiply-add per tap along L, with its backward written out.

    A depthwise conv with a handful of taps is a few elementwise passes; written so, it runs in
    whatever layout x comes in (the mixers hand over the transpose of a (B, L, C) projection) and
    its backward costs a few passes more, where the generic convolution kernels' depthwise backward
    is several times slower on CPU."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        """x: (B, C, L); weight: (C, K), tap K - 1 on the current step; bias: (C,) or None."""
        batch, channels, length = x.shape
        taps = weight.shape[1]
        # one contiguous (C,) row per tap: a strided broadcast operand would cost 10x in every pass
        rows = weight.t().contiguous()[:, :, None]  # (K, C, 1)
        # same layout as x: channels innermost when x has them so, as the mixers' projections do
        pre = x.new_empty(batch, length, channels).transpose(1, 2) if x.stride(1) == 1 else torch.empty_like(x)
        torch.mul(x, rows[taps - 1], out=pre)
        if bias is not None:
            pre += bias[:, None]
        for lag in range(1, min(taps, length)):
            pre[..., lag:].addcmul_(x[..., :-lag], rows[taps - 1 - lag])
        ctx.save_for_backward(x, rows, pre)
        ctx.has_bias = bias is not None
        return F.silu(pre)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, rows, pre = ctx.saved_tensors
        grad_pre = torch.ops.aten.silu_backward(grad, pre)
        taps, length = rows.shape[0], x.shape[2]
        grad_x = grad_pre * rows[taps - 1]
        grad_rows = rows.new_zeros(rows.shape[:2])  # (K, C); taps reaching before the sequence stay 0
        grad_rows[taps - 1] = (grad_pre * x).sum((0, 2))
        for lag in range(1, min(taps, length)):
            grad_x[..., :-lag].addcmul_(grad_pre[..., lag:], rows[taps - 1 - lag])
            grad_rows[taps - 1 - lag] = (grad_pre[..., lag:] * x[..., :-lag]).sum((0, 2))
        grad_bias = grad_pre.sum((0, 2)) if ctx.has_bias else None
        return grad_x, grad_rows.t(), grad_bias


def causal_conv_silu(x: torch.Tensor, conv1d: nn.Conv1d) -> torch.Tensor:
    """x: (B, C, L) -> silu(causal depthwise conv(x)), (B, C, L) in x's layout; causal-conv1d's
    kernel on CUDA when present."""
    conv_fn = kernels.causal_conv1d() if x.is_cuda else None
    if conv_fn is not None:
        return conv_fn(x, conv1d.weight.squeeze(1), conv1d.bias, activation="silu")
    return _CausalConvSilu.apply(x, conv1d.weight.squeeze(1), conv1d.bias)


def causal_conv_silu_step(x: torch.Tensor, conv_state: torch.Tensor, conv1d: nn.Conv1d) -> torch.Tensor:
    """One step of ``causal_conv_silu``: x (B, C) is pushed into conv_state (B, C, d_conv) in place."""
    return F.silu(causal_conv_step(x, conv_state, conv1d))


def split_chunks(t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(b, L, ...) -> (b, n, chunk_size, ...) with n = ceil(L / chunk_size), zero-padded at the end."""
    pad = -t.shape[1] % chunk_size
    padded = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return padded.reshape(t.shape[0], -1, chunk_size, *t.shape[2:])


def segment_sum(log_decay: torch.Tensor) -> torch.Tensor:
    """log_decay: (..., T) -> (..., T, T) with [t, s] = sum of log_decay over steps s+1..t for s <= t
    and -inf for s > t. Summing each segment directly, not as a difference of prefix sums, keeps
    every entry <= 0 and free of cancellation however long the chunk."""
    length = log_decay.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril()
    after = lower.tril(-1)  # [t, s]: t > s, the steps that segment s..t decays through
    terms = torch.where(after, log_decay.unsqueeze(-1), 0.0)  # [t, s] = a_t if t > s
    return terms.cumsum(-2).masked_fill(~lower, float("-inf"))
