"""Shared plumbing for tasks whose splits are generated up front as tensors."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

IGNORE_INDEX = -100
SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


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
    """

    splits = ("train", "val", "test")

    def __init__(self, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"task.batch_size={batch_size} must be >= 1")
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.datasets: dict[str, TokenDataset] = {}

    def split_seed(self, split: str, salt: int = 0) -> int:
        """The seed of ``split``'s generator, ``salt + 3 * seed + offset(split)``: splits never share
        a seed, and a task that also draws something else from ``seed`` salts its splits apart."""
        return salt + 3 * self.seed + SPLIT_OFFSET[split]

    def generate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        for split in self.splits:
            if split not in self.datasets:
                self.datasets[split] = TokenDataset(*self.generate(split))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        ranks = {"num_replicas": trainer.world_size, "rank": trainer.global_rank} if trainer else {"num_replicas": 1, "rank": 0}
        # batches already trained in this epoch: nonzero when resuming from a mid-epoch checkpoint
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer else 0
        # a DistributedSampler even for one process: Lightning leaves it in place and sets its epoch
        sampler = ResumableSampler(self.datasets["train"], shuffle=True, seed=self.seed, drop_last=True, **ranks)
        if done * self.batch_size < len(sampler):
            sampler.skip = done * self.batch_size
        return DataLoader(
            self.datasets["train"], batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers, drop_last=True
        )

    def _eval_loader(self, split: str) -> DataLoader:
        self.setup()
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        dataset = IgnoredPadding(self.datasets[split])
        sampler = EvalShardSampler(dataset, num_replicas=world, rank=rank)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
