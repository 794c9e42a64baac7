"""``memzoo-eval ckpt=PATH task=...``: test a trained checkpoint on a task's test split (any length
or setting the task generates) and write metrics.json in the run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from tasks import build_datamodule
from zoo.checkpointing import read_checkpoint
from zoo.guards import check_token_ids
from zoo.io import atomic_write_json, format_metrics
from zoo.lit import LitLanguageModel


def evaluate(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Test ``cfg.ckpt`` on ``cfg.task``; returns (and writes to run_dir/metrics.json) the metrics."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    checkpoint, model_values = read_checkpoint(cfg.ckpt)  # read once: model config and weights
    datamodule = build_datamodule(OmegaConf.to_container(cfg.task, resolve=True))
    datamodule.setup("test")
    check_token_ids({"test": datamodule.datasets["test"]}, model_values["vocab_size"])
    module = LitLanguageModel(
        model=model_values,
        optim=checkpoint["hyper_parameters"]["optim"],
        bytes_per_token=datamodule.bytes_per_token,
    )
    module.load_state_dict(checkpoint["state_dict"])
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=False, default_root_dir=str(run_dir))
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {
        "test": {k: float(v) for k, v in results[0].items()},
        "ckpt": str(cfg.ckpt),
        "task": cfg.task.name,
        "test_shape": list(datamodule.datasets["test"].inputs.shape),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://zoo.configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    metrics = evaluate(cfg, run_dir)
    rank_zero_info(f"{format_metrics(metrics['test'])} on {metrics['test_shape']}; metrics.json in {run_dir}")


if __name__ == "__main__":
    main()
