"""Tasks: LightningDataModules yielding ``{"inputs": (B,L) long, "targets": (B,L) long}`` batches.

``targets`` holds -100 where a position is not scored. ``TASKS`` maps a task's config name to its
class; adding a task is one module plus one line here.
"""

from tasks.facts import FactsDataModule
from tasks.lm import LanguageModelingDataModule
from tasks.mad import (
    CompressionDataModule,
    FuzzyInContextRecallDataModule,
    InContextRecallDataModule,
    MemorizationDataModule,
    NoisyInContextRecallDataModule,
    SelectiveCopyingDataModule,
)
from tasks.mqar import MQARDataModule

TASKS = {
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
