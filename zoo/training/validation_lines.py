"""When a run validates and what it prints about it: a run shorter than its validation interval
still validates once, at its end (Lightning would never validate it, and its curves would stay
empty), and a run without a progress bar (a grid's cells) prints a compact line per validation,
which the bar would otherwise show as it redraws."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from zoo.core.value_checks import is_int


def validate_by_the_end(trainer: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(trainer options whose ``val_check_interval`` (training steps) fits in ``max_steps``, the notice
    saying so, or None): one above it becomes ``max_steps``, validating once, at the end."""
    interval, max_steps = trainer.get("val_check_interval"), trainer.get("max_steps")
    if not (is_int(interval) and is_int(max_steps) and interval > max_steps):
        return trainer, None
    notice = (
        f"trainer.val_check_interval={interval} is beyond trainer.max_steps={max_steps}: validating once, at step {max_steps}"
    )
    return {**trainer, "val_check_interval": max_steps}, notice


def validation_line(label: str, step: int, max_steps: int, metrics: dict[str, float]) -> str:
    """``<label> step 40/160: val/bpb 2.36, val/loss 4.43`` (the ``val/`` metrics but memory
    usage, sorted, 4 significant digits)."""
    shown = sorted((k, float(v)) for k, v in metrics.items() if k.startswith("val/") and not k.startswith("val/memory/"))
    return f"{label} step {step}/{max_steps}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown)


class ValidationLines(Callback):
    """Prints ``validation_line`` after every validation but the sanity check, on rank zero."""

    def __init__(self, label: str):
        self.label = label

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        print(validation_line(self.label, trainer.global_step, trainer.max_steps, trainer.callback_metrics), flush=True)
