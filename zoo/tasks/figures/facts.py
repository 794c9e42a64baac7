"""The facts task's figures: knowledge in bits against facts and capacity against parameters (grids
that measured ``knowledge_bits``), else facts recalled against facts and against parameters."""

from __future__ import annotations

import statistics
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from zoo.tasks.figures.plot import LEGEND, MARKERS, by_channel, draw, group, has_memory, line_label, log_x, panels, usage_column

DASHES = ("-", "--", ":", "-.")  # the usage panel's knowledge-base sizes


def flops_text(values: list[float]) -> str:
    """``66 kFLOP/tok``, or the range ``95-97 kFLOP/tok`` when the values round apart."""
    low, high = round(min(values) / 1e3), round(max(values) / 1e3)
    return f"{low} kFLOP/tok" if low == high else f"{low}-{high} kFLOP/tok"


def facts_figure(rows: list[dict[str, Any]]):
    """Facts recalled vs facts in the knowledge base, MLP vs memory per backbone (FLOPs in the legend)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (label, flops), cells in sorted(group(rows, lambda r: (line_label(r), r["flops_per_token"])).items()):
        draw(ax, f"{label} ({flops_text([flops])})", cells, "task.num_facts", "facts_recalled", dashed="memory" in label)
    top = max((r["task.num_facts"] for r in rows), default=1)
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="all facts")
    ax.set(xlabel="facts in the knowledge base", ylabel="facts recalled (test)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def capacity_figure(rows: list[dict[str, Any]]):
    """Facts recalled vs total parameters (log x), a panel per knowledge-base size: per backbone a line through
    its memory cells (table sizes), its MLP cells as squares (a wider MLP as a star), FLOPs per token in the
    legend; a last panel with the memory cells' test-set slot usage against parameters."""
    sizes, backbones = sorted({r["task.num_facts"] for r in rows}), sorted({r["backbone"] for r in rows})
    fig, axes = panels(len(sizes) + 1)
    colors = {backbone: f"C{i}" for i, backbone in enumerate(backbones)}  # the same in every panel
    for ax, size in zip(axes, sizes):
        for backbone in backbones:
            mine = [r for r in rows if (r["backbone"], r["task.num_facts"]) == (backbone, size)]
            memory = [r for r in mine if has_memory(r)]
            if memory:
                label = f"{backbone} + memory ({flops_text([r['flops_per_token'] for r in memory])})"
                draw(ax, label, memory, "params", "facts_recalled", dashed=True, color=colors[backbone])
            mlps = sorted((r for r in mine if not has_memory(r)), key=lambda r: r["flops_per_token"])
            for r in mlps:
                wide = r["flops_per_token"] > 1.05 * mlps[0]["flops_per_token"]  # more FLOPs than the cheapest
                label = f"{backbone} {'wide ' if wide else ''}MLP ({flops_text([r['flops_per_token']])})"
                style = {"marker": "*" if wide else "s", "markersize": 10 if wide else 7, "color": colors[backbone]}
                draw(ax, label, [r], "params", "facts_recalled", dashed=False, **style)
        ax.axhline(size, color="grey", linewidth=0.8, label="all facts")
        ax.set(title=f"{size} facts", xlabel="total parameters", ylabel="facts recalled (test)")
        log_x(ax)
        ax.legend(fontsize=LEGEND)
    usage_ax = axes[-1]
    used = [r for r in rows if has_memory(r) and usage_column(r)]
    for backbone in backbones:
        for i, size in enumerate(sizes):  # a backbone's color, a marker and dash per knowledge-base size
            cells = [r for r in used if (r["backbone"], r["task.num_facts"]) == (backbone, size)]
            if cells:
                style = {"color": colors[backbone], "marker": MARKERS[i % len(MARKERS)], "linestyle": DASHES[i % len(DASHES)]}
                draw(usage_ax, f"{backbone}, {size} facts", cells, "params", usage_column(cells[0]), dashed=True, **style)
    usage_ax.set(title="memory slots read over the test set", xlabel="total parameters", ylabel="fraction of slots read")
    usage_ax.set_ylim(0, 1.02)
    log_x(usage_ax)
    if usage_ax.get_legend_handles_labels()[0]:
        usage_ax.legend(fontsize=LEGEND)
    return fig


