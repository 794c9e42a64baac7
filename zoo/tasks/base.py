"""The task base: options every task shares (batch size, seed, loader workers; split sizes and seeds
for synthetic tasks), the ``{"inputs", "targets"}`` batches, and what a run asks of any task
(``vocab_size``, ``bytes_per_token``, ``summarize``).

A synthetic task is a frozen knob dataclass plus a pure generator, registered as a
``SyntheticDataModule`` subclass in one statement; see that class.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from zoo.core.value_checks import check_int

IGNORE_INDEX = -100
SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}
SEED_MAX = 2**32 - 1  # seeds are integers in [0, 2^32 - 1], what lightning.seed_everything accepts
TOKEN_BYTES = 8  # int64 token ids
GENERATION_WORKSPACE = 4  # a generator's temporaries, in multiples of the split it returns (a coarse bound)


def check_int_option(name: str, value: object, low: int, high: int | None = None, null: str | None = None) -> None:
    """``ValueError`` naming ``task.<name>`` unless ``value`` is an integer >= ``low`` (and <= ``high``),
    or None where ``null`` says what None means."""
    check_int(f"task.{name}", value, low, high, null)


class TokenDataset(Dataset):
    """Rows of ``inputs`` / ``targets`` (N, L) served as ``{"inputs": (L,), "targets": (L,)}``."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        if inputs.shape != targets.shape:
            raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} differ in shape")
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs[idx], "targets": self.targets[idx]}

    @property
    def shape(self) -> tuple[int, int]:
        """(N, L): examples and their length."""
        return tuple(self.inputs.shape)

    def id_range(self) -> tuple[int, int]:
        """The least and greatest token id of the inputs and scored targets."""
        ids = torch.cat([self.inputs.flatten(), self.targets[self.targets != IGNORE_INDEX]])
        return (int(ids.min()), int(ids.max())) if ids.numel() else (0, 0)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose next pass can start ``skip`` examples in: a run resumed from a
    mid-epoch checkpoint continues the epoch where the checkpoint left it, not from its start."""

    def __init__(self, *args, skip: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = skip

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only the resumed pass is shortened
        return iter(indices[skip:])


class TrainLoader(DataLoader):
    """The train split's ``DataLoader`` whose position in the epoch is part of the checkpoint, through
    Lightning's stateful-loader protocol (``state_dict`` / ``load_state_dict``, what torchdata's
    ``StatefulDataLoader`` offers): a run resumed from a mid-epoch checkpoint continues the epoch at
    the next unseen example. ``batches_done()``: the batches trained so far in this epoch (the
    trainer's count, which unlike the batches this loader yielded excludes the one prefetched)."""

    def __init__(self, *args, batches_done: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"examples_done": self.batches_done() * self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = state["examples_done"]
        if done < len(self.sampler):  # an epoch that ended starts the next one whole
            self.sampler.skip = done


class EvalShardSampler(DistributedSampler):
    """Evaluation order for rank r of W: examples r, r + W, ... once each. Ranks short of an example
    get one index past the dataset's end (``IgnoredPadding`` serves it with no target scored), so
    every rank runs the same number of batches (a sharded memory's collectives need that) while
    every example counts exactly once (``DistributedSampler`` repeats examples instead)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = -(-len(dataset) // num_replicas)

    def __iter__(self):
        return iter(range(self.rank, self.num_samples * self.num_replicas, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class IgnoredPadding(Dataset):
    """``dataset`` whose indices past its end serve its first example with every target ignored."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if idx < len(self.dataset):
            return self.dataset[idx]
        item = self.dataset[0]
        return {"inputs": item["inputs"], "targets": torch.full_like(item["targets"], IGNORE_INDEX)}


class GeneratedDataModule(L.LightningDataModule):
    """A datamodule whose subclasses implement ``generate(split) -> (inputs, targets)``.

    Splits are generated lazily in ``setup`` (every rank generates the same data from the seed).
    The train order is a permutation drawn from ``seed`` and the epoch; with W ranks, rank r takes
    every W-th example of it, so a global batch of W ranks x b is the batch of W * b one process
    reads (the same samples: data-parallel runs match a single-process run).

    What a run asks of every task: ``vocab_size`` (every token and scored target is an id in
    ``[0, vocab_size)``), ``bytes_per_token`` (per split, the bytes of text a scored token covers;
    None but for text tasks), ``chance_bits`` (the bits a scored target carries at chance, for
    recall tasks whose knowledge is measured in bits; None otherwise), ``summarize`` (task-level
    metrics from the run's metrics), and before
    anything is generated ``max_seq_len`` and ``data_bytes`` (what the run's size check counts).
    """

    splits = ("train", "val", "test")
    vocab_size: int
    bytes_per_token: dict[str, float] | None = None
    chance_bits: float | None = None

    def __init__(self, batch_size: int = 64, seed: int = 0, num_workers: int = 0):
        super().__init__()
        check_int_option("batch_size", batch_size, 1)
        check_int_option("seed", seed, 0, SEED_MAX)
        if num_workers < 0:
            raise ValueError(f"task.num_workers={num_workers!r} must be >= 0 (0: load in the main process)")
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.datasets: dict[str, TokenDataset] = {}

    def split_seed(self, split: str, salt: int = 0) -> int:
        """The seed of ``split``'s generator, ``salt + 3 * seed + offset(split)``: splits never share
        a seed, and a task that also draws something else from ``seed`` salts its splits apart."""
        return salt + 3 * self.seed + SPLIT_OFFSET[split]

    def summarize(self, run_metrics: dict[str, Any]) -> dict[str, float]:
        """Task-level metrics a run reports beside its own (none unless a task defines them), from
        the run's metrics (``zoo.training.run.run_metrics``: ``test``, ``params``,
        ``flops_per_token``, ``steps``, ``world_size``)."""
        return {}

    def generate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def max_seq_len(self) -> int:
        """The longest example of any split, in tokens."""
        raise NotImplementedError

    def data_bytes(self, splits: Iterable[str] | None = None) -> int:
        """A coarse bound on the memory ``setup`` takes for ``splits`` (None: all), from the options
        alone, before anything is generated: the splits' inputs and targets (int64) plus what
        generating the largest takes; the run's size check (``zoo.model.size_budget``) adds it up."""
        raise NotImplementedError

    size_keys = "task.num_train / task.seq_len"  # the options that set data_bytes, named when it is too large

    def setup(self, stage: str | None = None) -> None:
        for split in self.splits:
            if split not in self.datasets:
                self.datasets[split] = TokenDataset(*self.generate(split))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        ranks = {"num_replicas": trainer.world_size, "rank": trainer.global_rank} if trainer else {"num_replicas": 1, "rank": 0}
        # a DistributedSampler even for one process: Lightning leaves it in place and sets its epoch
        sampler = ResumableSampler(self.datasets["train"], shuffle=True, seed=self.seed, drop_last=True, **ranks)
        return TrainLoader(
            self.datasets["train"],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=True,
            batches_done=(lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer else (lambda: 0),
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        """Evaluation batches of ``split`` (a split or a test slice added to ``datasets``), sharded
        across the trainer's ranks with every example counted once (``EvalShardSampler``)."""
        self.setup()
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        dataset = IgnoredPadding(self.datasets[split])
        sampler = EvalShardSampler(dataset, num_replicas=world, rank=rank)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")


def _option(name: str, default: object, annotation: object) -> inspect.Parameter:
    """A keyword-only parameter of a synthetic task's signature (one ``configs/task`` key)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


class SyntheticDataModule(GeneratedDataModule):
    """Splits of a synthetic task: knobs + a pure generator; sizes, seeds and batching live here.

    A task is a frozen dataclass of its own options (``knobs``, validated in ``__post_init__``) and a
    pure function ``generator(num_examples, **knobs, seed=...) -> (inputs, targets)``, each
    (num_examples, seq_len) long; it registers in one statement::

        class CompressionDataModule(SyntheticDataModule, knobs=Compression, generator=generate_compression): ...

    Its options (the keys of ``configs/task/<name>.yaml``, and this class's signature) are the knob
    fields; ``test_<knob>`` for each knob named in ``test_overrides``, the test split's value (None:
    the knob's; length extrapolation: train short, test long); ``num_train``, ``num_test``,
    ``num_val`` (None: ``num_test``), examples per split (a task may set other defaults for
    ``num_train`` / ``num_test`` in its class statement); and ``batch_size``, ``seed``,
    ``num_workers``. Split s is ``generator(sizes[s], **knobs of s, seed=split_seed(s))``.
    """

    Knobs: type
    generator: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    test_overrides: tuple[str, ...] = ()

    def __init_subclass__(
        cls,
        knobs: type,
        generator: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        test_overrides: tuple[str, ...] = (),
        num_train: int = 20_000,
        num_test: int = 1_000,
        **kwargs,
    ):
        super().__init_subclass__(**kwargs)
        cls.Knobs, cls.generator, cls.test_overrides = knobs, staticmethod(generator), tuple(test_overrides)
        types = typing.get_type_hints(knobs)
        loader = list(inspect.signature(GeneratedDataModule.__init__, eval_str=True).parameters.values())[1:]  # past self
        cls.__signature__ = inspect.Signature(
            [
                *(_option(f.name, f.default, types[f.name]) for f in dataclasses.fields(knobs)),
                *(_option(f"test_{name}", None, types[name] | None) for name in cls.test_overrides),
                _option("num_train", num_train, int),
                _option("num_test", num_test, int),
                _option("num_val", None, int | None),
                *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in loader),
            ]
        )

    def __init__(self, **options):
        bound = inspect.signature(type(self)).bind(**options)  # TypeError naming an unknown option
        bound.apply_defaults()
        options = bound.arguments
        super().__init__(options.pop("batch_size"), options.pop("seed"), options.pop("num_workers"))
        num_train, num_test, num_val = options.pop("num_train"), options.pop("num_test"), options.pop("num_val")
        check_int_option("num_val", num_val, 1, null="= num_test")
        num_val = num_test if num_val is None else num_val
        for name, value in [("num_train", num_train), ("num_test", num_test)]:
            check_int_option(name, value, 1)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        test = {name: options.pop(f"test_{name}") for name in self.test_overrides}
        self.knobs = self.Knobs(**options)
        self.split_knobs = {"train": self.knobs, "val": self.knobs, "test": self._test_knobs(test)}

    def _test_knobs(self, test: dict[str, object]) -> object:
        """The knobs of the test split: the train knobs with the ``test_<knob>`` options that are set."""
        if test.get("seq_len") is not None and test["seq_len"] < 2:  # no task has a one-token example
            raise ValueError(f"task.test_seq_len={test['seq_len']} must be >= 2 or null (= seq_len)")
        changed = {name: value for name, value in test.items() if value is not None}
        try:
            return dataclasses.replace(self.knobs, **changed)  # the knobs check the test split's sizes too
        except ValueError as err:
            named = " / ".join(f"task.test_{name}" for name in self.test_overrides)
            raise ValueError(f"test split ({named}): {err}") from err

    @property
    def vocab_size(self) -> int:
        """Every knob dataclass has ``vocab_size``: token ids lie in ``[0, vocab_size)``."""
        return self.knobs.vocab_size

    def generate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        knobs = dataclasses.asdict(self.split_knobs[split])
        return self.generator(self.sizes[split], **knobs, seed=self.split_seed(split))

    @property
    def max_seq_len(self) -> int:
        return max(knobs.seq_len for knobs in self.split_knobs.values())

    def data_bytes(self, splits: Iterable[str] | None = None) -> int:
        """Inputs and targets of each split, (n, seq_len) int64 each, plus the largest split's
        generation workspace: the knobs' ``workspace_bytes(n)`` where they define it, else
        ``GENERATION_WORKSPACE`` times that split."""
        held, workspace = 0, 0
        for split in self.splits if splits is None else splits:
            knobs, n = self.split_knobs[split], self.sizes[split]
            out = 2 * TOKEN_BYTES * n * knobs.seq_len
            held += out
            temporaries = knobs.workspace_bytes(n) if hasattr(knobs, "workspace_bytes") else GENERATION_WORKSPACE * out
            workspace = max(workspace, temporaries)
        return held + workspace
