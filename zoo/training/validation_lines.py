"""What a run prints about its validations: a run without a progress bar (a grid's cells) prints a
compact line per validation, which the bar would otherwise show as it redraws."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


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