def knowledge_rows(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells with knowledge in bits (grids since ``knowledge_bits`` was measured)."""
    return [r for r in best if r.get("knowledge_bits") is not None]


def knowledge_figure(best: list[dict[str, Any]]):
    """Knowledge bits against facts in the knowledge base (log-log), a panel per backbone, a line per channel
    (``draw``), and the "all facts" line: every fact's value known for certain (facts x log2(num_values) bits)."""
    rows = knowledge_rows(best)
    backbones = sorted(group(rows, lambda r: r["backbone"]).items())
    colors = {label: f"C{i}" for i, label in enumerate(by_channel(rows))}  # a channel's color in every panel
    fig, axes = panels(len(backbones), ylabel="knowledge (bits, test)", sharey=True)
    for ax, (backbone, mine) in zip(axes, backbones):
        for label, cells in by_channel(mine).items():
            flops = flops_text([statistics.fmean(c["flops_per_token"] for c in cells)])
            draw(ax, f"{label} ({flops})", cells, "task.num_facts", "knowledge_bits", dashed=label != "MLP", color=colors[label])
        ceiling = sorted({(r["task.num_facts"], r["knowledge_bits_max"]) for r in mine})
        ax.plot(*zip(*ceiling), color="grey", linewidth=0.8, label="all facts")
        ax.set(title=backbone, xlabel="facts in the knowledge base")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=LEGEND)
    return fig


def capacity_bits_figure(best: list[dict[str, Any]]):
    """Capacity (the plateau: each channel's most knowledge bits over the ladder, mean ± std over its
    seeds) against total parameters (log-log): a line per backbone (FLOPs per token in its legend), a
    hollow marker per channel (a second legend), smaller for each backbone so coinciding points stay
    visible; the 2 bits/parameter reference (Allen-Zhu & Li 2024); both legends under the axes."""
    rows = knowledge_rows(best)
    shapes = ("s", "o", "^", "D", "v", "P", "X", "*")  # the first channel, the MLP, a square
    markers = {label: shapes[i % len(shapes)] for i, label in enumerate(by_channel(rows))}
    fig, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
    for i, (backbone, mine) in enumerate(sorted(group(rows, lambda r: r["backbone"]).items())):
        channels = by_channel(mine)
        plateaus = {label: max(cells, key=lambda c: c["knowledge_bits"]) for label, cells in channels.items()}
        flops = flops_text([p["flops_per_token"] for p in plateaus.values()])
        color = draw(ax, f"{backbone} ({flops})", list(plateaus.values()), "params", "knowledge_bits", dashed=False, marker="")
        for label, p in plateaus.items():
            style = {"marker": markers[label], "markersize": 12 - 2 * (i % 4), "markerfacecolor": "none", "markeredgewidth": 1.5}
            ax.plot(p["params"], p["knowledge_bits"], color=color, linestyle="", zorder=4, **style)
    params = sorted(r["params"] for r in rows)
    if params:
        ax.plot([params[0], params[-1]], [2 * params[0], 2 * params[-1]], color="grey", linestyle=":", label="2 bits / parameter")
    ax.set(xlabel="total parameters", ylabel="capacity (knowledge bits, plateau)", title="at matched FLOPs per token")
    ax.set_yscale("log")
    log_x(ax)
    fig.legend(loc="outside lower left", fontsize=LEGEND)
    hollow = {"color": "black", "linestyle": "", "markerfacecolor": "none"}
    channels = [Line2D([], [], **hollow, marker=m, label=c) for c, m in markers.items()]
    fig.legend(handles=channels, title="channel", loc="outside lower right", ncols=2, fontsize=LEGEND, title_fontsize=LEGEND)
    return fig


def figures(best: list[dict[str, Any]], curves: Any) -> dict[str, Any]:
    """Facts cells' figures by file name (``curves`` unused): knowledge bits if measured, else facts recalled."""
    if knowledge_rows(best):
        return {"knowledge_bits_vs_facts": knowledge_figure(best), "capacity_bits_vs_params": capacity_bits_figure(best)}
    return {"facts_recalled": facts_figure(best), "facts_recalled_vs_params": capacity_figure(best)}
