"""The LM task's figures: validation bits per byte against step and, for runs that recorded their
training FLOPs, against training FLOPs with the MLP's dense compute curve. Both draw ``Curves``."""

from __future__ import annotations

import statistics
from typing import Any

import matplotlib.pyplot as plt

from zoo.tasks.figures.plot import by_channel, group, has_memory, line_label, log_x, panels, shared_legend

Curves = dict[tuple[str, str], list[dict[str, Any]]]  # (study, cell) -> a run's validations, in step order


def draw_seed_curve(ax, cell: dict[str, Any], curves: Curves, x: str, **style: Any) -> None:
    """A cell's validation bits per byte against its runs' ``x`` (``step`` or ``train_flops``): the mean over
    its seeds at each validation, shaded ± one standard deviation with several; ``style`` to ``ax.plot``."""
    points = [p for run in cell["runs"] for p in curves.get((run["study"], run["cell"]), [])]
    by_x = {at: [p["val_bpb"] for p in same] for at, same in group(points, lambda p: p[x]).items()}
    if not by_x:
        return
    xs = sorted(by_x)
    ys = [statistics.fmean(by_x[x]) for x in xs]
    line = ax.plot(xs, ys, marker=".", **style)
    if cell["n"] > 1:
        spread = [statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0.0 for x in xs]
        low, high = [y - d for y, d in zip(ys, spread)], [y + d for y, d in zip(ys, spread)]
        ax.fill_between(xs, low, high, color=line[0].get_color(), alpha=0.2)


def lm_figure(best: list[dict[str, Any]], curves: Curves):
    """LM validation bits per byte vs step, a line per backbone +- memory (``draw_seed_curve``)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in sorted(best, key=line_label):
        draw_seed_curve(ax, r, curves, "step", linestyle="--" if has_memory(r) else "-", label=line_label(r))
    ax.set(xlabel="training step", ylabel="validation bits per byte")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def lm_rows(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LM cells with a final validation and their training FLOPs (grids since both were recorded)."""
    return [r for r in best if r.get("task") == "lm" and r.get("val_bpb") is not None and r.get("train_flops")]


def lm_compute_figure(best: list[dict[str, Any]], curves: Curves):
    """Validation bits per byte against training FLOPs (log x), a panel per backbone: a line per channel at
    the budget the memory cells train (``draw_seed_curve``), and the MLP model's dense compute curve (its
    final validation at every budget, squares, dotted)."""
    rows = lm_rows(best)
    backbones = sorted(group(rows, lambda r: r["backbone"]).items())
    colors = {label: f"C{i}" for i, label in enumerate(by_channel(rows))}
    fig, axes = panels(len(backbones), ylabel="validation bits per byte", sharey=True)
    for ax, (backbone, mine) in zip(axes, backbones):
        budgets = {r["steps_planned"] for r in mine if has_memory(r)} or {r["steps_planned"] for r in mine}
        for label, cells in by_channel(mine).items():
            for cell in (c for c in cells if c["steps_planned"] in budgets):
                style = {"linestyle": "-" if label == "MLP" else "--", "color": colors[label], "label": label}
                draw_seed_curve(ax, cell, curves, "train_flops", **style)
        curve = sorted((r["train_flops"], r["val_bpb"]) for r in mine if not has_memory(r))
        if len(curve) > 1:
            ax.plot(*zip(*curve), marker="s", linestyle=":", color=colors.get("MLP", "grey"), label="MLP, final at each budget")
        ax.set(title=backbone, xlabel="training FLOPs")
        log_x(ax)
    shared_legend(fig, axes)
    return fig


def figures(best: list[dict[str, Any]], curves: Curves | None) -> dict[str, Any]:
    """LM cells' figures by file name: none without ``curves`` (a grid reported before curves.csv)."""
    if curves is None:
        return {}
    out = {"lm_val_bpb_vs_step": lm_figure(best, curves)}
    if lm_rows(best):  # LM runs that recorded their training FLOPs and last validation
        out["lm_val_bpb_vs_train_flops"] = lm_compute_figure(best, curves)
    return out
