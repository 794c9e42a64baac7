"""``memzoo-train`` (= ``python -m zoo.training.train``): Hydra config -> Lightning fit + test -> metrics.json."""

from __future__ import annotations

import importlib.util
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from zoo.checkpoint.files import read_hyper_parameters, resume_path
from zoo.core.io import atomic_write_json, atomic_write_text, format_metrics
from zoo.memory.monitor import MemoryMonitor, memory_layers, sent_bytes_per_token
from zoo.model.flops import active_parameters, forward_flops_per_token, state_size
from zoo.model.language_model import ModelConfig
from zoo.model.size_budget import Budget, check_run_size
from zoo.tasks import build_datamodule
from zoo.training.checkpoint_io import AtomicCheckpointIO, DistributedCheckpointDDP, with_distributed_checkpoints
from zoo.training.guards import check_same_model, check_token_ids
from zoo.training.lit import LitLanguageModel
from zoo.training.run_checkpoint import RunCheckpoint
from zoo.training.run_checks import check_batches, check_run_options, check_schedule, claim_run_dir, remove_stale_temp_files
from zoo.training.run_lock import exclusive_dir
from zoo.training.signals import CheckpointOnSignal, RunInterrupted, StopSignals
from zoo.training.slices import generate_slices, slice_datamodules
from zoo.training.stuck_ranks import CollectiveTimeout, collective_timeouts
from zoo.training.throughput import RunThroughput, ThroughputConfig

# lightning's pytree helper trips a torch deprecation on every step; it is not ours to act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

WANDB_MODES = ("online", "offline", "disabled")


def model_config(cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    """The ``ModelConfig`` fields of a run: the backbone and memory groups plus the task's vocabulary size."""
    values = OmegaConf.to_container(cfg.backbone, resolve=True)
    values["vocab_size"] = int(vocab_size)
    if cfg.memory.name != "none":
        values["memory"] = OmegaConf.to_container(cfg.memory, resolve=True)
    ModelConfig.from_mapping(values).validate()
    return values


def check_memory_layout(model_values: dict[str, Any], trainer: L.Trainer) -> None:
    """A sharded memory (``memory.parallel`` rows / columns) needs memzoo's DDP (``trainer=ddp``,
    which saves it as a distributed checkpoint) and a world size that splits it; raise
    ``ValueError`` before any compute otherwise."""
    memory = ModelConfig.from_mapping(model_values).memory_config()
    if memory is None or memory.parallel == "none":
        return
    if not isinstance(trainer.strategy, DistributedCheckpointDDP):
        raise ValueError(
            f"memory.parallel={memory.parallel!r} needs a process group: use trainer=ddp "
            f"(this run's strategy is {type(trainer.strategy).__name__}; only trainer.strategy=ddp saves a "
            "sharded table without gathering it), or memory.parallel=none"
        )
    memory.check_world_size(model_values["d_model"], trainer.world_size)


def run_hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """What the HParams dashboard filters and sorts runs by: backbone, memory, size, lr, task knobs."""
    values = {"backbone": cfg.backbone.name, "memory": cfg.memory.name, "task": cfg.task.name,
              "d_model": cfg.backbone.d_model, "n_layers": cfg.backbone.n_layers, "lr": cfg.optim.lr,
              "max_steps": cfg.trainer.max_steps}
    for key, value in OmegaConf.to_container(cfg.task, resolve=True).items():
        if key != "name" and isinstance(value, (int, float, str, bool)):
            values[f"task.{key}"] = value
    if cfg.memory.name != "none":
        values.update({f"memory.{k}": cfg.memory[k] for k in ("n_keys", "heads", "knn", "k_dim", "parallel")})
    return values


def throughput_config(cfg: DictConfig) -> ThroughputConfig:
    """The run's ``throughput`` settings, checked."""
    return ThroughputConfig(**OmegaConf.to_container(cfg.throughput, resolve=True))


def check_logger(logger: DictConfig) -> None:
    """``logger=wandb`` needs the wandb package and a mode it knows; raise ``ValueError`` otherwise."""
    if logger.name != "wandb":
        return
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("logger=wandb needs the wandb package: pip install 'memzoo[wandb]' (or use logger=tensorboard)")
    if logger.mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={logger.mode!r} is not a W&B mode; allowed: {list(WANDB_MODES)}")


def build_loggers(logger: DictConfig, run_dir: Path) -> list[Logger]:
    """TensorBoard in ``run_dir/<logger.subdir>``, and with ``logger=wandb`` a W&B run beside it
    (its files in ``run_dir/wandb``; offline mode needs no network: ``wandb sync`` uploads later)."""
    loggers: list[Logger] = [TensorBoardLogger(save_dir=str(run_dir), name=logger.subdir, version="", default_hp_metric=False)]
    if logger.name == "wandb":
        loggers.append(WandbLogger(save_dir=str(run_dir), name=logger.run_name or str(run_dir), project=logger.project,
                                   entity=logger.entity, group=logger.group, tags=list(logger.tags),
                                   offline=logger.mode == "offline", mode=logger.mode))
    return loggers


def log_final(loggers: list[Logger], hyperparameters: dict[str, Any], test: dict[str, float], step: int) -> None:
    """The run's settings and its final test metrics (``final/<name>``): TensorBoard's HParams
    dashboard pairs them; other loggers get them as config and metrics."""
    final = {f"final/{k.removeprefix('test/')}": v for k, v in test.items()}  # test/acc -> final/acc
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hyperparameters, final)
        else:
            logger.log_hyperparams(hyperparameters)
            logger.log_metrics(final, step=step)


