"""Tasks: LightningDataModules yielding ``{"inputs": (B,L) long, "targets": (B,L) long}`` batches.

``targets`` holds -100 where a position is not scored. ``TASKS`` maps a task's config name to its
class; adding a task is one module plus one line here. A synthetic task's module holds a frozen knob
dataclass, a pure generator and a one-statement ``SyntheticDataModule`` subclass (``zoo.tasks.base``).
"""

from collections.abc import Mapping
from typing import Any

from zoo.core.dataclass_config import typed_options
from zoo.tasks.base import GeneratedDataModule
from zoo.tasks.facts import FactsDataModule
from zoo.tasks.lm import LanguageModelingDataModule
from zoo.tasks.mad import (
    CompressionDataModule,
    FuzzyInContextRecallDataModule,
    InContextRecallDataModule,
    MemorizationDataModule,
    NoisyInContextRecallDataModule,
    SelectiveCopyingDataModule,
)
from zoo.tasks.mqar import MQARDataModule

TASKS: dict[str, type] = {
    "compression": CompressionDataModule,
    "facts": FactsDataModule,
    "fuzzy_icr": FuzzyInContextRecallDataModule,
    "icr": InContextRecallDataModule,
    "lm": LanguageModelingDataModule,
    "memorization": MemorizationDataModule,
    "mqar": MQARDataModule,
    "noisy_icr": NoisyInContextRecallDataModule,
    "selective_copying": SelectiveCopyingDataModule,
}


def task_options(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``task`` config (a mapping with ``name``) -> the same mapping with each option typed by the
    task's signature (``zoo.core.dataclass_config.typed_options``); ``ValueError`` naming an unknown
    task, an unknown option or a value of the wrong type."""
    options = dict(task_cfg)
    name = options.pop("name")
    if name not in TASKS:
        raise ValueError(f"task.name={name!r} is not a known task; allowed: {sorted(TASKS)}")
    return {"name": name, **typed_options(TASKS[name], options, "task")}


def build_datamodule(task_cfg: Mapping[str, Any]) -> GeneratedDataModule:
    """``task`` config -> the task's datamodule, its options typed (``task_options``) and checked by
    the task (ranges; ``ValueError`` naming the option); nothing generated yet."""
    options = task_options(task_cfg)
    return TASKS[options.pop("name")](**options)
