"""End-to-end training through the Hydra config: run directory contents, multirun, config errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo.grid.curves import validation_curve
from zoo.training.train import train

TINY = [
    "backbone.d_model=16",
    "task.num_train=256",
    "task.num_test=64",
    "task.batch_size=32",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "optim.warmup_steps=2",
]


def make_cfg(overrides=()):
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def scalar_tags(run_dir: Path) -> set[str]:
    tags = set()
    for events in (run_dir / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


def test_run_dir_holds_config_events_checkpoint_and_metrics(tmp_path):
    metrics = train(make_cfg(), tmp_path)
    assert (tmp_path / "config.yaml").read_text().count("d_model: 16") == 1
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    tags = scalar_tags(tmp_path)
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "train/tokens_per_s"):
        assert tag in tags, sorted(tags)
    assert {"lr/decay", "lr/no_decay"} <= tags, sorted(tags)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    assert set(on_disk["test"]) == {"test/loss", "test/acc"}
    assert 0.0 <= on_disk["test"]["test/acc"] <= 1.0
    assert on_disk["steps"] == 6 and on_disk["params"]["total"] > 0 and on_disk["wall_time_s"] > 0
    # the last validation (step 6), as TensorBoard logged it, before the test replaced the metrics
    assert on_disk["val"]["val/acc"] == pytest.approx(validation_curve(tmp_path, "val/acc")[-1][1])
    assert set(on_disk["val"]) == {"val/loss", "val/acc"}


def test_cli_multirun_completes_every_run(tmp_path):
    script = Path(sys.executable).parent / "memzoo-train"
    cmd = [
        str(script),
        "-m",
        "backbone.d_model=32,64",
        "trainer.max_steps=20",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.enable_progress_bar=false",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    runs = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    assert [p.name for p in runs] == ["0", "1"]
    widths = [json.loads((p / "metrics.json").read_text())["params"]["embedding"] for p in runs]
    assert widths == [128 * 32, 128 * 64]


def test_unknown_config_choice_names_it_and_the_allowed_ones():
    with pytest.raises(MissingConfigException, match=r"task/nope(.|\n)*Available options in 'task'(.|\n)*mqar"):
        make_cfg(["task=nope"])


def test_typo_in_config_key_is_an_error():
    with pytest.raises(ConfigCompositionException, match=r"d_modle"):
        make_cfg(["backbone.d_modle=32"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["task.num_kv_pairs=40"], r"task.seq_len=64 is too short for num_kv_pairs=40"),
        (["backbone.pattern=AZ"], r"unknown mixer letter 'Z'"),
        (["+task.colour=red"], r"^task\.colour: Key 'colour' not in 'MQARDataModule'; allowed: \['batch_size', "),
    ],
)
def test_bad_run_config_fails_before_training(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train(make_cfg(overrides), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_task_name_is_an_error(tmp_path):
    cfg = make_cfg()
    cfg.task.name = "wikitext"
    with pytest.raises(ValueError, match=r"task.name='wikitext' is not a known task; allowed: \['compression', "):
        train(cfg, tmp_path)


def test_memory_run_logs_usage_kl_and_read_histogram(tmp_path):
    metrics = train(make_cfg(["memory=pkm", "memory.n_keys=8", "memory.knn=4", "memory.k_dim=16"]), tmp_path)
    assert metrics["memory"] == "pkm"
    tags = scalar_tags(tmp_path)
    assert {"memory/layer1/usage", "memory/layer1/kl_uniform"} <= tags, sorted(tags)
    assert 0 < metrics["test"]["test/memory/layer1/usage"] <= 1  # over the test set, in metrics.json
    assert 0 <= metrics["test"]["test/memory/layer1/kl_uniform"] <= math.log(64)
    assert "lr/memory_values" in tags, sorted(tags)
    histograms = set()
    for events in (tmp_path / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        histograms.update(acc.Tags()["histograms"])
    assert "memory/layer1/read_counts" in histograms
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["optimizer_states"][0]
    assert state["dense"] is not None and state["sparse"]["state"], "sparse value moments are checkpointed"


def test_unknown_memory_key_in_run_config_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"^memory\.slots: Key 'slots' not in 'MemoryConfig'; allowed: \['gate', "):
        train(make_cfg(["memory=pkm", "+memory.slots=4"]), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [[], ["memory=pkm"], ["backbone=hybrid"], ["trainer=ddp", "trainer.devices=2", "memory=pkm", "memory.parallel=rows"]],
)
def test_default_mqar_is_solved(tmp_path, overrides):
    """The README's runs: Transformer, Transformer + memory at layer 1 (also row-sharded over 2 DDP
    ranks), and the hybrid backbone reach >= 0.99 test accuracy on the default MQAR."""
    script = Path(sys.executable).parent / "memzoo-train"
    subprocess.run(
        [str(script), *overrides, f"hydra.run.dir={tmp_path}", "trainer.enable_progress_bar=false"],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["test/acc"] >= 0.99


TASK_CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "zoo" / "configs" / "task").glob("*.yaml"))


@pytest.mark.parametrize("task", TASK_CONFIGS)
def test_every_task_trains_with_the_default_backbone_and_writes_metrics(task, tmp_path):
    """``memzoo-train task=X`` for every shipped task (its own defaults, a few steps, no network)."""
    overrides = [
        f"task={task}",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "trainer.enable_progress_bar=false",
    ]
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = train(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["task"] == task and metrics["steps"] == 3
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0
