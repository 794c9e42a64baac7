"""Shared check for the mixer tests: a mixer's output at a position depends on no later position,
on its CPU path."""

import torch


def assert_causal_on_cpu(mixer: torch.nn.Module, d_model: int) -> None:
    """A float64 ``mixer`` of width ``d_model``: on a (1, 13, d_model) input whose positions 6..12
    are then redrawn, outputs 0..5 stay equal to 1e-12, later ones change, the output keeps the
    input's shape, and the PyTorch path (not a CUDA kernel) ran."""
    x = torch.randn(1, 13, d_model, dtype=torch.float64)
    changed = x.clone()
    changed[:, 6:] = torch.randn(1, 7, d_model, dtype=torch.float64)
    y, y_changed = mixer(x), mixer(changed)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :6], y_changed[:, :6], rtol=0, atol=1e-12)
    assert not torch.allclose(y[:, 6:], y_changed[:, 6:])
    assert mixer.uses_cuda_kernels(x) is False
