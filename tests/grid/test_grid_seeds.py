"""Seeds as a grid axis: every cell runs once per seed, summary.md gives mean ± std (n) per cell,
the figures draw error bars and per-seed points, and the best learning rate is the best mean."""

import csv
import statistics

import pytest
import yaml
from matplotlib.container import BarContainer, ErrorbarContainer

from zoo.grid.runner import collect, expand, load_grid, main
from zoo.grid.table import aggregate, best_of_lr, row
from zoo.tasks.figures.mqar import mqar_figure

TINY = [
    "task.num_train=64",
    "task.num_test=32",
    "task.batch_size=32",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "backbone.d_model=16",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]
SEEDS = {"name": "seeded", "studies": {"mqar": {"base": TINY, "axes": {"memory": ["none"]}, "seeds": [0, 1, 2]}}}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    path = tmp / "seeded.yaml"
    path.write_text(yaml.safe_dump(SEEDS))
    main([str(path), "--out", str(tmp)])
    return path, tmp / "seeded"


def test_each_seed_is_its_own_run_with_its_seed(seeded):
    _, root = seeded
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert [(r["cell"], r["setting"], r["seed"]) for r in rows] == [
        (f"memory=none_seed={s}", "memory=none", str(s)) for s in (0, 1, 2)
    ]
    assert len({r["test_loss"] for r in rows}) == 3  # three different initialisations and data orders
    for s in (0, 1, 2):
        assert f"seed: {s}\n" in (root / "runs" / "mqar" / f"memory=none_seed={s}" / "config.yaml").read_text()


def test_summary_gives_mean_and_std_over_seeds_with_n(seeded):
    _, root = seeded
    accs = [float(r["test_acc"]) for r in csv.DictReader((root / "results.csv").open())]
    summary = (root / "summary.md").read_text()
    assert "## mqar (mean ± std over seeds, best mean learning rate per cell)" in summary
    header, _, line = [s for s in summary.splitlines() if s.startswith("|")]
    cells = dict(zip(*([c.strip() for c in s.strip("| ").split("|")] for s in (header, line))))
    assert cells["test_acc"] == f"{statistics.fmean(accs):.4g} ± {statistics.stdev(accs):.2g}"
    assert cells["n"] == "3"


def test_figures_draw_mean_with_std_error_bars_and_each_seed(seeded):
    path, root = seeded
    assert (root / "mqar_accuracy_vs_d_model.png").read_bytes().startswith(b"\x89PNG")
    accs = [float(r["test_acc"]) for r in csv.DictReader((root / "results.csv").open())]
    mean, std = statistics.fmean(accs), statistics.stdev(accs)
    rows = [row(r) for r in collect(expand(load_grid(str(path))), root)]
    fig = mqar_figure(best_of_lr(aggregate(rows)))
    ax = fig.axes[0]  # one d_model: a bar per series (a line of one point would say nothing)
    assert ax.get_title() == "seq_len 64, 4 pairs, d_model 16"
    (bar,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [p.get_height() for p in bar.patches] == [pytest.approx(mean)]
    (errors,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = errors.lines[2]
    (((x0, low), (x1, high)),) = segments.get_segments()
    assert (x0, x1) == (0, 0) and low == pytest.approx(mean - std) and high == pytest.approx(mean + std)
    (points,) = [c for c in ax.collections if c is not segments]  # the per-seed scatter
    assert sorted(points.get_offsets()[:, 1].tolist()) == pytest.approx(sorted(accs))


def test_best_learning_rate_is_chosen_on_the_mean_not_on_the_best_seed():
    def run(lr, seed, acc):
        return {
            "study": "s",
            "cell": f"lr={lr}_seed={seed}",
            "setting": f"lr={lr}",
            "group": "default",
            "seed": seed,
            "status": "done",
            "lr": lr,
            "test_acc": acc,
        }

    rows = [run(0.1, 0, 0.9), run(0.1, 1, 0.1), run(0.2, 0, 0.6), run(0.2, 1, 0.6)]
    (best,) = best_of_lr(aggregate(rows))
    assert best["lr"] == 0.2 and best["test_acc"] == pytest.approx(0.6) and best["n"] == 2
    assert best["test_acc_std"] == pytest.approx(0.0)


def test_seeds_must_be_distinct_integers(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "studies": {"s": {"base": [], "seeds": [0, 0]}}}))
    with pytest.raises(ValueError, match=r"grid study 's' seeds must be a non-empty list of distinct integers, got \[0, 0\]"):
        load_grid(str(path))
