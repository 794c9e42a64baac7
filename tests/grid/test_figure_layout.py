"""Figures that read at README width (~800 px): panels wrap into rows of two, no panel's labels run
into another's, the capacity figure says which point is which channel with legends clear of the
data, and bar values sit above their error bars."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from helpers.grid_rows import finished_row
from matplotlib.container import BarContainer  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from zoo.grid.curves import lm_curves  # noqa: E402
from zoo.grid.report import DPI  # noqa: E402
from zoo.grid.table import aggregate, best_of_lr  # noqa: E402
from zoo.tasks.figures.facts import capacity_bits_figure, capacity_figure, knowledge_figure  # noqa: E402
from zoo.tasks.figures.lm import lm_compute_figure  # noqa: E402
from zoo.tasks.figures.mqar import mqar_figure  # noqa: E402

BACKBONES = ("gated_deltanet", "hybrid", "mamba2", "transformer")
CHANNELS = (None, 2**12, 2**14, 2**16)  # the MLP, then memory tables


def run(backbone, slots, seed, **measured):
    """A finished run's results.csv row: ``backbone`` with an MLP (``slots`` None) or a memory."""
    cell = f"{backbone}_{slots}_{'_'.join(f'{k}={v}' for k, v in measured.items() if k.startswith('task.'))}"
    return {
        **finished_row("s", cell, seed),
        "backbone": backbone,
        "memory": "none" if slots is None else "pkm",
        "slots": slots,
        "channel": "mlp",
        "lr": 0.003,
        "params": 20_000 if slots is None else 16 * slots,
        "flops_per_token": 66_000,
        "test_acc": 0.5,
        **measured,
    }


def knowledge_rows():
    rows = []
    for backbone in BACKBONES:
        for slots in CHANNELS:
            for facts in (1024, 2048, 4096):
                bits = 6 * facts * (0.5 if slots is None else 0.9) - 50 * (slots or 0) ** 0.25
                extra = {"task": "facts", "task.num_facts": facts, "knowledge_bits_max": 6.0 * facts}
                rows += [run(backbone, slots, seed, knowledge_bits=bits + 300 * seed, **extra) for seed in range(3)]
    return rows


def mqar_rows(d_models=(32, 64), seeds=1, spread=0.0):
    rows = []
    for seq_len, pairs in ((64, 4), (64, 8), (128, 8), (128, 16)):
        for backbone in BACKBONES:
            for d_model in d_models:
                task = {"task": "mqar", "task.seq_len": seq_len, "task.num_kv_pairs": pairs, "d_model": d_model}
                acc = {"state_size": 1000 * d_model, **task}
                rows += [run(backbone, None, s, test_acc=min(1.0, 0.2 + d_model / 80) - spread * s, **acc) for s in range(seeds)]
    return rows


def facts_rows():
    rows = []
    for facts in (1000, 2000, 4000):
        for backbone in ("mamba2", "transformer")[facts == 1000 :]:  # the first panel without mamba2
            for slots in CHANNELS:
                task = {"task": "facts", "task.num_facts": facts, "test_memory_layer1_usage": 0.5}
                rows += [run(backbone, slots, 0, facts_recalled=facts / 2, **task)]
    return rows


