"""MAD synthetic tasks: each generator against a loop-by-loop reference of its definition, determinism,
length extrapolation, the shipped configs, and size checks."""

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from zoo.tasks.mad import (
    CompressionDataModule,
    FuzzyInContextRecallDataModule,
    InContextRecallDataModule,
    MemorizationDataModule,
    NoisyInContextRecallDataModule,
    SelectiveCopyingDataModule,
    generate_compression,
    generate_fuzzy_icr,
    generate_icr,
    generate_memorization,
    generate_noisy_icr,
    generate_selective_copying,
    memorization_map,
)

IGNORE = -100
CONFIGS = Path(__file__).resolve().parents[2] / "zoo" / "configs" / "task"
MODULES = {
    "icr": InContextRecallDataModule,
    "fuzzy_icr": FuzzyInContextRecallDataModule,
    "noisy_icr": NoisyInContextRecallDataModule,
    "selective_copying": SelectiveCopyingDataModule,
    "compression": CompressionDataModule,
    "memorization": MemorizationDataModule,
}
RECALL = [InContextRecallDataModule, FuzzyInContextRecallDataModule, NoisyInContextRecallDataModule]


def pair_recall_reference(row: list[int], kv_vocab: int) -> list[int]:
    """Targets of ``k v k v ...`` (pairs of noise tokens >= kv_vocab skipped): a seen key's value at the key."""
    expected, seen = [IGNORE] * len(row), {}
    for t in range(0, len(row) - 1, 2):
        key, value = row[t], row[t + 1]
        assert (key >= kv_vocab) == (value >= kv_vocab), "a slot is a key/value pair or two noise tokens"
        if key >= kv_vocab:
            continue
        if key in seen:
            assert value == seen[key], "one value per key within an example"
            expected[t] = value
        seen[key] = value
    return expected


def split_runs(row: list[int], half: int) -> list[tuple[int, list[int]]]:
    """Row -> [(start, tokens)] of maximal runs of key tokens (< half) and value tokens (>= half)."""
    runs = []
    for t, token in enumerate(row):
        if runs and (token < half) == (runs[-1][1][0] < half):
            runs[-1][1].append(token)
        else:
            runs.append((t, [token]))
    return runs


def fuzzy_reference(row: list[int], half: int) -> tuple[list[int], set[int]]:
    """Expected targets but the last, and the values the last target may take (the sequence is cut there)."""
    runs = split_runs(row, half)
    assert runs[0][1][0] < half, "a sequence starts with a key motif"
    expected, seen, last = [IGNORE] * len(row), {}, {IGNORE}
    for (_, key), (value_start, value) in zip(runs[0::2], runs[1::2]):
        key, complete = tuple(key), value_start + len(value) < len(row)
        if key in seen:
            known = seen[key]
            assert value == known[: len(value)], "one value motif per key motif within an example"
            for j, token in enumerate(value):
                expected[value_start + j - 1] = token
            if not complete and len(value) < len(known):
                last = {known[len(value)]}
        elif complete:
            seen[key] = value
    if len(runs) % 2:  # the row ends inside a key motif: it may or may not be complete
        key = tuple(runs[-1][1])
        if key in seen:
            last = {IGNORE, seen[key][0]}
    return expected[:-1], last


