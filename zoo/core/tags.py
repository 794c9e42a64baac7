"""Tags that parameters carry from where they are created to the optimizer and the initialiser.

A module says what a parameter needs (no weight decay, its own learning rate, no re-initialisation)
at the point where it creates it; the Lightning module builds optimizer groups from the tags and never
names model internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_OPTIM_ATTR = "_memzoo_optim"
_NO_REINIT_ATTR = "_no_reinit"
_RESIDUAL_ATTR = "_memzoo_residual_projection"
_SHARD_ATTR = "_memzoo_shard"


@dataclass(frozen=True)
class Shard:
    """A parameter split across ranks: this rank holds chunk ``rank`` of ``world`` equal chunks along
    ``dim`` (process group ``group``; None = the default group)."""

    dim: int
    rank: int
    world: int
    group: Any = None


def tag_optim(param: nn.Parameter, **options) -> nn.Parameter:
    """Attach optimizer options (e.g. ``weight_decay=0.0``, ``group="memory_values"``) to a parameter."""
    current = dict(getattr(param, _OPTIM_ATTR, {}))
    current.update(options)
    setattr(param, _OPTIM_ATTR, current)
    return param


def optim_tags(param: nn.Parameter) -> dict:
    """The optimizer options attached to ``param`` (empty dict when untagged)."""
    return dict(getattr(param, _OPTIM_ATTR, {}))


def parameter_count(module: nn.Module, skip: str | None = None) -> int:
    """Elements of ``module``'s parameters, leaving out those under the submodule named ``skip``."""
    prefix = None if skip is None else skip + "."
    return sum(p.numel() for name, p in module.named_parameters() if prefix is None or not name.startswith(prefix))


def mark_no_decay(module: nn.Module) -> nn.Module:
    """Tag every parameter directly owned by ``module`` (norm weights, embeddings) with weight_decay=0."""
    for param in module.parameters(recurse=False):
        tag_optim(param, weight_decay=0.0)
    return module


def mark_no_reinit(param: nn.Parameter) -> nn.Parameter:
    """Keep the model-wide GPT-style initialiser away from a parameter that has its own init."""
    setattr(param, _NO_REINIT_ATTR, True)
    return param


def is_no_reinit(param: nn.Parameter) -> bool:
    return bool(getattr(param, _NO_REINIT_ATTR, False))


def mark_residual_projection(linear: nn.Linear) -> nn.Linear:
    """Mark the linear layer that writes into the residual stream (GPT-2 scales its init down)."""
    setattr(linear.weight, _RESIDUAL_ATTR, True)
    return linear


def is_residual_projection(param: torch.Tensor) -> bool:
    return bool(getattr(param, _RESIDUAL_ATTR, False))


def linear(d_in: int, d_out: int, bias: bool = False) -> nn.Linear:
    """``nn.Linear`` whose bias (if any) is tagged for no weight decay."""
    layer = nn.Linear(d_in, d_out, bias=bias)
    if bias:
        tag_optim(layer.bias, weight_decay=0.0)
    return layer


def mark_sharded(param: nn.Parameter, shard: Shard) -> nn.Parameter:
    """Mark a parameter as one rank's part of a larger tensor: DDP must not average it, and
    checkpoints, gradient norms and optimizer state treat it as that larger tensor."""
    setattr(param, _SHARD_ATTR, shard)
    return param


def shard_of(param: torch.Tensor) -> Shard | None:
    """The ``Shard`` of a sharded parameter, None for a replicated one."""
    return getattr(param, _SHARD_ATTR, None)
