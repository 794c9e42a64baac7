"""Checkpoint files that are whole or absent: written to a temporary file beside the target, flushed
to disk, then renamed over it (a rename within one directory is atomic), so a process killed while
saving leaves the previous checkpoint intact. Read with ``weights_only=True``: no file runs code.
Lightning's side of this (``AtomicCheckpointIO``) lives in ``zoo.checkpoint_io``, so that
``import zoo`` (models, loading, generation) needs no Lightning."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from zoo.io import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` through ``atomic_write`` (temp file + fsync + rename)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


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


def load_checkpoint_file(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so no file can run
    code (``mmap``: tensors stay on disk until used, for reading the settings only). Raises
    ``ValueError`` naming the path and what is wrong for a missing, truncated, corrupt or
    code-carrying file, and for one that is not a memzoo (Lightning) checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): a write that never finished?")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # weights_only refused a global: the file wants to run code
        raise ValueError(
            f"checkpoint {str(path)!r} holds objects other than tensors and plain containers; memzoo loads "
            f"only those (no checkpoint may run code). torch said: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {str(path)!r} is truncated or not a torch checkpoint: {err}") from err
    missing = [k for k in ("state_dict", "hyper_parameters") if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing or "model" not in checkpoint["hyper_parameters"]:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a memzoo-train checkpoint: it lacks "
            f"{missing or ['hyper_parameters.model']} (a plain state_dict? load it with torch.load instead)"
        )
    return checkpoint


def read_checkpoint(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``memzoo-train`` checkpoint file -> (the checkpoint, its model config for one process).

    A sharded memory (``memory.parallel`` rows / columns) becomes ``none``: checkpoints hold the full
    table, so one process reads it whole. Raises ``ValueError`` as ``load_checkpoint_file`` does.
    """
    checkpoint = load_checkpoint_file(ckpt, map_location)
    values = dict(checkpoint["hyper_parameters"]["model"])
    if values.get("memory"):
        values["memory"] = {**values["memory"], "parallel": "none"}
    return checkpoint, values
