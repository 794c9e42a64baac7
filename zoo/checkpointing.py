"""Checkpoints that are whole or absent: a single file (unsharded runs) is written to a temporary file
beside the target, flushed to disk, then renamed over it (a rename within one directory is atomic),
so a process killed while saving leaves the previous checkpoint intact; a sharded run's distributed
checkpoint (a directory, ``zoo.distributed_checkpoint``) is published the same way. Read with
``weights_only=True`` (and DCP metadata through an allow-list): no file runs code. Lightning's side
of this (``AtomicCheckpointIO``, ``DistributedCheckpointDDP``) lives in ``zoo.checkpoint_io``, so
that ``import zoo`` (models, loading, generation) needs no Lightning."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from zoo.distributed_checkpoint import REST_FILE, fill_tensors, is_distributed_checkpoint
from zoo.io import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` through ``atomic_write`` (temp file + fsync + rename)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def resume_path(ckpt: str | None, run_dir: Path) -> Path | None:
    """``ckpt`` option -> the checkpoint to resume from: None (fresh run), ``last`` (the run
    directory's checkpoints/last.ckpt) or a path (a file, or a distributed checkpoint's directory);
    raises ``ValueError`` when it does not exist."""
    if ckpt is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(ckpt)
    if not (path.is_file() or is_distributed_checkpoint(path)):
        hint = " (resume in the same run directory: pass the run's hydra.run.dir=DIR)" if ckpt == "last" else ""
        raise ValueError(f"ckpt={ckpt!r}: no checkpoint at {path}{hint}")
    return path


def load_checkpoint_file(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu", mmap: bool = False, whole: bool = True
) -> dict[str, Any]:
    """A checkpoint file, or a distributed checkpoint's directory, read without running code:
    ``torch.load`` with ``weights_only=True`` (tensors and plain containers only; ``mmap``: tensors
    stay on disk until used). A distributed checkpoint's tensors are read to the CPU, whole with
    ``whole`` (one process), else its sharded ones are left as ``SavedShards`` for each rank to read
    its part of.
    Raises ``ValueError`` naming the path and what is wrong for a missing, truncated, corrupt or
    code-carrying checkpoint, and for one that is not a memzoo (Lightning) checkpoint."""
    path = Path(path)
    if is_distributed_checkpoint(path):
        data_dir = path.resolve()  # one version throughout, even if a save swaps the link meanwhile
        return fill_tensors(_load_memzoo_file(data_dir / REST_FILE, "cpu", mmap), data_dir, whole)
    return _load_memzoo_file(path, map_location, mmap)


def _load_memzoo_file(path: Path, map_location: str | torch.device | None, mmap: bool) -> dict[str, Any]:
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


def read_hyper_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` (model and optimizer settings), reading no weights."""
    path = Path(path)
    file = path.resolve() / REST_FILE if is_distributed_checkpoint(path) else path
    return _load_memzoo_file(file, "cpu", mmap=True)["hyper_parameters"]


def read_checkpoint(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``memzoo-train`` checkpoint (file or distributed) -> (the checkpoint, its model config for
    one process).

    A sharded memory (``memory.parallel`` rows / columns) becomes ``none``: one process reads the
    table whole (a distributed checkpoint's parts assembled). Raises ``ValueError`` as
    ``load_checkpoint_file`` does.
    """
    checkpoint = load_checkpoint_file(ckpt, map_location)
    values = dict(checkpoint["hyper_parameters"]["model"])
    if values.get("memory"):
        values["memory"] = {**values["memory"], "parallel": "none"}
    return checkpoint, values
