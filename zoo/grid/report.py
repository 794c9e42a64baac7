"""A grid's records -> results.csv, summary.md, curves.csv, each task's figures (``zoo.tasks.figures``)
as PNGs and as images in the grid's TensorBoard log. ``python -m zoo.grid.report results/<grid> ...``
redraws a finished grid's figures."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from torch.utils.tensorboard import SummaryWriter

from zoo.core.io import atomic_write, atomic_write_text
from zoo.grid.curves import lm_curves, read_curves, write_curves
from zoo.grid.table import aggregate, best_of_lr, read_csv, row, summary_markdown, write_csv
from zoo.tasks.figures import FIGURES
from zoo.tasks.figures.lm import Curves
from zoo.tasks.figures.plot import group

DPI = 110


def figures(best: list[dict[str, Any]], curves: Curves | None = None) -> dict[str, Any]:
    """The report's figures by file name: each task's in ``FIGURES`` drawn from its cells in ``best``;
    the LM curves only with ``curves`` (``lm_curves`` from TensorBoard events or ``read_curves``)."""
    out, by_task = {}, group(best, lambda r: r.get("task"))
    for task, make in FIGURES.items():
        if task in by_task:
            out.update(make(by_task[task], curves))
    return out


def _save(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` (written atomically)."""
    return atomic_write(path, lambda handle: fig.savefig(handle, dpi=DPI, format="png"))


def write_report(records: list[dict[str, Any]], root: Path, overrides: Sequence[str] = ()) -> list[Path]:
    """results.csv (one row per run), summary.md, curves.csv when the grid has LM runs, the figures as PNGs
    and in root/tb; ``overrides``: what the command line added to every cell, recorded in summary.md."""
    rows = [row(r) for r in records]
    paths = [write_csv(rows, root / "results.csv"), atomic_write_text(root / "summary.md", summary_markdown(rows, overrides))]
    curves = lm_curves(rows, {(r["study"], r["cell"]): Path(r["dir"]) for r in records})
    if curves:
        paths.append(write_curves(curves, root / "curves.csv"))
    with SummaryWriter(str(root / "tb")) as writer:
        for name, fig in figures(best_of_lr(aggregate(rows)), curves).items():
            paths.append(_save(fig, root / f"{name}.png"))
            writer.add_figure(f"grid/{name}", fig, close=True)
    return paths


def redraw(root: Path) -> list[Path]:
    """A finished grid's figures redrawn in place from root/results.csv and root/curves.csv; without
    curves.csv (grids reported before it was written) the LM figures are left as they are."""
    curves = read_curves(root / "curves.csv") if (root / "curves.csv").is_file() else None
    paths = []
    for name, fig in figures(best_of_lr(aggregate(read_csv(root / "results.csv"))), curves).items():
        paths.append(_save(fig, root / f"{name}.png"))
        plt.close(fig)
    return paths


if __name__ == "__main__":  # python -m zoo.grid.report results/<grid> ...: redraw committed figures
    for root in sys.argv[1:]:
        print(*redraw(Path(root)), sep="\n")
