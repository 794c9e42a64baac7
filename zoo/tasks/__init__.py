"""Tasks: LightningDataModules yielding ``{"inputs": (B,L) long, "targets": (B,L) long}`` batches.

``targets`` holds -100 where a position is not scored. ``TASKS`` maps a task's config name to its
class; adding a task is one module plus one line here. A synthetic task's module holds a frozen knob
dataclass, a pure generator and a one-statement ``SyntheticDataModule`` subclass (``zoo.tasks.base``).
"""

import inspect

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


def build_datamodule(task_cfg: dict) -> GeneratedDataModule:
    """``task`` config (a mapping with ``name``) -> the task's datamodule; ``ValueError`` naming an
    unknown task or bad options."""
    options = dict(task_cfg)
    name = options.pop("name")
    if name not in TASKS:
        raise ValueError(f"task.name={name!r} is not a known task; allowed: {sorted(TASKS)}")
    try:
        return TASKS[name](**options)
    except TypeError as err:
        options = list(inspect.signature(TASKS[name]).parameters)
        raise ValueError(f"bad options for task {name!r}: {err}; its options: {options}") from err
