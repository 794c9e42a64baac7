"""Sliding-window attention against a per-token loop over the window, in float64."""

import pytest
import torch

from zoo.mixers.attention import Attention
from zoo.mixers.sliding_window import SlidingWindowAttention


def windowed_reference(mixer: SlidingWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """x (B, L, D) -> (B, L, D): for each t, an explicit softmax over positions t - window + 1 .. t."""
    batch, length, d_model = x.shape
    h, hd = mixer.num_heads, mixer.head_dim
    q, k, v = mixer.qkv(x).view(batch, length, 3, h, hd).permute(2, 0, 3, 1, 4)
    q, k = mixer.rotary(q), mixer.rotary(k)
    outputs = []
    for t in range(length):
        lo = max(0, t - mixer.window + 1)
        scores = torch.einsum("bhd,bhsd->bhs", q[:, :, t], k[:, :, lo : t + 1]) / hd**0.5
        outputs.append(torch.einsum("bhs,bhsd->bhd", scores.softmax(-1), v[:, :, lo : t + 1]))
    y = torch.stack(outputs, dim=2)  # (B, H, L, hd)
    return mixer.out_proj(y.transpose(1, 2).reshape(batch, length, d_model))


@pytest.mark.parametrize("window,length", [(1, 9), (4, 16), (5, 23), (8, 8), (16, 7)])
def test_the_banded_forward_equals_a_per_token_window_loop_in_values_and_gradients(window, length):
    torch.manual_seed(0)
    mixer = SlidingWindowAttention(16, window=window, num_heads=2).double()
    x = torch.randn(2, length, 16, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, length, 16, dtype=torch.float64)
    y = mixer(x)
    grads = torch.autograd.grad(y, [x, *mixer.parameters()], grad_out)
    reference = windowed_reference(mixer, x)
    reference_grads = torch.autograd.grad(reference, [x, *mixer.parameters()], grad_out)
    torch.testing.assert_close(y, reference, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_steps_through_a_ring_buffer_shorter_than_the_sequence_equal_the_forward():
    torch.manual_seed(0)
    mixer = SlidingWindowAttention(16, window=5, num_heads=2).double()
    x = torch.randn(3, 19, 16, dtype=torch.float64)
    cache = mixer.allocate_cache(3, 19)
    assert cache.keys.shape[2] == 5  # the cache holds only the window
    steps = torch.stack([mixer.step(x[:, t], cache)[0] for t in range(19)], dim=1)
    torch.testing.assert_close(steps, mixer(x), rtol=1e-10, atol=1e-12)
    assert mixer.state_size(19) == mixer.state_size(5) < Attention(16, num_heads=2).double().state_size(19)


def test_a_window_as_long_as_the_sequence_is_plain_attention_with_the_same_state_dict():
    torch.manual_seed(0)
    full = Attention(16, num_heads=2).double()
    windowed = SlidingWindowAttention(16, window=12, num_heads=2).double()
    windowed.load_state_dict(full.state_dict())
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    torch.testing.assert_close(windowed(x), full(x))


def test_long_sequences_stay_finite_and_match_the_loop():
    torch.manual_seed(0)
    mixer = SlidingWindowAttention(8, window=32, num_heads=2).double()
    x = torch.randn(1, 2048, 8, dtype=torch.float64) * 3
    y = mixer(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:, -64:], windowed_reference(mixer, x)[:, -64:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("window", [0, -3, 2.5])
def test_a_bad_window_is_named(window):
    with pytest.raises(ValueError, match=rf"sliding_window window={window!r} must be a positive integer"):
        SlidingWindowAttention(16, window=window)
