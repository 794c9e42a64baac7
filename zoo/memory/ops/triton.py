"""The memory's ops as Triton kernels on CUDA with ``reference``'s signatures: bag reads, their weight and
row gradients, lazy (rows-only) Adam (the other ops: the reference's). Accumulation is always
float32; tables may be float32 or bfloat16 (a float16 table gets row Adam only).

Importing this module never imports Triton. The kernels are compiled (``triton.jit``) on first use,
so ``TRITON_INTERPRET=1`` set any time before the first call runs them on CPU tensors (the tests).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from zoo.memory.ops import reference
from zoo.memory.ops.reference import as_coalesced, rank_pairs, selected_scores_backward, squared_norm, top_pairs  # noqa: F401

# triton.language, bound by _kernels() on first use. The kernels below read it as a module global
# (Triton's interpreter requires it there); annotations stay strings (`from __future__` above).
tl = None

BLOCK_T = 16  # tokens per program (read, bag_weight_grad)
BLOCK_M = 16  # sorted reads per inner step (rows_grad)
BLOCK_U = 8  # rows per program (row_adam_)
MAX_BLOCK_D = 128  # columns per tile; wider rows loop over tiles
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the tables served (float16: row Adam only)
FUSED_READ = False


@functools.cache
def available() -> bool:
    """Whether Triton imports (a missing package or a Triton that fails to load both say False)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


# ---- kernels (plain functions; _kernels() jits them) ------------------------------------------------


