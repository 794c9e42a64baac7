"""Lightning's checkpoint IO with memzoo's checkpoints: single files written atomically by rank 0, a
sharded memory's distributed checkpoints written by every rank; all read without running code."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy

from zoo.checkpoint.distributed import (
    holds_distributed_tensors,
    is_distributed_checkpoint,
    remove_distributed,
    save_distributed,
)
from zoo.checkpoint.files import atomic_torch_save, load_checkpoint_file
from zoo.core.tags import shard_of
from zoo.model.loading import check_weights


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with ``atomic_torch_save`` for writing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """Resume reads go through ``load_checkpoint_file`` too: weights only, checked against the
        model of their settings, clear errors; a distributed checkpoint is read whole (this module
        is not sharded)."""
        return load_checkpoint_file(path, map_location, check_weights=check_weights)


class DistributedCheckpointDDP(DDPStrategy):
    """Lightning's DDP whose checkpoints of a sharded memory (model or optimizer state holding
    DTensors) are distributed checkpoints, written by every rank (``save_distributed``); others stay
    single files written by rank 0. Resuming a sharded model leaves a distributed checkpoint's
    sharded tensors on disk for each rank to read its part of, in its own layout. Checkpoints are
    restored after setup, once the precision plugin has cast the model (``64-true``): a float64
    checkpoint loaded before then would pass through the float32 parameters and resume inexactly."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options=None) -> None:
        if not holds_distributed_tensors(checkpoint):
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_distributed(checkpoint, filepath)

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict[str, Any]:
        sharded = any(shard_of(p) is not None for p in self.lightning_module.parameters())
        return load_checkpoint_file(checkpoint_path, whole=not sharded, check_weights=check_weights)

    def remove_checkpoint(self, filepath) -> None:
        if not is_distributed_checkpoint(filepath):
            return super().remove_checkpoint(filepath)
        if self.is_global_zero:
            remove_distributed(filepath)


def with_distributed_checkpoints(trainer_options: dict[str, Any], collective_timeout_s: float) -> dict[str, Any]:
    """Trainer options with ``strategy: ddp`` as ``DistributedCheckpointDDP`` (the same DDP, which
    also saves a sharded memory without gathering it) whose collectives fail after
    ``collective_timeout_s`` seconds instead of waiting forever for a rank that stopped."""
    if trainer_options.get("strategy") != "ddp":
        return trainer_options
    return {**trainer_options, "strategy": DistributedCheckpointDDP(timeout=timedelta(seconds=collective_timeout_s))}
