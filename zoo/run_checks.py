"""Checks a ``memzoo-train`` run makes before any compute or any write: settings that would train
wrongly or not at all, and the run directory (never silently overwritten, writable)."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zoo.distributed_checkpoint import remove_unlinked_data
from zoo.optim import OptimConfig, check_warmup_cosine, default_warmup

RUN_MARKERS = ("config.yaml", "metrics.json", "checkpoints", "tb")  # what a started or finished run leaves


def check_schedule(optim: dict[str, Any], trainer: dict[str, Any]) -> None:
    """lr (and every ``group_lr``) positive and finite, gradient clip >= 0, max_steps >= 1, warmup
    shorter than the schedule; each ``ValueError`` names only the failing field."""
    optim = OptimConfig.from_mapping(optim)
    lrs = {"optim.lr": optim.lr} | {f"optim.group_lr.{k}": v for k, v in optim.group_lr.items()}
    for name, value in lrs.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a finite number > 0")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or not clip >= 0):
        raise ValueError(f"trainer.gradient_clip_val={clip!r} must be >= 0 (0 or null: no clipping)")
    max_steps = trainer.get("max_steps")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"trainer.max_steps={max_steps!r} must be an integer >= 1")
    total = optim.total_steps or max_steps
    if not isinstance(total, int) or total < 1:
        raise ValueError(f"optim.total_steps={optim.total_steps!r} must be an integer >= 1 or null (= trainer.max_steps)")
    warmup = default_warmup(optim.warmup_steps, total)
    check_warmup_cosine(warmup, total, optim.min_lr_ratio)
    if warmup >= total:
        raise ValueError(f"optim.warmup_steps={warmup} must be < the schedule's {total} steps "
                         "(optim.total_steps, or trainer.max_steps when that is null)")


def check_batches(split_sizes: dict[str, int], batch_size: int, world_size: int) -> None:
    """The train split gives each of ``world_size`` ranks at least one full batch (training drops a
    last partial batch, so a smaller split would train zero steps), and every other split at least
    one example per rank (evaluation keeps partial batches)."""
    for split, size in split_sizes.items():
        needed = batch_size * world_size if split == "train" else world_size
        if size < needed:
            what = f"one batch of task.batch_size={batch_size}" if split == "train" else "one example"
            raise ValueError(
                f"the {split} split has {size} examples, fewer than {what} for each of {world_size} rank(s) "
                f"({needed} needed): raise task.num_{split}" + (" or lower task.batch_size" if split == "train" else "")
            )


def claim_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse a directory that holds a started or finished run unless the run resumes it (``ckpt=``)
    or ``overwrite=true`` (which removes that run's files first); check that it is writable."""
    found = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if found and not resuming:
        if not overwrite:
            raise ValueError(
                f"run directory {str(run_dir)!r} already holds a run ({', '.join(found)}): resume it with ckpt=last, "
                "pass overwrite=true to replace it, or choose another hydra.run.dir"
            )
        for name in found:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    for folder in (run_dir, run_dir / "checkpoints"):
        made = not folder.exists()
        try:  # a real write, undone: permission bits say nothing to root, nor about read-only mounts
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
            if made and folder.name == "checkpoints":
                folder.rmdir()
        except OSError as err:
            raise ValueError(
                f"{str(folder)!r} is not writable ({type(err).__name__}: {err.strerror or err}): "
                "checkpoints and results could not be saved there"
            ) from err


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files a killed writer left beside its target (``.NAME.XXXX.tmp``, see ``zoo.io.atomic_write``),
    and distributed checkpoints' data directories that no checkpoint links to (``zoo.distributed_checkpoint``)."""
    stale = [p for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir() for p in folder.glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale + remove_unlinked_data(run_dir / "checkpoints")
