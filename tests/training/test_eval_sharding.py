"""Data-parallel evaluation counts every example exactly once: ranks read disjoint examples, the
shorter ones padded with rows whose targets are all ignored."""

import torch

from zoo.model import ModelConfig
from zoo.tasks.base import IGNORE_INDEX, EvalShardSampler, IgnoredPadding, TokenDataset
from zoo.training.lit import LitLanguageModel
from zoo.training.optim import OptimConfig


def test_ranks_read_every_example_once_and_padding_is_never_scored():
    n, world = 13, 4
    data = IgnoredPadding(TokenDataset(torch.arange(n * 3).view(n, 3), torch.arange(n * 3).view(n, 3)))
    per_rank = [list(EvalShardSampler(data, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # the same number of batches on every rank
    real = sorted(i for p in per_rank for i in p if i < n)
    assert real == list(range(n))  # each example once (DistributedSampler would repeat 3 of them)
    padding = [i for p in per_rank for i in p if i >= n]
    assert len(padding) == 16 - n and all((data[i]["targets"] == IGNORE_INDEX).all() for i in padding)


def test_a_batch_of_padding_only_gives_a_finite_zero_loss():
    module = LitLanguageModel(
        ModelConfig(vocab_size=8, d_model=8, n_layers=1, mixer={"attention": {"num_heads": 2}}), OptimConfig(lr=1e-3)
    )
    batch = {"inputs": torch.zeros(2, 4, dtype=torch.long), "targets": torch.full((2, 4), IGNORE_INDEX)}
    loss = module._shared_step(batch, "test")
    assert torch.isfinite(loss) and loss.item() == 0.0
