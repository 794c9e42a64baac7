"""The LM curves kept in a grid's curves.csv: written by the report beside results.csv from the runs'
TensorBoard events, read back exactly, and drawn by redraw into the same figure data as the report drew
from the events."""

import csv
from pathlib import Path

import pytest
from helpers.grid_rows import finished_row
from torch.utils.tensorboard import SummaryWriter

from zoo.grid import report
from zoo.grid.curves import lm_curves, read_curves
from zoo.grid.table import row

# (study, steps, seed, final val bpb, slots); values float32 cannot hold exactly, FLOPs per step not round
RUNS = [("mlp", 100, 0, 3.01, None), ("mlp", 200, 0, 2.93, None), ("mlp", 200, 1, 2.87, None)]
RUNS += [("memory", 200, 0, 2.81, 2**16), ("memory", 200, 1, 2.77, 2**16)]
FLOPS_PER_STEP = 987_654_321.123


def record(tmp_path, study, steps, seed, bpb, slots):
    """A finished LM run as the grid records it: its metrics.json (settings and metrics), a validation curve in tb/."""
    cell = f"max_steps={steps}"
    run_dir = tmp_path / "runs" / study / f"{cell}_seed={seed}"
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for step in range(steps // 4, steps + 1, steps // 4):
            writer.add_scalar("val/bpb", bpb + 0.1 * (steps - step) / steps, step)
    memory = "none" if slots is None else "pkm"
    settings = {"seed": seed, "backbone": "transformer", "memory": memory, "slots": slots, "d_model": 16, "n_layers": 2}
    settings.update(channel="mlp", task="lm", lr=0.003, steps_planned=steps, task_knobs={})
    metrics = {
        "params": {"total": 1000 if slots is None else 9000, "active": 1000},
        "flops_per_token": 100,
        "steps": steps,
        "wall_time_s": 1.0,
        "throughput": {"train_flops": steps * FLOPS_PER_STEP},
        "test": {"test/bpb": bpb},
        "val": {"val/bpb": bpb},
        "settings": settings,
    }
    return {**finished_row(study, cell, seed), "dir": str(run_dir), "metrics": metrics}


def plotted(fig):
    """What a figure draws: per panel its title, each line's label and points, each band's outline."""
    return [
        (
            ax.get_title(),
            [(line.get_label(), line.get_xydata().tolist()) for line in ax.get_lines()],
            [path.vertices.tolist() for band in ax.collections for path in band.get_paths()],
        )
        for ax in fig.axes
    ]


def keeping(figures, save):
    """``save`` that first keeps each figure in ``figures`` by file name."""

    def keep(fig, path):
        figures[path.name] = fig
        return save(fig, path)

    return keep


@pytest.fixture
def grid(tmp_path, monkeypatch):
    """A grid reported from its runs, then redrawn from its results directory alone (the runs' events
    removed): the results directory, the curves read from the events, the figures each drew by file name."""
    records = [record(tmp_path, *run) for run in RUNS]
    root = tmp_path / "results"
    curves = lm_curves([row(r) for r in records], {(r["study"], r["cell"]): Path(r["dir"]) for r in records})
    from_events, from_csv = {}, {}
    save = report._save
    monkeypatch.setattr(report, "_save", keeping(from_events, save))
    report.write_report(records, root)
    for events in (tmp_path / "runs").rglob("events.out.tfevents.*"):
        events.unlink()
    monkeypatch.setattr(report, "_save", keeping(from_csv, save))
    report.redraw(root)
    return root, curves, from_events, from_csv


def test_redraw_from_curves_csv_draws_the_lm_figures_with_the_data_drawn_from_tensorboard(grid):
    _, _, from_events, from_csv = grid
    names = {"lm_val_bpb_vs_step.png", "lm_val_bpb_vs_train_flops.png"}
    assert set(from_events) == set(from_csv) == names
    for name in names:
        assert plotted(from_csv[name]) == plotted(from_events[name])
    ((_, lines, bands),) = plotted(from_events["lm_val_bpb_vs_train_flops.png"])
    assert [label for label, _ in lines] == ["MLP", "memory 2^16", "MLP, final at each budget"]
    assert len(lines[0][1]) == 4 and len(bands) == 2  # a point per validation, a band per two-seed cell


def test_curves_csv_holds_each_runs_validations_in_order_with_their_training_flops(grid):
    root = grid[0]
    with (root / "curves.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["study", "cell", "step", "train_flops", "val_bpb"]
    keys = [(r["study"], r["cell"], int(r["step"])) for r in rows]
    assert keys == sorted(keys) and len(rows) == 4 * len(RUNS)
    first = rows[0]  # memory, max_steps=200_seed=0, its first validation at step 50
    assert (first["study"], first["cell"], first["step"]) == ("memory", "max_steps=200_seed=0", "50")
    assert float(first["train_flops"]) == 50 * (200 * FLOPS_PER_STEP / 200)
    assert float(first["val_bpb"]) == pytest.approx(2.81 + 0.1 * 150 / 200, rel=1e-6)  # float32 in TensorBoard


def test_curves_csv_reads_back_exactly_as_the_curves_read_from_tensorboard(grid):
    root, curves, _, _ = grid
    assert read_curves(root / "curves.csv") == curves
