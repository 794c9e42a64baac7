"""The benchmark grid: every cell trained through train(), results and figures written, finished
cells skipped on a rerun, failed cells recorded, hparams and figures in TensorBoard."""

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo.grid.curves import validation_curve
from zoo.grid.runner import expand, load_grid, main

TINY = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "backbone.d_model=16",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
]
GRID = {
    "name": "tiny",
    "studies": {
        "mqar": {
            "base": ["task.num_train=256", "task.num_test=64", "task.batch_size=32", *TINY],
            "axes": {"memory": ["none", "pkm"], "optim.lr": [0.003, 0.001]},
        },
        "facts": {
            "base": ["task=facts", "task.num_entities=50", "task.num_train=200", "backbone.channel=mlp", *TINY],
            "axes": {"memory": ["none", "pkm"], "task.num_facts": [100, 200]},
        },
        "lm": {"base": ["task=lm", "task.max_bytes=100000", *TINY], "axes": {"memory": ["none"]}},
        # valid on paper, fails when the run starts (a sharded memory needs a process group)
        "broken": {"base": ["memory=pkm", *TINY], "axes": {"memory.parallel": ["rows"]}},
    },
}


def write_grid(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(GRID))
    return path


def metrics_mtimes(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.glob("runs/*/*/metrics.json")}


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    grid_file = write_grid(tmp)
    with pytest.raises(SystemExit) as failed:
        main([str(grid_file), "--out", str(tmp / "results")])
    assert failed.value.code == 1  # a failed cell makes memzoo-grid exit non-zero, after the report
    return grid_file, tmp / "results" / "tiny"


