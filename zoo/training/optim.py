"""Optimizer parameter groups from parameter tags, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from zoo.core.tags import optim_tags, shard_of
from zoo.core.value_checks import check_int, check_real
from zoo.memory import VALUE_GROUP
from zoo.memory.ops import memory_ops, reference
from zoo.memory.optim import DenseSparseAdam, coalesced


def param_groups(model: nn.Module, lr: float, weight_decay: float, group_lr: dict[str, float] | None = None) -> list[dict]:
    """Split trainable parameters into AdamW groups by their tags.

    Untagged parameters get ``lr`` and ``weight_decay``; a tag overrides either (and may add
    ``sparse=True``), and ``group_lr[NAME]`` sets the learning rate of the parameters tagged
    ``group=NAME`` unless their tag sets one (then their own config knob does, e.g. memory.value_lr:
    one knob per value, so naming that group here is an error). Each group carries a ``name`` for
    logging. Tied parameters appear once.
    """
    group_lr = dict(group_lr or {})
    unknown = sorted(set(group_lr) - {optim_tags(p).get("group") for p in model.parameters()})
    if unknown:
        raise ValueError(f"optim.group_lr names parameter group(s) {unknown} that this model does not have")
    own_lr = sorted(
        {optim_tags(p)["group"] for p in model.parameters() if optim_tags(p).get("group") in group_lr and "lr" in optim_tags(p)}
    )
    if own_lr:
        raise ValueError(
            f"optim.group_lr names parameter group(s) {own_lr} whose parameters set their own learning "
            "rate where they are configured (the memory values': memory.value_lr)"
        )
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        tags = optim_tags(param)
        name = tags.pop("group", None)
        options = {"lr": lr, "weight_decay": weight_decay, **tags}
        if name in group_lr:  # never a group with its own lr (refused above)
            options["lr"] = group_lr[name]
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


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay; the ``optim`` config group (``optim=adamw``) is
    this dataclass, so every default lives here.

    lr: peak learning rate. weight_decay: AdamW's, on matrices only (``param_groups``).
    betas, eps: Adam's. warmup_steps: linear warmup length; None = a tenth of the schedule.
    min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
    group_lr: learning rate per tagged parameter group that does not set its own; the memory value
        table sets its own (``memory.value_lr``, its one knob), so ``group_lr.memory_values`` is an error.
    total_steps: length of the cosine schedule; None = ``trainer.max_steps``.
    """

    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    group_lr: dict[str, float] = field(default_factory=dict)
    total_steps: int | None = None

    def validate(self) -> None:
        """Every field's range (``ValueError`` naming the first bad one; the types are
        ``zoo.core.dataclass_config.typed``'s); the schedule's
        length against ``trainer.max_steps`` is ``zoo.training.run_checks.fit_schedule``'s.

        weight_decay: finite, >= 0, and ``lr * weight_decay < 1``: AdamW's decoupled decay multiplies
        every decayed weight by ``1 - lr * weight_decay`` each step (at the peak lr), which must stay
        positive or the weights flip sign. Each ``group_lr`` is checked like lr; groups that decay
        are not known before the model, so the bound uses ``lr``.
        """
        if VALUE_GROUP in self.group_lr:
            raise ValueError(
                f"optim.group_lr.{VALUE_GROUP}={self.group_lr[VALUE_GROUP]!r}: the memory value table's "
                "learning rate has one knob, memory.value_lr; set that instead"
            )
        lrs = {"optim.lr": self.lr} | {f"optim.group_lr.{k}": v for k, v in self.group_lr.items()}
        for name, value in lrs.items():
            check_real(name, value, low=0, low_open=True)
        check_real("optim.weight_decay", self.weight_decay, low=0)
        if self.lr * self.weight_decay >= 1:
            raise ValueError(
                f"optim.weight_decay={self.weight_decay!r} with optim.lr={self.lr!r}: AdamW multiplies the weights by "
                f"1 - lr * weight_decay = {1 - self.lr * self.weight_decay:.3g} each step; lr * weight_decay must be < 1"
            )
        betas = self.betas
        if not (len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            raise ValueError(f"optim.betas={betas!r} must be two numbers in [0, 1) (Adam's beta1, beta2)")
        check_real("optim.eps", self.eps, low=0, low_open=True)
        check_int("optim.warmup_steps", self.warmup_steps, low=0, null="a tenth of the schedule")
        check_real("optim.min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_int("optim.total_steps", self.total_steps, low=1, null="trainer.max_steps")


def default_warmup(warmup_steps: int | None, total_steps: int) -> int:
    """``optim.warmup_steps``, where None means a tenth of the schedule."""
    return total_steps // 10 if warmup_steps is None else warmup_steps


def check_warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
    """``ValueError`` naming the field unless warmup_steps >= 0, total_steps >= 1 (integers) and
    0 <= min_lr_ratio <= 1."""
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={warmup_steps!r} must be an integer >= 0")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(
            f"the schedule's total steps={total_steps!r} must be an integer >= 1 (optim.total_steps or trainer.max_steps)"
        )
    if not isinstance(min_lr_ratio, (int, float)) or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"optim.min_lr_ratio={min_lr_ratio!r} must be in [0, 1]")


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` following ``warmup_cosine`` (scales every group's own base lr)."""
    check_warmup_cosine(warmup_steps, total_steps, min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio))


def build_optimizer(groups: list[dict], betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.Optimizer:
    """Plain AdamW when no group is sparse, else ``DenseSparseAdam``."""
    if any(g.get("sparse", False) for g in groups):
        return DenseSparseAdam(groups, betas=betas, eps=eps)
    return torch.optim.AdamW(groups, betas=betas, eps=eps)


def _squared_norm(grad: torch.Tensor, rows: bool) -> torch.Tensor:
    """||grad||^2 as a float64 scalar, accumulated in float64; by its backend for ``rows`` (a memory
    table's sparse gradient values), else the reference's (a model without memory builds no kernels)."""
    return (memory_ops(grad.device, grad.dtype) if rows else reference).squared_norm(grad)


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also takes sparse gradients (coalesced in place, so duplicate rows
    count once as their sum) and sharded parameters (their squared norms are summed over ranks, so
    every rank clips by the norm of the whole gradient). Returns the total 2-norm before clipping.
    On CPU, gradients within ``max_norm`` are left as they are, where torch multiplies them by 1: a
    pass over every gradient, a memory table's rows included (megabytes at 2^16 slots and more)."""
    grads, sharded, group = [], [], None  # (gradient, whether it holds sparse rows)
    for param in params:
        if param.grad is None:
            continue
        rows = param.grad.is_sparse
        if rows:
            param.grad = coalesced(param.grad)
        grad = param.grad.values() if rows else param.grad  # coalesced now: the public accessor serves
        shard = shard_of(param)
        (grads if shard is None else sharded).append((grad, rows))
        group = shard.group if shard is not None else group
    if not grads and not sharded:
        return torch.tensor(0.0)
    total_sq = sum((_squared_norm(g, rows) for g, rows in grads), torch.tensor(0.0, dtype=torch.float64))
    if sharded:
        sharded_sq = sum(_squared_norm(g, rows) for g, rows in sharded)
        dist.all_reduce(sharded_sq, group=group)
        total_sq = total_sq + sharded_sq
    total = total_sq.sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    # on CPU reading the scale costs no sync; a NaN scale still multiplies, as torch's does
    if total.device.type != "cpu" or not bool(scale == 1.0):
        for g, _ in grads + sharded:
            g.mul_(scale.to(g.dtype))
    return total.to((grads + sharded)[0][0].dtype)