def _bag_read_kernel(slots, weights, table, out, T, R, d, stride_table, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # program (token block, column block): out[t, c] = sum_r w[t, r] * table[slots[t, r], c]
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok, c_ok = t < T, c < d
    t64 = t.to(tl.int64)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for r in range(R):
        slot = tl.load(slots + t64 * R + r, mask=t_ok, other=-1)
        w = tl.load(weights + t64 * R + r, mask=t_ok, other=0.0).to(tl.float32)
        hit = (slot >= 0)[:, None] & c_ok[None, :]  # negative slot: served elsewhere, read nothing
        row = tl.load(table + slot[:, None] * stride_table + c[None, :], mask=hit, other=0.0)
        acc += w[:, None] * row.to(tl.float32)
    tl.store(out + t64[:, None] * d + c[None, :], acc, mask=t_ok[:, None] & c_ok[None, :])


def _bag_weight_grad_kernel(
    slots, table, grad_out, grad_weights, T, R, d, stride_table, stride_grad, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
):
    # program (token block, read r): grad_weights[t, r] = <table[slots[t, r]], grad_out[t]>
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    r = tl.program_id(1)
    t_ok = t < T
    t64 = t.to(tl.int64)
    slot = tl.load(slots + t64 * R + r, mask=t_ok, other=-1)
    hit = slot >= 0
    acc = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for c0 in range(0, d, BLOCK_D):
        c = c0 + tl.arange(0, BLOCK_D)
        c_ok = c < d
        row = tl.load(table + slot[:, None] * stride_table + c[None, :], mask=hit[:, None] & c_ok[None, :], other=0.0)
        g = tl.load(grad_out + t64[:, None] * stride_grad + c[None, :], mask=t_ok[:, None] & c_ok[None, :], other=0.0)
        acc += tl.sum(row.to(tl.float32) * g.to(tl.float32), axis=1)
    tl.store(grad_weights + t64 * R + r, acc, mask=t_ok)


def _rows_grad_kernel(
    order, offsets, counts, weights_sorted, source, rows, R, d, stride_source, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr
):
    # program (segment u, column block): rows[u, c] = sum_{i in segment u} w[i] * source[order[i] // R, c]
    u = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    c_ok = c < d
    start = tl.load(offsets + u)
    n = tl.load(counts + u)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for i0 in range(0, n, BLOCK_M):
        i = i0 + tl.arange(0, BLOCK_M)
        i_ok = i < n
        flat = tl.load(order + start + i, mask=i_ok, other=0)
        w = tl.load(weights_sorted + start + i, mask=i_ok, other=0.0).to(tl.float32)
        src = tl.load(source + (flat // R)[:, None] * stride_source + c[None, :], mask=i_ok[:, None] & c_ok[None, :], other=0.0)
        acc += w[:, None] * src.to(tl.float32)
    tl.store(rows + u.to(tl.int64) * d + c, tl.sum(acc, axis=0), mask=c_ok)


def _row_adam_kernel(
    param,
    exp_avg,
    exp_avg_sq,
    rows,
    grad,
    U,
    d,
    stride_param,
    stride_grad,
    step_size,
    beta1,
    beta2,
    eps,
    inv_bias2,
    ROWWISE: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # program (block of touched rows), all columns: lazy Adam, p -= step_size * m / (sqrt(v / bias2) + eps)
    k = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    k_ok = k < U
    k64 = k.to(tl.int64)
    row = tl.load(rows + k64, mask=k_ok, other=0)
    denom_row = tl.zeros((BLOCK_U,), dtype=tl.float32)
    if ROWWISE:  # v is per row, from the mean of g^2 over the whole row: a first pass over the columns
        sq = tl.zeros((BLOCK_U,), dtype=tl.float32)
        for c0 in range(0, d, BLOCK_D):
            c = c0 + tl.arange(0, BLOCK_D)
            ok = k_ok[:, None] & (c < d)[None, :]
            g = tl.load(grad + k64[:, None] * stride_grad + c[None, :], mask=ok, other=0.0).to(tl.float32)
            sq += tl.sum(g * g, axis=1)
        v_row = tl.load(exp_avg_sq + row, mask=k_ok, other=0.0)
        v_row = beta2 * v_row + (1.0 - beta2) * (sq / d)
        tl.store(exp_avg_sq + row, v_row, mask=k_ok)
        denom_row = tl.sqrt(v_row * inv_bias2) + eps
    for c0 in range(0, d, BLOCK_D):
        c = c0 + tl.arange(0, BLOCK_D)
        ok = k_ok[:, None] & (c < d)[None, :]
        g = tl.load(grad + k64[:, None] * stride_grad + c[None, :], mask=ok, other=0.0).to(tl.float32)
        state = row[:, None] * d + c[None, :]  # moments are contiguous (N, d)
        m = tl.load(exp_avg + state, mask=ok, other=0.0)
        m = beta1 * m + (1.0 - beta1) * g
        tl.store(exp_avg + state, m, mask=ok)
        if ROWWISE:
            denom = denom_row[:, None]
        else:
            v = tl.load(exp_avg_sq + state, mask=ok, other=0.0)
            v = beta2 * v + (1.0 - beta2) * g * g
            tl.store(exp_avg_sq + state, v, mask=ok)
            denom = tl.sqrt(v * inv_bias2) + eps
        p_ptr = param + row[:, None] * stride_param + c[None, :]
        p = tl.load(p_ptr, mask=ok, other=0.0).to(tl.float32)
        p = p - step_size * m / denom
        tl.store(p_ptr, p.to(param.dtype.element_ty), mask=ok)


@functools.cache
def _kernels() -> SimpleNamespace:
    """The jitted kernels, built once. ``TRITON_INTERPRET`` is read here (by ``triton.jit``), not at
    ``import triton``: tests clear this cache after setting it."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    return SimpleNamespace(
        bag_read=triton.jit(_bag_read_kernel),
        bag_weight_grad=triton.jit(_bag_weight_grad_kernel),
        rows_grad=triton.jit(_rows_grad_kernel),
        row_adam=triton.jit(_row_adam_kernel),
    )


# ---- wrappers ------------------------------------------------------------------------------------


def _block_d(d: int) -> int:
    return min(MAX_BLOCK_D, max(16, 1 << (d - 1).bit_length()))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    """x with contiguous rows (columns at stride 1); rows may keep any stride."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_bags(slots: torch.Tensor, table: torch.Tensor, **others: torch.Tensor) -> None:
    """slots (T, R) int64, table (N, d), all on one device."""
    if slots.dim() != 2 or slots.dtype != torch.int64:
        raise ValueError(f"slots must be (T, R) int64, got {tuple(slots.shape)} {slots.dtype}")
    if table.dim() != 2:
        raise ValueError(f"table must be (N, d), got {tuple(table.shape)}")
    devices = {str(x.device) for x in (slots, table, *others.values())}
    if len(devices) > 1:
        raise ValueError(f"slots, table, {', '.join(others)} must be on one device, got {sorted(devices)}")


def read(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """slots (T, R) int64, weights (T, R), table (N, d) float32/bfloat16 -> (T, d) float32,
    ``out[t] = sum_r weights[t, r] * table[slots[t, r]]``; a negative slot reads nothing. A float16
    table: ``reference.read``."""
    if table.dtype == torch.float16:
        return reference.read(slots, weights, table)
    _check_bags(slots, table, weights=weights)
    if weights.shape != slots.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must match slots {tuple(slots.shape)}")
    (T, R), d = slots.shape, table.shape[1]
    out = torch.empty(T, d, dtype=torch.float32, device=slots.device)
    if T == 0 or d == 0:
        return out
    if R == 0:
        return out.zero_()
    table = _unit_stride(table)
    bd = _block_d(d)
    _kernels().bag_read[(_cdiv(T, BLOCK_T), _cdiv(d, bd))](
        slots.contiguous(), weights.contiguous(), table, out, T, R, d, table.stride(0), BLOCK_T=BLOCK_T, BLOCK_D=bd
    )
    return out


def bag_weight_grad(slots: torch.Tensor, table: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """slots (T, R) int64, table (N, d), grad_out (T, d) float32/bfloat16 -> grad_weights (T, R) float32,
    ``grad_weights[t, r] = <table[slots[t, r]], grad_out[t]>`` (0 for a negative slot)."""
    _check_bags(slots, table, grad_out=grad_out)
    (T, R), d = slots.shape, table.shape[1]
    if grad_out.shape != (T, d):
        raise ValueError(f"grad_out {tuple(grad_out.shape)} must be (T, d) = {(T, d)}")
    grad_weights = torch.empty(T, R, dtype=torch.float32, device=slots.device)
    if T == 0 or R == 0:
        return grad_weights
    if d == 0:
        return grad_weights.zero_()
    table, grad_out = _unit_stride(table), _unit_stride(grad_out)
    _kernels().bag_weight_grad[(_cdiv(T, BLOCK_T), R)](
        slots.contiguous(),
        table,
        grad_out,
        grad_weights,
        T,
        R,
        d,
        table.stride(0),
        grad_out.stride(0),
        BLOCK_T=BLOCK_T,
        BLOCK_D=_block_d(d),
    )
    return grad_weights


def rows_grad(
    order: torch.Tensor,
    offsets: torch.Tensor,
    counts: torch.Tensor,
    weights_sorted: torch.Tensor,
    source: torch.Tensor,
    R: int,
) -> torch.Tensor:
    """The table gradient's nonzero rows from the reads sorted by slot.

    order (M,) int64: flat read index ``t * R + r`` of each sorted read; offsets, counts (U,) int64:
    segment u (one slot) is sorted reads ``offsets[u] : offsets[u] + counts[u]``; weights_sorted (M,)
    float32 = ``weights.flatten()[order]``; source (T, d) float32/bfloat16 (``grad_out``).
    Returns rows (U, d) float32, ``rows[u] = sum_{i in segment u} weights_sorted[i] * source[order[i] // R]``.
    Unchecked: its inputs are ``reference.sorted_reads``' (``read_backward``), well formed by construction.
    """
    U, d = offsets.shape[0], source.shape[1]
    rows = torch.empty(U, d, dtype=torch.float32, device=source.device)
    if U == 0 or d == 0:
        return rows
    source = _unit_stride(source)
    bd = _block_d(d)
    _kernels().rows_grad[(U, _cdiv(d, bd))](
        order.contiguous(),
        offsets.contiguous(),
        counts.contiguous(),
        weights_sorted.contiguous(),
        source,
        rows,
        R,
        d,
        source.stride(0),
        BLOCK_M=BLOCK_M,
        BLOCK_D=bd,
    )
    return rows


@torch.no_grad()
def row_adam(
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
    workspace=None,
) -> None:
    """Lazy Adam on ``rows`` only, in place, in float32: param (N, d) float32/bfloat16 (stored back in its
    dtype), exp_avg (N, d) float32, exp_avg_sq (N, d) float32 or (N,) float32 (row-wise: one second
    moment per row from the row's mean g^2, as FBGEMM's partial-rowwise Adam), rows (U,) int64 unique,
    grad (U, d) in param's dtype or float32, step the optimizer's step count after incrementing.
    ``p -= lr / (1 - beta1^step) * m / (sqrt(v / (1 - beta2^step)) + eps)``. No temporaries: no
    ``workspace``."""
    if param.dim() != 2 or param.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"param must be (N, d) float32/bfloat16/float16, got {tuple(param.shape)} {param.dtype}")
    N, d = param.shape
    if exp_avg.shape != (N, d) or exp_avg.dtype != torch.float32 or not exp_avg.is_contiguous():
        raise ValueError(f"exp_avg must be contiguous (N, d) = {(N, d)} float32, got {tuple(exp_avg.shape)} {exp_avg.dtype}")
    if exp_avg_sq.shape not in ((N, d), (N,)) or exp_avg_sq.dtype != torch.float32 or not exp_avg_sq.is_contiguous():
        raise ValueError(
            f"exp_avg_sq must be contiguous (N, d) or (N,) = {(N,)} float32, got {tuple(exp_avg_sq.shape)} {exp_avg_sq.dtype}"
        )
    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise ValueError(f"rows must be (U,) int64, got {tuple(rows.shape)} {rows.dtype}")
    U = rows.shape[0]
    if grad.shape != (U, d):
        raise ValueError(f"grad {tuple(grad.shape)} must be (U, d) = {(U, d)}")
    if param.stride(-1) != 1:
        raise ValueError(f"param must have unit column stride (updated in place), got strides {param.stride()}")
    if step < 1:
        raise ValueError(f"step={step} must be >= 1 (the step count after incrementing)")
    if U == 0 or d == 0:
        return
    grad = _unit_stride(grad)
    _kernels().row_adam[(_cdiv(U, BLOCK_U),)](
        param,
        exp_avg,
        exp_avg_sq,
        rows.contiguous(),
        grad,
        U,
        d,
        param.stride(0),
        grad.stride(0),
        lr / (1 - beta1**step),
        beta1,
        beta2,
        eps,
        1 / (1 - beta2**step),
        ROWWISE=exp_avg_sq.dim() == 1,
        BLOCK_U=BLOCK_U,
        BLOCK_D=_block_d(d),
    )


def read_backward(table, slots, weights, grad_out, workspace=None, needs=(True, True)):
    """``reference.read_backward`` by ``bag_weight_grad`` and ``rows_grad`` over the reads sorted by
    slot (a float16 table: the reference's)."""
    if table.dtype == torch.float16:
        return reference.read_backward(table, slots, weights, grad_out, workspace, needs)
    order, unique, offsets, counts = reference.sorted_reads(slots)
    grad_weights = rows = None
    if needs[0]:
        grad_weights = bag_weight_grad(slots, table, grad_out).to(weights.dtype)
    if needs[1]:
        weights_sorted = weights.flatten().index_select(0, order).float()
        rows = rows_grad(order, offsets, counts, weights_sorted, grad_out, slots.shape[1])
    return grad_weights, unique, rows
