"""A run's record: the settings a grid's report shows, taken from the typed ``RunConfig``, equal to
what the composed config names (read the way the report read config.yaml before), written into
metrics.json and read back; a metrics.json without them is refused with what to do."""

import json
from dataclasses import asdict

import pytest
from helpers.configs import compose_config, tiny_train_config

from zoo.core.io import atomic_write_json
from zoo.training.config import RunConfig
from zoo.training.run_record import TASK_KNOBS, RunSettings


@pytest.mark.parametrize("memory", ["none", "pkm"])
def test_settings_are_what_the_composed_config_names(memory):
    cfg = tiny_train_config(f"memory={memory}", "backbone=mamba2", "optim.lr=0.002", "trainer.max_steps=6", "seed=3")
    settings = RunSettings.of(RunConfig.from_hydra(cfg))
    assert settings == RunSettings(
        seed=3,
        backbone=cfg.backbone.name,
        memory=cfg.memory.name,
        slots=cfg.memory.n_keys**2 if memory != "none" else None,
        d_model=cfg.backbone.d_model,
        n_layers=cfg.backbone.n_layers,
        channel=cfg.backbone.channel,
        task="mqar",
        lr=0.002,
        steps_planned=6,
        task_knobs={k: cfg.task[k] for k in TASK_KNOBS if k in cfg.task},
    )
    assert list(settings.task_knobs) == ["seq_len", "num_kv_pairs", "vocab_size"]  # the knobs MQAR has, in TASK_KNOBS order


def test_settings_read_back_from_metrics_json_as_written(tmp_path):
    settings = RunSettings.of(RunConfig.from_hydra(compose_config("train", "task=facts", "memory=pkm")))
    path = atomic_write_json(tmp_path / "metrics.json", {"steps": 4, "settings": asdict(settings)})  # keys sorted
    assert RunSettings.read(json.loads(path.read_text()), str(path)) == settings


def test_a_record_without_settings_is_refused_naming_the_file_and_what_to_do():
    with pytest.raises(
        ValueError, match=r"runs/a/metrics.json has no 'settings' .*remove its metrics.json and rerun memzoo-grid$"
    ):
        RunSettings.read({"steps": 4, "test": {}}, "runs/a/metrics.json")
