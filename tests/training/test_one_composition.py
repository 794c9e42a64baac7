"""memzoo-train, memzoo-eval and a grid cell compose their run's config once, check it once and build
the task's datamodule once: counted at Hydra's config loader (every composition goes through it) and
at the datamodule base class's constructor."""

import sys
from pathlib import Path

import pytest
import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from tests.helpers.configs import TINY
from zoo.tasks.base import GeneratedDataModule
from zoo.training import evaluate, train
from zoo.training.run import RunConfig


@pytest.fixture
def counts(monkeypatch):
    """{"compositions": [config names], "datamodules": [class names], "checks": [run count]} as they happen."""
    seen = {"compositions": [], "datamodules": [], "checks": []}
    load, construct, check = ConfigLoaderImpl.load_configuration, GeneratedDataModule.__init__, RunConfig.from_hydra.__func__

    def counted_load(self, config_name, *args, **kwargs):
        seen["compositions"].append(config_name)
        return load(self, config_name, *args, **kwargs)

    def counted_construct(self, *args, **kwargs):
        seen["datamodules"].append(type(self).__name__)
        construct(self, *args, **kwargs)

    def counted_check(cls, cfg):
        seen["checks"].append(1)
        return check(cls, cfg)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counted_load)
    monkeypatch.setattr(GeneratedDataModule, "__init__", counted_construct)
    monkeypatch.setattr(RunConfig, "from_hydra", classmethod(counted_check))
    return seen


def run_command(monkeypatch, main, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    main()


def test_memzoo_train_and_memzoo_eval_compose_check_and_build_the_data_once(tmp_path, monkeypatch, counts):
    run_dir = tmp_path / "run"
    run_command(monkeypatch, train.main, ["memzoo-train", *TINY, f"hydra.run.dir={run_dir}"])
    assert (run_dir / "metrics.json").is_file()
    assert counts == {"compositions": ["train"], "datamodules": ["MQARDataModule"], "checks": [1]}

    for seen in counts.values():
        seen.clear()
    eval_dir = tmp_path / "eval"
    run_command(monkeypatch, evaluate.main, ["memzoo-eval", f"ckpt={run_dir}", "task.num_test=64", f"hydra.run.dir={eval_dir}"])
    assert (eval_dir / "metrics.json").is_file()
    assert counts == {"compositions": ["eval"], "datamodules": ["MQARDataModule"], "checks": []}


def test_a_grid_cell_is_composed_checked_and_given_its_data_once(tmp_path, counts):
    from zoo.grid.runner import main

    grid = tmp_path / "one.yaml"
    grid.write_text(yaml.safe_dump({"name": "one", "studies": {"s": {"base": TINY, "axes": {"optim.lr": [0.003]}}}}))
    main([str(grid), "--out", str(tmp_path / "results")])
    assert Path(tmp_path / "results/one/runs/s/lr=0.003/metrics.json").is_file()
    # the grid's own config (its launch) is composed too; the cell's run config only once
    assert [name for name in counts["compositions"] if name != "grid"] == ["train"]
    assert counts["datamodules"] == ["MQARDataModule"] and counts["checks"] == [1]