def test_grid_writes_a_row_per_cell_a_summary_and_the_figures(grid_run):
    _, root = grid_run
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert len(rows) == 4 + 4 + 1 + 1
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == 9
    for r in done:
        assert int(r["params"]) > 0 and int(r["active_params"]) > 0 and int(r["flops_per_token"]) > 0
        assert float(r["wall_time_s"]) > 0 and r["backbone"] == "transformer"
    for r in (r for r in done if r["task"] == "mqar"):  # keys and values of every position, float32
        assert int(r["state_size"]) == int(r["n_layers"]) * 2 * int(r["task.seq_len"]) * int(r["d_model"]) * 4
    (broken,) = [r for r in rows if r["status"] == "failed"]
    assert "memory.parallel='rows' needs a process group" in broken["error"]
    assert json.loads((root / "runs" / "broken" / "parallel=rows" / "error.json").read_text())["traceback"]
    summary = (root / "summary.md").read_text()
    assert "## mqar (best learning rate per cell)" in summary and "## failed cells" in summary
    for name in (
        "mqar_accuracy_vs_d_model",
        "mqar_accuracy_vs_state_size",
        "knowledge_bits_vs_facts",
        "capacity_bits_vs_params",
        "lm_val_bpb_vs_step",
        "lm_val_bpb_vs_train_flops",
    ):
        assert (root / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    curves = list(csv.DictReader((root / "curves.csv").open()))  # the LM figures' curves, a row per validation
    (lm_run,) = (root / "runs" / "lm").iterdir()
    logged = validation_curve(lm_run, "val/bpb")
    assert len(logged) == 2  # validations at steps 2 and 4 (logged by Lightning as 1 and 3)
    assert [(r["study"], int(r["step"]), float(r["val_bpb"])) for r in curves] == [("lm", *point) for point in logged]


def test_best_of_lr_keeps_one_row_per_cell(grid_run):
    _, root = grid_run
    mqar_section = (root / "summary.md").read_text().split("## mqar")[1].split("##")[0]
    mqar_rows = [line for line in mqar_section.splitlines() if "| transformer |" in line]
    assert len(mqar_rows) == 2  # memory none / pkm, each the better of two learning rates


def test_tensorboard_holds_run_hparams_and_grid_figures(grid_run):
    _, root = grid_run
    hparams, scalars = {}, set()
    for events in next((root / "runs" / "mqar").glob("*/tb")).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        scalars.update(acc.Tags()["scalars"])
        try:
            hparams.update(acc.PluginTagToContent("hparams"))
        except KeyError:  # an events file without hparams (Lightning starts one per fit / test)
            pass
    assert "_hparams_/session_start_info" in hparams and "_hparams_/experiment" in hparams
    assert "final/acc" in scalars
    grid_events = next((root / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(grid_events), size_guidance={"images": 0})
    acc.Reload()
    assert set(acc.Tags()["images"]) == {
        "grid/mqar_accuracy_vs_d_model",
        "grid/mqar_accuracy_vs_state_size",
        "grid/knowledge_bits_vs_facts",
        "grid/capacity_bits_vs_params",
        "grid/lm_val_bpb_vs_step",
        "grid/lm_val_bpb_vs_train_flops",
    }


def test_rerun_trains_only_the_cells_without_metrics(grid_run):
    grid_file, root = grid_run
    before = metrics_mtimes(root)
    with pytest.raises(SystemExit):  # the broken cell fails again
        main([str(grid_file), "--out", str(root.parent)])
    assert metrics_mtimes(root) == before  # nothing retrained
    interrupted = sorted(before)[0]
    Path(interrupted).unlink()  # as if the run had been killed before finishing
    with pytest.raises(SystemExit):
        main([str(grid_file), "--out", str(root.parent)])
    after = metrics_mtimes(root)
    assert set(after) == set(before)
    assert [p for p in before if after[p] != before[p]] == [interrupted]


@pytest.mark.parametrize(
    "bad, match",
    [
        ("memory.knnn=4", "knnn"),
        ("memory.knn=99", "memory.knn=99 must be <= memory.n_keys=32"),
        ("optim.lr=-1", r"optim.lr=-1.0 must be a finite number > 0"),
        ("throughput.window=1", r"throughput.window=1 must be an integer >= 2"),
    ],
)
def test_an_invalid_last_cell_stops_the_grid_before_any_cell_trains(tmp_path, bad, match):
    import yaml

    grid = {
        "name": "early",
        "studies": {
            "s": {"base": ["memory=pkm", *TINY], "axes": {"task.seed": [1, 2, 3]}},
            "t": {"base": ["memory=pkm", *TINY, bad], "axes": {"task.seed": [4]}},
        },
    }
    path = tmp_path / "early.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(ValueError, match=rf"grid cell t/seed=4 is invalid: .*{match}"):
        main([str(path), "--out", str(tmp_path / "results")])
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("grid", ["quick", "recall_small", "capacity", "zoology", "memory_scaling", "second_moment", "lm_memory"])
def test_every_cell_of_the_shipped_grids_composes(grid):
    cells = expand(load_grid(grid))
    assert cells
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        for cell in cells:
            compose("train", overrides=list(cell.overrides))


def test_unknown_grid_names_the_shipped_ones():
    with pytest.raises(
        ValueError,
        match=r"grid 'huge' is not a shipped grid; allowed: \['capacity', 'capacity_ablation', 'lm_memory', "
        r"'lm_memory_ablation', 'memory_scaling', 'quick', 'recall_small', 'second_moment', 'zoology'\]",
    ):
        load_grid("huge")


def test_grid_with_unknown_keys_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nstudies:\n  s:\n    base: []\n    axis: {memory: [none]}\n")
    with pytest.raises(ValueError, match=r"grid study 's' has unknown key\(s\) \['axis'\]"):
        load_grid(str(path))


def test_a_linked_axis_moves_its_keys_together(tmp_path):
    path = tmp_path / "linked.yaml"
    path.write_text(
        "name: linked\nstudies:\n  s:\n    base: [task=facts]\n"
        "    axes: {backbone: [transformer, mamba2], 'task.num_facts,trainer.max_steps': [[100, 10], [200, 20]]}\n"
    )
    cells = expand(load_grid(str(path)))
    assert [dict(c.settings) for c in cells] == [
        {"backbone": b, "task.num_facts": f, "trainer.max_steps": s}
        for b in ("transformer", "mamba2")
        for f, s in (("100", "10"), ("200", "20"))
    ]
    assert cells[0].overrides == ("task=facts", "backbone=transformer", "task.num_facts=100", "trainer.max_steps=10")
    assert cells[1].name == "backbone=transformer_num_facts=200_max_steps=20"


def test_cells_whose_values_differ_only_in_an_exponents_sign_get_different_folders(tmp_path):
    path = tmp_path / "signs.yaml"
    path.write_text("name: signs\nstudies:\n  s:\n    axes: {optim.weight_decay: ['1e+30', '1e-30']}\n")
    cells = expand(load_grid(str(path)))
    assert [c.name for c in cells] == ["weight_decay=1e+30", "weight_decay=1e-30"]


def test_two_cells_that_would_share_a_folder_are_refused_naming_both(tmp_path):
    path = tmp_path / "clash.yaml"
    path.write_text("name: clash\nstudies:\n  s:\n    axes: {'memory.layers': ['[0,1]', '(0,1)']}\n")
    with pytest.raises(
        ValueError,
        match=r"grid cells \{'memory.layers': '\[0,1\]'\} and \{'memory.layers': '\(0,1\)'\} .*"
        r"would share the run directory 'layers=-0-1-'",
    ):
        expand(load_grid(str(path)))


@pytest.mark.parametrize("values", ["[100, 200]", "[[100, 10], [200]]"])
def test_a_linked_axis_value_needs_one_value_per_key(tmp_path, values):
    path = tmp_path / "linked.yaml"
    path.write_text(f"name: linked\nstudies:\n  s:\n    axes: {{'task.num_facts,trainer.max_steps': {values}}}\n")
    match = r"linked axis 'task.num_facts,trainer.max_steps' names 2 keys: each of its values must be a list of 2"
    with pytest.raises(ValueError, match=match):
        load_grid(str(path))


def test_sigterm_stops_memzoo_grid_with_exit_143_after_writing_the_report_of_finished_cells(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import torch
    import yaml

    quick = [
        "memory=pkm",
        "backbone.d_model=16",
        "task.num_train=4096",
        "task.batch_size=16",
        "trainer.enable_progress_bar=false",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
    ]
    grid = {
        "name": "stopped",
        "studies": {
            "first": {"base": [*quick, "trainer.max_steps=4"], "axes": {"optim.lr": [0.003]}},
            "second": {
                "base": [*quick, "trainer.max_steps=5000", "checkpoint.every_n_train_steps=10"],
                "axes": {"optim.lr": [0.003]},
            },
        },
    }
    path = tmp_path / "stopped.yaml"
    path.write_text(yaml.safe_dump(grid))
    bench = [str(Path(sys.executable).parent / "memzoo-grid"), str(path), "--out", str(tmp_path / "results")]
    proc = subprocess.Popen(bench, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "results" / "stopped" / "runs" / "second" / "lr=0.003" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    rows = list(csv.DictReader((tmp_path / "results" / "stopped" / "results.csv").open()))
    assert [(r["study"], r["status"]) for r in rows] == [("first", "done")]
    assert "1 of 2 cells done" in out and "stopped by SIGTERM" in err
    assert torch.load(last, weights_only=True)["global_step"] >= 10  # the stopped cell saved where it was


def test_memzoo_bench_is_the_grid_runners_older_name_for_the_same_command():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("memzoo-")}
    assert scripts["memzoo-grid"] == scripts["memzoo-bench"] == "zoo.grid.runner:cli"
