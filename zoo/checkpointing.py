"""Checkpoint files that are whole or absent: written to a temporary file beside the target, flushed
to disk, then renamed over it (a rename within one directory is atomic), so a process killed while
saving leaves the previous checkpoint intact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoo.io import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` through ``atomic_write`` (temp file + fsync + rename)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with ``atomic_torch_save`` for writing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)


def resume_path(ckpt: str | None, run_dir: Path) -> Path | None:
    """``ckpt`` option -> the checkpoint to resume from: None (fresh run), ``last`` (the run
    directory's checkpoints/last.ckpt) or a file path; raises ``ValueError`` when it does not exist."""
    if ckpt is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(ckpt)
    if not path.is_file():
        hint = " (resume in the same run directory: pass the run's hydra.run.dir=DIR)" if ckpt == "last" else ""
        raise ValueError(f"ckpt={ckpt!r}: no checkpoint at {path}{hint}")
    return path


def read_checkpoint(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``memzoo-train`` checkpoint file -> (the checkpoint, its model config for one process).

    A sharded memory (``memory.parallel`` rows / columns) becomes ``none``: checkpoints hold the full
    table, so one process reads it whole. Raises ``ValueError`` when the file does not exist.
    """
    path = Path(ckpt)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    values = dict(checkpoint["hyper_parameters"]["model"])
    if values.get("memory"):
        values["memory"] = {**values["memory"], "parallel": "none"}
    return checkpoint, values
