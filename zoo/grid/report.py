"""A grid's records -> results.csv (one row per run), summary.md (per cell: mean ± std over its
seeds, at the learning rate with the best mean), curves.csv (the LM runs' validation curves), PNG
figures (error bars and per-seed points when a cell has several seeds), and the figures as images in
the grid's TensorBoard log."""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from zoo.core.io import atomic_write, atomic_write_text  # noqa: E402
from zoo.grid.compute import compute_multiplier  # noqa: E402

TASK_KNOBS = ("seq_len", "num_kv_pairs", "num_facts", "tokenizer", "vocab_size")
KNOWLEDGE = ("knowledge_bits", "bits_per_parameter", "bits_per_channel_parameter", "bits_per_kflop", "exposures")
THROUGHPUT = ("tokens_per_s", "step_time_s", "mfu", "peak_flops", "peak_memory_bytes", "train_tokens", "train_flops")
# columns that say what a run is; every other numeric column is a measurement, averaged over seeds
DESCRIPTION = {
    "study",
    "cell",
    "setting",
    "group",
    "seed",
    "status",
    "error",
    "backbone",
    "memory",
    "slots",
    "d_model",
    "n_layers",
    "channel",
    "task",
    "lr",
    "steps_planned",
    "params",
    "active_params",
    "flops_per_token",
    "state_size",
}

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # series told apart by marker, not only color
DASHES = ("-", "--", ":", "-.")
COLUMNS = 2  # panels per row: a figure under 900 px wide stays legible shown at README width (~800 px)
PANEL = (4.0, 3.1)  # one panel, inches
DPI = 110
LEGEND = 7.5  # legend font size, points
CURVE_COLUMNS = ("study", "cell", "step", "train_flops", "val_bpb")
Curves = dict[tuple[str, str], list[dict[str, Any]]]  # (study, cell) -> a run's validations, in step order


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One results.csv row: settings from the run's resolved config, then its final metrics."""
    out = {
        "study": record["study"],
        "cell": record["cell"],
        "setting": record["setting"],
        "group": record["group"],
        "seed": record["seed"],
        "status": record["status"],
    }
    config_path = Path(record["dir"]) / "config.yaml"
    if config_path.is_file():
        cfg = OmegaConf.load(config_path)
        out.update(
            seed=cfg.seed,
            backbone=cfg.backbone.name,
            memory=cfg.memory.name,
            slots=cfg.memory.n_keys**2 if cfg.memory.name != "none" else None,
            d_model=cfg.backbone.d_model,
            n_layers=cfg.backbone.n_layers,
            channel=cfg.backbone.channel,
            task=cfg.task.name,
            lr=cfg.optim.lr,
            steps_planned=cfg.trainer.max_steps,
        )
        out.update({f"task.{k}": cfg.task[k] for k in TASK_KNOBS if k in cfg.task})
    metrics = record.get("metrics")
    if metrics:
        out.update(
            params=metrics["params"]["total"],
            active_params=metrics["params"]["active"],
            flops_per_token=metrics["flops_per_token"],
            state_size=metrics.get("state_size"),
            steps=metrics["steps"],
            wall_time_s=metrics["wall_time_s"],
        )
        out.update({k: metrics["throughput"][k] for k in THROUGHPUT if k in metrics.get("throughput", {})})
        out.update({k.replace("/", "_"): v for k, v in metrics["test"].items()})
        out.update({k.replace("/", "_"): v for k, v in metrics.get("val", {}).items()})  # the last validation
        out.update(metrics.get("task_metrics", {}))
    if record["status"] == "failed":
        out["error"] = record["error"]
    return out


