"""``RunConfig``: one ``memzoo-train`` run as typed objects, made once from the composed Hydra config
by ``RunConfig.from_hydra``, which makes every value and cross-field check there; the library reads
the typed objects and never parses a dict again.

Defaults live once: in the dataclasses (``ModelConfig``, ``MemoryConfig``, ``OptimConfig``,
``ThroughputConfig``, registered as Hydra presets in ``zoo/configs/__init__.py``) or, for the
run's own values, the trainer, logger and task presets, in ``zoo/configs/``'s YAML; the dataclasses
here restate none of them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.core.dataclass_config import from_mapping, plain
from zoo.memory import MemoryConfig
from zoo.model.language_model import ModelConfig
from zoo.tasks import build_datamodule
from zoo.tasks.base import GeneratedDataModule
from zoo.training.optim import OptimConfig
from zoo.training.pretrained_init import InitConfig
from zoo.training.run_checks import check_run_options, fit_schedule
from zoo.training.slices import slice_datamodules
from zoo.training.throughput import ThroughputConfig
from zoo.training.validation_lines import validate_by_the_end

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class LoggerConfig:
    """The ``logger`` group (``zoo/configs/logger/``): TensorBoard in ``<run dir>/<subdir>``, and with
    ``name=wandb`` a W&B run beside it. The W&B settings are None where a preset gives none
    (``logger=tensorboard``); ``logger/wandb.yaml`` states their values."""

    name: str
    subdir: str
    mode: str | None = None
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    tags: list[str] | None = None
    run_name: str | None = None

    def check(self) -> None:
        """``logger=wandb`` needs the wandb package and a mode it knows; raise ``ValueError`` otherwise."""
        if self.name != "wandb":
            return
        if importlib.util.find_spec("wandb") is None:
            raise ValueError("logger=wandb needs the wandb package: pip install 'memzoo[wandb]' (or use logger=tensorboard)")
        if self.mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={self.mode!r} is not a W&B mode; allowed: {list(WANDB_MODES)}")


@dataclass
class CheckpointConfig:
    """The ``checkpoint`` settings: ``every_n_train_steps`` between periodic saves of last.ckpt (null or 0: none)."""

    every_n_train_steps: int | None


@dataclass
class RunConfig:
    """Everything one ``memzoo-train`` run reads, typed and checked (``from_hydra``).

    model: the backbone and memory groups with the task's vocabulary size (with ``init.pretrained``:
    the imported network's, with the memory group). optim, throughput, logger, checkpoint, init:
    their groups. task: the task's options (its datamodule checks them; ``name`` picks the task).
    trainer: ``lightning.Trainer`` keyword arguments (the ones memzoo reads are checked). seed,
    ckpt, overwrite, size_check, collective_timeout_s, test_slices: ``train.yaml``'s. notices: what
    the checks adjusted to keep a shortened run valid (a warmup as long as the schedule, a validation
    interval beyond max_steps), one line each, printed once by the command that runs it. data and
    slices: the task's datamodule and one per test slice (built once, by the check; nothing
    generated yet). config_yaml: the composed config, resolved, as the run's config.yaml records it.
    """

    model: ModelConfig
    optim: OptimConfig
    task: dict[str, Any]
    trainer: dict[str, Any]
    throughput: ThroughputConfig
    logger: LoggerConfig
    checkpoint: CheckpointConfig
    init: InitConfig
    seed: int
    ckpt: str | None
    overwrite: bool
    size_check: bool
    collective_timeout_s: float
    test_slices: list[dict[str, Any]]
    notices: list[str]
    data: GeneratedDataModule = field(repr=False, compare=False)
    slices: dict[str, GeneratedDataModule] = field(repr=False, compare=False)
    config_yaml: str = field(repr=False, compare=False)

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> RunConfig:
        """The composed ``train`` config -> ``RunConfig``, checked before any data, model or file is
        made, in this order: the run's own values, optimizer schedule and trainer, throughput, logger,
        task options and test slices, model (backbone, memory, mixers' own arguments). Raises
        ``ValueError`` naming the first bad key, its value and what is allowed."""
        checkpoint = from_mapping(CheckpointConfig, cfg.checkpoint, "checkpoint")
        check_run_options(cfg.seed, cfg.size_check, cfg.overwrite, checkpoint.every_n_train_steps, cfg.collective_timeout_s)
        optim = from_mapping(OptimConfig, cfg.optim, "optim")
        optim, warmup_notice = fit_schedule(optim, plain(cfg.trainer))
        trainer, validation_notice = validate_by_the_end(plain(cfg.trainer))
        throughput = from_mapping(ThroughputConfig, cfg.throughput, "throughput")  # checks itself
        logger = from_mapping(LoggerConfig, cfg.logger, "logger")
        logger.check()
        task, test_slices = plain(cfg.task), plain(cfg.test_slices)
        memory = None if cfg.memory.name == "none" else from_mapping(MemoryConfig, cfg.memory, "memory")
        init = from_mapping(InitConfig, cfg.init, "init")
        init.check(memory is not None)
        if init.pretrained is not None:
            from zoo.pretrained.importing import import_config  # needs the hf extra only when used

            path, model = import_config(init.pretrained, memory, size_check=cfg.size_check)
            init.pretrained = str(path)  # a hub id is downloaded once, here, and read from disk after
            if task.get("tokenizer") == "pretrained" and task.get("tokenizer_path") is None:
                task["tokenizer_path"] = init.pretrained
        slices = slice_datamodules(task, test_slices)  # each slice a test split the task can generate
        data = build_datamodule(task)  # the task's options checked; nothing generated
        vocab_size = data.vocab_size
        if init.pretrained is None:
            model = from_mapping(ModelConfig, {**plain(cfg.backbone), "vocab_size": int(vocab_size), "memory": memory}, "model")
            model.validate()
        elif vocab_size > model.vocab_size:
            raise ValueError(
                f"task.vocab_size={vocab_size} exceeds the pretrained model's vocab_size={model.vocab_size} "
                f"(init.pretrained={init.pretrained!r}); use task=lm task.tokenizer=pretrained, its own tokenizer"
            )
        return cls(
            model=model,
            optim=optim,
            task=task,
            trainer=trainer,
            throughput=throughput,
            logger=logger,
            checkpoint=checkpoint,
            init=init,
            seed=cfg.seed,
            ckpt=cfg.ckpt,
            overwrite=cfg.overwrite,
            size_check=cfg.size_check,
            collective_timeout_s=cfg.collective_timeout_s,
            test_slices=test_slices,
            notices=[notice for notice in (warmup_notice, validation_notice) if notice],
            data=data,
            slices=slices,
            config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        )

    @property
    def memory_name(self) -> str:
        """The memory preset's name, ``none`` without a memory."""
        return "none" if self.model.memory is None else self.model.memory.name

    def check_world(self, distributed: bool, world_size: int) -> None:
        """The one check that needs the trainer: a sharded memory (``memory.parallel`` rows / columns)
        needs memzoo's DDP (``trainer.strategy=ddp``, which saves it as a distributed checkpoint) and a
        world size that splits it. ``distributed``: the trainer's strategy is that DDP."""
        memory = self.model.memory
        if memory is None or memory.parallel == "none":
            return
        if not distributed:
            raise ValueError(
                f"memory.parallel={memory.parallel!r} needs a process group: use trainer=ddp "
                f"(this run's trainer.strategy is {self.trainer.get('strategy', 'auto')!r}; only trainer.strategy=ddp "
                "saves a sharded table without gathering it), or memory.parallel=none"
            )
        memory.check_world_size(self.model.d_model, world_size)
