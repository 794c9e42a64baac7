"""Usage fraction and KL-from-uniform on hand-made access patterns."""

import math

import pytest
import torch

from zoo.memory.usage import UsageTracker, kl_from_uniform, usage_fraction


def test_usage_and_kl_on_a_hand_made_pattern():
    tracker = UsageTracker()
    tracker.update(torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]), n_slots=4)  # inactive: ignored
    assert tracker.counts is None
    tracker.start()
    tracker.update(torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0.5, 0.5], [0.9, 0.1]]), n_slots=4)
    tracker.update(torch.tensor([[1, 0]]), torch.tensor([[1.0, 0.0]]), n_slots=4)
    tracker.stop()
    assert tracker.counts.tolist() == [2, 3, 1, 0]
    torch.testing.assert_close(tracker.mass, torch.tensor([0.5, 2.4, 0.1, 0.0], dtype=torch.float64))
    assert usage_fraction(tracker.counts) == 0.75
    p = [0.5 / 3, 2.4 / 3, 0.1 / 3]
    assert kl_from_uniform(tracker.mass) == pytest.approx(math.log(4) + sum(x * math.log(x) for x in p))


def test_kl_is_zero_for_uniform_and_log_n_for_one_slot():
    assert kl_from_uniform(torch.ones(8)) == pytest.approx(0.0, abs=1e-12)
    assert kl_from_uniform(torch.tensor([0.0, 3.0, 0.0, 0.0])) == pytest.approx(math.log(4))
    assert math.isnan(kl_from_uniform(torch.zeros(4)))
    assert usage_fraction(torch.tensor([0, 0, 5, 1])) == 0.5
