"""Selective scan (Mamba's S6 recurrence) in pure PyTorch, with mamba-ssm's argument convention.

    h_t = exp(dt_t * A) h_{t-1} + dt_t * B_t * u_t        h: (batch, d_inner, d_state)
    y_t = C_t . h_t + D * u_t                               optionally times silu(z_t)

``selective_scan`` is the path the Mamba mixer runs on CPU (and on GPU without mamba-ssm): the
recurrence step by step, with a hand-written backward that recomputes the states chunk by chunk
instead of keeping them. ``selective_scan_sequential`` is the one-step-at-a-time reference the tests
and the benchmark compare it against, written the way mamba-ssm's ``selective_scan_ref`` is
(``zoo.mixers.scan_chunked`` holds the earlier chunked parallel form, the benchmark's baseline).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

LOG2_E = math.log2(math.e)
# cap on batch * d_inner * T * d_state in one chunk's buffers (4 MiB fp32): the backward's passes
# over its four buffers then stay in cache; measured on a 2-core EPYC, smaller and larger are slower
CHUNK_ELEMENTS = 1 << 20


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y, u, D, z):
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Reference: precomputed exp(dt A) and dt B u, then a loop over every timestep.

    u, delta, z: (batch, d_inner, L); A: (d_inner, d_state); B, C: (batch, d_state, L);
    D, delta_bias: (d_inner,). Returns y (batch, d_inner, L) [and the last state (batch, d_inner, d_state)].
    """
    delta = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    drive = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + drive[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = _finish(torch.stack(ys, dim=2), u, D, z)
    return (y, state) if return_last_state else y


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"selective scan chunk_size={chunk_size} must be >= 1")


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """The shapes ``selective_scan`` takes: u, delta, z (batch, d_inner, L); A (d_inner, d_state);
    B, C (batch, d_state, L) (time-varying, one group); D, delta_bias (d_inner,)."""
    if u.dim() != 3 or A.dim() != 2:
        raise ValueError(
            f"selective scan needs u (batch, d_inner, L) and A (d_inner, d_state); got u {tuple(u.shape)}, A {tuple(A.shape)}"
        )
    (batch, d_inner, length), d_state = u.shape, A.shape[1]
    expected = {
        "delta": (batch, d_inner, length),
        "A": (d_inner, d_state),
        "B": (batch, d_state, length),
        "C": (batch, d_state, length),
        "D": (d_inner,),
        "z": (batch, d_inner, length),
        "delta_bias": (d_inner,),
    }
    given = {"delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, tensor in given.items():
        if tensor is not None and tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"selective scan {name} has shape {tuple(tensor.shape)}; with u {tuple(u.shape)} "
                f"and A {tuple(A.shape)} it must be {expected[name]}"
            )


def _no_autocast(device_type: str):
    """Autocast off (where the device has it): a bf16 bmm under autocast would round the states."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _steps(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, c, L) -> (L, batch, c) with unit stride along c, a copy only where x lacks one: one
    step is then a slice, and every elementwise pass runs along contiguous rows."""
    x = x.to(dtype).permute(2, 0, 1)
    return x if x.stride(-1) == 1 else x.contiguous()


def _new_steps(like: torch.Tensor, length: int, batch: int, channels: int) -> torch.Tensor:
    """Uninitialised (L, batch, c) view of a (batch, L, c) tensor: handed back as (batch, c, L), it
    is the transpose of a contiguous (batch, L, c) tensor, the layout the Mamba mixer works in."""
    return like.new_empty(batch, length, channels).transpose(0, 1)


def _fill_chunk(dt, dtu, B, A2_t, h0, decay, drive, states) -> None:
    """The k steps of one chunk: decay = exp(dt A), drive = dt u B, and the state after every step.

    dt, dtu: (k, batch, d_inner); B: (k, batch, d_state); A2_t: A log2(e) as (d_state, d_inner);
    h0: (batch, d_state, d_inner), the state before the chunk. Written in place: decay, drive and
    states, each (k, batch, d_state, d_inner), with states[t] = decay[t] states[t - 1] + drive[t].
    """
    # exp(x) as exp2(x log2 e): torch's float exp2 runs 3-4x faster than its exp on CPU, and the
    # decay differs by a few float roundings only
    torch.mul(dt.unsqueeze(2), A2_t, out=decay).exp2_()
    torch.mul(B.unsqueeze(3), dtu.unsqueeze(2), out=drive)
    prev = (h0, *states.unbind(0))  # views made once: per-step indexing costs more than a small step
    for t, (dec, x) in enumerate(zip(decay.unbind(0), drive.unbind(0))):
        torch.addcmul(x, dec, prev[t], out=prev[t + 1])


