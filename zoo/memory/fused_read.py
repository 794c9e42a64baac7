"""The memory read as one autograd step on CPU (where ``ValueTable.fuses_read``): query and sub-key
normalisation -> sub-key scores -> pair search -> softmax weights -> weighted value rows, and back,
in a few calls of memzoo's CPU kernels (``normalise_rows``, ``product_read`` and their backward)
where the composed path (``ProductKeys.normalised`` + ``select`` + ``ValueTable.read``, the
reference) runs three autograd functions and a dozen small ops. Same numbers up to summation order."""

from __future__ import annotations

import torch

from zoo.memory.config import MemoryConfig
from zoo.memory.ops.cpu import kernels
from zoo.memory.product_keys import in_token_chunks, norm_eps, subkey_scores
from zoo.memory.values import ValueTable, row_gradient


def product_key_read(
    q: torch.Tensor, sub_keys: torch.Tensor, values: ValueTable, config: MemoryConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (T, H, 2, d) and sub_keys (H, 2, n_keys, d) as ``ProductKeys.projected`` gives them (not yet
    normalised) -> (mem(x) (T, v_dim), slot indices (T, H, knn), softmax weights (T, H, knn)), the
    last two without gradient (they are what usage statistics count)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        return _ProductKeyRead.apply(
            q, sub_keys, values.weight, config.knn, config.temperature, config.query_norm, values.workspace
        )


def _normalised_rows(x: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x (..., d) normalised over its last dim by the kernel (``norm``: none / layernorm / rmsnorm),
    and the rows' 1 / sqrt(variance + eps) (None for ``none``)."""
    if norm == "none":
        return x, None
    y, rstd = kernels().normalise_rows(x.reshape(-1, x.shape[-1]), norm, norm_eps(norm, x.dtype))
    return y.view_as(x), rstd


def _normalised_rows_backward(grad: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor | None, norm: str) -> torch.Tensor:
    """The gradient to ``_normalised_rows``' input from that to its output ``y``."""
    if norm == "none":
        return grad
    d = y.shape[-1]
    return kernels().normalise_rows_backward(grad.reshape(-1, d), y.reshape(-1, d), rstd, norm).view_as(y)


class _ProductKeyRead(torch.autograd.Function):
    """``mem = sum_{h, j} softmax_j((s1 + s2) / temperature) * table[slot]`` over each head's knn best
    pairs of sub-key scores (of the ``norm``-normalised query halves and sub-keys); gradients to the
    query halves, the sub-keys and the table rows read (a coalesced sparse gradient, its rows in the
    table's ``workspace``)."""

    @staticmethod
    def forward(ctx, q, sub_keys, table, knn, temperature, norm, workspace):
        q, q_rstd = _normalised_rows(q, norm)
        sub_keys, keys_rstd = _normalised_rows(sub_keys, norm)

        def read(part: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return kernels().product_read(subkey_scores(part, sub_keys), table, knn, temperature)

        with torch.no_grad():
            out, slots, weights, idx = in_token_chunks(q, 2 * sub_keys.shape[2], read)
        ctx.save_for_backward(q, sub_keys, table, idx, slots, weights, q_rstd, keys_rstd)
        ctx.temperature, ctx.norm, ctx.workspace = temperature, norm, workspace
        ctx.mark_non_differentiable(slots, weights)
        ctx.set_materialize_grads(False)  # no zero gradients made for slots and weights
        return out, slots, weights

    @staticmethod
    def backward(ctx, grad_out, _grad_slots, _grad_weights):
        q, sub_keys, table, idx, slots, weights, q_rstd, keys_rstd = ctx.saved_tensors
        rows_out = ctx.workspace.take(slots.numel(), table.shape[1], table.dtype)
        grad_q, grad_keys, unique, rows = kernels().product_read_backward(
            q, sub_keys, table, idx, slots, weights, grad_out, ctx.temperature, rows_out
        )
        grad_q = _normalised_rows_backward(grad_q, q, q_rstd, ctx.norm)
        grad_keys = _normalised_rows_backward(grad_keys, sub_keys, keys_rstd, ctx.norm)
        return grad_q, grad_keys, row_gradient(unique, rows, table.shape), None, None, None, None
