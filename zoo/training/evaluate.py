"""``memzoo-eval ckpt=PATH task=...``: test a trained checkpoint on a task's test split (any length
or setting the task generates) and write metrics.json in the run directory."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from zoo.checkpoint.files import checkpoint_in
from zoo.core.command_line import check_overrides, usage_errors
from zoo.core.dir_lock import exclusive_dir
from zoo.core.io import atomic_write_json, format_metrics
from zoo.core.quiet import quiet_dependencies
from zoo.memory.callbacks import memory_callbacks
from zoo.model.loading import read_checkpoint
from zoo.tasks import build_datamodule
from zoo.training.guards import check_token_ids
from zoo.training.lit import LitLanguageModel
from zoo.training.run_checks import RUN_MARKERS


def claim_eval_dir(run_dir: Path, overwrite: bool) -> None:
    """An evaluation writes its own directory: never one holding a training run (its metrics.json
    would be replaced), nor an earlier evaluation's metrics.json unless ``overwrite``."""
    training = [name for name in RUN_MARKERS if name != "metrics.json" and (run_dir / name).exists()]
    if training:
        raise ValueError(
            f"{str(run_dir)!r} holds a training run ({', '.join(training)}); memzoo-eval never writes into one: "
            "pass the run's checkpoint as ckpt= and leave hydra.run.dir at its default (runs/eval/...) or choose a new one"
        )
    if (run_dir / "metrics.json").exists() and not overwrite:
        raise ValueError(
            f"{str(run_dir)!r} already holds an evaluation's metrics.json: pass overwrite=true to replace it, "
            "or choose another hydra.run.dir"
        )


def evaluate(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Test ``cfg.ckpt`` on ``cfg.task``; returns (and writes to run_dir/metrics.json) the metrics.
    The directory is locked for the evaluation and checked first (``claim_eval_dir``)."""
    run_dir = Path(run_dir)
    with exclusive_dir(run_dir, what="evaluation"):
        claim_eval_dir(run_dir, overwrite=bool(cfg.get("overwrite", False)))
        return _test_checkpoint(cfg, run_dir)


def _test_checkpoint(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """``evaluate`` in a claimed directory: read the checkpoint, test it, write metrics.json."""
    started = time.perf_counter()
    checkpoint, model = read_checkpoint(cfg.ckpt)  # read once (a run directory: its last.ckpt), weights checked
    datamodule = build_datamodule(OmegaConf.to_container(cfg.task, resolve=True))
    datamodule.setup("test")
    check_token_ids({"test": datamodule.datasets["test"]}, model.vocab_size)
    # testing takes no optimizer settings
    module = LitLanguageModel(model, bytes_per_token=datamodule.bytes_per_token, chance_bits=datamodule.chance_bits)
    module.load_state_dict(checkpoint["state_dict"])
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        logger=False,
        default_root_dir=str(run_dir),
        callbacks=memory_callbacks(model.memory, monitor=False),
    )
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {
        "test": {k: float(v) for k, v in results[0].items()},
        "ckpt": str(checkpoint_in(cfg.ckpt)),  # the file tested, also when ckpt= named a run directory
        "task": cfg.task.name,
        "test_shape": list(datamodule.datasets["test"].inputs.shape),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def main() -> None:
    """``memzoo-eval ckpt=PATH [OVERRIDE ...]``: a bad key or value ends in one message and exit code
    2 (``zoo.core.command_line``)."""
    check_overrides("eval", "memzoo-eval", sys.argv[1:])
    _hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://zoo.configs", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    quiet_dependencies(verbose=bool(HydraConfig.get().verbose))
    with usage_errors("memzoo-eval"):
        metrics = evaluate(cfg, run_dir)
    if rank_zero_only.rank == 0:
        print(f"{format_metrics(metrics['test'])} on {metrics['test_shape']}; metrics.json in {run_dir}")


if __name__ == "__main__":
    main()
