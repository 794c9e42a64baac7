"""Optimizer parameter groups from parameter tags, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from zoo.tags import optim_tags, shard_of
from zoo.value_checks import check_int, check_real, is_real


def param_groups(model: nn.Module, lr: float, weight_decay: float, group_lr: dict[str, float] | None = None) -> list[dict]:
    """Split trainable parameters into AdamW groups by their tags.

    Untagged parameters get ``lr`` and ``weight_decay``; a tag overrides either (and may add
    ``sparse=True``), and ``group_lr[NAME]`` overrides the learning rate of the parameters tagged
    ``group=NAME`` (e.g. memory values). Each group carries a ``name`` for logging. Tied parameters
    appear once.
    """
    group_lr = dict(group_lr or {})
    unknown = sorted(set(group_lr) - {optim_tags(p).get("group") for p in model.parameters()})
    if unknown:
        raise ValueError(f"optim.group_lr names parameter group(s) {unknown} that this model does not have")
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        tags = optim_tags(param)
        name = tags.pop("group", None)
        options = {"lr": lr, "weight_decay": weight_decay, **tags}
        if name in group_lr:
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
    group_lr: learning rate per tagged parameter group, e.g. ``{memory_values: 1.0e-3}``.
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

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "OptimConfig":
        """Plain or OmegaConf mapping -> config; an unknown key is a ``ValueError``."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown optim config key(s) {unknown}; allowed: {sorted(known)}")
        plain = {k: list(v) if k == "betas" and _is_sequence(v) else dict(v) if k == "group_lr" and hasattr(v, "items")
                 else v for k, v in values.items()}
        return cls(**plain)

    def validate(self) -> None:
        """Every field's type and range (``ValueError`` naming the first bad one); the schedule's
        length against ``trainer.max_steps`` is ``zoo.run_checks.check_schedule``'s.

        weight_decay: finite, >= 0, and ``lr * weight_decay < 1``: AdamW's decoupled decay multiplies
        every decayed weight by ``1 - lr * weight_decay`` each step (at the peak lr), which must stay
        positive or the weights flip sign. Each ``group_lr`` is checked like lr; groups that decay
        are not known before the model, so the bound uses ``lr``.
        """
        if not isinstance(self.group_lr, dict) or not all(isinstance(k, str) for k in self.group_lr):
            raise ValueError(f"optim.group_lr={self.group_lr!r} must map parameter group names to learning rates")
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
        if not (_is_sequence(betas) and len(betas) == 2 and all(is_real(b) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"optim.betas={betas!r} must be two numbers in [0, 1) (Adam's beta1, beta2)")
        check_real("optim.eps", self.eps, low=0, low_open=True)
        check_int("optim.warmup_steps", self.warmup_steps, low=0, null="a tenth of the schedule")
        check_real("optim.min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_int("optim.total_steps", self.total_steps, low=1, null="trainer.max_steps")


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig"


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
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)
    )


