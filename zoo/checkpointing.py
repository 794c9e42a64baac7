"""Checkpoints that are whole or absent: a single file (unsharded runs) is written to a temporary file
beside the target, flushed to disk, then renamed over it (a rename within one directory is atomic),
so a process killed while saving leaves the previous checkpoint intact; a sharded run's distributed
checkpoint (a directory, ``zoo.distributed_checkpoint``) is published the same way. Read with
``weights_only=True`` (and DCP metadata through an allow-list): no file runs code. Nothing outside a
checkpoint is read; loading a model (``read_checkpoint``) or resuming checks the weights against the
model the checkpoint's settings describe (a distributed checkpoint's shapes before its tensors are
allocated). Lightning's side of this (``AtomicCheckpointIO``, ``DistributedCheckpointDDP``) lives in
``zoo.checkpoint_io``, so that ``import zoo`` (models, loading, generation) needs no Lightning."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from zoo.distributed_checkpoint import REST_FILE, data_dir_to_read, file_inside, fill_tensors, is_distributed_checkpoint
from zoo.io import atomic_write
from zoo.model import ModelConfig, build_model

MODEL_PREFIX = "model."  # the LanguageModel's entries in a Lightning checkpoint's state_dict


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


def model_shapes(model_values: dict[str, Any]) -> dict[str, torch.Size]:
    """A checkpoint's model settings (``hyper_parameters.model``) -> the shape of each state_dict
    entry of its model (``MODEL_PREFIX`` + name), from a model built on the meta device (nothing
    allocated; a sharded memory as one whole table, as a distributed checkpoint stores it)."""
    values = dict(model_values)
    if isinstance(values.get("memory"), dict):
        values["memory"] = {**values["memory"], "parallel": "none"}
    with torch.device("meta"):
        model = build_model(ModelConfig.from_mapping(values))
    return {MODEL_PREFIX + key: value.shape for key, value in model.state_dict().items()}


def check_weights(path: str | os.PathLike, model_values: Any, shapes: dict[str, Any]) -> None:
    """The ``state_dict`` entries ``shapes`` (key -> shape or tensor) of the checkpoint ``path``
    against the model its ``model_values`` describe: ``ValueError`` naming the file and each missing,
    unexpected or differently shaped entry."""
    where = f"checkpoint {str(path)!r}"
    try:
        want = model_shapes(model_values)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
        raise ValueError(f"{where}: its hyper_parameters.model does not describe a model memzoo builds: {err}") from err
    got = dict(shapes)  # a LitLanguageModel's state is its model's: any other entry is unexpected
    problems = [f"missing {key}" for key in want if key not in got]
    problems += [f"unexpected {key}" for key in got if key not in want]
    problems += [f"{key}: checkpoint {_shape(got[key])}, model {tuple(shape)}" for key, shape in want.items()
                 if key in got and _shape(got[key]) != tuple(shape)]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"{where}: its weights do not fit the model of its hyper_parameters.model: {shown}")


def _shape(value: Any) -> tuple | str:
    if isinstance(value, torch.Size):
        return tuple(value)
    return tuple(value.shape) if torch.is_tensor(value) else f"a {type(value).__name__}, not a tensor"


def load_checkpoint_file(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu", mmap: bool = False, whole: bool = True,
    check_model: bool = False,
) -> dict[str, Any]:
    """A checkpoint file, or a distributed checkpoint's directory, read without running code:
    ``torch.load`` with ``weights_only=True`` (tensors and plain containers only; ``mmap``: tensors
    stay on disk until used). A distributed checkpoint's tensors are read to the CPU, whole with
    ``whole`` (one process), else its sharded ones are left as ``SavedShards`` for each rank to read
    its part of; every file it reads is a regular file inside it, and the bytes its metadata
    describes are checked against its files' sizes before anything is allocated. With
    ``check_model``, the ``state_dict`` is checked against the model of ``hyper_parameters.model``
    (``check_weights``; a distributed checkpoint's shapes before its tensors are allocated).
    Raises ``ValueError`` naming the path and what is wrong for a missing, truncated, corrupt,
    code-carrying or out-of-bounds checkpoint, for one that is not a memzoo (Lightning) checkpoint,
    and with ``check_model`` for one whose weights do not fit its model."""
    path = Path(path)
    if is_distributed_checkpoint(path):
        data_dir = data_dir_to_read(path)  # one version throughout, even if a save swaps the link meanwhile
        rest = _load_memzoo_file(file_inside(data_dir, REST_FILE, "settings file"), "cpu", mmap)
        model = rest["hyper_parameters"]["model"]
        check = (lambda shapes: check_weights(path, model, shapes)) if check_model else None
        return fill_tensors(rest, data_dir, whole, check)
    checkpoint = _load_memzoo_file(path, map_location, mmap)
    if check_model:
        check_weights(path, checkpoint["hyper_parameters"]["model"], checkpoint["state_dict"])
    return checkpoint


def _load_memzoo_file(path: Path, map_location: str | torch.device | None, mmap: bool) -> dict[str, Any]:
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory, neither a checkpoint file nor a distributed checkpoint "
                         "(no .metadata)")
    if not path.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():  # checked without opening it: a FIFO would block
        raise ValueError(f"checkpoint {str(path)!r} is not a regular file (a FIFO or device?); memzoo reads checkpoints "
                         "from regular files only")
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
        raise ValueError(f"checkpoint {str(path)!r} is not a memzoo-train checkpoint: its state_dict or "
                         "hyper_parameters.model is no mapping")
    return checkpoint


def read_hyper_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` (model and optimizer settings), reading no weights."""
    path = Path(path)
    file = file_inside(data_dir_to_read(path), REST_FILE, "settings file") if is_distributed_checkpoint(path) else path
    return _load_memzoo_file(file, "cpu", mmap=True)["hyper_parameters"]


def read_checkpoint(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``memzoo-train`` checkpoint (file, distributed, or a training run directory's last one) ->
    (the checkpoint, its model config for one process).

    A sharded memory (``memory.parallel`` rows / columns) becomes ``none``: one process reads the
    table whole (a distributed checkpoint's parts assembled). Raises ``ValueError`` as
    ``checkpoint_in`` and ``load_checkpoint_file`` do; the weights fit the model the config builds.
    """
    checkpoint = load_checkpoint_file(checkpoint_in(ckpt), map_location, check_model=True)
    values = dict(checkpoint["hyper_parameters"]["model"])
    if values.get("memory"):
        values["memory"] = {**values["memory"], "parallel": "none"}
    return checkpoint, values
