"""Checks a ``memzoo-train`` run makes before any compute or any write: settings that would train
wrongly or not at all, and the run directory (never silently overwritten, writable)."""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zoo.checkpoint.distributed import remove_unlinked_data
from zoo.core.value_checks import check_bool, check_int, check_real, is_int, is_real
from zoo.training.optim import OptimConfig, check_warmup_cosine, default_warmup

RUN_MARKERS = ("config.yaml", "metrics.json", "checkpoints", "tb")  # what a started or finished run leaves


def fit_schedule(optim: OptimConfig, trainer: dict[str, Any]) -> tuple[OptimConfig, str | None]:
    """(``optim`` with a warmup shorter than the schedule, the notice when it had to be shortened, or
    None) after checking every ``optim`` field (``OptimConfig.validate``: lr and each ``group_lr``
    positive and finite, weight decay, betas, eps, warmup, min_lr_ratio, total_steps) and the
    ``trainer`` fields a run's schedule and logging read (max_steps, gradient clip, validation
    interval, logging interval); each ``ValueError`` names only the failing field. A warmup as long
    as the schedule (a shortened trial of a run: ``trainer.max_steps=5``) becomes a tenth of it."""
    optim.validate()
    check_trainer(trainer)
    max_steps = trainer["max_steps"]
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


def check_trainer(trainer: dict[str, Any]) -> None:
    """The ``trainer`` values memzoo reads or Lightning would only reject mid-run: max_steps an
    integer >= 1; gradient_clip_val finite >= 0 or null; val_check_interval an integer >= 1 (training
    steps) or a number in (0, 1] (a fraction of an epoch) or null; check_val_every_n_epoch and
    log_every_n_steps integers >= 1 or null (Lightning's default)."""
    max_steps = trainer.get("max_steps")
    if not is_int(max_steps) or max_steps < 1:
        raise ValueError(f"trainer.max_steps={max_steps!r} must be an integer >= 1")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and not (is_real(clip) and clip >= 0):
        raise ValueError(f"trainer.gradient_clip_val={clip!r} must be >= 0 and finite (0 or null: no clipping)")
    interval = trainer.get("val_check_interval")
    if interval is not None and not (
        is_int(interval) and interval >= 1 or isinstance(interval, float) and math.isfinite(interval) and 0 < interval <= 1
    ):
        raise ValueError(
            f"trainer.val_check_interval={interval!r} must be an integer >= 1 (training steps between "
            "validations) or a number in (0, 1] (a fraction of an epoch)"
        )
    check_int(
        "trainer.check_val_every_n_epoch",
        trainer.get("check_val_every_n_epoch"),
        low=1,
        null="validate by val_check_interval only",
    )
    check_int("trainer.log_every_n_steps", trainer.get("log_every_n_steps"), low=1, null="Lightning's 50")


SEED_RANGE = (0, 2**32 - 1)  # what lightning.seed_everything and numpy accept


def check_run_options(
    seed: Any, size_check: Any = True, overwrite: Any = False, every_n_train_steps: Any = None, collective_timeout_s: Any = None
) -> None:
    """The run's own top-level values: ``seed`` an integer in [0, 2^32 - 1], ``size_check`` and
    ``overwrite`` booleans, ``checkpoint.every_n_train_steps`` an integer >= 0 or null,
    ``collective_timeout_s`` a finite number of seconds > 0."""
    check_int("seed", seed, *SEED_RANGE)
    check_bool("size_check", size_check)
    check_bool("overwrite", overwrite)
    check_int("checkpoint.every_n_train_steps", every_n_train_steps, low=0, null="no periodic checkpoint")
    check_real("collective_timeout_s", collective_timeout_s, low=0, low_open=True)


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