def close_loggers(loggers: list[Logger], status: str) -> None:
    """Flush every logger; the W&B run is finished, so the next run in this process (a grid's next
    cell) starts its own instead of reusing it."""
    for logger in loggers:
        logger.finalize(status)
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:  # None when the run stopped before logging anything
            wandb.finish(exit_code=0 if status == "success" else 1)


def check_run_config(cfg: DictConfig, budget: Budget | None = None) -> None:
    """The checks a run makes before it generates data or builds a model (seed and run options,
    schedule and trainer, throughput and logger settings, task arguments, model settings, and
    unless ``size_check=false`` the memory the run would take against ``budget``, None: this
    machine's; see ``zoo.model.size_budget``); ``train`` makes them first, ``memzoo-grid`` for every cell."""
    check_run_options(cfg.get("seed"), cfg.get("size_check", True), cfg.get("overwrite", False),
                      OmegaConf.select(cfg, "checkpoint.every_n_train_steps"), cfg.collective_timeout_s)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_schedule(OmegaConf.to_container(cfg.optim, resolve=True), trainer)
    throughput_config(cfg)
    check_logger(cfg.logger)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    slices = slice_datamodules(task, OmegaConf.to_container(cfg.test_slices, resolve=True))
    datamodule = build_datamodule(task)
    model_values = model_config(cfg, datamodule.vocab_size)
    if cfg.get("size_check", True):
        check_run_size(model_values, datamodule, list(slices.values()), trainer, budget)


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Fit and test one configuration; writes config.yaml, tb/, checkpoints/ and metrics.json in ``run_dir``.

    Everything that can be checked is checked before any data, model or file is made. SIGTERM or
    SIGINT saves checkpoints/last.ckpt at the current step and raises ``RunInterrupted``.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    trainer_options = OmegaConf.to_container(cfg.trainer, resolve=True)
    optim_options = OmegaConf.to_container(cfg.optim, resolve=True)
    check_run_config(cfg)  # every value, and the size budget, before any data, model or file is made
    speed = throughput_config(cfg)
    resume = resume_path(cfg.get("ckpt"), run_dir)
    if rank_zero_only.rank != 0:  # the ranks Lightning or torchrun start later share rank 0's directory
        return _fit_and_test(cfg, run_dir, resume, trainer_options, optim_options, speed, started)
    with exclusive_dir(run_dir):  # one run per directory: a second memzoo-train into it is refused
        claim_run_dir(run_dir, resuming=resume is not None, overwrite=bool(cfg.get("overwrite", False)))
        remove_stale_temp_files(run_dir)
        return _fit_and_test(cfg, run_dir, resume, trainer_options, optim_options, speed, started)


