"""The selective scan and its hand-written backward equal the per-timestep recurrence, values and the
gradients of every input, in float64; the earlier chunked autograd form does too."""

import pytest
import torch
import torch.nn.functional as F
from helpers.grad_match import assert_values_and_grads_match

from zoo.mixers.scan import CHUNK_ELEMENTS, selective_scan, selective_scan_sequential
from zoo.mixers.scan_chunked import selective_scan_chunked


def scan_inputs(batch, d_inner, d_state, length, dt_shift=-1.0, seed=0, dtype=torch.float64):
    """Every input of the scan, leaves that require grad: u, delta, z (batch, d_inner, L);
    A (d_inner, d_state) < 0; B, C (batch, d_state, L); D, delta_bias (d_inner,)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return dict(
        u=randn(batch, d_inner, length).requires_grad_(),
        delta=(randn(batch, d_inner, length) + dt_shift).requires_grad_(),
        A=(-torch.rand(d_inner, d_state, generator=gen, dtype=dtype) * 4 - 0.1).requires_grad_(),
        B=randn(batch, d_state, length).requires_grad_(),
        C=randn(batch, d_state, length).requires_grad_(),
        D=randn(d_inner).requires_grad_(),
        z=randn(batch, d_inner, length).requires_grad_(),
        delta_bias=(randn(d_inner) * 0.5).requires_grad_(),
    )


def recurrence_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t + D u_t, gated by silu(z): one step at
    a time, every op on a (batch, d_inner, d_state) slice (autograd through it stays linear in L).
    Returns y and the last state."""
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    out = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        out.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(out, dim=2)
    if D is not None:
        y = y + D[:, None] * u
    return (y if z is None else y * F.silu(z)), h


def outputs_and_grads(scan, inputs, **kwargs):
    """y, the last state, and the gradient of every input under fixed random output gradients."""
    y, last = scan(**inputs, **kwargs)
    gen = torch.Generator().manual_seed(1)
    grad_y = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    grad_last = torch.randn(last.shape, generator=gen, dtype=y.dtype)
    grads = torch.autograd.grad([y, last], list(inputs.values()), [grad_y, grad_last])
    return y.detach(), last.detach(), dict(zip(inputs, grads))


def assert_scan_matches_recurrence(inputs, atol, **kwargs):
    softplus = kwargs.pop("delta_softplus", True)
    got = outputs_and_grads(lambda **kw: selective_scan(**kw, delta_softplus=softplus, return_last_state=True, **kwargs), inputs)
    want = outputs_and_grads(lambda **kw: recurrence_loop(**kw, delta_softplus=softplus), inputs)
    assert (got[0] - want[0]).abs().max() <= atol, "y"
    assert (got[1] - want[1]).abs().max() <= atol, "last state"
    for name in inputs:
        assert got[2][name].shape == inputs[name].shape, name
        assert (got[2][name] - want[2][name]).abs().max() <= atol, f"grad of {name}"


@pytest.mark.parametrize("chunk_size, length", [(1, 7), (4, 13), (16, 37), (64, 37), (8, 64), (5, 5)])
def test_scan_and_backward_equal_the_recurrence_for_every_input(chunk_size, length):
    """Lengths that are not a multiple of the chunk, one-step chunks, a single chunk; y, the last
    state and the gradients of u, delta, A, B, C, D, z and delta_bias."""
    assert_scan_matches_recurrence(scan_inputs(2, 5, 3, length), atol=1e-10, chunk_size=chunk_size)


def test_scan_without_optional_inputs_or_softplus_equals_the_recurrence():
    inputs = {k: v for k, v in scan_inputs(2, 4, 3, 19, dt_shift=1.5).items() if k in "u delta A B C"}
    with torch.no_grad():
        inputs["delta"].abs_()  # dt used as given: keep it positive
    assert_scan_matches_recurrence(inputs, atol=1e-10, chunk_size=6, delta_softplus=False)


def test_strong_decay_chunks_stay_exact_in_float64_and_finite_in_float32():
    """dt ~ 40: exp(dt A) underflows towards 0 inside every chunk, the regime where forms that divide
    by the cumulative decay break down; the step-by-step recurrence has nothing to overflow."""
    assert_scan_matches_recurrence(scan_inputs(2, 4, 3, 50, dt_shift=40.0), atol=1e-9, chunk_size=16)
    inputs = {k: v.detach().float().requires_grad_() for k, v in scan_inputs(1, 4, 3, 50, dt_shift=40.0).items()}
    y = selective_scan(**inputs, delta_softplus=True, chunk_size=32)
    torch.testing.assert_close(y, recurrence_loop(**inputs)[0], rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(y.sum(), list(inputs.values())))


