"""The earlier CPU selective scan: a chunked parallel form, differentiated by autograd.

Kept as the baseline ``scripts/bench_scan.py`` times ``zoo.mixers.scan.selective_scan`` against
(the path the Mamba mixer ran before the scan had its own backward), and as a second independent
check of the reference in the tests.
"""

from __future__ import annotations

import torch

from zoo.mixers.scan import _check_chunk_size, _finish, _prepare

CHUNK_ELEMENTS = 1 << 21  # cap on batch * d_inner * T * d_state in one chunk (8 MiB fp32)

# Largest in-chunk log decay whose exp(-S) the fast chunk form may form (beyond it the chunk is split).
_SAFE_LOG_RANGE = {torch.float64: 600.0, torch.float32: 60.0}


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


def selective_scan_chunked(
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
    """Chunked parallel selective scan differentiated by autograd: parallel inside chunks of at most
    ``chunk_size`` steps, a loop over chunks carrying the state. A must be negative (as Mamba's
    -exp(A_log) is). Autograd keeps every chunk's (batch, d_inner, T, d_state) intermediates for
    the backward; ``zoo.mixers.scan.selective_scan`` is the faster path with the same result.

    Chunks are also cut so that one chunk's (batch, d_inner, T, d_state) tensors hold at most
    ``CHUNK_ELEMENTS`` numbers: every pass over them then runs from cache, which on CPU is worth
    several times the speed of a larger chunk. Same arguments and result as ``selective_scan_sequential`` (and as
    mamba-ssm's ``selective_scan_fn``)."""
    _check_chunk_size(chunk_size)
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
