"""One ``memzoo-train`` run assembled from its ``RunConfig``: the checks before anything is made
(``check_run_config``), the loggers, the Lightning trainer and module, fit and test, and the
metrics a run reports (``fit_and_test``). ``zoo.training.train`` is the thin entry point around it."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from zoo.checkpoint.files import read_hyper_parameters
from zoo.core.io import atomic_write_json, atomic_write_text
from zoo.memory.callbacks import memory_callbacks
from zoo.memory.monitor import sent_bytes_per_token
from zoo.model.flops import active_parameters, channel_parameters, forward_flops_per_token, state_size
from zoo.model.loading import stored_model_config
from zoo.model.size_budget import Budget
from zoo.training.checkpoint_io import AtomicCheckpointIO, DistributedCheckpointDDP, with_distributed_checkpoints
from zoo.training.config import LoggerConfig, RunConfig
from zoo.training.guards import check_same_model, check_token_ids
from zoo.training.lit import LitLanguageModel
from zoo.training.pretrained_init import start_from_pretrained
from zoo.training.run_checkpoint import RunCheckpoint
from zoo.training.run_checks import check_batches
from zoo.training.run_record import RunSettings
from zoo.training.run_size import check_run_fits
from zoo.training.signals import CheckpointOnSignal, StopSignals
from zoo.training.slices import generate_slices
from zoo.training.stuck_ranks import collective_timeouts
from zoo.training.throughput import RunThroughput
from zoo.training.validation_lines import ValidationLines


def check_run_config(cfg: DictConfig, budget: Budget | None = None) -> RunConfig:
    """The composed ``train`` config -> its ``RunConfig`` with every check a run makes before it
    generates data or builds a model (``RunConfig.from_hydra``), then, unless ``size_check=false``,
    the memory the run would take against ``budget`` (None: this machine's; ``zoo.model.size_budget``).
    ``train`` makes them first, ``memzoo-grid`` for every cell."""
    run = RunConfig.from_hydra(cfg)
    if run.size_check:
        check_run_fits(run, budget)
    return run


def run_hyperparameters(run: RunConfig) -> dict[str, Any]:
    """What the HParams dashboard filters and sorts runs by: backbone, memory, size, lr, task knobs."""
    values = {
        "backbone": run.model.name,
        "memory": run.memory_name,
        "task": run.task["name"],
        "d_model": run.model.d_model,
        "n_layers": run.model.n_layers,
        "lr": run.optim.lr,
        "max_steps": run.trainer.max_steps,
    }
    for key, value in run.task.items():
        if key != "name" and isinstance(value, (int, float, str, bool)):
            values[f"task.{key}"] = value
    if run.model.memory is not None:
        values.update({f"memory.{k}": getattr(run.model.memory, k) for k in ("n_keys", "heads", "knn", "k_dim", "parallel")})
    return values


def build_loggers(logger: LoggerConfig, run_dir: Path) -> list[Logger]:
    """TensorBoard in ``run_dir/<logger.subdir>``, and with ``logger=wandb`` a W&B run beside it
    (its files in ``run_dir/wandb``; offline mode needs no network: ``wandb sync`` uploads later)."""
    loggers: list[Logger] = [TensorBoardLogger(save_dir=str(run_dir), name=logger.subdir, version="", default_hp_metric=False)]
    if logger.name == "wandb":
        loggers.append(
            WandbLogger(
                save_dir=str(run_dir),
                name=logger.run_name or str(run_dir),
                project=logger.project,
                entity=logger.entity,
                group=logger.group,
                tags=list(logger.tags or []),
                offline=logger.mode == "offline",
                mode=logger.mode,
            )
        )
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


def fit_and_test(run: RunConfig, run_dir: Path, resume: Path | None, config_yaml: str | None, started: float) -> dict[str, Any]:
    """A checked run in its claimed directory: data, trainer, model, fit, test; writes config.yaml
    (``config_yaml``, the composed config; None: a resume keeps the saved one), tb/, checkpoints/ and
    metrics.json; returns the metrics.
    SIGTERM or SIGINT saves checkpoints/last.ckpt at the current step and raises ``RunInterrupted``."""
    loggers, status = build_loggers(run.logger, run_dir), "failed"
    try:
        with StopSignals() as stop:
            datamodule = run.data
            L.seed_everything(run.seed, workers=True, verbose=False)
            datamodule.setup("fit")  # generated / tokenized once here; text tasks then know their bytes per token
            slices = generate_slices(run.slices)
            datamodule.datasets.update(slices)  # checked like the splits: token ids, an example per rank
            check_token_ids(datamodule.datasets, run.model.vocab_size)
            if resume is not None:  # refuse another model's checkpoint before anything is written
                check_same_model(stored_model_config(read_hyper_parameters(resume)["model"]), run.model)
            stop.check("before training started")

            seq_len = datamodule.datasets["train"].shape[1]
            # last.ckpt, overwritten in place; restores no paths from a checkpoint, removes nothing outside checkpoints/
            checkpoint = RunCheckpoint(run_dir / "checkpoints", every_n_train_steps=run.checkpoint.every_n_train_steps)
            on_signal = CheckpointOnSignal(stop, run_dir / "checkpoints")
            throughput = RunThroughput(seq_len, run.throughput)
            quiet_bar = not run.trainer.enable_progress_bar  # a grid's cell: a line per validation instead
            trainer = L.Trainer(
                **with_distributed_checkpoints(run.trainer.kwargs(), run.collective_timeout_s),
                default_root_dir=str(run_dir),
                logger=loggers,
                callbacks=[
                    checkpoint,
                    on_signal,
                    throughput,
                    LearningRateMonitor(logging_interval="step"),
                    *memory_callbacks(run.model.memory),
                    # a line per validation without a bar; with it, the tqdm bar ("Epoch 3: 40%"): the rich bar Lightning
                    # picks where rich is installed counts epochs to max_epochs - 1, "Epoch 0/-2" in a run bounded by steps
                    ValidationLines("/".join(run_dir.parts[-2:])) if quiet_bar else TQDMProgressBar(),
                ],
                plugins=[AtomicCheckpointIO()],
            )
            check_batches({k: len(v) for k, v in datamodule.datasets.items()}, datamodule.batch_size, trainer.world_size)
            # the last cross-field check: all of them precede the model
            run.check_world(isinstance(trainer.strategy, DistributedCheckpointDDP), trainer.world_size)
            module = LitLanguageModel(
                run.model,
                run.optim,
                bytes_per_token=datamodule.bytes_per_token,
                test_slices=list(slices),
                chance_bits=datamodule.chance_bits,
                pretrained=run.init.pretrained,
            )
            start_from_pretrained(module.model, run.init, resume)
            if trainer.is_global_zero and config_yaml is not None:
                atomic_write_text(run_dir / "config.yaml", config_yaml)
            with stop.lightning_stops_as_interrupts(), collective_timeouts(trainer, run.collective_timeout_s):
                trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            stop.check(f"after training (step {trainer.global_step}, checkpoint in {run_dir / 'checkpoints'})")
            # the last validation's metrics (val/loss, val/acc, val/bpb, ...), before testing replaces them
            last_val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            # the task's test split, then each slice, loaded (and sharded across ranks) as the task loads it
            test_sets = [datamodule.test_dataloader(), *(datamodule.eval_dataloader(name) for name in slices)]
            with stop.lightning_stops_as_interrupts(), collective_timeouts(trainer, run.collective_timeout_s):
                test_results = trainer.test(module, dataloaders=test_sets, verbose=False)
            stop.check("after the test")
        test = {k: float(v) for results in test_results for k, v in results.items()}
        metrics = run_metrics(run, module, trainer, datamodule, test, list(slices), seq_len, throughput, started)
        if last_val:
            metrics["val"] = last_val
        log_final(loggers, run_hyperparameters(run), metrics["test"], trainer.global_step)
        status = "success"
    finally:  # flush (the writer Lightning closed after testing was reopened for the final values)
        close_loggers(loggers, status)
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def run_metrics(
    run: RunConfig,
    module: LitLanguageModel,
    trainer: L.Trainer,
    datamodule,
    test: dict[str, float],
    slice_names: list[str],
    seq_len: int,
    throughput: RunThroughput,
    started: float,
) -> dict[str, Any]:
    """What metrics.json holds: test metrics (and per test slice), parameters, FLOPs and state per
    token, throughput, steps, world size, wall time, the run's names and settings, memory traffic, task metrics
    (``fit_and_test`` adds ``val``: the last validation's metrics, when the fit validated)."""
    model = module.model
    metrics = {
        "test": test,
        "params": {
            "total": model.num_parameters(),
            "embedding": model.embedding.weight.numel(),
            "active": active_parameters(model),
            "channel": channel_parameters(model),
        },
        "flops_per_token": forward_flops_per_token(model, seq_len),
        "state_size": state_size(model, seq_len),
        "throughput": throughput.summary(),
        "steps": int(trainer.global_step),
        "world_size": trainer.world_size,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "backbone": run.model.name,
        "memory": run.memory_name,
        "task": run.task["name"],
        "settings": asdict(RunSettings.of(run)),  # what the run was, for a grid's report
    }
    if run.test_slices:
        metrics["test_slices"] = [
            {**knobs, "acc": test[f"{name}/acc"], "loss": test[f"{name}/loss"]}
            for knobs, name in zip(run.test_slices, slice_names)
        ]
    sent = sent_bytes_per_token(model, trainer.world_size)
    if any(sent.values()):  # a sharded table; a local one sends nothing
        metrics["memory_comm_bytes_per_token"] = sent
    if summary := datamodule.summarize(metrics):
        metrics["task_metrics"] = summary
    return metrics
