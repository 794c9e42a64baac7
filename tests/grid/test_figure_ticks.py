"""Figures a reader can take in: a log axis spanning less than a decade still has labelled ticks (over
more than 3x only 1, 2, 3 and 5 times a power of ten), one spanning decades labels only the decades,
and series at the same point stay visible."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from zoo.tasks.figures.mqar import mqar_figure  # noqa: E402
from zoo.tasks.figures.plot import log_x  # noqa: E402


def _labels(ax, which: str) -> list[str]:
    ax.figure.canvas.draw()
    ticks = ax.xaxis.get_minorticklabels() if which == "minor" else ax.xaxis.get_majorticklabels()
    low, high = ax.get_xlim()
    return [t.get_text() for t in ticks if t.get_text() and low <= t.get_position()[0] <= high]


def test_a_log_axis_within_one_decade_labels_its_minor_ticks_in_human_units():
    fig, ax = plt.subplots()
    ax.plot([131_072, 143_360], [1, 0.26], marker="o")
    ax.set_xscale("log")
    log_x(ax)
    labels = _labels(ax, "major") + _labels(ax, "minor")
    plt.close(fig)
    assert labels and all(label.endswith("k") for label in labels), labels


def test_a_log_axis_over_decades_labels_only_the_decades():
    fig, ax = plt.subplots()
    ax.plot([1e3, 1e6], [0, 1])
    ax.set_xscale("log")
    log_x(ax)
    minor = _labels(ax, "minor")
    plt.close(fig)
    assert minor == []


def test_a_log_axis_over_3x_to_10x_labels_1_2_3_and_5_times_a_power_of_ten_in_human_units():
    fig, ax = plt.subplots()
    ax.plot([620_000, 4_800_000], [0, 1])
    ax.set_xscale("log")
    log_x(ax)
    labels = _labels(ax, "major") + _labels(ax, "minor")
    plt.close(fig)
    assert labels == ["1M", "2M", "3M", "5M"], labels  # not 700k, 800k, 900k (they collide with 1M), nor 4M


def _mqar_row(backbone: str, memory: str, state_size: int, acc: float) -> dict:
    return {
        "task": "mqar",
        "task.seq_len": 64,
        "task.num_kv_pairs": 4,
        "backbone": backbone,
        "memory": memory,
        "channel": "mlp",
        "state_size": state_size,
        "test_acc": acc,
        "n": 1,
    }


def test_series_on_the_same_point_are_drawn_hollow_and_nested():
    rows = [_mqar_row("mamba2", m, 143_360, 0.26) for m in ("none", "pkm")]
    rows += [_mqar_row("transformer", m, 131_072, 1.0) for m in ("none", "pkm")]
    fig = mqar_figure(rows, x="state_size")
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() and not line.get_label().startswith("_")]
    plt.close(fig)
    assert len(lines) == 4
    assert all(line.get_markerfacecolor() == "none" for line in lines)
    assert len({line.get_markersize() for line in lines}) == 4  # each smaller than the last: overlaps nest