class _SelectiveScan(torch.autograd.Function):
    """``selective_scan`` as one autograd node. Forward keeps only the state entering every chunk;
    backward recomputes a chunk's states from it, runs the adjoint recurrence backwards in time
    (lam_t = C_t gy_t + exp(dt_{t+1} A) lam_{t+1}) and reads every gradient off the chunk.

    Internal layout: (L, batch, ...) for per-step tensors and (T, batch, d_state, d_inner) for a
    chunk, so a step is one contiguous block and d_inner (the widest axis) is the innermost."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        work = u.dtype
        for t in (delta, A, B, C, D, z, delta_bias):
            work = work if t is None else torch.promote_types(work, t.dtype)
        with _no_autocast(u.device.type):
            (batch, d_inner, length), d_state = u.shape, A.shape[1]
            u_s, b_s, c_s = _steps(u, work), _steps(B, work), _steps(C, work)
            pre = _steps(delta, work)
            if delta_bias is not None:
                pre = pre + delta_bias.to(work)
            dt = F.softplus(pre) if delta_softplus else pre
            A_t = A.to(work).t().contiguous()  # (d_state, d_inner)
            steps = min(chunk_size, max(1, CHUNK_ELEMENTS // (batch * d_state * d_inner)))
            starts = u.new_empty(math.ceil(length / steps), batch, d_state, d_inner, dtype=work)
            decay, drive, states = (u.new_empty(steps, batch, d_state, d_inner, dtype=work) for _ in range(3))
            y = _new_steps(dt, length, batch, d_inner)
            state = u.new_zeros(batch, d_state, d_inner, dtype=work)
            dtu = dt * u_s
            for i, begin in enumerate(range(0, length, steps)):
                part = slice(begin, min(begin + steps, length))
                k = part.stop - begin
                starts[i] = state
                _fill_chunk(dt[part], dtu[part], b_s[part], A_t * LOG2_E, starts[i], decay[:k], drive[:k], states[:k])
                y[part] = torch.bmm(c_s[part].reshape(k * batch, 1, d_state), states[:k].view(k * batch, d_state, d_inner)).view(
                    k, batch, d_inner
                )
                state = states[k - 1]
            last = state.transpose(1, 2).clone()  # (batch, d_inner, d_state)
            if D is not None:
                y.addcmul_(u_s, D.to(work))
            gated = y
            if z is not None:
                z = _steps(z, work)
                gated = y * F.silu(z)
        ctx.save_for_backward(u_s, b_s, c_s, pre, dt, A_t, D, z, y, starts)
        ctx.delta_softplus, ctx.steps, ctx.has_bias = delta_softplus, steps, delta_bias is not None
        return gated.permute(1, 2, 0), last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):
        u_s, b_s, c_s, pre, dt, A_t, D, z, y, starts = ctx.saved_tensors
        work = u_s.dtype
        with _no_autocast(u_s.device.type):
            grad_y = _steps(grad_y, work)
            grad_z = None
            if z is not None:
                grad_z = torch.ops.aten.silu_backward(grad_y * y, z)
                grad_y = grad_y * F.silu(z)
            grad_dtu, grad_dt, grad_A, grad_B, grad_C = _scan_backward(
                grad_y, grad_last.transpose(1, 2).to(work), u_s, b_s, c_s, dt, A_t, starts, ctx.steps
            )
            grad_u = grad_dtu * dt
            grad_D = None
            if D is not None:
                grad_u.addcmul_(grad_y, D.to(work))
                grad_D = (grad_y * u_s).sum((0, 1))
            grad_dt.addcmul_(grad_dtu, u_s)
            if ctx.delta_softplus:
                grad_dt = torch.ops.aten.softplus_backward(grad_dt, pre, 1.0, 20.0)  # F.softplus's defaults
            grad_bias = grad_dt.sum((0, 1)) if ctx.has_bias else None

        def unsteps(g):  # (L, batch, c) -> (batch, c, L)
            return None if g is None else g.permute(1, 2, 0)

        return (
            unsteps(grad_u),
            unsteps(grad_dt),
            grad_A.t(),
            unsteps(grad_B),
            unsteps(grad_C),
            grad_D,
            unsteps(grad_z),
            grad_bias,
            None,
            None,
        )


def _scan_backward(grad_y, grad_last, u_s, b_s, c_s, dt, A_t, starts, steps):
    """Gradients of the core scan y_t = C_t . h_t, chunk by chunk from the last.

    grad_y: (L, batch, d_inner), the gradient reaching C_t . h_t; grad_last: (batch, d_state,
    d_inner), that of the last state; A_t: A as (d_state, d_inner). Returns the gradients of dt u
    (L, batch, d_inner), of dt through the decay (L, batch, d_inner), of A_t (d_state, d_inner),
    and of B and C (L, batch, d_state).
    """
    length, batch, d_inner = grad_y.shape
    d_state, A2_t = A_t.shape[0], A_t * LOG2_E
    dtu = dt * u_s
    decay, lam, scaled, states = (dt.new_empty(steps, batch, d_state, d_inner) for _ in range(4))
    grad_dtu, grad_dt = _new_steps(dt, length, batch, d_inner), _new_steps(dt, length, batch, d_inner)
    grad_B, grad_C = _new_steps(dt, length, batch, d_state), _new_steps(dt, length, batch, d_state)
    grad_A = dt.new_zeros(d_state, d_inner)
    carry = grad_last  # gradient of the state at the end of the chunk, from everything after it
    for i in reversed(range(starts.shape[0])):
        begin = i * steps
        part = slice(begin, min(begin + steps, length))
        k = part.stop - begin
        dec, lam_k, scaled_k, states_k, h0 = decay[:k], lam[:k], scaled[:k], states[:k], starts[i]
        _fill_chunk(dt[part], dtu[part], b_s[part], A2_t, h0, dec, lam_k, states_k)
        gy, c_k = grad_y[part], c_s[part]
        # lam_t = C_t gy_t + scaled_{t+1}, where scaled_t = exp(dt_t A) lam_t is the gradient of h_{t-1}
        # (lam_k first holds the drive, which the recomputed states no longer need); the carry into
        # the previous chunk is scaled_k[0], left untouched below
        for t in reversed(range(k)):
            torch.addcmul(carry, c_k[t].unsqueeze(2), gy[t].unsqueeze(1), out=lam_k[t])
            carry = torch.mul(dec[t], lam_k[t], out=scaled_k[t])
        grad_dtu[part] = torch.bmm(b_s[part].reshape(k * batch, 1, d_state), lam_k.view(k * batch, d_state, d_inner)).view(
            k, batch, d_inner
        )
        work = dec  # the decay is spent: its buffer takes the products that are summed at once
        grad_B[part] = torch.mul(lam_k, dtu[part].unsqueeze(2), out=work).sum(3)
        grad_C[part] = torch.mul(states_k, gy.unsqueeze(2), out=work).sum(3)
        # gradient of dt_t A in h_t = exp(dt_t A) h_{t-1} + ...: scaled_t h_{t-1} (into lam's buffer)
        log_grad = lam_k
        torch.mul(scaled_k[0], h0, out=log_grad[0])
        torch.mul(scaled_k[1:], states_k[:-1], out=log_grad[1:])
        grad_A += torch.mul(log_grad, dt[part].unsqueeze(2), out=work).sum((0, 1))
        grad_dt[part] = log_grad.mul_(A_t).sum(2)
    return grad_dtu, grad_dt, grad_A, grad_B, grad_C


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    chunk_size=64,
):
    """Selective scan with a hand-written backward; same arguments and result as
    ``selective_scan_sequential`` (and as mamba-ssm's ``selective_scan_fn``).

    u, delta, z: (batch, d_inner, L); A: (d_inner, d_state); B, C: (batch, d_state, L);
    D, delta_bias: (d_inner,). Returns y (batch, d_inner, L) [and the last state (batch, d_inner,
    d_state)]. Forward runs the recurrence step by step (one multiply-add pass over the
    (batch, d_state, d_inner) state per step: fewer passes over memory than a parallel form) and
    keeps only the state entering each chunk of at most ``chunk_size`` steps (fewer where
    ``CHUNK_ELEMENTS`` says so); backward recomputes one chunk at a time, so what it keeps is
    O(L / chunk) states plus a few (batch, d_inner, L) tensors.
    """
    _check_chunk_size(chunk_size)
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    y, last = _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    return (y, last) if return_last_state else y
