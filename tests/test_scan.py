"""Chunked selective scan equals the per-timestep recurrence, values and gradients, in float64."""

import pytest
import torch
from grad_match import assert_values_and_grads_match

from zoo.mixers.scan import selective_scan, selective_scan_sequential


def scan_inputs(batch, d_inner, d_state, length, dt_shift=-1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return dict(
        u=randn(batch, d_inner, length).requires_grad_(),
        delta=(randn(batch, d_inner, length) + dt_shift).requires_grad_(),
        A=(-torch.rand(d_inner, d_state, generator=gen, dtype=torch.float64) * 4 - 0.1).requires_grad_(),
        B=randn(batch, d_state, length).requires_grad_(),
        C=randn(batch, d_state, length).requires_grad_(),
        D=randn(d_inner).requires_grad_(),
        z=randn(batch, d_inner, length).requires_grad_(),
    )


def recurrence_loop(u, delta, A, B, C, D, z):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t + D u_t, gated by silu(z): one step at a time."""
    dt = torch.nn.functional.softplus(delta)
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    out = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        out.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(out, dim=2) + D[:, None] * u
    return y * torch.nn.functional.silu(z)


@pytest.mark.parametrize("chunk_size, length", [(1, 7), (4, 13), (16, 37), (64, 37), (8, 64)])
def test_chunked_scan_equals_recurrence_with_gradients(chunk_size, length):
    inputs = scan_inputs(2, 5, 3, length)
    y = selective_scan(**inputs, delta_softplus=True, chunk_size=chunk_size)
    assert_values_and_grads_match(y, recurrence_loop(**inputs), inputs, atol=1e-9)


def test_strong_decay_chunk_stays_exact_and_finite():
    """dt so large that exp(-cumulative decay) would overflow float32: chunks split down to single steps."""
    inputs = {k: v.detach().float().requires_grad_() for k, v in scan_inputs(1, 4, 3, 50, dt_shift=40.0).items()}
    y = selective_scan(**inputs, delta_softplus=True, chunk_size=32)
    ref = recurrence_loop(**inputs)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(y.sum(), list(inputs.values()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_long_sequence_is_stable_and_matches_sequential_reference():
    inputs = {k: v.detach() for k, v in scan_inputs(1, 8, 4, 3000, dt_shift=-2.0, seed=3).items()}
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    ref, ref_last = selective_scan_sequential(**inputs, delta_softplus=True, return_last_state=True)
    assert torch.isfinite(y).all()
    assert (y - ref).abs().max() <= 1e-9 and (last - ref_last).abs().max() <= 1e-9


def test_delta_bias_is_added_before_softplus():
    inputs = {k: v.detach() for k, v in scan_inputs(1, 4, 2, 9).items()}
    bias = torch.randn(4, dtype=torch.float64)
    with_bias = selective_scan(**inputs, delta_bias=bias, delta_softplus=True, chunk_size=4)
    shifted = dict(inputs, delta=inputs["delta"] + bias[:, None])
    torch.testing.assert_close(with_bias, recurrence_loop(**shifted), rtol=0, atol=1e-12)


def test_bad_chunk_size_is_an_error():
    with pytest.raises(ValueError, match=r"chunk_size=0 must be >= 1"):
        selective_scan(**{k: v.detach() for k, v in scan_inputs(1, 2, 2, 3).items()}, chunk_size=0)