def test_3000_step_sequence_matches_the_sequential_reference_and_the_recurrences_gradients():
    inputs = scan_inputs(1, 4, 3, 3000, dt_shift=-2.0, seed=3)
    assert_scan_matches_recurrence(inputs, atol=1e-9, chunk_size=64)
    detached = {k: v.detach() for k, v in inputs.items()}
    y, last = selective_scan(**detached, delta_softplus=True, return_last_state=True)
    ref, ref_last = selective_scan_sequential(**detached, delta_softplus=True, return_last_state=True)
    assert (y - ref).abs().max() <= 1e-9 and (last - ref_last).abs().max() <= 1e-9


def test_input_layout_does_not_change_the_result():
    """The mixer hands over transposes of (batch, L, c) projections; the benchmark, contiguous
    (batch, c, L) tensors. Both give the same values and gradients."""
    inputs = scan_inputs(2, 6, 3, 11)
    as_mixer = {
        k: (v.detach().transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v.detach()) for k, v in inputs.items()
    }
    as_mixer = {k: v.requires_grad_() for k, v in as_mixer.items()}
    got = outputs_and_grads(
        lambda **kw: selective_scan(**kw, delta_softplus=True, return_last_state=True, chunk_size=4), as_mixer
    )
    want = outputs_and_grads(lambda **kw: selective_scan(**kw, delta_softplus=True, return_last_state=True, chunk_size=4), inputs)
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    for name in inputs:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=0, atol=1e-13)


def test_backward_keeps_chunk_start_states_not_every_state():
    """What autograd saves for the backward is the state entering each chunk plus (batch, c, L)
    tensors, each 1/d_state of a (batch, d_inner, L, d_state) one: the chunks are recomputed."""
    batch, d_inner, d_state, length, chunk = 2, 16, 16, 64, 16
    assert chunk * batch * d_inner * d_state <= CHUNK_ELEMENTS
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = selective_scan(**scan_inputs(batch, d_inner, d_state, length), delta_softplus=True, chunk_size=chunk)
    assert max(saved) == batch * d_inner * length == (length // chunk) * batch * d_inner * d_state
    y.sum().backward()


def test_autocast_does_not_lower_the_scan_precision():
    inputs = {k: v.detach().float() for k, v in scan_inputs(2, 8, 4, 20).items()}
    plain = selective_scan(**inputs, delta_softplus=True, chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = selective_scan(**inputs, delta_softplus=True, chunk_size=8)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size, length", [(1, 7), (16, 37), (8, 64)])
def test_chunked_autograd_scan_equals_recurrence_with_gradients(chunk_size, length):
    """The earlier path (the benchmark's baseline) stays exact too."""
    inputs = {k: v for k, v in scan_inputs(2, 5, 3, length).items() if k != "delta_bias"}
    y = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=chunk_size)
    assert_values_and_grads_match(y, recurrence_loop(**inputs)[0], inputs, atol=1e-9)


def test_chunked_autograd_scan_splits_strong_decay_chunks():
    inputs = {k: v.detach().float().requires_grad_() for k, v in scan_inputs(1, 4, 3, 50, dt_shift=40.0).items()}
    y = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=32)
    torch.testing.assert_close(y, recurrence_loop(**inputs)[0], rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(y.sum(), list(inputs.values())))


def test_delta_bias_is_added_before_softplus():
    inputs = {k: v.detach() for k, v in scan_inputs(1, 4, 2, 9).items() if k != "delta_bias"}
    bias = torch.randn(4, dtype=torch.float64)
    with_bias = selective_scan(**inputs, delta_bias=bias, delta_softplus=True, chunk_size=4)
    shifted = dict(inputs, delta=inputs["delta"] + bias[:, None])
    torch.testing.assert_close(with_bias, recurrence_loop(**shifted)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("scan", [selective_scan, selective_scan_chunked])
def test_bad_chunk_size_is_an_error(scan):
    with pytest.raises(ValueError, match=r"chunk_size=0 must be >= 1"):
        scan(**{k: v.detach() for k, v in scan_inputs(1, 2, 2, 3).items()}, chunk_size=0)


@pytest.mark.parametrize(
    "name, bad, message",
    [
        (
            "B",
            torch.zeros(2, 3),
            r"selective scan B has shape \(2, 3\); with u \(1, 2, 3\) and A \(2, 2\) it must be \(1, 2, 3\)",
        ),
        ("D", torch.zeros(3), r"selective scan D has shape \(3,\); .* it must be \(2,\)"),
        ("z", torch.zeros(1, 2, 4), r"selective scan z has shape \(1, 2, 4\); .* it must be \(1, 2, 3\)"),
        ("A", torch.zeros(2), r"needs u \(batch, d_inner, L\) and A \(d_inner, d_state\); got u \(1, 2, 3\), A \(2,\)"),
    ],
)
def test_bad_input_shapes_are_errors_naming_the_input(name, bad, message):
    inputs = {k: v.detach() for k, v in scan_inputs(1, 2, 2, 3).items()}
    inputs[name] = bad.double()
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)
