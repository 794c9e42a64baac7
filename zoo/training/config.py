"""``RunConfig``: one ``memzoo-train`` run as typed objects, made once from the composed Hydra config
by ``RunConfig.from_hydra``, which makes every value and cross-field check there; the library reads
the typed objects and never parses a dict again.

Defaults live once: in the dataclasses (``ModelConfig``, ``MemoryConfig``, ``OptimConfig``,
``ThroughputConfig``, registered as Hydra presets in ``zoo/configs/__init__.py``) or, for the
run's own values, the trainer, logger and task presets, in ``zoo/configs/``'s YAML; the dataclasses
here restate none of them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.core.dataclass_config import plain, typed
from zoo.core.value_checks import check_int, check_real, is_int
from zoo.memory import MemoryConfig
from zoo.model.language_model import ModelConfig
from zoo.tasks import build_datamodule, task_options
from zoo.tasks.base import GeneratedDataModule
from zoo.training.optim import OptimConfig
from zoo.training.pretrained_init import InitConfig
from zoo.training.run_checks import fit_schedule
from zoo.training.slices import slice_datamodules
from zoo.training.throughput import ThroughputConfig

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
class TrainerConfig:
    """The ``trainer`` group (``zoo/configs/trainer/``): ``lightning.Trainer``'s keyword arguments.
    The ones memzoo reads are typed fields, which every preset states (``trainer/cpu.yaml``; a
    ``strategy`` only ``trainer=ddp``'s, else Lightning's ``auto``). Any other key a user adds
    (``+trainer.limit_val_batches=2``) is in ``others``, passed on as given, for Lightning to check."""

    accelerator: str
    devices: Any  # a count, a list of device indices, or "auto"
    precision: str
    max_steps: int
    val_check_interval: int | float | None  # training steps, or a fraction of an epoch
    check_val_every_n_epoch: int | None
    log_every_n_steps: int | None
    gradient_clip_val: float | None
    enable_progress_bar: bool
    enable_model_summary: bool
    strategy: str = "auto"
    others: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrainerConfig:
        """The group's keys -> ``TrainerConfig``: the typed fields by ``typed``, the rest in ``others``."""
        options, known = plain(options), {f.name for f in dataclasses.fields(cls)} - {"others"}
        others = {key: value for key, value in options.items() if key not in known}
        return typed(cls, {**{key: options[key] for key in known & set(options)}, "others": others}, "trainer")

    def kwargs(self) -> dict[str, Any]:
        """``lightning.Trainer``'s keyword arguments."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "others"}, **self.others}

    def validate(self) -> None:
        """The ranges Lightning would only reject mid-run: max_steps >= 1; gradient_clip_val finite
        >= 0 or null; val_check_interval an integer >= 1 (training steps) or a number in (0, 1] (a
        fraction of an epoch) or null; check_val_every_n_epoch and log_every_n_steps >= 1 or null."""
        check_int("trainer.max_steps", self.max_steps, low=1)
        check_real("trainer.gradient_clip_val", self.gradient_clip_val, low=0, null="no clipping")
        interval = self.val_check_interval
        if interval is not None and not (interval >= 1 if is_int(interval) else math.isfinite(interval) and 0 < interval <= 1):
            raise ValueError(
                f"trainer.val_check_interval={interval!r} must be an integer >= 1 (training steps between "
                "validations) or a number in (0, 1] (a fraction of an epoch)"
            )
        check_int("trainer.check_val_every_n_epoch", self.check_val_every_n_epoch, null="validate by val_check_interval only")
        check_int("trainer.log_every_n_steps", self.log_every_n_steps, null="Lightning's 50")

    def validating_by_the_end(self) -> tuple[TrainerConfig, str | None]:
        """(these settings with a ``val_check_interval`` (training steps) that fits in ``max_steps``,
        the notice saying so, or None): one above it becomes ``max_steps``, so that a run shorter than
        its interval still validates once, at its end (Lightning would never validate it)."""
        interval = self.val_check_interval
        if not (is_int(interval) and interval > self.max_steps):
            return self, None
        steps = self.max_steps
        notice = f"trainer.val_check_interval={interval} is beyond trainer.max_steps={steps}: validating once, at step {steps}"
        return dataclasses.replace(self, val_check_interval=steps), notice


SEED_RANGE = (0, 2**32 - 1)  # what lightning.seed_everything and numpy accept


@dataclass
class RunOptions:
    """``train.yaml``'s own keys: seed, ckpt (resume from), overwrite, size_check,
    collective_timeout_s, test_slices (each a mapping of task options) and checkpoint."""

    seed: int
    ckpt: str | None
    overwrite: bool
    size_check: bool
    collective_timeout_s: float
    test_slices: list[dict[str, Any]]
    checkpoint: CheckpointConfig

    def validate(self) -> None:
        """seed in [0, 2^32 - 1], every_n_train_steps >= 0 or null, collective_timeout_s finite > 0."""
        check_int("seed", self.seed, *SEED_RANGE)
        check_int("checkpoint.every_n_train_steps", self.checkpoint.every_n_train_steps, low=0, null="no periodic checkpoint")
        check_real("collective_timeout_s", self.collective_timeout_s, low=0, low_open=True)


@dataclass
class RunConfig(RunOptions):
    """Everything one ``memzoo-train`` run reads, typed and checked (``from_hydra``).

    model: the backbone and memory groups with the task's vocabulary size (with ``init.pretrained``:
    the imported network's, with the memory group). optim, throughput, logger, init, trainer: their
    groups. task: the task's options, typed by its signature (``name`` picks the task). The
    ``RunOptions`` fields: ``train.yaml``'s. notices: what the checks adjusted to keep a shortened
    run valid (a warmup as long as the schedule, a validation interval beyond max_steps), one line
    each, printed once by the command that runs it. data and slices: the task's datamodule and one
    per test slice (built once, by the check; nothing generated yet). config_yaml: the composed
    config, resolved, as the run's config.yaml records it.
    """

    model: ModelConfig
    optim: OptimConfig
    task: dict[str, Any]
    trainer: TrainerConfig
    throughput: ThroughputConfig
    logger: LoggerConfig
    init: InitConfig
    notices: list[str]
    data: GeneratedDataModule = field(repr=False, compare=False)
    slices: dict[str, GeneratedDataModule] = field(repr=False, compare=False)
    config_yaml: str = field(repr=False, compare=False)

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> RunConfig:
        """The composed ``train`` config -> ``RunConfig``, typed group by group (``typed``: a value of
        the wrong type or an unknown key) and checked before any data, model or file is made, in
        this order: the run's own values, trainer and optimizer schedule, throughput, logger, task
        options and test slices, model (backbone, memory, mixers' own arguments). Raises
        ``ValueError`` naming the first bad key, its value and what is allowed."""
        own = typed(RunOptions, {f.name: cfg[f.name] for f in dataclasses.fields(RunOptions)}, "")
        own.validate()
        trainer = TrainerConfig.from_options(cfg.trainer)
        trainer.validate()
        optim, warmup_notice = fit_schedule(typed(OptimConfig, cfg.optim, "optim"), trainer.max_steps)
        trainer, validation_notice = trainer.validating_by_the_end()
        throughput = typed(ThroughputConfig, cfg.throughput, "throughput")  # checks itself
        logger = typed(LoggerConfig, cfg.logger, "logger")
        logger.check()
        task = task_options(plain(cfg.task))
        memory = None if cfg.memory.name == "none" else typed(MemoryConfig, cfg.memory, "memory")
        init = typed(InitConfig, cfg.init, "init")
        init.check(memory is not None)
        if init.pretrained is not None:
            from zoo.pretrained.importing import import_config  # needs the hf extra only when used

            path, model = import_config(init.pretrained, memory, size_check=own.size_check)
            init.pretrained = str(path)  # a hub id is downloaded once, here, and read from disk after
            if task.get("tokenizer") == "pretrained" and task.get("tokenizer_path") is None:
                task["tokenizer_path"] = init.pretrained
        slices = slice_datamodules(task, own.test_slices)  # each slice a test split the task can generate
        data = build_datamodule(task)  # the task's options typed and checked; nothing generated
        if init.pretrained is None:
            model = typed(ModelConfig, {**plain(cfg.backbone), "vocab_size": data.vocab_size, "memory": memory}, "backbone")
            model.validate()
        elif data.vocab_size > model.vocab_size:
            raise ValueError(
                f"task.vocab_size={data.vocab_size} exceeds the pretrained model's vocab_size={model.vocab_size} "
                f"(init.pretrained={init.pretrained!r}); use task=lm task.tokenizer=pretrained, its own tokenizer"
            )
        return cls(
            **{f.name: getattr(own, f.name) for f in dataclasses.fields(RunOptions)},
            model=model,
            optim=optim,
            task=task,
            trainer=trainer,
            throughput=throughput,
            logger=logger,
            init=init,
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
                f"(this run's trainer.strategy is {self.trainer.strategy!r}; only trainer.strategy=ddp "
                "saves a sharded table without gathering it), or memory.parallel=none"
            )
        memory.check_world_size(self.model.d_model, world_size)