def test_icr_scores_exactly_the_values_of_keys_seen_before():
    vocab, seq_len = 16, 64
    inputs, targets = generate_icr(300, vocab, seq_len, seed=1)
    assert inputs.shape == targets.shape == (300, seq_len) and inputs.dtype == targets.dtype == torch.long
    assert (inputs[:, 0::2] < vocab // 2).all() and (inputs[:, 1::2] >= vocab // 2).all() and (inputs < vocab).all()
    for row_in, row_tgt in zip(inputs.tolist(), targets.tolist()):
        assert row_tgt == pair_recall_reference(row_in, vocab)
    assert (targets != IGNORE).float().mean() > 0.3  # most keys repeat with 8 keys in 32 pairs


def test_fuzzy_icr_motifs_are_contiguous_multi_token_and_answers_are_earlier_values():
    vocab, seq_len, half = 16, 96, 8
    inputs, targets = generate_fuzzy_icr(300, vocab, seq_len, max_key_motif_size=3, max_value_motif_size=3, seed=2)
    assert inputs.shape == targets.shape == (300, seq_len) and (inputs >= 0).all() and (inputs < vocab).all()
    key_sizes, value_sizes = set(), set()
    for row_in, row_tgt in zip(inputs.tolist(), targets.tolist()):
        runs = split_runs(row_in, half)
        for _, motif in runs[:-1]:  # the last run may be cut by seq_len
            assert len(set(motif)) == len(motif), "a motif is distinct tokens"
            (key_sizes if motif[0] < half else value_sizes).add(len(motif))
        expected, last = fuzzy_reference(row_in, half)
        assert row_tgt[:-1] == expected
        assert row_tgt[-1] in last
    assert key_sizes == value_sizes == {1, 2, 3}
    scored = targets != IGNORE
    assert scored.any(1).float().mean() > 0.9


def test_fuzzy_icr_with_single_token_motifs_is_icr_layout():
    inputs, targets = generate_fuzzy_icr(50, 16, 32, max_key_motif_size=1, max_value_motif_size=1, seed=0)
    for row_in, row_tgt in zip(inputs.tolist(), targets.tolist()):
        assert row_tgt == pair_recall_reference(row_in, 16)


def test_noisy_icr_noise_is_separate_vocab_never_scored_and_never_a_key():
    vocab, noise_vocab, frac = 32, 16, 0.2
    kv = vocab - noise_vocab
    inputs, targets = generate_noisy_icr(400, vocab, 128, noise_vocab, frac, seed=3)
    assert (inputs < vocab).all()
    noise = inputs >= kv
    assert abs(noise.float().mean().item() - frac) < 0.03
    for row_in, row_tgt in zip(inputs.tolist(), targets.tolist()):
        assert row_tgt == pair_recall_reference(row_in, kv)  # noise pairs are skipped as keys
    scored = targets != IGNORE
    assert not (scored & noise).any()
    assert (targets[scored] >= kv // 2).all() and (targets[scored] < kv).all()
    # noise tokens cover the whole noise vocabulary and nothing of the key/value one
    assert set(inputs[noise].tolist()) == set(range(kv, vocab))


def test_selective_copying_targets_are_the_scattered_tokens_in_order():
    vocab, seq_len, m = 16, 64, 8
    blank, copy = vocab - 2, vocab - 1
    inputs, targets = generate_selective_copying(200, vocab, seq_len, m, seed=4)
    context = seq_len - m - 1
    for row_in, row_tgt in zip(inputs.tolist(), targets.tolist()):
        marked = [t for t in row_in[:context] if t != blank]
        assert len(marked) == m and copy not in marked
        assert row_in[context] == copy and row_in[context + 1 :] == [blank] * m
        assert row_tgt == [IGNORE] * (context + 1) + marked
    places = (inputs[:, :context] != blank).float().mean(0)
    assert (places > 0).all()  # tokens land everywhere in the context, not only at its start


def test_compression_queries_ask_every_position_once_and_targets_reproduce_the_sequence():
    vocab, seq_len = 20, 21
    m = (seq_len - 1) // 2
    symbols = vocab - 1 - m
    inputs, targets = generate_compression(200, vocab, seq_len, seed=5)
    assert (inputs[:, :m] < symbols).all() and (inputs[:, m] == symbols).all()
    asked = inputs[:, m + 1 :] - symbols - 1
    assert torch.equal(asked.sort(1).values, torch.arange(m).expand(200, m))
    assert (targets[:, : m + 1] == IGNORE).all()
    assert torch.equal(targets[:, m + 1 :], inputs.gather(1, asked))
    # in position order the answers are the sequence itself
    assert torch.equal(targets[:, m + 1 :].gather(1, asked.argsort(1)), inputs[:, :m])


def test_memorization_values_never_in_inputs_and_follow_one_fixed_map():
    vocab, seq_len = 64, 32
    values = memorization_map(vocab, map_seed=9)
    num_keys = (vocab - 1) // 2
    assert len(values) == num_keys and len(set(values.tolist())) == num_keys  # injective
    inputs, targets = generate_memorization(300, vocab, seq_len, map_seed=9, seed=6)
    assert (inputs[:, 0::2] < num_keys).all() and (inputs[:, 1::2] == vocab - 1).all()
    assert not set(inputs.unique().tolist()) & set(values.tolist())
    assert (targets[:, 0::2] == IGNORE).all()
    assert torch.equal(targets[:, 1::2], values[inputs[:, 0::2]])


def test_memorization_map_is_identical_across_splits_and_test_asks_trained_facts():
    dm = MemorizationDataModule(vocab_size=32, seq_len=16, map_seed=3, num_train=200, num_test=50, seed=1)
    dm.setup()
    facts = {}
    for split in ("train", "val", "test"):
        data = dm.datasets[split]
        keys, values = data.inputs[:, 0::2].flatten().tolist(), data.targets[:, 1::2].flatten().tolist()
        split_facts = dict(zip(keys, values))
        assert all(facts.get(k, v) == v for k, v in split_facts.items())
        if split != "train":
            assert set(split_facts) <= set(facts)  # every asked fact was stated in training
        facts.update(split_facts)
    assert not torch.equal(dm.datasets["train"].inputs[:50], dm.datasets["test"].inputs)


GENERATORS = [
    lambda seed: generate_icr(20, 16, 32, seed=seed),
    lambda seed: generate_fuzzy_icr(20, 16, 32, seed=seed),
    lambda seed: generate_noisy_icr(20, 32, 32, seed=seed),
    lambda seed: generate_selective_copying(20, 16, 40, 8, seed=seed),
    lambda seed: generate_compression(20, 20, 21, seed=seed),
    lambda seed: generate_memorization(20, 64, 16, seed=seed),
]


@pytest.mark.parametrize("generate", GENERATORS, ids=list(MODULES))
def test_same_seed_same_data_different_seed_different_data(generate):
    a, b, c = generate(7), generate(7), generate(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


SMALL = {
    InContextRecallDataModule: dict(seq_len=32),
    FuzzyInContextRecallDataModule: dict(seq_len=32),
    NoisyInContextRecallDataModule: dict(seq_len=32),
    SelectiveCopyingDataModule: dict(seq_len=40, num_tokens_to_copy=8),
    CompressionDataModule: dict(vocab_size=20, seq_len=21),
    MemorizationDataModule: dict(vocab_size=64, seq_len=16),
}


@pytest.mark.parametrize("cls", list(SMALL), ids=list(MODULES))
def test_datamodule_splits_deterministic_distinct_and_batched(cls):
    def make():
        dm = cls(**SMALL[cls], num_train=64, num_test=32, batch_size=16, seed=5)
        dm.setup()
        return dm

    a, b = make(), make()
    for split in ("train", "val", "test"):
        assert torch.equal(a.datasets[split].inputs, b.datasets[split].inputs)
        assert torch.equal(a.datasets[split].targets, b.datasets[split].targets)
    assert not torch.equal(a.datasets["train"].inputs[:32], a.datasets["test"].inputs)
    assert not torch.equal(a.datasets["val"].inputs, a.datasets["test"].inputs)
    batch = next(iter(a.train_dataloader()))
    assert batch["inputs"].shape == batch["targets"].shape == (16, a.datasets["train"].inputs.shape[1])
    assert torch.equal(batch["inputs"], next(iter(b.train_dataloader()))["inputs"])


@pytest.mark.parametrize("cls", RECALL, ids=["icr", "fuzzy_icr", "noisy_icr"])
def test_test_seq_len_changes_only_the_test_split(cls):
    def make(test_seq_len):
        dm = cls(seq_len=32, test_seq_len=test_seq_len, num_train=16, num_test=8, batch_size=8, seed=2)
        dm.setup()
        return dm

    same, longer = make(None), make(96)
    assert same.datasets["test"].inputs.shape == (8, 32)
    assert longer.datasets["test"].inputs.shape == longer.datasets["test"].targets.shape == (8, 96)
    for split in ("train", "val"):
        assert torch.equal(same.datasets[split].inputs, longer.datasets[split].inputs)
        assert torch.equal(same.datasets[split].targets, longer.datasets[split].targets)
    assert next(iter(longer.test_dataloader()))["inputs"].shape == (8, 96)
    assert (longer.datasets["test"].targets != IGNORE).any()


@pytest.mark.parametrize("name", list(MODULES))
def test_config_keys_are_the_constructor_arguments_and_vocab_size_covers_every_token(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert cfg.pop("name") == name
    assert set(cfg) == set(inspect.signature(MODULES[name]).parameters)
    assert cfg["seed"] == "${seed}"
    dm = MODULES[name](**{**cfg, "seed": 0, "num_train": 64, "num_test": 64})
    assert dm.vocab_size == cfg["vocab_size"]
    dm.setup()
    for split in ("train", "val", "test"):
        data = dm.datasets[split]
        assert data.inputs.min() >= 0 and data.inputs.max() < dm.vocab_size
        scored = data.targets[data.targets != IGNORE]
        assert len(scored) and scored.min() >= 0 and scored.max() < dm.vocab_size


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (InContextRecallDataModule, dict(seq_len=1), r"task\.seq_len=1 must be >= 2"),
        (InContextRecallDataModule, dict(vocab_size=1), r"task\.vocab_size=1 is too small.* must be >= 2"),
        (InContextRecallDataModule, dict(test_seq_len=1), r"task\.test_seq_len=1 must be >= 2 or null"),
        (InContextRecallDataModule, dict(num_train=0), r"task\.num_train=0 must be an integer >= 1"),
        (InContextRecallDataModule, dict(num_val=0), r"task\.num_val=0 must be an integer >= 1"),
        (InContextRecallDataModule, dict(batch_size=0), r"task\.batch_size=0 must be an integer >= 1"),
        (FuzzyInContextRecallDataModule, dict(max_key_motif_size=0), r"task\.max_key_motif_size=0 must be >= 1"),
        (FuzzyInContextRecallDataModule, dict(max_value_motif_size=0), r"task\.max_value_motif_size=0 must be >= 1"),
        (FuzzyInContextRecallDataModule, dict(vocab_size=8, max_key_motif_size=5), r"task\.vocab_size=8 .* >= 10"),
        (NoisyInContextRecallDataModule, dict(frac_noise=1.0), r"task\.frac_noise=1\.0 must be in \[0, 1\)"),
        (NoisyInContextRecallDataModule, dict(frac_noise=-0.1), r"task\.frac_noise=-0\.1 must be in \[0, 1\)"),
        (NoisyInContextRecallDataModule, dict(noise_vocab_size=0), r"task\.noise_vocab_size=0 must be >= 1 when"),
        (NoisyInContextRecallDataModule, dict(noise_vocab_size=-1), r"task\.noise_vocab_size=-1 must be >= 0"),
        (NoisyInContextRecallDataModule, dict(vocab_size=17), r"task\.vocab_size=17 is too small.* >= 18"),
        (SelectiveCopyingDataModule, dict(vocab_size=2), r"task\.vocab_size=2 must be >= 3"),
        (SelectiveCopyingDataModule, dict(num_tokens_to_copy=0), r"task\.num_tokens_to_copy=0 must be >= 1"),
        (SelectiveCopyingDataModule, dict(seq_len=33), r"task\.seq_len=33 .* need seq_len >= .* = 34"),
        (CompressionDataModule, dict(seq_len=32), r"task\.seq_len=32 must be odd"),
        (CompressionDataModule, dict(seq_len=1), r"task\.seq_len=1 must be odd and >= 3"),
        (CompressionDataModule, dict(vocab_size=33), r"task\.vocab_size=33 is too small for seq_len=63.* >= 34"),
        (MemorizationDataModule, dict(seq_len=31), r"task\.seq_len=31 must be even"),
        (MemorizationDataModule, dict(vocab_size=2), r"task\.vocab_size=2 must be >= 3"),
        (MemorizationDataModule, dict(num_test=0), r"task\.num_test=0 must be an integer >= 1"),
    ],
)
def test_impossible_sizes_raise_before_generation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "generate",
    [
        generate_icr,
        generate_fuzzy_icr,
        generate_noisy_icr,
        generate_selective_copying,
        generate_compression,
        generate_memorization,
    ],
)
def test_generators_refuse_zero_examples(generate):
    with pytest.raises(ValueError, match=r"number of examples=0 must be >= 1"):
        generate(0)
