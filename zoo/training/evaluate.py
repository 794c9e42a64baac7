"""``memzoo-eval ckpt=PATH task=...``: test a trained checkpoint on a task's test split (any length
or setting the task generates) and write metrics.json in the run directory."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from zoo.checkpoint.files import checkpoint_in
from zoo.core.command_line import hydra_flags, run_composed, usage_errors
from zoo.core.dataclass_config import plain, typed
from zoo.core.dir_lock import exclusive_dir
from zoo.core.io import atomic_write_json, format_metrics
from zoo.core.quiet import quiet_dependencies
from zoo.core.value_checks import check_int
from zoo.memory.callbacks import memory_callbacks
from zoo.model.loading import read_checkpoint
from zoo.tasks import build_datamodule, task_options
from zoo.tasks.base import GeneratedDataModule
from zoo.training.config import SEED_RANGE, TrainerConfig
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


@dataclass
class EvalRun:
    """A ``memzoo-eval`` config, typed and checked: ``eval.yaml``'s keys, the task's options typed by
    its signature, the trainer group, and the task's datamodule (built once; nothing generated yet)."""

    ckpt: str
    seed: int
    overwrite: bool
    task: dict[str, Any]
    trainer: TrainerConfig
    data: GeneratedDataModule = field(repr=False, compare=False)

    @classmethod
    def check(cls, cfg: DictConfig) -> EvalRun:
        """``ValueError`` naming a value of the wrong type, a bad task option, or a ``ckpt`` directory
        that holds no checkpoint."""
        own = typed(EvalOptions, {name: cfg[name] for name in ("ckpt", "seed", "overwrite")}, "")
        check_int("seed", own.seed, *SEED_RANGE)
        checkpoint_in(own.ckpt)
        task = task_options(plain(cfg.task))
        return cls(own.ckpt, own.seed, own.overwrite, task, TrainerConfig.from_options(cfg.trainer), build_datamodule(task))


@dataclass
class EvalOptions:
    """``eval.yaml``'s own keys."""

    ckpt: str
    seed: int
    overwrite: bool


def evaluate(run: EvalRun | DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Test ``run.ckpt`` on its task (a composed config is checked first, ``EvalRun.check``);
    returns (and writes to run_dir/metrics.json) the metrics. The directory is locked for the
    evaluation and checked first (``claim_eval_dir``)."""
    run = run if isinstance(run, EvalRun) else EvalRun.check(run)
    run_dir = Path(run_dir)
    with exclusive_dir(run_dir, what="evaluation"):
        claim_eval_dir(run_dir, overwrite=run.overwrite)
        return _test_checkpoint(run, run_dir)


def _test_checkpoint(run: EvalRun, run_dir: Path) -> dict[str, Any]:
    """``evaluate`` in a claimed directory: read the checkpoint, test it, write metrics.json."""
    started = time.perf_counter()
    datamodule = run.data
    checkpoint, model = read_checkpoint(run.ckpt)  # read once (a run directory: its last.ckpt), weights checked
    datamodule.setup("test")
    check_token_ids({"test": datamodule.datasets["test"]}, model.vocab_size)
    # testing takes no optimizer settings
    module = LitLanguageModel(model, bytes_per_token=datamodule.bytes_per_token, chance_bits=datamodule.chance_bits)
    module.load_state_dict(checkpoint["state_dict"])
    L.seed_everything(run.seed, workers=True, verbose=False)
    trainer = L.Trainer(
        **run.trainer.kwargs(),
        logger=False,
        default_root_dir=str(run_dir),
        callbacks=memory_callbacks(model.memory, monitor=False),
    )
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {
        "test": {k: float(v) for k, v in results[0].items()},
        "ckpt": str(checkpoint_in(run.ckpt)),  # the file tested, also when ckpt= named a run directory
        "task": run.task["name"],
        "test_shape": list(datamodule.datasets["test"].shape),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def main() -> None:
    """``memzoo-eval ckpt=PATH [OVERRIDE ...]``: the config is composed once and checked once
    (``EvalRun.check``) before Hydra makes the run directory; a bad key or value ends in one message
    and exit code 2 (``zoo.core.command_line``). Hydra's flags (``--help``, ``--cfg``) go to Hydra."""
    argv = sys.argv[1:]
    if hydra_flags(argv):
        _hydra_main()
        return
    run_composed("eval", "memzoo-eval", argv, EvalRun.check, _eval_job)


@hydra.main(version_base="1.3", config_path="pkg://zoo.configs", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    """An evaluation Hydra composed (a command line with Hydra's flags), checked here."""
    with usage_errors("memzoo-eval"):
        run = EvalRun.check(cfg)
    _eval_job(run)


def _eval_job(run: EvalRun) -> None:
    """Evaluate the checked ``run`` in the directory Hydra made for this job; the last line says where."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    quiet_dependencies(verbose=bool(HydraConfig.get().verbose))
    with usage_errors("memzoo-eval"):
        metrics = evaluate(run, run_dir)
    if rank_zero_only.rank == 0:
        print(f"{format_metrics(metrics['test'])} on {metrics['test_shape']}; metrics.json in {run_dir}")


if __name__ == "__main__":
    main()
