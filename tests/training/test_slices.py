"""An MQAR run tested on several (seq_len, num_kv_pairs) slices reports each one's accuracy, equal to
the trained model's accuracy on that slice counted by hand, in metrics.json, TensorBoard and
results.csv."""

import csv

import pytest
import torch
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo import load_model
from zoo.grid.report import write_report
from zoo.tasks import build_datamodule
from zoo.training.slices import slice_datamodules
from zoo.training.train import train

SLICES = "test_slices=[{seq_len:64,num_kv_pairs:4},{seq_len:128,num_kv_pairs:8},{seq_len:256,num_kv_pairs:16}]"
TINY = [
    "backbone.d_model=16",
    "task.num_train=128",
    "task.num_test=24",
    "task.batch_size=16",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "optim.warmup_steps=1",
    SLICES,
]
NAMES = ["seq_len=64_num_kv_pairs=4", "seq_len=128_num_kv_pairs=8", "seq_len=256_num_kv_pairs=16"]


def compose_train(*overrides):
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("slices")
    cfg = compose_train(*TINY)
    return train(cfg, run_dir), run_dir, cfg


def accuracy_by_hand(model, task: dict, seq_len: int, pairs: int) -> float:
    """The slice's test examples through the model, one at a time, scored positions counted in float64."""
    inputs, targets = build_datamodule({**task, "test_seq_len": seq_len, "test_num_kv_pairs": pairs}).generate("test")
    right = total = 0
    with torch.no_grad():
        for x, y in zip(inputs, targets):
            predicted = model(x[None])[0].double().argmax(-1)
            scored = y != -100
            right += int((predicted[scored] == y[scored]).sum())
            total += int(scored.sum())
    return right / total


def test_metrics_json_holds_each_slice_accuracy_as_the_model_scores_it(run):
    metrics, run_dir, cfg = run
    model = load_model(run_dir / "checkpoints" / "last.ckpt").eval()
    task = dict(cfg.task)
    for (seq_len, pairs), name, entry in zip([(64, 4), (128, 8), (256, 16)], NAMES, metrics["test_slices"]):
        assert (entry["seq_len"], entry["num_kv_pairs"]) == (seq_len, pairs)
        assert entry["acc"] == metrics["test"][f"test/{name}/acc"]
        assert entry["acc"] == pytest.approx(accuracy_by_hand(model, task, seq_len, pairs), abs=1e-6)
    assert metrics["test"]["test/acc"] == metrics["test"][f"test/{NAMES[0]}/acc"]  # the slice at the training shape


def test_tensorboard_and_results_csv_report_each_slice(run):
    metrics, run_dir, _ = run
    tags = set()
    for events in (run_dir / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    assert {f"test/{name}/acc" for name in NAMES} <= tags and "test/acc" in tags
    record = {
        "study": "s",
        "cell": "c",
        "setting": "c",
        "group": "c",
        "seed": None,
        "dir": str(run_dir),
        "status": "done",
        "metrics": metrics,
    }
    write_report([record], run_dir / "report")
    (row,) = csv.DictReader((run_dir / "report" / "results.csv").open())
    for name in NAMES:
        assert float(row[f"test_{name}_acc"]) == pytest.approx(metrics["test"][f"test/{name}/acc"])
    assert f"test_{NAMES[2]}_acc" in (run_dir / "report" / "summary.md").read_text()


@pytest.mark.parametrize(
    "slices, match",
    [
        ("[{seq_len:32,num_kv_pairs:16}]", r"test_slices\[0\]=\{'seq_len': 32, 'num_kv_pairs': 16\} .*seq_len=32 is too short"),
        ("[{power_a:0.5}]", r"test_slices\[0\]=\{'power_a': 0.5\} .*test_power_a"),
        ("[{}]", r"test_slices\[0\]=\{\} must be a non-empty mapping of task knobs"),
    ],
)
def test_a_slice_the_task_cannot_generate_names_itself_before_anything_is_built(slices, match):
    cfg = compose_train(f"test_slices={slices}")
    with pytest.raises(ValueError, match=match):
        slice_datamodules(dict(cfg.task), list(cfg.test_slices))
