"""Selective scan (Mamba's S6 recurrence) in pure PyTorch, with mamba-ssm's argument convention.

    h_t = exp(dt_t * A) h_{t-1} + dt_t * B_t * u_t        h: (batch, d_inner, d_state)
    y_t = C_t . h_t + D * u_t                               optionally times silu(z_t)

``selective_scan`` is the chunked parallel form used on CPU (and on GPU without mamba-ssm);
``selective_scan_sequential`` is the one-step-at-a-time reference the tests and benchmark compare
against, written the way mamba-ssm's ``selective_scan_ref`` is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 21  # cap on batch * d_inner * T * d_state in one chunk (8 MiB fp32)

# Largest in-chunk log decay whose exp(-S) the fast chunk form may form (beyond it the chunk is split).
_SAFE_LOG_RANGE = {torch.float64: 600.0, torch.float32: 60.0}


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


def selective_scan_sequential(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
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


def _chunk(dt, A, drive, state, safe_range):
    """dt: (b, d, T) > 0; A: (d, n) < 0; drive: (b, d, T, n); state: (b, d, n) -> the state after
    every step, (b, d, T, n).

    Fast form h_t = exp(S_t) (h0 + sum_{s<=t} exp(-S_s) x_s), with the in-chunk cumulative log decay
    S_t = A * sum_{s<=t} dt_s (a cumsum over (b, d, T) only). exp(-S) must stay finite, so a chunk
    that decays by more than ``safe_range`` is split in two halves run one after the other (down to
    single steps, which need no exp(-S)); every number the scan forms is then bounded.
    """
    length = dt.shape[2]
    if length == 1:
        return (torch.exp(dt[:, :, 0, None] * A) * state + drive[:, :, 0]).unsqueeze(2)
    dt_sum = dt.cumsum(2)  # (b, d, T)
    if (dt_sum[:, :, -1].detach() * -A.detach().min(dim=1).values).max() <= safe_range:
        cum = dt_sum.unsqueeze(-1) * A[:, None]  # (b, d, T, n)
        return torch.exp(cum) * (state.unsqueeze(2) + (torch.exp(-cum) * drive).cumsum(2))
    half = length // 2
    first = _chunk(dt[:, :, :half], A, drive[:, :, :half], state, safe_range)
    second = _chunk(dt[:, :, half:], A, drive[:, :, half:], first[:, :, -1], safe_range)
    return torch.cat([first, second], dim=2)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, chunk_size=64,
):
    """Chunked parallel selective scan: parallel inside chunks of at most ``chunk_size`` steps, a
    loop over chunks carrying the state. A must be negative (as Mamba's -exp(A_log) is).

    Chunks are also cut so that one chunk's (batch, d_inner, T, d_state) tensors hold at most
    ``CHUNK_ELEMENTS`` numbers: every pass over them then runs from cache, which on CPU is worth
    several times the speed of a larger chunk. Same arguments and result as ``selective_scan_sequential`` (and as
    mamba-ssm's ``selective_scan_fn``)."""
    if chunk_size < 1:
        raise ValueError(f"selective scan chunk_size={chunk_size} must be >= 1")
    delta = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    safe_range = _SAFE_LOG_RANGE.get(u.dtype, 30.0)
    b_t, c_t = B.transpose(1, 2), C.transpose(1, 2)  # (batch, L, d_state)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    chunk_size = min(chunk_size, max(1, CHUNK_ELEMENTS // state.numel()))
    ys = []
    for start in range(0, u.shape[2], chunk_size):
        part = slice(start, start + chunk_size)
        dt = delta[:, :, part]
        drive = (dt * u[:, :, part]).unsqueeze(-1) * b_t[:, None, part]  # (batch, d_inner, T, d_state)
        states = _chunk(dt, A, drive, state, safe_range)
        ys.append((states * c_t[:, None, part]).sum(-1))
        state = states[:, :, -1]
    y = _finish(torch.cat(ys, dim=2), u, D, z)
    return (y, state) if return_last_state else y
