"""The LM grid's compute report: each memory seed's compute multiplier on its backbone's dense MLP
curve (a synthetic curve with known answers), the summary table, and the figure of validation bits
per byte against training FLOPs."""

import math

import pytest
from helpers.grid_rows import finished_row
from torch.utils.tensorboard import SummaryWriter

from zoo.grid.curves import lm_curves
from zoo.grid.table import aggregate, best_of_lr, compute_multipliers, summary_markdown
from zoo.tasks.figures.lm import lm_compute_figure

# MLP: val_bpb = 3.0 - 0.1 * log2(steps / 100) at 1e9 training FLOPs per step
MLP = {100: [3.0], 200: [2.89, 2.90, 2.91], 400: [2.8], 800: [2.7]}
MEMORY = [2.8, 2.75, 2.6]  # at 200 steps: the MLP reaches 2.8 at 400 steps (2x), 2.75 at 2^2.5 x 100 steps


def run(tmp_path, study, steps, seed, bpb, slots=None):
    cell = f"{study}_{steps}"
    run_dir = tmp_path / study / f"{cell}_seed={seed}"
    with SummaryWriter(str(run_dir / "tb")) as writer:  # a validation curve ending at the final value
        for step in (steps // 2, steps):
            writer.add_scalar("val/bpb", bpb + (0.3 if step < steps else 0.0), step)
    row = {
        **finished_row(study, cell, seed),
        "task": "lm",
        "backbone": "transformer",
        "memory": "none" if slots is None else "pkm",
        "slots": slots,
        "channel": "mlp",
        "lr": 0.003,
        "steps_planned": steps,
        "steps": steps,
        "params": 1000 if slots is None else 9000,
        "flops_per_token": 100,
        "train_flops": steps * 1e9,
        "val_bpb": bpb,
        "test_bpb": bpb,
    }
    return row, run_dir


@pytest.fixture
def grid(tmp_path):
    made = [run(tmp_path, "mlp", steps, seed, bpb) for steps, values in MLP.items() for seed, bpb in enumerate(values)]
    made += [run(tmp_path, "memory", 200, seed, bpb, slots=2**16) for seed, bpb in enumerate(MEMORY)]
    rows = [row for row, _ in made]
    dirs = {(row["study"], row["cell"]): run_dir for row, run_dir in made}
    return rows, best_of_lr(aggregate(rows)), dirs


def test_each_memory_seed_gets_its_multiplier_on_the_mlp_curve(grid):
    _, best, _ = grid
    (found,) = compute_multipliers(best)
    assert (found["backbone"], found["channel"]) == ("transformer", "memory 2^16")
    two, root, beyond = found["multipliers"]
    assert (two.value, two.bound) == (pytest.approx(2.0), "=")
    assert (root.value, root.bound) == (pytest.approx(2**2.5 / 2), "=")
    assert (beyond.value, beyond.bound) == (4.0, ">")  # better than the MLP at 4x its budget


def test_summary_lists_the_multiplier_per_seed_and_mean_when_all_are_on_the_curve(grid):
    rows, _, _ = grid
    summary = summary_markdown(rows)
    assert "## compute multiplier" in summary
    line = next(line for line in summary.splitlines() if line.startswith("| memory | transformer | memory 2^16 |"))
    assert "2.00x, 2.83x, > 4.00x" in line  # one seed off the curve: each seed's, no mean
    mlp = next(line for line in summary.splitlines() if line.startswith("| mlp | transformer | MLP |"))
    assert "| 2.9 ± 0.01 | 2.9 ± 0.01 |" in mlp and "1 (the curve)" in mlp  # the MLP at the memory's budget
    on_curve = [r for r in rows if not (r["memory"] == "pkm" and r["seed"] == 2)]
    lines = summary_markdown(on_curve).splitlines()
    line = next(line for line in lines if line.startswith("| memory | transformer | memory 2^16 |"))
    assert f"{(2 + 2**1.5) / 2:.2f}x ± {math.sqrt(((2 - 2**1.5) ** 2) / 2):.2f}" in line


def test_figure_puts_validation_against_training_flops_with_the_mlp_curve(grid):
    rows, best, dirs = grid
    (ax,) = lm_compute_figure(best, lm_curves(rows, dirs)).axes
    assert ax.get_xscale() == "log" and ax.get_title() == "transformer"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["MLP, final at each budget"].get_xydata().tolist() == [
        [1e11, 3.0],
        [2e11, pytest.approx(2.9)],
        [4e11, 2.8],
        [8e11, 2.7],
    ]
    # the memory seeds' mean validation curve at the main budget (steps 100 and 200 -> 1e11, 2e11 FLOPs)
    mean = sum(MEMORY) / 3
    assert lines["memory 2^16"].get_xydata().tolist() == [[1e11, pytest.approx(mean + 0.3)], [2e11, pytest.approx(mean)]]
