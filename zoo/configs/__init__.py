"""memzoo's Hydra configs (``pkg://zoo.configs``). The groups whose settings are a library dataclass
are that dataclass, stored here in Hydra's ConfigStore, so each default has one place (the
dataclass) and a bad type fails when the config is composed; the YAML files select and override.

- ``memory=pkm``: ``MemoryConfig`` (``zoo/memory/config.py``); ``memory=pkm_large`` overrides it.
- ``optim=adamw``: ``OptimConfig`` (``zoo/optim.py``).
- ``throughput=default``: ``ThroughputConfig`` (``zoo/throughput.py``): the peak FLOP/s for MFU.

Hydra imports this package to find the YAML files, so the entries exist before any composition.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from zoo.memory.config import MemoryConfig
from zoo.training.optim import OptimConfig
from zoo.training.throughput import ThroughputConfig


@dataclass
class MemoryPreset(MemoryConfig):
    """``MemoryConfig`` plus the preset's ``name`` (what results tables show)."""

    name: str = "pkm"


_store = ConfigStore.instance()
_store.store(group="memory", name="pkm", node=MemoryPreset)
_store.store(group="optim", name="adamw", node=OptimConfig)
_store.store(group="throughput", name="default", node=ThroughputConfig)
