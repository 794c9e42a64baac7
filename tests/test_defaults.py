"""Every default has one value: where code and YAML both state one, they agree."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from tasks import TASKS
from zoo.mixers import MIXERS
from zoo.optim import OPTIM_DEFAULTS
from zoo.memory import MemoryConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def code_defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def same(code, yaml_value) -> bool:
    return list(code) == list(yaml_value) if isinstance(code, tuple) else code == yaml_value


@pytest.mark.parametrize("path", sorted((CONFIGS / "task").glob("*.yaml")), ids=lambda p: p.stem)
def test_task_yaml_states_the_datamodule_defaults(path):
    values = yaml.safe_load(path.read_text())
    defaults = code_defaults(TASKS[values.pop("name")].__init__)
    differ = {k: (defaults[k], v) for k, v in values.items()
              if k in defaults and not str(v).startswith("${") and not same(defaults[k], v)}
    assert not differ, f"{path.name}: key: (code default, yaml) {differ}"


def test_the_pkm_preset_is_the_memory_config_defaults():
    values = yaml.safe_load((CONFIGS / "memory" / "pkm.yaml").read_text())
    values.pop("name")
    defaults = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
                for f in dataclasses.fields(MemoryConfig)}
    assert values == defaults


def test_train_yaml_states_the_optimizer_defaults():
    optim = yaml.safe_load((CONFIGS / "train.yaml").read_text())["optim"]
    differ = {k: (v, optim.get(k)) for k, v in OPTIM_DEFAULTS.items() if not same(v, optim.get(k))}
    assert not differ, f"key: (code default, train.yaml) {differ}"


@pytest.mark.parametrize("name", ["gla", "gated_deltanet"])
def test_backbone_yaml_states_the_mixer_constructor_defaults(name):
    values = yaml.safe_load((CONFIGS / "backbone" / f"{name}.yaml").read_text())["mixer"][name]
    defaults = code_defaults(MIXERS[name].__init__)
    defaults.pop("layer_idx")
    assert values == defaults