def lm_rows(tmp_path):
    rows, dirs = [], {}
    for backbone in BACKBONES:
        for slots, steps in ((None, 100), (None, 200), (2**14, 200), (2**16, 200)):
            row = run(
                backbone, slots, 0, task="lm", steps_planned=steps, steps=steps, train_flops=steps * 1e9, val_bpb=3 - steps / 1000
            )
            row["cell"] = f"{row['cell']}_{steps}"
            row["setting"] = row["group"] = row["cell"]
            dirs[(row["study"], row["cell"])] = tmp_path / row["cell"]
            with SummaryWriter(str(tmp_path / row["cell"] / "tb")) as writer:
                for step in (steps // 2, steps):
                    writer.add_scalar("val/bpb", row["val_bpb"] + (0.3 if step < steps else 0.0), step)
            rows.append(row)
    return rows, dirs


def best(rows):
    return best_of_lr(aggregate(rows))


@pytest.fixture
def figures(tmp_path):
    """Each multi-panel figure of the report, drawn for four panels."""
    lm, dirs = lm_rows(tmp_path)
    made = {
        "knowledge_bits_vs_facts": knowledge_figure(best(knowledge_rows())),
        "mqar_accuracy_vs_d_model": mqar_figure(best(mqar_rows())),
        "facts_recalled_vs_params": capacity_figure(best(facts_rows())),
        "lm_val_bpb_vs_train_flops": lm_compute_figure(best(lm), lm_curves(lm, dirs)),
    }
    yield made
    for fig in made.values():
        plt.close(fig)


def _boxes(fig, artists):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def test_four_panels_wrap_into_two_rows_of_two_under_900_px(figures):
    for name, fig in figures.items():
        assert len(fig.axes) == 4, name
        corners = {(round(ax.get_position().x0, 2), round(ax.get_position().y0, 2)) for ax in fig.axes}
        assert len({x for x, _ in corners}) == 2 and len({y for _, y in corners}) == 2, name
        width, height = fig.get_size_inches() * DPI
        assert width <= 900 and width / height < 1.6, (name, width, height)


def test_three_panels_leave_the_fourth_place_empty():
    fig = knowledge_figure(best([r for r in knowledge_rows() if r["backbone"] != "hybrid"]))
    assert [ax.get_title() for ax in fig.axes] == ["gated_deltanet", "mamba2", "transformer"]
    plt.close(fig)


def test_no_panel_runs_into_another_nor_into_a_legend_under_them(figures):
    for name, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [ax.get_tightbbox(renderer) for ax in fig.axes] + _boxes(fig, fig.legends)
        for i, first in enumerate(boxes):
            for second in boxes[i + 1 :]:
                assert not first.overlaps(second), name


def test_a_backbone_keeps_its_color_in_every_panel_of_the_facts_figure():
    fig = capacity_figure(best(facts_rows()))
    colors = {}
    for ax in fig.axes:
        for container in ax.containers:
            colors.setdefault(container.get_label().split()[0], set()).add(container.lines[0].get_color())
        for line in ax.get_lines():
            if not line.get_label().startswith("_") and line.get_label() != "all facts":
                colors.setdefault(line.get_label().split()[0].rstrip(","), set()).add(line.get_color())
    plt.close(fig)
    assert {backbone: len(found) for backbone, found in colors.items()} == {"mamba2": 1, "transformer": 1}
    assert colors["mamba2"] != colors["transformer"]


def test_capacity_points_show_their_channel_by_marker_in_a_legend_clear_of_the_axes():
    fig = capacity_bits_figure(best(knowledge_rows()))
    (ax,) = fig.axes
    points = [line for line in ax.get_lines() if line.get_linestyle() == "None" and len(line.get_xdata()) == 1]
    marker_of = {}
    for line in points:  # the channel from the point's parameters (16 per slot, 20k for the MLP)
        params = line.get_xdata()[0]
        marker_of.setdefault(params, set()).add(line.get_marker())
    assert len(points) == len(BACKBONES) * len(CHANNELS)
    assert all(len(markers) == 1 for markers in marker_of.values())  # one marker per channel, in every backbone
    assert len({m for markers in marker_of.values() for m in markers}) == len(CHANNELS)
    channel_legend = next(legend for legend in fig.legends if legend.get_title().get_text() == "channel")
    assert [t.get_text() for t in channel_legend.get_texts()] == ["MLP", "memory 2^12", "memory 2^14", "memory 2^16"]
    axes_box, *legend_boxes = _boxes(fig, [ax, *fig.legends])
    assert not any(box.overlaps(axes_box) for box in legend_boxes)  # no label over a point or an error bar
    assert not legend_boxes[0].overlaps(legend_boxes[1])
    plt.close(fig)


def test_bar_values_sit_above_their_error_bars_and_seeds_inside_the_axes():
    rows = mqar_rows(d_models=(64,), seeds=3, spread=0.1)  # accuracy 1.0, 0.9, 0.8: the error bar reaches 1
    fig = mqar_figure(best(rows))
    for ax in fig.axes:
        (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
        labels = [t for t in ax.texts if t.get_text()]
        boxes = _boxes(fig, labels)
        axes_top = ax.get_window_extent().y1
        for box, error in zip(boxes, bars.errorbar.lines[2][0].get_segments()):
            highest = max(error[:, 1].max(), 1.0)  # the error bar's top, the best seed
            assert box.y0 > ax.transData.transform((0, highest))[1]
            assert box.y1 < axes_top  # inside the axes, under the title
        assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)
