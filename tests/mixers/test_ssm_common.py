"""The SSM mixers' causal depthwise conv + SiLU equals torch's Conv1d followed by SiLU, values and
gradients, in float64."""

import pytest
import torch
import torch.nn.functional as F
from helpers.grad_match import assert_values_and_grads_match

from zoo.mixers.ssm_common import causal_conv_silu


@pytest.mark.parametrize("length", [1, 3, 4, 17])
@pytest.mark.parametrize("layout", ["batch_channels_length", "transposed_projection"])
@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv_silu_equals_conv1d_then_silu(length, layout, bias):
    """Sequences shorter than, as long as and longer than the 4 taps; x contiguous (B, C, L) or, as the
    mixers pass it, the transpose of half a (B, L, 2C) projection; with and without bias."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, bias=bias).double()
    if layout == "batch_channels_length":
        x = torch.randn(2, 6, length, dtype=torch.float64)
    else:
        x = torch.randn(2, length, 12, dtype=torch.float64)[..., :6].transpose(1, 2)
    x.requires_grad_()
    inputs = {"x": x, "weight": conv.weight} | ({"bias": conv.bias} if bias else {})
    y = causal_conv_silu(x, conv)
    assert y.shape == x.shape and (y.stride(1) == 1) == (x.stride(1) == 1)  # x's layout kept
    assert_values_and_grads_match(y, F.silu(conv(x)[..., :length]), inputs, atol=1e-12)
