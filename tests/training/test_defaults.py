"""Every default has one value: where code and YAML both state one, they agree."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from zoo.memory import MemoryConfig
from zoo.mixers import MIXERS
from zoo.model import ModelConfig
from zoo.model.mlp import SwiGLU
from zoo.tasks import TASKS
from zoo.training.config import RunConfig
from zoo.training.optim import OptimConfig
from zoo.training.throughput import ThroughputConfig

CONFIGS = Path(__file__).resolve().parents[2] / "zoo" / "configs"


def code_defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def same(code, yaml_value) -> bool:
    return list(code) == list(yaml_value) if isinstance(code, tuple) else code == yaml_value


@pytest.mark.parametrize("path", sorted((CONFIGS / "task").glob("*.yaml")), ids=lambda p: p.stem)
def test_task_yaml_states_the_datamodule_defaults(path):
    values = yaml.safe_load(path.read_text())
    # the class's signature: a synthetic task's is built from its knob dataclass and the base's split options
    defaults = code_defaults(TASKS[values.pop("name")])
    assert set(values) <= set(defaults), f"{path.name}: keys that are no option: {set(values) - set(defaults)}"
    differ = {
        k: (defaults[k], v)
        for k, v in values.items()
        if k in defaults and not str(v).startswith("${") and not same(defaults[k], v)
    }
    assert not differ, f"{path.name}: key: (code default, yaml) {differ}"


def composed(*overrides: str):
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_memory_pkm_is_the_memory_config_dataclass_with_nothing_restated_in_yaml():
    memory = OmegaConf.to_container(composed("memory=pkm").memory)
    assert memory["name"] == "pkm"
    assert memory == dataclasses.asdict(MemoryConfig())
    assert not (CONFIGS / "memory" / "pkm.yaml").exists()


def test_the_default_run_trains_model_config_defaults():
    """``memzoo-train`` with no overrides trains ``ModelConfig()`` (with the default task's vocabulary),
    and every other typed group is its dataclass's defaults."""
    run = RunConfig.from_hydra(composed())
    assert run.model == ModelConfig(vocab_size=TASKS["mqar"]().vocab_size)
    assert run.model.memory is None and run.memory_name == "none"
    assert run.optim == OptimConfig() and run.throughput == ThroughputConfig()
    assert RunConfig.from_hydra(composed("memory=pkm")).model.memory == MemoryConfig()


def test_model_config_mlp_default_is_the_mlp_constructor_defaults():
    defaults = code_defaults(SwiGLU.__init__)
    defaults.pop("layer_idx")
    assert ModelConfig(vocab_size=2).mlp == defaults


@pytest.mark.parametrize("path", sorted((CONFIGS / "backbone").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_backbone_preset_states_only_what_it_changes_from_model_config(path):
    values = yaml.safe_load(path.read_text())
    assert values.pop("defaults") == ["/backbone_base@_here_", "_self_"]
    assert values.pop("name") == path.stem
    defaults = dataclasses.asdict(ModelConfig(vocab_size=2))
    restated = {k: v for k, v in values.items() if k != "mixer" and defaults[k] == v}
    assert not restated, f"{path.name} restates ModelConfig's defaults: {restated}"
    assert values["mixer"], "each preset states its mixers' options (backbone_base has none)"
    composed_backbone = OmegaConf.to_container(composed(f"backbone={path.stem}").backbone)
    assert composed_backbone == {
        **{k: v for k, v in defaults.items() if k not in ("vocab_size", "memory")},
        "name": path.stem,
        **values,
    }


@pytest.mark.parametrize("name", ["gpu", "ddp"])
def test_trainer_presets_inherit_cpu_and_state_only_what_they_change(name):
    cpu = yaml.safe_load((CONFIGS / "trainer" / "cpu.yaml").read_text())
    values = yaml.safe_load((CONFIGS / "trainer" / f"{name}.yaml").read_text())
    assert values.pop("defaults") == ["cpu", "_self_"]
    assert values and all(cpu.get(k) != v for k, v in values.items())
    assert OmegaConf.to_container(composed(f"trainer={name}").trainer) == {**cpu, **values}


def test_optim_is_the_optim_config_dataclass_with_nothing_restated_in_yaml():
    assert OmegaConf.to_container(composed().optim) == dataclasses.asdict(OptimConfig())
    assert "optim" not in yaml.safe_load((CONFIGS / "train.yaml").read_text())


def test_throughput_is_the_throughput_config_dataclass_with_nothing_restated_in_yaml():
    assert OmegaConf.to_container(composed().throughput) == dataclasses.asdict(ThroughputConfig())
    assert "throughput" not in yaml.safe_load((CONFIGS / "train.yaml").read_text())


def test_a_preset_states_only_what_it_changes():
    large = yaml.safe_load((CONFIGS / "memory" / "pkm_large.yaml").read_text())
    defaults = dataclasses.asdict(MemoryConfig())
    assert large.pop("defaults") == ["pkm", "_self_"]
    assert large and all(defaults[k] != v for k, v in large.items())


def test_a_wrongly_typed_memory_setting_fails_when_the_config_is_composed():
    with pytest.raises(Exception, match="Error merging override memory.knn=abc") as failed:
        composed("memory=pkm", "memory.knn=abc")
    assert "could not be converted to Integer" in str(failed.value.__cause__)


@pytest.mark.parametrize("name", ["gla", "gated_deltanet"])
def test_backbone_yaml_states_the_mixer_constructor_defaults(name):
    values = yaml.safe_load((CONFIGS / "backbone" / f"{name}.yaml").read_text())["mixer"][name]
    defaults = code_defaults(MIXERS[name].__init__)
    defaults.pop("layer_idx")
    assert values == defaults
