"""Checkpoints that are whole or absent: a single file (unsharded runs) is written to a temporary file
beside the target, flushed to disk, then renamed over it (a rename within one directory is atomic),
so a process killed while saving leaves the previous checkpoint intact; a sharded run's distributed
checkpoint (a directory, ``zoo.checkpoint.distributed``) is published the same way. Read with
``weights_only=True`` (and DCP metadata through an allow-list): no file runs code. Nothing outside a
checkpoint is read. This module knows files, not models: ``zoo.model.loading`` reads a checkpoint
into its model (checking the weights against the model its settings describe), and Lightning's side
(``AtomicCheckpointIO``, ``DistributedCheckpointDDP``) lives in ``zoo.training.checkpoint_io``, so
that ``import zoo`` (models, loading, generation) needs no Lightning."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint.distributed import REST_FILE, data_dir_to_read, file_inside, fill_tensors, is_distributed_checkpoint
from zoo.core.io import atomic_write


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


def checkpoint_in(ckpt: str | os.PathLike) -> Path:
    """``ckpt`` -> the checkpoint it names: a checkpoint file, a distributed checkpoint (its link or
    directory), or a training run directory (its checkpoints/last.ckpt). ``ValueError`` saying what
    to pass for a run directory without a last checkpoint or any other directory."""
    path = Path(ckpt)
    if not path.is_dir() or is_distributed_checkpoint(path):
        return path
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file() or is_distributed_checkpoint(last):
        return last
    if (path / "checkpoints").is_dir():
        found = sorted(p.name for p in (path / "checkpoints").glob("*.ckpt"))
        raise ValueError(
            f"ckpt={str(ckpt)!r} is a training run directory without checkpoints/last.ckpt (it stopped before its "
            f"first checkpoint?); pass one of its checkpoint files: {found or 'none there'}"
        )
    raise ValueError(
        f"ckpt={str(ckpt)!r} is a directory, but neither a training run directory (no checkpoints/last.ckpt) nor a "
        "distributed checkpoint (no .metadata); pass a run directory or a .ckpt file"
    )


def load_checkpoint_file(
    path: str | os.PathLike,
    map_location: str | torch.device | None = "cpu",
    mmap: bool = False,
    whole: bool = True,
    check_weights: Callable[[Path, dict[str, Any], dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """A checkpoint file, or a distributed checkpoint's directory, read without running code:
    ``torch.load`` with ``weights_only=True`` (tensors and plain containers only; ``mmap``: tensors
    stay on disk until used). A distributed checkpoint's tensors are read to the CPU, whole with
    ``whole`` (one process), else its sharded ones are left as ``SavedShards`` for each rank to read
    its part of; every file it reads is a regular file inside it, and the bytes its metadata
    describes are checked against its files' sizes before anything is allocated. With
    ``check_weights(path, hyper_parameters.model, state_dict)``, the ``state_dict`` (its tensors, or
    for a distributed checkpoint their shapes, before they are allocated) is checked against the
    model the settings describe (``zoo.model.loading.check_weights``).
    Raises ``ValueError`` naming the path and what is wrong for a missing, truncated, corrupt,
    code-carrying or out-of-bounds checkpoint, for one that is not a memzoo (Lightning) checkpoint,
    and through ``check_weights`` for one whose weights do not fit its model."""
    path = Path(path)
    if is_distributed_checkpoint(path):
        data_dir = data_dir_to_read(path)  # one version throughout, even if a save swaps the link meanwhile
        rest = _load_memzoo_file(file_inside(data_dir, REST_FILE, "settings file"), "cpu", mmap)
        model = rest["hyper_parameters"]["model"]
        check = (lambda shapes: check_weights(path, model, shapes)) if check_weights else None
        return fill_tensors(rest, data_dir, whole, check)
    checkpoint = _load_memzoo_file(path, map_location, mmap)
    if check_weights:
        check_weights(path, checkpoint["hyper_parameters"]["model"], checkpoint["state_dict"])
    return checkpoint


def _load_memzoo_file(path: Path, map_location: str | torch.device | None, mmap: bool) -> dict[str, Any]:
    if path.is_dir():
        raise ValueError(
            f"checkpoint {str(path)!r} is a directory, neither a checkpoint file nor a distributed checkpoint (no .metadata)"
        )
    if not path.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():  # checked without opening it: a FIFO would block
        raise ValueError(
            f"checkpoint {str(path)!r} is not a regular file (a FIFO or device?); memzoo reads checkpoints "
            "from regular files only"
        )
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
    if missing or not isinstance(checkpoint["hyper_parameters"], dict) or "model" not in checkpoint["hyper_parameters"]:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a memzoo-train checkpoint: it lacks "
            f"{missing or ['hyper_parameters.model']} (a plain state_dict? load it with torch.load instead)"
        )
    if not isinstance(checkpoint["state_dict"], dict) or not isinstance(checkpoint["hyper_parameters"]["model"], dict):
        raise ValueError(
            f"checkpoint {str(path)!r} is not a memzoo-train checkpoint: its state_dict or hyper_parameters.model is no mapping"
        )
    return checkpoint


def read_hyper_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` (model and optimizer settings), reading no weights."""
    path = Path(path)
    file = file_inside(data_dir_to_read(path), REST_FILE, "settings file") if is_distributed_checkpoint(path) else path
    return _load_memzoo_file(file, "cpu", mmap=True)["hyper_parameters"]
