"""What every task's figures share: panel layout, a line or bars through a grid's cells (mean, ±
one standard deviation and each seed with several seeds), log tick labels in human units, and the
labels and groups of results rows (``has_memory``, ``line_label``, ``channel_label``, ``by_channel``).
A cell: a results row's settings and measured means, ``<column>_std``, ``n`` seeds and their ``runs``."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # series told apart by marker, not only color
COLUMNS = 2  # panels per row: a figure under 900 px wide stays legible shown at README width (~800 px)
PANEL = (4.0, 3.1)  # one panel, inches
LEGEND = 7.5  # legend font size, points


def has_memory(r: dict[str, Any]) -> bool:
    """Whether a results row's run had a memory (its ``memory`` is a preset's name, not ``none``)."""
    return r["memory"] != "none"


def line_label(r: dict[str, Any]) -> str:
    """``<backbone> + memory``, ``+ <channel>`` or ``+ no channel``."""
    return f"{r['backbone']} + {'memory' if has_memory(r) else r['channel'] if r['channel'] != 'none' else 'no channel'}"


def channel_label(r: dict[str, Any]) -> str:
    """``MLP``, or ``memory 2^k`` for a memory of 2^k slots (``memory N`` when N is no power of 2)."""
    if not has_memory(r):
        return {"mlp": "MLP", "none": "no channel"}.get(r["channel"], r["channel"])
    slots = int(r["slots"])
    return f"memory 2^{slots.bit_length() - 1}" if slots & (slots - 1) == 0 else f"memory {slots}"


def group(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[dict[str, Any]]]:
    """Rows by ``key(row)``, keys and rows in the order first seen."""
    out = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(out)


def by_channel(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by ``channel_label``, the MLP first, then memory by table size."""
    return group(sorted(rows, key=lambda r: (has_memory(r), r.get("slots") or 0)), channel_label)


def usage_column(r: dict[str, Any]) -> str | None:
    """The first memory layer's test-set usage column of a row, if it has one."""
    return next((c for c in r if c.startswith("test_memory_layer") and c.endswith("_usage")), None)


def human(value: float, digits: int = 4) -> str:
    """A number as a reader takes it in: ``digits`` significant digits, thousands and up with a
    suffix (13,399 -> ``13.4k``, 1,069,540 -> ``1.07M``), no exponent below that (100 -> ``100``)."""
    # (scale, suffix, from): 4-digit numbers stay as they are
    units = ((1e12, "T", 1e12), (1e9, "G", 1e9), (1e6, "M", 1e6), (1e3, "k", 1e4))
    scale, suffix = next(((s, x) for s, x, at in units if abs(value) >= at), (1, ""))
    scaled = value / scale
    return (f"{scaled:.0f}" if abs(scaled) >= 10 ** (digits - 1) else f"{scaled:.{digits}g}") + suffix


def panels(n: int, ylabel: str = "", **kwargs: Any):
    """A figure of ``n`` panels wrapped into rows of at most ``COLUMNS`` (``kwargs`` to ``plt.subplots``,
    e.g. ``sharey``), ``ylabel`` on the first column only, and its ``n`` axes in reading order."""
    rows, cols = -(-n // COLUMNS), min(n, COLUMNS)
    size = (PANEL[0] * cols, PANEL[1] * rows)
    fig, grid = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained", **kwargs)
    axes = list(grid.flat)
    for spare in axes[n:]:  # the last row's empty places
        fig.delaxes(spare)
    for ax in axes[:n]:
        ax.set_ylabel(ylabel if ax.get_subplotspec().is_first_col() else "")
    return fig, axes[:n]


def shared_legend(fig, axes: list) -> None:
    """One legend under the panels, each label once, for series drawn alike in every panel."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        width = max(len(label) for label in handles) * LEGEND * 0.6 + 40  # an entry, points: text, handle, gap
        cols = max(1, min(len(handles), int(fig.get_figwidth() * 72 // width)))
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=cols, fontsize=LEGEND)


def draw(ax, label: str, cells: list[dict[str, Any]], x: str, y: str, dashed: bool, **style: Any) -> str:
    """A line through the cells' mean ``y`` against ``x`` (with several seeds ± one standard deviation
    as error bars, each seed a point); ``style`` overrides matplotlib's. Returns the line's color."""
    cells = sorted(cells, key=lambda c: c[x])
    xs, ys = [c[x] for c in cells], [c[y] for c in cells]
    style = {"marker": "o", "linestyle": "--" if dashed else "-", "label": label, **style}
    if all(c["n"] == 1 for c in cells):
        return ax.plot(xs, ys, **style)[0].get_color()
    color = ax.errorbar(xs, ys, yerr=[c[f"{y}_std"] for c in cells], capsize=3, **style)[0].get_color()
    for c in cells:
        ax.scatter([c[x]] * c["n"], [r[y] for r in c["runs"]], s=10, alpha=0.5, color=color, zorder=3)
    return color


def bars(ax, cells: dict[str, dict[str, Any]], y: str, styles: dict[str, dict[str, Any]]) -> None:
    """One bar per labelled cell (its mean ``y``; with several seeds ± one standard deviation and each seed as
    a point), its value written above, the labels under the bars; y from 0 with room above 1 for the values."""
    labels = list(cells)
    means = [cells[label][y] for label in labels]
    errors = [cells[label].get(f"{y}_std") or 0 for label in labels]
    ax.bar(range(len(labels)), means, yerr=errors, color=[styles[label]["color"] for label in labels], capsize=3)
    tops = [mean + error for mean, error in zip(means, errors)]
    for i, (label, mean) in enumerate(zip(labels, means)):
        if cells[label]["n"] > 1:  # each seed as a point
            seeds = [run[y] for run in cells[label]["runs"]]
            ax.scatter([i] * len(seeds), seeds, s=10, color="black", alpha=0.5, zorder=3)
            tops[i] = max(tops[i], *seeds)
        ax.annotate(f"{mean:.3g}", (i, tops[i]), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_ylim(0, 1.15 * max(1.0, *tops))
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)


def log_x(ax, base: float = 10) -> None:
    """A log x axis (``base``) and its tick labels, called once its data is drawn: the decades only when the
    data span one or more (minor labels such as 2x10^5, 3x10^5 collide), else the ticks in human units (k, M):
    all over less than 3x, over more only 1, 2, 3 and 5 times a power of ten (600k-900k collide with 1M)."""
    ax.set_xscale("log", base=base)
    low, high = ax.dataLim.intervalx
    if high >= 10 * low:
        ax.xaxis.set_minor_formatter(NullFormatter())
        return
    shown = _round_tick if high >= 3 * low else (lambda value: True)
    formatter = FuncFormatter(lambda value, _: human(value, 2) if shown(value) else "")
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(formatter)
    ax.tick_params(axis="x", which="both", labelsize=8)


def _round_tick(value: float) -> bool:
    """Whether ``value`` is 1, 2, 3 or 5 times a power of ten."""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return math.isclose(mantissa, round(mantissa)) and round(mantissa) in (1, 2, 3, 5)
