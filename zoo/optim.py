"""Optimizer parameter groups from parameter tags, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
import torch
from torch import nn

from zoo.tags import optim_tags


def param_groups(model: nn.Module, lr: float, weight_decay: float, group_lr: dict[str, float] | None = None) -> list[dict]:
    """Split trainable parameters into AdamW groups by their tags.

    Untagged parameters get ``lr`` and ``weight_decay``; a tag overrides either, and a tag
    ``group=NAME`` takes its learning rate from ``group_lr[NAME]`` (e.g. memory values).
    Each group carries a ``name`` for logging. Tied parameters appear once.
    """
    group_lr = dict(group_lr or {})
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        tags = optim_tags(param)
        name = tags.pop("group", None)
        options = {"lr": lr, "weight_decay": weight_decay}
        if name is not None:
            if name not in group_lr:
                raise ValueError(f"parameter group {name!r} has no learning rate in optim.group_lr={group_lr}")
            options["lr"] = group_lr[name]
        options.update(tags)
        if name is None:
            name = "decay" if options["weight_decay"] > 0 else "no_decay"
        key = (name, tuple(sorted(options.items())))
        groups.setdefault(key, {"name": name, "params": [], **options})["params"].append(param)
    return list(groups.values())


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup_steps``, then cosine 1 -> ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` following ``warmup_cosine`` (scales every group's own base lr)."""
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(
            f"optim.warmup_steps={warmup_steps} must be >= 0, total steps={total_steps} >= 1, "
            f"optim.min_lr_ratio={min_lr_ratio} in [0, 1]"
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)
    )
