"""The memory table's optimizers: ``RowAdam`` (lazy Adam on the rows a sparse gradient touches, by the
table's backend's ``row_adam``) and ``DenseSparseAdam`` (AdamW for dense groups and ``RowAdam`` for
groups tagged ``sparse=True``, behind one optimizer)."""

from __future__ import annotations

import torch

from zoo.memory.ops import memory_ops
from zoo.memory.workspace import Workspace


def _evaluate(closure):
    """Run an optimizer closure (forward + backward) with autograd on; None when there is none."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


SECOND_MOMENTS = ("full", "row")


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """A sparse row gradient with unique, ascending rows (``as_coalesced`` of its values' backend)."""
    if grad.is_coalesced():
        return grad
    return memory_ops(grad.device, grad._values().dtype).as_coalesced(grad)  # _values(): see as_coalesced


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam for parameters with sparse (row) gradients: only the rows present in the gradient
    have their moments and values updated; bias correction counts the optimizer's steps.

    The update of a touched row is AdamW's without weight decay
    (``p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``), so a first step equals AdamW's.
    ``second_moment="row"`` keeps one ``v`` per row (the mean of the row's squared gradient, as
    FBGEMM's partial-rowwise Adam), so the state is one table (``m``) plus N floats instead of two
    tables. Moments are float32 (or the parameter's dtype when wider), also for a bfloat16 table.
    The update is the parameter's backend's ``row_adam`` (``zoo.memory.ops``: on CUDA, one Triton kernel).
    """

    def __init__(
        self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, second_moment: str = "full"
    ):
        if second_moment not in SECOND_MOMENTS:
            raise ValueError(f"second_moment={second_moment!r}; allowed: {list(SECOND_MOMENTS)}")
        super().__init__(params, defaults={"lr": lr, "betas": betas, "eps": eps, "second_moment": second_moment})
        self._workspaces: dict[torch.Tensor, Workspace] = {}  # the CPU update's temporaries, per table (not state)

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
                memory_ops(param.device, param.dtype).row_adam(
                    param,
                    state["exp_avg"],
                    state["exp_avg_sq"],
                    grad.indices()[0],
                    grad.values(),
                    group["lr"],
                    beta1,
                    beta2,
                    group["eps"],
                    state["step"],
                    self._workspaces.setdefault(param, Workspace()),
                )
        return loss


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

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The inner optimizers: AdamW for the dense groups, ``RowAdam`` for the sparse ones (where present)."""
        return list(self.inner)

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
