"""Lightning's checkpoint IO with memzoo's checkpoint files: written atomically, read weights-only."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoo.checkpointing import atomic_torch_save, load_checkpoint_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with ``atomic_torch_save`` for writing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """Resume reads go through ``load_checkpoint_file`` too: weights only, clear errors."""
        return load_checkpoint_file(path, map_location)
