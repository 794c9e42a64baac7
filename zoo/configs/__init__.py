"""memzoo's Hydra configs (``pkg://zoo.configs``). The groups whose settings are a library dataclass
are that dataclass, stored here in Hydra's ConfigStore, so each default has one place (the
dataclass) and the YAML files select and override:

- ``backbone=<preset>``: ``ModelConfig`` (``zoo/model/language_model.py``) less ``vocab_size`` (the
  task's) and ``memory`` (the memory group). Every ``backbone/*.yaml`` starts from ``backbone_base``
  (a stored config, not a ``backbone=`` option) and states only what it changes; ``backbone_base``
  is ``ModelConfig``'s defaults with no ``name`` (each preset names itself) and no mixer options,
  since a merge can add a mixer's options but not remove the default transformer's:
  ``backbone/transformer.yaml`` states its attention options, which ``tests/training/test_defaults.py``
  holds equal to ``ModelConfig``'s default ``mixer``.
- ``memory=pkm``: ``MemoryConfig`` (``zoo/memory/config.py``); ``memory=pkm_large`` overrides it.
- ``optim=adamw``: ``OptimConfig`` (``zoo/training/optim.py``).
- ``throughput=default``: ``ThroughputConfig`` (``zoo/training/throughput.py``): the peak FLOP/s for MFU.
- ``init=default``: ``InitConfig`` (``zoo/training/pretrained_init.py``): a pretrained model to start from.

It also registers the resolver ``memzoo_model`` that names a run's folder (``runs/<task>/<model>/<time>``).

The backbone fields are typed ``Any`` here so that a bad value reaches ``ModelConfig.validate``,
which names the key and what is allowed. Hydra imports this package to find the YAML files, so the
entries exist before any composition.
"""

import copy
import dataclasses
from pathlib import PurePosixPath
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from zoo.memory.config import MemoryConfig
from zoo.model.language_model import ModelConfig
from zoo.training.optim import OptimConfig
from zoo.training.pretrained_init import InitConfig
from zoo.training.throughput import ThroughputConfig

NOT_BACKBONE = ("vocab_size", "memory")  # ModelConfig fields that other groups set


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def backbone_base() -> type:
    """``ModelConfig``'s backbone fields with its defaults, but ``name`` to be given and no mixer options."""
    changed = {"name": MISSING, "mixer": {}}
    fields = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in NOT_BACKBONE:
            continue
        value = changed.get(f.name, _default(f))
        fields.append((f.name, Any, dataclasses.field(default_factory=lambda value=value: copy.deepcopy(value))))
    return dataclasses.make_dataclass("BackboneBase", fields)


_store = ConfigStore.instance()
_store.store(name="backbone_base", node=backbone_base())  # not a group option: no backbone=base to pick
_store.store(group="memory", name="pkm", node=MemoryConfig)
_store.store(group="optim", name="adamw", node=OptimConfig)
_store.store(group="throughput", name="default", node=ThroughputConfig)
_store.store(group="init", name="default", node=InitConfig)


def model_folder(backbone: str, memory: str, n_keys: Any = None, pretrained: Any = None) -> str:
    """The model part of a run's folder (and TensorBoard run) name: the backbone (a pretrained
    model's directory or hub name instead, when ``init.pretrained`` is set), and the memory preset
    with its slot count (``n_keys`` squared) when there is one: ``transformer``,
    ``transformer+pkm1024``, ``SmolLM-135M+pkm1024``."""
    model = backbone if pretrained is None else PurePosixPath(str(pretrained).rstrip("/")).name
    return model if memory == "none" else f"{model}+{memory}{int(n_keys) ** 2}"


OmegaConf.register_new_resolver("memzoo_model", model_folder, replace=True)
