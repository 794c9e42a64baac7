"""MQAR's figures: test accuracy against d_model and against the inference state per sequence."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from zoo.tasks.figures.plot import MARKERS, bars, draw, line_label, log_tick_labels, panels, shared_legend, ylabel


def mqar_figure(best: list[dict[str, Any]], x: str = "d_model"):
    """MQAR accuracy vs ``x`` (``d_model``, or ``state_size``: inference bytes per sequence, log x,
    zoology's recall-vs-state comparison) over MQAR cells, a line per backbone +- memory, a panel per
    (seq_len, pairs), one legend under the panels."""
    rows = [r for r in best if r.get(x)]
    cases = sorted({(r["task.seq_len"], r["task.num_kv_pairs"]) for r in rows})
    fig, axes = panels(len(cases))
    labels = sorted({line_label(r) for r in rows})
    # hollow markers, each series smaller than the one before: series at the same point stay visible, nested
    hollow = {"markerfacecolor": "none", "markeredgewidth": 1.5}
    styles = {
        label: {"color": f"C{i}", "marker": MARKERS[i % len(MARKERS)], "markersize": 11 - 2 * (i % 4), **hollow}
        for i, label in enumerate(labels)
    }
    for ax, (seq_len, pairs) in zip(axes, cases):
        lines = defaultdict(list)
        for r in rows:
            if (r["task.seq_len"], r["task.num_kv_pairs"]) == (seq_len, pairs):
                lines[line_label(r)].append(r)
        title = f"seq_len {seq_len}, {pairs} pairs"
        if len({r[x] for cells in lines.values() for r in cells}) == 1:  # one x value: bars, not a line of one point
            bars(ax, {label: lines[label][0] for label in labels if label in lines}, "test_acc", styles)
            value = next(iter(lines.values()))[0][x]
            ax.set(title=f"{title}, {x} {value}", yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
            continue
        for label, cells in sorted(lines.items()):
            draw(ax, label, cells, x, "test_acc", dashed="memory" in label, **styles[label])
        xlabel = "inference state per sequence (bytes)" if x == "state_size" else x
        ax.set(title=title, xlabel=xlabel, ylim=(0, 1.02))
        ax.set_xscale("log", base=10 if x == "state_size" else 2)
        log_tick_labels(ax)
    ylabel(axes, "MQAR test accuracy")
    shared_legend(fig, axes)
    return fig


def figures(best: list[dict[str, Any]], curves: Any) -> dict[str, Any]:
    """MQAR cells' figures by file name (``curves`` unused: MQAR has no validation curves)."""
    return {"mqar_accuracy_vs_d_model": mqar_figure(best), "mqar_accuracy_vs_state_size": mqar_figure(best, x="state_size")}