def _fit_and_test(cfg: DictConfig, run_dir: Path, resume: Path | None, trainer_options: dict[str, Any],
                  optim_options: dict[str, Any], speed: ThroughputConfig, started: float) -> dict[str, Any]:
    """``train`` once its settings are checked and its directory claimed: data, model, fit, test, metrics.json."""
    loggers, status = build_loggers(cfg.logger, run_dir), "failed"
    try:
        with StopSignals() as stop:
            task = OmegaConf.to_container(cfg.task, resolve=True)
            test_slices = OmegaConf.to_container(cfg.test_slices, resolve=True)
            slice_modules = slice_datamodules(task, test_slices)
            datamodule = build_datamodule(task)
            model_values = model_config(cfg, datamodule.vocab_size)
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            datamodule.setup("fit")  # generated / tokenized once here; text tasks then know their bytes per token
            slices = generate_slices(slice_modules)
            datamodule.datasets.update(slices)  # checked like the splits: token ids, an example per rank
            check_token_ids(datamodule.datasets, model_values["vocab_size"])
            if resume is not None:  # refuse another model's checkpoint before anything is written
                check_same_model(read_hyper_parameters(resume)["model"], model_values)
            stop.check("before training started")

            seq_len = datamodule.datasets["train"].inputs.shape[1]
            # last.ckpt, overwritten in place; restores no paths from a checkpoint, removes nothing outside checkpoints/
            checkpoint = RunCheckpoint(run_dir / "checkpoints", every_n_train_steps=cfg.checkpoint.every_n_train_steps)
            on_signal = CheckpointOnSignal(stop, run_dir / "checkpoints")
            throughput = RunThroughput(seq_len, speed)
            trainer = L.Trainer(
                **with_distributed_checkpoints(trainer_options, cfg.collective_timeout_s),
                default_root_dir=str(run_dir),
                logger=loggers,
                callbacks=[checkpoint, on_signal, throughput, MemoryMonitor(), LearningRateMonitor(logging_interval="step")],
                plugins=[AtomicCheckpointIO()],
            )
            check_batches({k: len(v) for k, v in datamodule.datasets.items()}, datamodule.batch_size, trainer.world_size)
            check_memory_layout(model_values, trainer)  # the last cross-field check: all of them precede the model
            module = LitLanguageModel(
                model=model_values,
                optim=optim_options,
                bytes_per_token=datamodule.bytes_per_token,
                test_slices=list(slices),
            )
            if trainer.is_global_zero:
                atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            with stop.lightning_stops_as_interrupts(), collective_timeouts(trainer, cfg.collective_timeout_s):
                trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            stop.check(f"after training (step {trainer.global_step}, checkpoint in {run_dir / 'checkpoints'})")
            # the task's test split, then each slice, loaded (and sharded across ranks) as the task loads it
            test_sets = [datamodule.test_dataloader(), *(datamodule._eval_loader(name) for name in slices)]
            with stop.lightning_stops_as_interrupts(), collective_timeouts(trainer, cfg.collective_timeout_s):
                test_results = trainer.test(module, dataloaders=test_sets, verbose=False)
            stop.check("after the test")
        test = {k: float(v) for results in test_results for k, v in results.items()}
        metrics = {
            "test": test,
            "params": {
                "total": module.model.num_parameters(),
                "embedding": module.model.embedding.weight.numel(),
                "active": active_parameters(module.model),
            },
            "flops_per_token": forward_flops_per_token(module.model, seq_len),
            "state_size": state_size(module.model, seq_len),
            "throughput": throughput.summary(),
            "steps": int(trainer.global_step),
            "world_size": trainer.world_size,
            "wall_time_s": round(time.perf_counter() - started, 2),
            "backbone": cfg.backbone.name,
            "memory": cfg.memory.name,
            "task": cfg.task.name,
        }
        if test_slices:
            metrics["test_slices"] = [{**knobs, "acc": test[f"{name}/acc"], "loss": test[f"{name}/loss"]}
                                      for knobs, name in zip(test_slices, slices)]
        if memory_layers(module):
            metrics["memory_comm_bytes_per_token"] = sent_bytes_per_token(module, trainer.world_size)
        if summary := datamodule.summarize(metrics["test"], metrics["params"]["total"]):
            metrics["task_metrics"] = summary
        log_final(loggers, run_hyperparameters(cfg), metrics["test"], trainer.global_step)
        status = "success"
    finally:  # flush (the writer Lightning closed after testing was reopened for the final values)
        close_loggers(loggers, status)
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://zoo.configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = train(cfg, run_dir)
    except RunInterrupted as stopped:  # 143 (SIGTERM) / 130 (SIGINT): a sweep stops here too
        print(f"{stopped}; resume with: memzoo-train ... hydra.run.dir={run_dir} ckpt=last", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except CollectiveTimeout as stuck:
        print(f"{stuck}; the last checkpoint is in {run_dir}/checkpoints (resume with ckpt=last)", file=sys.stderr)
        sys.exit(1)
    rank_zero_info(f"{format_metrics(metrics['test'])} in {metrics['wall_time_s']:.0f}s; metrics.json in {run_dir}")


if __name__ == "__main__":
    main()
