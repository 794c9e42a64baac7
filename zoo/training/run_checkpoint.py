"""The run's periodic checkpoint (Lightning's ``ModelCheckpoint``, made safe for one run directory):
``checkpoints/last.ckpt`` is the latest state, overwritten in place (atomically, by the checkpoint
IO), never versioned as ``last-v1.ckpt``; it is saved every n steps and at the end of training.

A checkpoint is data, not instructions about the file system: Lightning restores the paths a
checkpoint's callback state names (``last_model_path``, ``best_model_path``, ...) and later removes
the "previous" one, so a crafted or moved checkpoint could make a resumed run delete any folder. Here
restored state keeps its scores and drops every path, and a removal happens only for a checkpoint
(a regular file, or a distributed checkpoint's link) directly inside this run's ``checkpoints/``,
after resolving symlinks and URL schemes.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from zoo.checkpoint.distributed import is_distributed_checkpoint, linked_data_dir, remove_distributed

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)
_LOCAL_SCHEMES = ("file", "local")  # fsspec's names for this machine's file system


class RunCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` in ``dirpath`` every ``every_n_train_steps`` steps and at the end of
    training (see the module docstring: no versions, no paths restored, removals confined)."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int):
        super().__init__(
            dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps, enable_version_counter=False
        )
        self._folder = Path(self.dirpath)  # Lightning's realpath of dirpath; nothing restored ever moves it

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Scores only (``best_model_score``, ``current_score``, ``kth_value`` when tensors); every
        path of the file is ignored: this run saves and removes only what it saved itself."""
        for name in ("best_model_score", "current_score"):
            value = state_dict.get(name)
            setattr(self, name, value if value is None or isinstance(value, torch.Tensor) else None)
        if isinstance(state_dict.get("kth_value"), torch.Tensor):
            self.kth_value = state_dict["kth_value"]
        self.best_model_path = self.kth_best_model_path = self.last_model_path = ""
        self.best_k_models = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.ckpt_path is not None and _same_file(trainer.ckpt_path, self._folder / "last.ckpt"):
            self._last_global_step_saved = trainer.global_step  # last.ckpt already holds this step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last.ckpt`` at the final step unless it already holds it (Lightning's saves only
        when nothing was saved in this fit, so a final step between two periodic ones was lost)."""
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        path = self.own_checkpoint(filepath)
        if path is None:
            rank_zero_warn(f"not removing {filepath!r}: it is not a checkpoint in this run's {str(self._folder)!r}")
        elif is_distributed_checkpoint(path) and path.is_symlink():
            if trainer.is_global_zero:
                remove_distributed(path)
        else:
            trainer.strategy.remove_checkpoint(path)

    def own_checkpoint(self, filepath: Any) -> Path | None:
        """``filepath`` (a path or a ``file://`` / ``local://`` URL) as a path when it names a
        checkpoint directly inside this run's checkpoints folder, after resolving symlinks in its
        folder and ``..``: a regular file or a distributed checkpoint's link to its data directory
        beside it. None for anything else (another folder, another file system, a directory)."""
        text = str(filepath)
        if match := _SCHEME.match(text):
            if match.group(1).lower() not in _LOCAL_SCHEMES:
                return None
            text = match.group(2)
        if not text:
            return None
        path = Path(text).absolute()
        if path.name in ("", ".", "..") or path.parent.resolve() != self._folder.resolve():
            return None
        path = self._folder.resolve() / path.name
        try:
            mode = path.lstat().st_mode
        except OSError:
            return None
        if stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and linked_data_dir(path) is not None):
            return path
        return None


def _same_file(a: Any, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except (OSError, RuntimeError, TypeError):
        return False
