"""The memory table's optimizers: ``RowAdam`` (lazy Adam on the rows a sparse gradient touches, one
fused Triton kernel on CUDA) and ``DenseSparseAdam`` (AdamW for dense groups and ``RowAdam`` for
groups tagged ``sparse=True``, behind one optimizer)."""

from __future__ import annotations

import functools

import torch

from zoo.memory import cpu_kernels
from zoo.memory.workspace import Workspace


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
    where ``coalesce()`` would sort again. On CPU memzoo's kernel checks it in one call; the PyTorch
    check below (the reference) is several small ops, each slow right after a backward pass."""
    if grad.is_coalesced():
        return grad
    if cpu_kernels.enabled(grad._values()):
        return cpu_kernels.ops().as_coalesced(grad)
    rows = grad._indices()[0]
    if grad._indices().shape[0] == 1 and bool((rows[1:] > rows[:-1]).all()):
        return torch.sparse_coo_tensor(grad._indices(), grad._values(), grad.shape, is_coalesced=True, check_invariants=False)
    return grad.coalesce()


@torch.no_grad()
def row_adam_update_(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    rows: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    workspace: Workspace | None = None,
) -> None:
    """Lazy Adam on ``rows`` only, in place: param (N, d) any float dtype, exp_avg (N, d) float32+,
    exp_avg_sq (N, d) or (N,) (one second moment per row, updated with the row's mean g^2), rows (U,)
    unique, grad (U, d). Arithmetic in the moments' dtype; param is written back in its own dtype.

    Per chunk of rows: the moments' rows gathered into ``workspace`` buffers (reused step after step:
    a fresh multi-MB temporary costs more in page faults than the arithmetic), updated in place and
    copied back; a parameter in the moments' dtype gets its step added in place (``index_add_``: one
    pass, no gather), another is gathered, updated and copied back in its own dtype."""
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    rowwise = exp_avg_sq.dim() == 1
    work = exp_avg.dtype
    width = param[0].numel()
    chunk = max(1, ROW_CHUNK_ELEMENTS // max(1, width))
    workspace = workspace or Workspace()
    for idx, g in zip(rows.split(chunk), grad.split(chunk)):
        n = idx.shape[0]
        g = g.to(work)
        v_cols, v_shape = (1, (n,)) if rowwise else (width, (n, width))
        m = torch.index_select(exp_avg, 0, idx, out=workspace.take(n, width, work)).lerp_(g, 1 - beta1)
        v = torch.index_select(exp_avg_sq, 0, idx, out=workspace.take(n, v_cols, work).view(v_shape))
        g_sq = torch.mul(g, g, out=workspace.take(n, width, work))
        v.mul_(beta2).add_(g_sq.mean(1) if rowwise else g_sq, alpha=1 - beta2)
        exp_avg.index_copy_(0, idx, m)
        exp_avg_sq.index_copy_(0, idx, v)
        denom = (torch.div(v, bias2) if rowwise else torch.div(v, bias2, out=g_sq)).sqrt_().add_(eps)
        # the step (-lr / b1) * m / denom, in m's buffer (m is stored already): AdamW's addcdiv, same rounding
        update = m.mul_(-lr / bias1).div_(denom.unsqueeze(1) if rowwise else denom)
        if param.dtype == work:
            param.index_add_(0, idx, update)
        else:
            param.index_copy_(0, idx, param.index_select(0, idx).to(work).add_(update).to(param.dtype))
        del m, v, g_sq, denom, update  # the buffers go back to the workspace for the next chunk


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
                row_update(param, state["exp_avg"], self._workspaces.setdefault(param, Workspace()))(
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
                )
        return loss


def row_update(param: torch.Tensor, exp_avg: torch.Tensor, workspace: Workspace):
    """The rows-only Adam update for ``param``: memzoo's fused Triton kernel for a CUDA float32 /
    bfloat16 / float16 table with float32 moments when Triton loads, memzoo's C++ kernel for a CPU
    float32 / float64 table with moments of its dtype (``cpu_kernels``), else ``row_adam_update_``
    (the reference; same arithmetic) with its temporaries in ``workspace``."""
    if param.is_cuda and param.dtype in (torch.float32, torch.bfloat16, torch.float16) and exp_avg.dtype == torch.float32:
        from zoo.memory import triton_ops  # lazily: the optimizer does not need the memory package otherwise

        if triton_ops.available():
            return triton_ops.row_adam_
    if exp_avg.dtype == param.dtype and cpu_kernels.enabled(param):
        return cpu_kernels.ops().row_adam
    return functools.partial(row_adam_update_, workspace=workspace)


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
