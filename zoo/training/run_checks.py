"""Checks a ``memzoo-train`` run makes before any compute or any write: settings that would train
wrongly or not at all, and the run directory (never silently overwritten, writable)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from zoo.checkpoint.distributed import remove_unlinked_data
from zoo.training.optim import OptimConfig, check_warmup_cosine, default_warmup

RUN_MARKERS = ("config.yaml", "metrics.json", "checkpoints", "tb")  # what a started or finished run leaves


def fit_schedule(optim: OptimConfig, max_steps: int) -> tuple[OptimConfig, str | None]:
    """(``optim`` with a warmup shorter than the schedule, the notice when it had to be shortened, or
    None) after checking every ``optim`` field's range (``OptimConfig.validate``: lr and each
    ``group_lr`` positive and finite, weight decay, betas, eps, warmup, min_lr_ratio, total_steps);
    each ``ValueError`` names only the failing field. A warmup as long as the schedule (a shortened
    trial of a run: ``trainer.max_steps=5``) becomes a tenth of it."""
    optim.validate()
    total = max_steps if optim.total_steps is None else optim.total_steps
    warmup = default_warmup(optim.warmup_steps, total)
    check_warmup_cosine(warmup, total, optim.min_lr_ratio)
    if warmup < total:
        return optim, None
    shorter = default_warmup(None, total)
    notice = (
        f"optim.warmup_steps={warmup} is not shorter than the schedule's {total} steps "
        f"({'optim.total_steps' if optim.total_steps is not None else 'trainer.max_steps'}): warming up for {shorter} "
        "steps instead, a tenth of it"
    )
    return dataclasses.replace(optim, warmup_steps=shorter), notice


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
    """Temp files a killed writer left beside its target (``.NAME.XXXX.tmp``, see ``zoo.core.io.atomic_write``),
    and distributed checkpoints' data directories that no checkpoint links to (``zoo.checkpoint.distributed``)."""
    stale = [p for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir() for p in folder.glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale + remove_unlinked_data(run_dir / "checkpoints")
