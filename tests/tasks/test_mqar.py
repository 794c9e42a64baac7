"""MQAR generator: the properties of zoology's definition, determinism, and size checks."""

import pytest
import torch

from zoo.tasks.mqar import MQARDataModule, generate_mqar

IGNORE = -100


@pytest.fixture(scope="module")
def sample():
    vocab, seq_len, kv = 64, 48, 6
    inputs, targets = generate_mqar(200, vocab, seq_len, kv, power_a=0.01, random_non_queries=False, seed=3)
    return vocab, seq_len, kv, inputs, targets


def test_shapes_and_dtypes(sample):
    vocab, seq_len, kv, inputs, targets = sample
    assert inputs.shape == targets.shape == (200, seq_len)
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.min() >= 0 and inputs.max() < vocab


def test_keys_from_first_half_values_from_second_half_and_unique(sample):
    vocab, _, kv, inputs, _ = sample
    keys, values = inputs[:, 0 : 2 * kv : 2], inputs[:, 1 : 2 * kv : 2]
    assert ((keys >= 1) & (keys < vocab // 2)).all()
    assert ((values >= vocab // 2) & (values < vocab)).all()
    for row_keys, row_values in zip(keys.tolist(), values.tolist()):
        assert len(set(row_keys)) == kv
        assert len(set(row_values)) == kv


def test_every_key_queried_once_after_context_with_its_paired_value_as_target(sample):
    _, _, kv, inputs, targets = sample
    for row_in, row_tgt in zip(inputs.tolist(), targets.tolist()):
        pairs = dict(zip(row_in[0 : 2 * kv : 2], row_in[1 : 2 * kv : 2]))
        scored = [t for t, y in enumerate(row_tgt) if y != IGNORE]
        assert len(scored) == kv
        assert all(t >= 2 * kv for t in scored)
        queried = [row_in[t] for t in scored]
        assert sorted(queried) == sorted(pairs)  # each context key is queried exactly once
        for t in scored:
            assert row_tgt[t] == pairs[row_in[t]]


def test_targets_are_ignore_index_everywhere_but_queries(sample):
    _, _, kv, inputs, targets = sample
    scored = targets != IGNORE
    assert scored.sum(1).eq(kv).all()
    # without random fill, every non-query token after the context is the filler 0
    after = inputs[:, 2 * kv :]
    assert (after[~scored[:, 2 * kv :]] == 0).all()


def test_random_non_queries_fills_only_filler_positions():
    plain, targets = generate_mqar(50, 64, 48, 6, random_non_queries=False, seed=1)
    filled, targets2 = generate_mqar(50, 64, 48, 6, random_non_queries=True, seed=1)
    assert torch.equal(targets, targets2)
    kept = plain != 0
    assert torch.equal(filled[kept], plain[kept])
    assert (filled[~kept] != 0).float().mean() > 0.9


def test_power_law_favours_early_queries():
    _, targets = generate_mqar(2000, 256, 256, 4, power_a=0.01, random_non_queries=False, seed=0)
    pos = (targets != IGNORE).nonzero()[:, 1].float() - 8
    assert pos.median() < (256 - 8) / 4  # a uniform draw would put the median near the middle


def test_same_seed_same_data_different_seed_different_data():
    a = generate_mqar(20, 64, 32, 4, seed=7)
    b = generate_mqar(20, 64, 32, 4, seed=7)
    c = generate_mqar(20, 64, 32, 4, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_datamodule_splits_deterministic_and_train_differs_from_test():
    def make():
        dm = MQARDataModule(vocab_size=64, seq_len=32, num_kv_pairs=4, num_train=64, num_test=32, batch_size=16, seed=5)
        dm.setup()
        return dm

    a, b = make(), make()
    for split in ("train", "val", "test"):
        assert torch.equal(a.datasets[split].inputs, b.datasets[split].inputs)
    assert not torch.equal(a.datasets["train"].inputs[:32], a.datasets["test"].inputs)
    assert not torch.equal(a.datasets["val"].inputs, a.datasets["test"].inputs)
    batch = next(iter(a.train_dataloader()))
    assert set(batch) == {"inputs", "targets"}
    assert batch["inputs"].shape == batch["targets"].shape == (16, 32)
    order_a = next(iter(a.train_dataloader()))["inputs"]
    order_b = next(iter(b.train_dataloader()))["inputs"]
    assert torch.equal(order_a, order_b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_size=64, seq_len=15, num_kv_pairs=4), r"seq_len=15 .* need seq_len >= 4 \* num_kv_pairs = 16"),
        (dict(vocab_size=8, seq_len=64, num_kv_pairs=4), r"vocab_size=8 .* must be >= 10"),
        (dict(vocab_size=64, seq_len=64, num_kv_pairs=0), r"num_kv_pairs=0 must be >= 1"),
        (dict(vocab_size=64, seq_len=64, num_kv_pairs=4, power_a=0.0), r"power_a=0.0 must be a finite number > 0"),
        (dict(vocab_size=64, seq_len=64, num_kv_pairs=4, num_train=0), r"num_train=0 must be an integer >= 1"),
        (dict(vocab_size=64, seq_len=64, num_kv_pairs=4, batch_size=0), r"batch_size=0 must be an integer >= 1"),
    ],
)
def test_impossible_sizes_raise_before_generation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MQARDataModule(**kwargs)


def test_test_split_can_be_longer_with_more_pairs_for_extrapolation():
    dm = MQARDataModule(
        vocab_size=64, seq_len=32, num_kv_pairs=4, test_seq_len=64, test_num_kv_pairs=8, num_train=16, num_test=8, batch_size=4
    )
    dm.setup()
    assert dm.datasets["train"].inputs.shape == (16, 32) and dm.datasets["val"].inputs.shape == (8, 32)
    test_targets = dm.datasets["test"].targets
    assert test_targets.shape == (8, 64) and ((test_targets != IGNORE).sum(1) == 8).all()


def test_impossible_test_split_sizes_name_the_test_fields():
    with pytest.raises(ValueError, match=r"test split \(task.test_seq_len / task.test_num_kv_pairs\): task.seq_len=20"):
        MQARDataModule(vocab_size=64, seq_len=32, num_kv_pairs=4, test_seq_len=20, test_num_kv_pairs=8)
