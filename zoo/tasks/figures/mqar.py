"""MQAR's figures: test accuracy against d_model and against the inference state per sequence."""

from __future__ import annotations

from typing import Any

from zoo.tasks.figures.plot import MARKERS, bars, draw, group, line_label, log_x, panels, shared_legend


def mqar_figure(best: list[dict[str, Any]], x: str = "d_model"):
    """MQAR accuracy vs ``x`` (``d_model``, or ``state_size``: inference bytes per sequence, zoology's
    recall-vs-state comparison), log x, a panel per (seq_len, pairs), a line per backbone +- memory."""
    rows = [r for r in best if r.get(x)]
    cases = group(rows, lambda r: (r["task.seq_len"], r["task.num_kv_pairs"]))
    fig, axes = panels(len(cases), ylabel="MQAR test accuracy")
    labels = sorted({line_label(r) for r in rows})
    # hollow markers, each series smaller than the one before: series at the same point stay visible, nested
    hollow = {"markerfacecolor": "none", "markeredgewidth": 1.5}
    styles = {
        label: {"color": f"C{i}", "marker": MARKERS[i % len(MARKERS)], "markersize": 11 - 2 * (i % 4), **hollow}
        for i, label in enumerate(labels)
    }
    for ax, (seq_len, pairs) in zip(axes, sorted(cases)):
        cells = cases[(seq_len, pairs)]
        lines = group(cells, line_label)
        title = f"seq_len {seq_len}, {pairs} pairs"
        if len({r[x] for r in cells}) == 1:  # one x value: bars, not a line of one point
            bars(ax, {label: lines[label][0] for label in labels if label in lines}, "test_acc", styles)
            ax.set(title=f"{title}, {x} {cells[0][x]}", yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
            continue
        for label, line in sorted(lines.items()):
            draw(ax, label, line, x, "test_acc", dashed="memory" in label, **styles[label])
        ax.set(title=title, xlabel="inference state per sequence (bytes)" if x == "state_size" else x, ylim=(0, 1.02))
        log_x(ax, base=10 if x == "state_size" else 2)
    shared_legend(fig, axes)
    return fig


def figures(best: list[dict[str, Any]], curves: Any) -> dict[str, Any]:
    """MQAR cells' figures by file name (``curves`` unused: MQAR has no validation curves)."""
    return {"mqar_accuracy_vs_d_model": mqar_figure(best), "mqar_accuracy_vs_state_size": mqar_figure(best, x="state_size")}