def _evaluate(closure):
    """Run an optimizer closure (forward + backward) with autograd on; None when there is none."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


ROW_CHUNK_ELEMENTS = 1 << 20  # rows updated at once on the PyTorch path (4 MiB fp32 per temporary, cache-sized)
SECOND_MOMENTS = ("full", "row")


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """A sparse row gradient with unique, ascending rows. Autograd drops the coalesced flag of the
    gradients the memory layer makes (already unique and sorted); checking the order is O(rows),
    where ``coalesce()`` would sort again."""
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if grad._indices().shape[0] == 1 and bool((rows[1:] > rows[:-1]).all()):
        return torch.sparse_coo_tensor(grad._indices(), grad._values(), grad.shape, is_coalesced=True, check_invariants=False)
    return grad.coalesce()


@torch.no_grad()
def row_adam_update_(
    param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
    lr: float, beta1: float, beta2: float, eps: float, step: int,
) -> None:
    """Lazy Adam on ``rows`` only, in place: param (N, d) any float dtype, exp_avg (N, d) float32+,
    exp_avg_sq (N, d) or (N,) (one second moment per row, updated with the row's mean g^2), rows (U,)
    unique, grad (U, d). Arithmetic in the moments' dtype; param is written back in its own dtype.
    Each chunk reads and writes every state row once (gather, update in place, copy back)."""
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    rowwise = exp_avg_sq.dim() == 1
    chunk = max(1, ROW_CHUNK_ELEMENTS // max(1, param[0].numel()))
    for idx, g in zip(rows.split(chunk), grad.split(chunk)):
        g = g.to(exp_avg.dtype)
        m = exp_avg.index_select(0, idx).lerp_(g, 1 - beta1)
        g_sq = g.square().mean(1) if rowwise else g.square()
        v = exp_avg_sq.index_select(0, idx).mul_(beta2).add_(g_sq, alpha=1 - beta2)
        exp_avg.index_copy_(0, idx, m)
        exp_avg_sq.index_copy_(0, idx, v)
        denom = v.div_(bias2).sqrt_().add_(eps)
        p = param.index_select(0, idx).to(m.dtype)
        p.addcdiv_(m, denom.unsqueeze(1) if rowwise else denom, value=-lr / bias1)
        param.index_copy_(0, idx, p.to(param.dtype))


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam for parameters with sparse (row) gradients: only the rows present in the gradient
    have their moments and values updated; bias correction counts the optimizer's steps.

    The update of a touched row is AdamW's without weight decay
    (``p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``), so a first step equals AdamW's.
    ``second_moment="row"`` keeps one ``v`` per row (the mean of the row's squared gradient, as
    FBGEMM's partial-rowwise Adam), so the state is one table (``m``) plus N floats instead of two
    tables. Moments are float32 (or the parameter's dtype when wider), also for a bfloat16 table.
    On CUDA with Triton, one fused kernel reads and writes each touched row once (``row_update``).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 second_moment: str = "full"):
        if second_moment not in SECOND_MOMENTS:
            raise ValueError(f"second_moment={second_moment!r}; allowed: {list(SECOND_MOMENTS)}")
        super().__init__(params, defaults={"lr": lr, "betas": betas, "eps": eps, "second_moment": second_moment})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise ValueError("RowAdam needs sparse gradients; use AdamW for dense parameters")
                grad = coalesced(param.grad)
                state = self.state[param]
                if not state:
                    work = torch.promote_types(param.dtype, torch.float32)
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, dtype=work)
                    v_shape = param.shape[:1] if group["second_moment"] == "row" else param.shape
                    state["exp_avg_sq"] = torch.zeros(v_shape, dtype=work, device=param.device)
                state["step"] += 1
                row_update(param, state["exp_avg"])(
                    param, state["exp_avg"], state["exp_avg_sq"], grad.indices()[0], grad.values(),
                    group["lr"], beta1, beta2, group["eps"], state["step"],
                )
        return loss


def row_update(param: torch.Tensor, exp_avg: torch.Tensor):
    """The rows-only Adam update for ``param``: memzoo's fused Triton kernel for a CUDA float32 /
    bfloat16 / float16 table with float32 moments when Triton loads, else ``row_adam_update_``
    (the reference; same arithmetic)."""
    if param.is_cuda and param.dtype in (torch.float32, torch.bfloat16, torch.float16) and exp_avg.dtype == torch.float32:
        from zoo.memory import triton_ops  # lazily: the optimizer does not need the memory package otherwise

        if triton_ops.available():
            return triton_ops.row_adam_
    return row_adam_update_


class DenseSparseAdam(torch.optim.Optimizer):
    """AdamW for dense parameter groups and ``RowAdam`` (rows-only, lazy Adam) for groups tagged
    ``sparse=True``, behind one optimizer so that Lightning, LR schedulers and checkpoints see one.

    ``param_groups`` are the inner optimizers' own group dicts, so a scheduler that sets ``lr`` on
    them drives both. Sparse groups take no weight decay.
    """

    def __init__(self, groups: list[dict], betas: tuple[float, float], eps: float):
        for group in groups:
            if group.get("sparse", False) and group.get("weight_decay", 0.0):
                raise ValueError(
                    f"sparse parameter group {group.get('name')!r} has weight_decay={group['weight_decay']}; "
                    "rows-only updates allow only 0"
                )
        dense = [g for g in groups if not g.get("sparse", False)]
        sparse = [{k: v for k, v in g.items() if k != "weight_decay"} for g in groups if g.get("sparse", False)]
        self.dense = torch.optim.AdamW(dense, betas=betas, eps=eps) if dense else None
        self.sparse = RowAdam(sparse, betas=betas, eps=eps) if sparse else None
        self.inner = [opt for opt in (self.dense, self.sparse) if opt is not None]
        super().__init__([g for opt in self.inner for g in opt.param_groups], defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for opt in self.inner:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.inner:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"dense": self.dense and self.dense.state_dict(), "sparse": self.sparse and self.sparse.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        for key, opt in (("dense", self.dense), ("sparse", self.sparse)):
            if (opt is None) != (state_dict.get(key) is None):
                raise ValueError(
                    f"optimizer checkpoint {'has' if opt is None else 'lacks'} {key} parameter groups "
                    f"that this model {'lacks' if opt is None else 'has'} (memory.sparse_updates differs?)"
                )
            if opt is not None:
                opt.load_state_dict(state_dict[key])
        # loading replaces the inner optimizers' group dicts; schedulers set lr on ours, so re-point
        self.param_groups = [g for opt in self.inner for g in opt.param_groups]


def build_optimizer(groups: list[dict], betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.Optimizer:
    """Plain AdamW when no group is sparse, else ``DenseSparseAdam``."""
    if any(g.get("sparse", False) for g in groups):
        return DenseSparseAdam(groups, betas=betas, eps=eps)
    return torch.optim.AdamW(groups, betas=betas, eps=eps)


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also takes sparse gradients (coalesced in place, so duplicate rows
    count once as their sum) and sharded parameters (their squared norms are summed over ranks, so
    every rank clips by the norm of the whole gradient). Returns the total 2-norm before clipping."""
    grads, sharded, group = [], [], None
    for param in params:
        if param.grad is None:
            continue
        if param.grad.is_sparse:
            param.grad = coalesced(param.grad)
        grad = param.grad._values() if param.grad.is_sparse else param.grad
        shard = shard_of(param)
        (grads if shard is None else sharded).append(grad)
        group = shard.group if shard is not None else group
    if not grads and not sharded:
        return torch.tensor(0.0)
    total_sq = sum((torch.linalg.vector_norm(g, dtype=torch.float64) ** 2 for g in grads), torch.tensor(0.0, dtype=torch.float64))
    if sharded:
        sharded_sq = sum(torch.linalg.vector_norm(g, dtype=torch.float64) ** 2 for g in sharded)
        dist.all_reduce(sharded_sq, group=group)
        total_sq = total_sq + sharded_sq
    total = total_sq.sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads + sharded:
        g.mul_(scale.to(g.dtype))
    return total.to((grads + sharded)[0].dtype)
