"""Every registered task answers the declared interface, and the synthetic-task base owns splits,
seeds and options: a new task is a knob dataclass, a generator and one class statement."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
import yaml

from zoo.tasks import TASKS, build_datamodule
from zoo.tasks.base import IGNORE_INDEX, SyntheticDataModule

CONFIGS = Path(__file__).resolve().parents[2] / "zoo" / "configs" / "task"
SMALL = {"facts": {"num_train": 250}, "lm": {"max_bytes": 100_000}}  # the rest: num_train / num_test below


def shipped(name: str, **override) -> dict:
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    small = SMALL.get(name, {"num_train": 48, "num_test": 24})
    return {**cfg, "seed": 1, "batch_size": 8, **small, **override}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_serves_in_vocabulary_long_batches_and_declares_bytes_and_summary(name):
    dm = build_datamodule(shipped(name))
    dm.setup()
    assert isinstance(dm.vocab_size, int) and dm.vocab_size > 1
    for split in dm.splits:
        data = dm.datasets[split]
        assert data.inputs.dtype == data.targets.dtype == torch.long and data.inputs.shape == data.targets.shape
        assert data.inputs.min() >= 0 and data.inputs.max() < dm.vocab_size
        scored = data.targets[data.targets != IGNORE_INDEX]
        assert len(scored) and scored.min() >= 0 and scored.max() < dm.vocab_size
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"inputs", "targets"} and batch["inputs"].shape == (dm.batch_size, dm.datasets["train"].inputs.shape[1])
    if dm.bytes_per_token is not None:  # text tasks only
        assert set(dm.bytes_per_token) == set(dm.splits) and all(b > 0 for b in dm.bytes_per_token.values())
    run_metrics = {
        "test": {"test/acc": 0.5, "test/loss": 1.0, "test/knowledge_bits": 3.0},
        "params": {"total": 100, "channel": 40},
        "flops_per_token": 1000,
        "steps": 10,
        "world_size": 1,
    }
    summary = dm.summarize(run_metrics)
    assert isinstance(summary, dict) and all(isinstance(v, (int, float)) for v in summary.values())


@pytest.mark.parametrize("name", sorted(n for n, cls in TASKS.items() if issubclass(cls, SyntheticDataModule)))
def test_synthetic_split_s_is_the_generator_at_seed_three_seed_plus_offset(name):
    dm = build_datamodule(shipped(name, seed=4))
    dm.setup()
    for offset, split in enumerate(("train", "val", "test")):
        knobs = dataclasses.asdict(dm.knobs)
        inputs, targets = type(dm).generator(dm.sizes[split], **knobs, seed=3 * 4 + offset)
        assert torch.equal(dm.datasets[split].inputs, inputs) and torch.equal(dm.datasets[split].targets, targets)


@dataclasses.dataclass(frozen=True)
class Counting:
    vocab_size: int = 10
    seq_len: int = 6

    def __post_init__(self):
        if self.seq_len < 3:
            raise ValueError(f"task.seq_len={self.seq_len} must be >= 3")


def generate_counting(num_examples: int, vocab_size: int, seq_len: int, seed: int):
    """Rows ``start, start + 1, ...`` mod vocab_size from a seeded start; every next token scored."""
    start = torch.randint(vocab_size, (num_examples, 1), generator=torch.Generator().manual_seed(seed))
    rows = (start + torch.arange(seq_len + 1)) % vocab_size
    return rows[:, :-1], rows[:, 1:]


class CountingDataModule(
    SyntheticDataModule, knobs=Counting, generator=generate_counting, test_overrides=("seq_len",), num_train=30
):
    """A task added in one statement."""


def test_a_new_synthetic_task_is_one_class_statement_with_its_options_in_the_signature():
    assert list(inspect.signature(CountingDataModule).parameters) == [
        "vocab_size",
        "seq_len",
        "test_seq_len",
        "num_train",
        "num_test",
        "num_val",
        "batch_size",
        "seed",
        "num_workers",
    ]
    dm = CountingDataModule(seq_len=4, test_seq_len=9, num_test=5, batch_size=3, seed=2)
    dm.setup()
    assert {s: tuple(d.inputs.shape) for s, d in dm.datasets.items()} == {"train": (30, 4), "val": (5, 4), "test": (5, 9)}
    expected = generate_counting(5, 10, 9, seed=3 * 2 + 2)
    assert torch.equal(dm.datasets["test"].inputs, expected[0]) and torch.equal(dm.datasets["test"].targets, expected[1])


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(colour="red"), r"unexpected keyword argument 'colour'"),
        (dict(seq_len=2), r"task\.seq_len=2 must be >= 3"),
        (dict(test_seq_len=2), r"test split \(task\.test_seq_len\): task\.seq_len=2 must be >= 3"),
        (dict(num_test=0), r"task\.num_test=0 must be an integer >= 1"),
        (dict(num_workers=-1), r"task\.num_workers=-1 must be >= 0"),
    ],
)
def test_synthetic_options_are_checked_before_generation(options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        CountingDataModule(**options)


def test_an_unknown_task_option_names_the_task_the_key_and_the_options():
    with pytest.raises(ValueError, match=r"^task\.colour: Key 'colour' not in 'InContextRecallDataModule'; allowed: \['batch"):
        build_datamodule({"name": "icr", "colour": "red"})