def write_csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str] = ()) -> Path:
    """``rows`` as CSV at ``path`` (atomically) under ``columns``, by default every key of the rows in
    the order first seen."""
    if not columns:
        columns = list(dict.fromkeys(c for r in rows for c in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def score(r: dict[str, Any]) -> float:
    """Higher is better: accuracy, or minus bits per byte for language modeling."""
    return -r["test_bpb"] if "test_bpb" in r else r["test_acc"]


def _measured(column: str, value: Any) -> bool:
    return (
        column not in DESCRIPTION
        and not column.startswith("task.")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    )


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per cell (study, setting) over its finished runs, one per seed: the settings of its
    first run; each measured column's mean and ``<column>_std`` (sample standard deviation, n - 1
    in the denominator; 0 for a single run); ``n`` runs; ``runs``, the rows themselves."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["status"] == "done":
            cells[(r["study"], r["setting"])].append(r)
    out = []
    for runs in cells.values():
        cell = {k: v for k, v in runs[0].items() if not _measured(k, v) and k != "seed"}
        cell["cell"] = runs[0]["setting"]
        for column, value in runs[0].items():
            if _measured(column, value):
                values = [r[column] for r in runs if r.get(column) is not None]
                cell[column] = statistics.fmean(values)
                cell[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        cell.update(n=len(runs), runs=runs)
        out.append(cell)
    return out


def best_of_lr(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each cell but its learning rate, the one with the best mean score over its seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for cell in cells:
        groups[(cell["study"], cell["group"])].append(cell)
    return [max(group, key=score) for group in groups.values()]


def summary_markdown(rows: list[dict[str, Any]], overrides: Sequence[str] = ()) -> str:
    """summary.md: a table per study (best learning rate per cell, mean ± std over seeds), the
    compute multipliers, the failed cells; first, the overrides the command line added to every cell."""
    added = " ".join(f"`{o}`" for o in overrides) if overrides else "none"
    lines = [f"Overrides added on the command line to every cell: {added}.", ""]
    best = best_of_lr(aggregate(rows))
    for study in dict.fromkeys(r["study"] for r in rows):
        chosen = [r for r in best if r["study"] == study]
        if not chosen:
            continue
        seeded = any(r["n"] > 1 for r in chosen)
        slice_cols = [c for c in chosen[0] if c.startswith("test_") and c.endswith("_acc") and c != "test_acc"]
        usage_cols = sorted({c for r in chosen for c in r if c.startswith("test_memory_layer") and c.endswith("_usage")})
        metric_cols = [c for c in ("test_acc", *slice_cols, "test_bpb", "facts_recalled", *KNOWLEDGE) if c in chosen[0]]
        metric_cols += usage_cols
        knob_cols = [c for c in chosen[0] if c.startswith("task.")]
        cols = [
            "cell",  # the study's axis values: what tells its rows apart
            "backbone",
            "memory",
            *(["slots"] if any(r.get("slots") for r in chosen) else []),
            "channel",
            "d_model",
            *knob_cols,
            "lr",
            "params",
            "flops_per_token",
            *(["state_size"] if study_task(chosen) == "mqar" else []),  # what in-context recall is read against
            *metric_cols,
            "wall_time_s",
            *(["n"] if seeded else []),
        ]  # the rest (tokens/s, MFU, KL from uniform, peak memory, ...) are in results.csv
        title = "mean ± std over seeds, best mean learning rate per cell" if seeded else "best learning rate per cell"
        lines += [f"## {study} ({title})", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for r in chosen:
            lines.append("| " + " | ".join(_fmt(r.get(c), r.get(f"{c}_std") if r["n"] > 1 else None) for c in cols) + " |")
        lines.append("")
    lines += multiplier_markdown(best)
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["## failed cells", ""] + [f"- {r['study']}/{r['cell']}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)


def study_task(rows: list[dict[str, Any]]) -> str | None:
    """The task of a study's rows (the first row's)."""
    return rows[0].get("task") if rows else None


def human(value: float, digits: int = 4) -> str:
    """A number as a reader takes it in: ``digits`` significant digits, thousands and up with a
    suffix (13,399 -> ``13.4k``, 1,069,540 -> ``1.07M``), no exponent below that (100 -> ``100``)."""
    # (scale, suffix, from): 4-digit numbers stay as they are
    units = ((1e12, "T", 1e12), (1e9, "G", 1e9), (1e6, "M", 1e6), (1e3, "k", 1e4))
    scale, suffix = next(((s, x) for s, x, at in units if abs(value) >= at), (1, ""))
    scaled = value / scale
    return (f"{scaled:.0f}" if abs(scaled) >= 10 ** (digits - 1) else f"{scaled:.{digits}g}") + suffix


def _fmt(value: Any, std: float | None = None) -> str:
    """A summary cell: numbers in ``human`` units (mean ± std with a standard deviation), text as is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return human(value) if std is None else f"{human(value)} ± {human(std, 2)}"


def _panels(n: int, **kwargs: Any):
    """A figure of ``n`` panels wrapped into rows of at most ``COLUMNS`` (``kwargs`` to ``plt.subplots``,
    e.g. ``sharey``), and its ``n`` axes in reading order."""
    rows, cols = -(-n // COLUMNS), min(n, COLUMNS)
    size = (PANEL[0] * cols, PANEL[1] * rows)
    fig, grid = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained", **kwargs)
    axes = list(grid.flat)
    for spare in axes[n:]:  # the last row's empty places
        fig.delaxes(spare)
    return fig, axes[:n]


def _ylabel(axes: list, text: str) -> None:
    """``text`` as the y label of the panels in the first column (the others share their y axis)."""
    for ax in axes:
        ax.set_ylabel(text if ax.get_subplotspec().is_first_col() else "")


def _shared_legend(fig, axes: list) -> None:
    """One legend under the panels, each label once, for series drawn alike in every panel."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        width = max(len(label) for label in handles) * LEGEND * 0.6 + 40  # an entry, points: text, handle, gap
        cols = max(1, min(len(handles), int(fig.get_figwidth() * 72 // width)))
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=cols, fontsize=LEGEND)


def _draw(ax, label: str, cells: list[dict[str, Any]], x: str, y: str, dashed: bool, **style: Any) -> str:
    """A line through the cells' mean ``y`` against ``x``; with several seeds, ± one standard
    deviation as error bars and each seed's value as a point. ``style`` overrides matplotlib's
    (``marker``, ``color``, ...). Returns the line's color."""
    cells = sorted(cells, key=lambda c: c[x])
    xs, ys = [c[x] for c in cells], [c[y] for c in cells]
    style = {"marker": "o", "linestyle": "--" if dashed else "-", "label": label, **style}
    if all(c["n"] == 1 for c in cells):
        return ax.plot(xs, ys, **style)[0].get_color()
    bars = ax.errorbar(xs, ys, yerr=[c[f"{y}_std"] for c in cells], capsize=3, **style)
    for c in cells:
        ax.scatter([c[x]] * c["n"], [r[y] for r in c["runs"]], s=10, alpha=0.5, color=bars[0].get_color(), zorder=3)
    return bars[0].get_color()


def _line_label(r: dict[str, Any]) -> str:
    return f"{r['backbone']} + {'memory' if r['memory'] != 'none' else r['channel'] if r['channel'] != 'none' else 'no channel'}"


def mqar_figure(best: list[dict[str, Any]], x: str = "d_model"):
    """MQAR accuracy vs ``x`` (``d_model``, or ``state_size``: inference bytes per sequence, log x,
    zoology's recall-vs-state comparison), a line per backbone +- memory, a panel per (seq_len, pairs),
    one legend under the panels."""
    rows = [r for r in best if r.get("task") == "mqar" and r.get(x)]
    panels = sorted({(r["task.seq_len"], r["task.num_kv_pairs"]) for r in rows})
    fig, axes = _panels(len(panels))
    labels = sorted({_line_label(r) for r in rows})
    # hollow markers, each series smaller than the one before: series at the same point stay visible, nested
    styles = {
        label: {
            "color": f"C{i}",
            "marker": MARKERS[i % len(MARKERS)],
            "markersize": 11 - 2 * (i % 4),
            "markerfacecolor": "none",
            "markeredgewidth": 1.5,
        }
        for i, label in enumerate(labels)
    }
    for ax, (seq_len, pairs) in zip(axes, panels):
        lines = defaultdict(list)
        for r in rows:
            if (r["task.seq_len"], r["task.num_kv_pairs"]) == (seq_len, pairs):
                lines[_line_label(r)].append(r)
        title = f"seq_len {seq_len}, {pairs} pairs"
        if len({r[x] for cells in lines.values() for r in cells}) == 1:  # one x value: bars, not a line of one point
            _bars(ax, {label: lines[label][0] for label in labels if label in lines}, "test_acc", styles)
            value = next(iter(lines.values()))[0][x]
            ax.set(title=f"{title}, {x} {value}", yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
            continue
        for label, cells in sorted(lines.items()):
            _draw(ax, label, cells, x, "test_acc", dashed="memory" in label, **styles[label])
        xlabel = "inference state per sequence (bytes)" if x == "state_size" else x
        ax.set(title=title, xlabel=xlabel, ylim=(0, 1.02))
        ax.set_xscale("log", base=10 if x == "state_size" else 2)
        _log_tick_labels(ax)
    _ylabel(axes, "MQAR test accuracy")
    _shared_legend(fig, axes)
    return fig


def _log_tick_labels(ax) -> None:
    """Tick labels of a log x axis, called once its data is drawn: the decades only when the data span
    one or more (minor labels such as 2x10^5, 3x10^5 collide), else the ticks in human units (k, M):
    every one over less than 3x, over more only 1, 2, 3 and 5 times a power of ten (600k, 700k, 800k,
    900k and 1M collide in a panel)."""
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


def _bars(ax, cells: dict[str, dict[str, Any]], y: str, styles: dict[str, dict[str, Any]]) -> None:
    """One bar per labelled cell (its mean ``y``; with several seeds ± one standard deviation and
    each seed as a point), the value written above the bar's error bar and points, the labels under
    the bars; y from 0 with room above 1 for the values."""
    labels = list(cells)
    means = [cells[label][y] for label in labels]
    errors = [cells[label].get(f"{y}_std") or 0 for label in labels]
    colors = [styles[label]["color"] for label in labels]
    ax.bar(range(len(labels)), means, yerr=errors, color=colors, capsize=3)
    tops = [mean + error for mean, error in zip(means, errors)]
    for i, label in enumerate(labels):
        if cells[label]["n"] > 1:  # each seed as a point
            seeds = [run[y] for run in cells[label]["runs"]]
            ax.scatter([i] * len(seeds), seeds, s=10, color="black", alpha=0.5, zorder=3)
            tops[i] = max(tops[i], *seeds)
    for i, (mean, top) in enumerate(zip(means, tops)):
        ax.annotate(f"{mean:.3g}", (i, top), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_ylim(0, 1.15 * max(1.0, *tops))
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)


def _flops_text(values: list[float]) -> str:
    """``66 kFLOP/tok``, or the range ``95-97 kFLOP/tok`` when the values round apart."""
    low, high = round(min(values) / 1e3), round(max(values) / 1e3)
    return f"{low} kFLOP/tok" if low == high else f"{low}-{high} kFLOP/tok"


def facts_figure(best: list[dict[str, Any]]):
    """Facts recalled vs facts in the knowledge base, MLP vs memory per backbone (FLOPs in the legend)."""
    rows = [r for r in best if r.get("task") == "facts"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    lines = defaultdict(list)
    for r in rows:
        lines[(_line_label(r), r["flops_per_token"])].append(r)
    for (label, flops), cells in sorted(lines.items()):
        _draw(ax, f"{label} ({flops / 1e3:.0f} kFLOP/tok)", cells, "task.num_facts", "facts_recalled", dashed="memory" in label)
    top = max((r["task.num_facts"] for r in rows), default=1)
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="all facts")
    ax.set(xlabel="facts in the knowledge base", ylabel="facts recalled (test)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def usage_column(r: dict[str, Any]) -> str | None:
    """The first memory layer's test-set usage column of a row, if it has one."""
    return next((c for c in r if c.startswith("test_memory_layer") and c.endswith("_usage")), None)


def capacity_figure(best: list[dict[str, Any]]):
    """Facts recalled vs total parameters (log x), a panel per knowledge-base size: per backbone a line
    through its memory cells (table sizes) and its MLP cells as squares (a wider MLP, with more FLOPs
    per token than the backbone's cheapest, as a star), FLOPs per token in the legend; a last panel
    with the memory cells' test-set slot usage against parameters."""
    rows = [r for r in best if r.get("task") == "facts"]
    sizes = sorted({r["task.num_facts"] for r in rows})
    fig, axes = _panels(len(sizes) + 1)
    colors = {backbone: f"C{i}" for i, backbone in enumerate(sorted({r["backbone"] for r in rows}))}  # the same in every panel
    for ax, size in zip(axes, sizes):
        cells = [r for r in rows if r["task.num_facts"] == size]
        for backbone in sorted({r["backbone"] for r in cells}):
            mine = [r for r in cells if r["backbone"] == backbone]
            memory = [r for r in mine if r["memory"] != "none"]
            if memory:
                _draw(
                    ax,
                    f"{backbone} + memory ({_flops_text([r['flops_per_token'] for r in memory])})",
                    memory,
                    "params",
                    "facts_recalled",
                    dashed=True,
                    color=colors[backbone],
                )
            mlps = [r for r in mine if r["memory"] == "none"]
            cheapest = min((r["flops_per_token"] for r in mlps), default=0)
            for r in sorted(mlps, key=lambda r: r["flops_per_token"]):
                wide = r["flops_per_token"] > 1.05 * cheapest
                label = f"{backbone} {'wide ' if wide else ''}MLP ({r['flops_per_token'] / 1e3:.0f} kFLOP/tok)"
                _draw(
                    ax,
                    label,
                    [r],
                    "params",
                    "facts_recalled",
                    dashed=False,
                    marker="*" if wide else "s",
                    markersize=10 if wide else 7,
                    color=colors[backbone],
                )
        ax.axhline(size, color="grey", linewidth=0.8, label="all facts")
        ax.set(title=f"{size} facts", xlabel="total parameters", ylabel="facts recalled (test)")
        ax.set_xscale("log")
        _log_tick_labels(ax)
        ax.legend(fontsize=LEGEND)
    usage_ax = axes[-1]
    for backbone in sorted({r["backbone"] for r in rows}):
        memory = [r for r in rows if r["backbone"] == backbone and r["memory"] != "none" and usage_column(r)]
        for i, size in enumerate(sizes):  # a backbone's color, a marker and dash per knowledge-base size
            cells = [r for r in memory if r["task.num_facts"] == size]
            if cells:
                column = usage_column(cells[0])
                style = {"color": colors[backbone], "marker": MARKERS[i % len(MARKERS)], "linestyle": DASHES[i % len(DASHES)]}
                _draw(usage_ax, f"{backbone}, {size} facts", cells, "params", column, dashed=True, **style)
    usage_ax.set(
        title="memory slots read over the test set", xlabel="total parameters", ylabel="fraction of slots read", ylim=(0, 1.02)
    )
    usage_ax.set_xscale("log")
    _log_tick_labels(usage_ax)
    if usage_ax.get_legend_handles_labels()[0]:
        usage_ax.legend(fontsize=LEGEND)
    return fig


def _channel_label(r: dict[str, Any]) -> str:
    """``MLP``, or ``memory 2^k`` for a memory of 2^k slots (``memory N`` when N is no power of 2)."""
    if r["memory"] == "none":
        return {"mlp": "MLP", "none": "no channel"}.get(r["channel"], r["channel"])
    slots = int(r["slots"])
    return f"memory 2^{slots.bit_length() - 1}" if slots & (slots - 1) == 0 else f"memory {slots}"


def _by_channel(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by ``_channel_label``, the MLP first, then memory by table size."""
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["memory"] != "none", r.get("slots") or 0)):
        lines[_channel_label(r)].append(r)
    return lines


def _knowledge_rows(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Facts cells with knowledge in bits (grids since ``knowledge_bits`` was measured)."""
    return [r for r in best if r.get("task") == "facts" and r.get("knowledge_bits") is not None]


def knowledge_figure(best: list[dict[str, Any]]):
    """Knowledge bits against facts in the knowledge base (log-log), a panel per backbone, a line
    per channel (mean ± std over seeds, each seed a point), and the "all facts" diagonal: every
    fact's value known for certain (facts x log2(num_values) bits)."""
    rows = _knowledge_rows(best)
    backbones = sorted({r["backbone"] for r in rows})
    colors = {label: f"C{i}" for i, label in enumerate(_by_channel(rows))}  # a channel's color in every panel
    fig, axes = _panels(len(backbones), sharey=True)
    for ax, backbone in zip(axes, backbones):
        mine = [r for r in rows if r["backbone"] == backbone]
        for label, cells in _by_channel(mine).items():
            flops = statistics.fmean(c["flops_per_token"] for c in cells) / 1e3
            legend = f"{label} ({flops:.0f} kFLOP/tok)"
            _draw(ax, legend, cells, "task.num_facts", "knowledge_bits", dashed=label != "MLP", color=colors[label])
        ceiling = sorted({(r["task.num_facts"], r["knowledge_bits_max"]) for r in mine})
        ax.plot(*zip(*ceiling), color="grey", linewidth=0.8, label="all facts")
        ax.set(title=backbone, xlabel="facts in the knowledge base")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=LEGEND)
    _ylabel(axes, "knowledge (bits, test)")
    return fig


def capacity_bits_figure(best: list[dict[str, Any]]):
    """Capacity (the plateau: each channel's most knowledge bits over the ladder, mean ± std over
    its seeds) against total parameters (log-log): a line per backbone (a color, FLOPs per token in
    its legend) through its channels, a marker per channel (MLP, memory 2^k) in a second legend,
    hollow and smaller for each backbone than the one before, so points that coincide stay visible;
    the 2 bits/parameter reference (Allen-Zhu & Li 2024). Both legends sit under the axes, clear of
    the points and error bars."""
    rows = _knowledge_rows(best)
    shapes = ("s", "o", "^", "D", "v", "P", "X", "*")  # the first channel, the MLP, a square
    markers = {label: shapes[i % len(shapes)] for i, label in enumerate(_by_channel(rows))}
    fig, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
    for i, backbone in enumerate(sorted({r["backbone"] for r in rows})):
        channels = _by_channel([r for r in rows if r["backbone"] == backbone])
        plateaus = {label: max(cells, key=lambda c: c["knowledge_bits"]) for label, cells in channels.items()}
        flops = _flops_text([p["flops_per_token"] for p in plateaus.values()])
        color = _draw(ax, f"{backbone} ({flops})", list(plateaus.values()), "params", "knowledge_bits", dashed=False, marker="")
        for label, p in plateaus.items():
            style = {"marker": markers[label], "markersize": 12 - 2 * (i % 4), "markerfacecolor": "none", "markeredgewidth": 1.5}
            ax.plot(p["params"], p["knowledge_bits"], color=color, linestyle="", zorder=4, **style)
    params = sorted(r["params"] for r in rows)
    if params:
        ax.plot([params[0], params[-1]], [2 * params[0], 2 * params[-1]], color="grey", linestyle=":", label="2 bits / parameter")
    ax.set(xlabel="total parameters", ylabel="capacity (knowledge bits, plateau)", title="at matched FLOPs per token")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_tick_labels(ax)
    fig.legend(loc="outside lower left", fontsize=LEGEND)
    channels = [
        Line2D([], [], color="black", linestyle="", markerfacecolor="none", marker=m, label=c) for c, m in markers.items()
    ]
    fig.legend(handles=channels, title="channel", loc="outside lower right", ncols=2, fontsize=LEGEND, title_fontsize=LEGEND)
    return fig


def validation_curve(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar from a run's TensorBoard events."""
    points = []
    for events in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points += [(e.step, e.value) for e in acc.Scalars(tag)]
    return sorted(points)


def lm_curves(rows: list[dict[str, Any]], dirs: dict[tuple[str, str], Path]) -> Curves:
    """Each finished LM run's validation bits per byte from the TensorBoard events in its directory
    (``dirs``), by (study, cell): a point per validation with its step and, when the run recorded its
    training FLOPs, the training FLOPs up to it (step x training FLOPs per step)."""
    curves = {}
    for r in (r for r in rows if r.get("task") == "lm" and r["status"] == "done"):
        per_step = r["train_flops"] / r["steps"] if r.get("train_flops") else None
        points = curves[(r["study"], r["cell"])] = []
        for step, value in validation_curve(dirs[(r["study"], r["cell"])], "val/bpb"):
            flops = {"train_flops": step * per_step} if per_step else {}
            points.append({"step": step, **flops, "val_bpb": value})
    return curves


def write_curves(curves: Curves, path: Path) -> Path:
    """curves.csv: a row per run and validation (``CURVE_COLUMNS``), runs in (study, cell) order."""
    rows = [{"study": study, "cell": cell, **point} for (study, cell), points in sorted(curves.items()) for point in points]
    return write_csv(rows, path, CURVE_COLUMNS)


def read_curves(path: Path) -> Curves:
    """curves.csv's points back as ``lm_curves`` made them (a run without a validation is absent)."""
    curves: Curves = defaultdict(list)
    for r in read_csv(path):
        curves[(r.pop("study"), r.pop("cell"))].append(r)
    return dict(curves)


def _draw_seed_curve(ax, cell: dict[str, Any], curves: Curves, x: str, **style: Any) -> None:
    """A cell's validation bits per byte, the mean over its seeds at each validation, against its
    runs' ``x`` (``step`` or ``train_flops``), shaded ± one standard deviation when it has several
    seeds; ``style`` goes to ``ax.plot`` (linestyle, color, label)."""
    by_x = defaultdict(list)
    for run in cell["runs"]:
        for point in curves.get((run["study"], run["cell"]), []):
            by_x[point[x]].append(point["val_bpb"])
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
    """LM validation bits per byte vs step, a line per backbone +- memory (the mean over seeds,
    shaded ± one standard deviation when there are several)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in sorted((r for r in best if r.get("task") == "lm"), key=_line_label):
        _draw_seed_curve(ax, r, curves, "step", linestyle="--" if r["memory"] != "none" else "-", label=_line_label(r))
    ax.set(xlabel="training step", ylabel="validation bits per byte")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _lm_rows(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LM cells with a final validation and their training FLOPs (grids since both were recorded)."""
    return [r for r in best if r.get("task") == "lm" and r.get("val_bpb") is not None and r.get("train_flops")]


def compute_multipliers(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per memory cell of an LM grid: each seed's compute multiplier (``zoo.grid.compute``) on its
    backbone's dense curve, the MLP cells' (mean training FLOPs, mean final validation bits per byte)
    at every budget; backbones with fewer than two MLP budgets are skipped."""
    rows, out = _lm_rows(best), []
    for backbone in sorted({r["backbone"] for r in rows}):
        mine = [r for r in rows if r["backbone"] == backbone]
        curve = [(r["train_flops"], r["val_bpb"]) for r in mine if r["memory"] == "none"]
        if len(curve) < 2:
            continue
        for r in mine:
            if r["memory"] != "none":
                seeds = [compute_multiplier(curve, run["val_bpb"], run["train_flops"]) for run in r["runs"]]
                out.append({"backbone": backbone, "channel": _channel_label(r), "cell": r, "multipliers": seeds})
    return out


def _multiplier_text(multipliers: list) -> str:
    """Mean ± std over seeds when every seed's multiplier is read off the curve, else each seed's."""
    if all(m.bound == "=" for m in multipliers):
        values = [m.value for m in multipliers]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.2f}x{spread}"
    return ", ".join(str(m) for m in multipliers)


def multiplier_markdown(best: list[dict[str, Any]]) -> list[str]:
    """summary.md's compute-multiplier table (no lines when the grid has no dense curve)."""
    found = compute_multipliers(best)
    if not found:
        return []
    lines = [
        "## compute multiplier (training FLOPs the MLP model needs for the memory model's validation bits per byte, "
        "over the memory model's; per seed on the MLP's curve; the MLP row: the same budget)",
        "",
        "| study | backbone | channel | test_bpb | val_bpb | flops_per_token | params | slots read | train_flops "
        "| multiplier | per seed |",
        "|" + " --- |" * 11,
    ]
    rows = _lm_rows(best)
    for backbone in dict.fromkeys(m["backbone"] for m in found):
        mine = [m for m in found if m["backbone"] == backbone]
        budget = mine[0]["cell"]["steps_planned"]
        mlp = [r for r in rows if r["backbone"] == backbone and r["memory"] == "none" and r["steps_planned"] == budget]
        for cell, multipliers in [(r, None) for r in mlp] + [(m["cell"], m["multipliers"]) for m in mine]:
            usage = usage_column(cell)
            cells = [cell["study"], backbone, _channel_label(cell)]
            cells += [_fmt(cell.get(c), cell.get(f"{c}_std") if cell["n"] > 1 else None) for c in ("test_bpb", "val_bpb")]
            cells += [_fmt(cell["flops_per_token"]), _fmt(cell["params"]), _fmt(cell.get(usage) if usage else None)]
            cells += [_fmt(cell["train_flops"]), _multiplier_text(multipliers) if multipliers else "1 (the curve)"]
            cells += [", ".join(str(x) for x in multipliers) if multipliers else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def lm_compute_figure(best: list[dict[str, Any]], curves: Curves):
    """Validation bits per byte against training FLOPs (log x), a panel per backbone: a line per
    channel at the budget the memory cells train (the mean over seeds at each validation, shaded ±
    one standard deviation), and the MLP model's dense compute curve (its final validation at every
    budget, squares, dotted)."""
    rows = _lm_rows(best)
    backbones = sorted({r["backbone"] for r in rows})
    colors = {label: f"C{i}" for i, label in enumerate(_by_channel(rows))}
    fig, axes = _panels(len(backbones), sharey=True)
    for ax, backbone in zip(axes, backbones):
        mine = [r for r in rows if r["backbone"] == backbone]
        budgets = {r["steps_planned"] for r in mine if r["memory"] != "none"} or {r["steps_planned"] for r in mine}
        for label, cells in _by_channel(mine).items():
            for cell in (c for c in cells if c["steps_planned"] in budgets):
                style = {"linestyle": "-" if label == "MLP" else "--", "color": colors[label], "label": label}
                _draw_seed_curve(ax, cell, curves, "train_flops", **style)
        curve = sorted((r["train_flops"], r["val_bpb"]) for r in mine if r["memory"] == "none")
        if len(curve) > 1:
            ax.plot(*zip(*curve), marker="s", linestyle=":", color=colors.get("MLP", "grey"), label="MLP, final at each budget")
        ax.set(title=backbone, xlabel="training FLOPs")
        ax.set_xscale("log")
        _log_tick_labels(ax)
    _ylabel(axes, "validation bits per byte")
    _shared_legend(fig, axes)
    return fig


def figures(best: list[dict[str, Any]], curves: Curves | None = None) -> dict[str, Any]:
    """The report's figures by file name, a set per task family present; the LM curves only with
    ``curves`` (``lm_curves`` from the runs' TensorBoard events, or ``read_curves`` from curves.csv)."""
    tasks = {r.get("task") for r in best}
    out = {}
    if "mqar" in tasks:
        out["mqar_accuracy_vs_d_model"] = mqar_figure(best)
        out["mqar_accuracy_vs_state_size"] = mqar_figure(best, x="state_size")
    if _knowledge_rows(best):  # a knowledge ladder
        out["knowledge_bits_vs_facts"] = knowledge_figure(best)
        out["capacity_bits_vs_params"] = capacity_bits_figure(best)
    elif "facts" in tasks:
        out["facts_recalled"] = facts_figure(best)
        out["facts_recalled_vs_params"] = capacity_figure(best)
    if curves is not None and "lm" in tasks:
        out["lm_val_bpb_vs_step"] = lm_figure(best, curves)
    if curves is not None and _lm_rows(best):  # LM runs that recorded their training FLOPs and last validation
        out["lm_val_bpb_vs_train_flops"] = lm_compute_figure(best, curves)
    return out


def _save(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` (written atomically)."""
    return atomic_write(path, lambda handle: fig.savefig(handle, dpi=DPI, format="png"))


def write_report(records: list[dict[str, Any]], root: Path, overrides: Sequence[str] = ()) -> list[Path]:
    """results.csv, summary.md, curves.csv when the grid has LM runs (the curves its LM figures draw),
    one PNG per task family present, and those figures in root/tb; ``overrides``: what the command
    line added to every cell, recorded in summary.md."""
    rows = [row(r) for r in records]
    summary = summary_markdown(rows, overrides)
    paths = [write_csv(rows, root / "results.csv"), atomic_write_text(root / "summary.md", summary)]
    curves = lm_curves(rows, {(r["study"], r["cell"]): Path(r["dir"]) for r in records})
    if curves:
        paths.append(write_curves(curves, root / "curves.csv"))
    best = best_of_lr(aggregate(rows))
    with SummaryWriter(str(root / "tb")) as writer:
        for name, fig in figures(best, curves).items():
            paths.append(_save(fig, root / f"{name}.png"))
            writer.add_figure(f"grid/{name}", fig, close=True)
    return paths


def _cell(text: str) -> int | float | str:
    """A results.csv cell as ``row`` wrote it: an int, a float, or text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: Path) -> list[dict[str, Any]]:
    """results.csv's rows as ``row`` made them, less their empty cells (``None`` or absent)."""
    with path.open(newline="") as handle:
        return [{k: _cell(v) for k, v in r.items() if v != ""} for r in csv.DictReader(handle)]


def redraw(root: Path) -> list[Path]:
    """The figures of a finished grid redrawn in place from root/results.csv and, for the LM curves,
    root/curves.csv; without curves.csv (grids reported before it was written) the LM figures are
    left as they are."""
    curves = read_curves(root / "curves.csv") if (root / "curves.csv").is_file() else None
    paths = []
    for name, fig in figures(best_of_lr(aggregate(read_csv(root / "results.csv"))), curves).items():
        paths.append(_save(fig, root / f"{name}.png"))
        plt.close(fig)
    return paths


if __name__ == "__main__":  # python -m zoo.grid.report results/<grid> ...: redraw committed figures
    for root in sys.argv[1:]:
        print(*redraw(Path(root)), sep="\n")
