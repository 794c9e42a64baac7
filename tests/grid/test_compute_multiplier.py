"""The compute multiplier read off a synthetic dense curve with a known answer, its bounds off the
curve, and its errors."""

import math

import pytest

from zoo.grid.compute import Multiplier, compute_multiplier

# loss = 3.0 - 0.1 * log2(FLOPs / 1e12): 3.0, 2.9, 2.8, 2.7 at 1, 2, 4, 8 x 1e12 (given out of order)
CURVE = [(4e12, 2.8), (1e12, 3.0), (8e12, 2.7), (2e12, 2.9)]


@pytest.mark.parametrize(
    "loss,flops,expected",
    [
        (2.75, 2e12, 2**2.5 / 2),  # the dense model reaches 2.75 at 2^2.5 x 1e12 FLOPs: 2.83x the model's 2e12
        (2.9, 2e12, 1.0),  # exactly on the curve at the same budget
        (2.95, 4e12, 2**0.5 / 4),  # worse than a dense model with fewer FLOPs: a multiplier below 1
    ],
)
def test_multiplier_is_the_curves_flops_at_the_models_loss_over_its_flops(loss, flops, expected):
    result = compute_multiplier(CURVE, loss, flops)
    assert result.bound == "=" and result.value == pytest.approx(expected)


def test_off_the_curve_the_multiplier_is_a_bound():
    assert compute_multiplier(CURVE, 2.6, 2e12) == Multiplier(4.0, ">")  # beats 4x the budget: at least 4x
    assert str(compute_multiplier(CURVE, 2.6, 2e12)) == "> 4.00x"
    assert compute_multiplier(CURVE, 3.1, 2e12) == Multiplier(0.5, "<")  # loses to half the budget


def test_a_curve_that_turns_up_is_read_at_its_first_crossing():
    bumpy = [(1e12, 3.0), (2e12, 2.8), (4e12, 2.9), (8e12, 2.6)]
    assert compute_multiplier(bumpy, 2.9, 1e12).value == pytest.approx(2**0.5)


@pytest.mark.parametrize(
    "curve,loss,flops,match",
    [
        ([(1e12, 3.0)], 2.9, 1e12, r"at least two \(FLOPs, loss\) points, got 1"),
        ([(1e12, 3.0), (0.0, 2.9)], 2.9, 1e12, r"\(FLOPs, loss\) = \(0.0, 2.9\) must be finite, with FLOPs > 0"),
        (CURVE, math.nan, 1e12, r"\(FLOPs, loss\) = \(1000000000000.0, nan\) must be finite"),
    ],
)
def test_bad_curves_are_errors(curve, loss, flops, match):
    with pytest.raises(ValueError, match=match):
        compute_multiplier(curve, loss, flops)
