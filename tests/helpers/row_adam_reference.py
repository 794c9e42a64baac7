"""The rows-only Adam update as it was before its buffers were reused (issue 29): the reference the
optimised ``zoo.memory.ops.reference.row_adam`` is held equal to."""

import torch


@torch.no_grad()
def row_adam_reference_(param, exp_avg, exp_avg_sq, rows, grad, lr, beta1, beta2, eps, step) -> None:
    """Lazy Adam on ``rows`` in place (see ``zoo.memory.ops.reference.row_adam``), one gather, update
    and scatter per state tensor, every temporary freshly allocated."""
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    rowwise = exp_avg_sq.dim() == 1
    g = grad.to(exp_avg.dtype)
    m = exp_avg.index_select(0, rows).lerp_(g, 1 - beta1)
    g_sq = g.square().mean(1) if rowwise else g.square()
    v = exp_avg_sq.index_select(0, rows).mul_(beta2).add_(g_sq, alpha=1 - beta2)
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    denom = v.div_(bias2).sqrt_().add_(eps)
    p = param.index_select(0, rows).to(m.dtype)
    p.addcdiv_(m, denom.unsqueeze(1) if rowwise else denom, value=-lr / bias1)
    param.index_copy_(0, rows, p.to(param.dtype))
