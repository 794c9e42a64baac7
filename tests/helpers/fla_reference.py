"""Pieces of references for the mixers in flash-linear-attention's layout (GLA, Gated DeltaNet),
written from fla's layer definitions, not from memzoo's modules: the short convolution as a sum over
a window, RMSNorm with a swish output gate, and q, k, v of an fla layer computed on CPU."""

import torch
import torch.nn.functional as F
from torch import nn

NO_FLA = "flash-linear-attention (fla) is not importable"


def short_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: (B, L, C), weight: (C, 1, K) -> silu(y), y_t = sum_j weight[:, 0, K-1-j] * x_{t-j} (+ bias),
    x before the start taken as 0."""
    taps = weight.shape[-1]
    out = []
    for t in range(x.shape[1]):
        y = sum(weight[:, 0, taps - 1 - j] * x[:, t - j] for j in range(min(taps, t + 1)))
        out.append(F.silu(y if bias is None else y + bias))
    return torch.stack(out, dim=1)


def rmsnorm_swish_gate_reference(o: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """fla's FusedRMSNormGated (swish): o / sqrt(mean(o^2) + eps) * weight * gate * sigmoid(gate)."""
    return o / torch.sqrt((o * o).mean(-1, keepdim=True) + eps) * weight * gate * torch.sigmoid(gate)


def linear(x: torch.Tensor, params: dict, name: str) -> torch.Tensor:
    """x @ W^T (+ b) with the weight (and bias, if any) that ``params`` holds under ``name``."""
    y = x @ params[f"{name}.weight"].T
    return y + params[f"{name}.bias"] if f"{name}.bias" in params else y


def fla_layer_qkv(layer, x: torch.Tensor) -> list[torch.Tensor]:
    """q, k, v (B, L, width) of an fla layer with short convs, on CPU: its nn.Linear projections and
    its ShortConvolution run as the nn.Conv1d it subclasses (fla's own forward needs a GPU), + SiLU."""
    length = x.shape[1]
    out = []
    for name in "qkv":
        projected = getattr(layer, f"{name}_proj")(x).transpose(1, 2)
        conv = nn.Conv1d.forward(getattr(layer, f"{name}_conv1d"), projected)[..., :length]
        out.append(F.silu(conv).transpose(1, 2))
    return out
