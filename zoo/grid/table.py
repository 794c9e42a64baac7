"""A grid's table: a results.csv row per run from its record (``zoo.training.run_record``), the
cells (mean ± std over seeds), the best learning rate per cell, summary.md with an LM grid's compute
multipliers (``zoo.grid.compute``), and results.csv read back for a redraw."""

from __future__ import annotations

import contextlib
import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zoo.core.io import atomic_write_text
from zoo.grid.compute import compute_multiplier
from zoo.tasks.figures.lm import lm_rows
from zoo.tasks.figures.plot import channel_label, group, has_memory, human, usage_column
from zoo.training.run_record import SETTINGS, TASK_KNOBS, RunSettings

KNOWLEDGE = ("knowledge_bits", "bits_per_parameter", "bits_per_channel_parameter", "bits_per_kflop", "exposures")
THROUGHPUT = ("tokens_per_s", "step_time_s", "mfu", "peak_flops", "peak_memory_bytes", "train_tokens", "train_flops")
MODEL = ("params", "active_params", "flops_per_token", "state_size")
# columns that say what a run is (its cell, settings and model); every other numeric column is a measurement, averaged over seeds
DESCRIPTION = {"study", "cell", "setting", "group", "status", "error", *SETTINGS, *MODEL}


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One results.csv row: the cell and, for a finished run, its record's settings and final metrics."""
    out = {k: record[k] for k in ("study", "cell", "setting", "group", "seed", "status")}
    if record.get("metrics"):
        metrics, params = record["metrics"], record["metrics"]["params"]
        settings = asdict(RunSettings.read(metrics, str(Path(record["dir"]) / "metrics.json")))
        knobs = settings.pop("task_knobs")
        out.update(settings)
        out.update({f"task.{k}": knobs[k] for k in TASK_KNOBS if k in knobs})  # metrics.json sorts its keys
        out.update(params=params["total"], active_params=params["active"], flops_per_token=metrics["flops_per_token"])
        out.update(state_size=metrics.get("state_size"), steps=metrics["steps"], wall_time_s=metrics["wall_time_s"])
        out.update({k: metrics["throughput"][k] for k in THROUGHPUT if k in metrics.get("throughput", {})})
        out.update({k.replace("/", "_"): v for k, v in metrics["test"].items()})
        out.update({k.replace("/", "_"): v for k, v in metrics.get("val", {}).items()})  # the last validation
        out.update(metrics.get("task_metrics", {}))
    if record["status"] == "failed":
        out["error"] = record["error"]
    return out


def write_csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str] = ()) -> Path:
    """``rows`` as CSV at ``path`` (atomically) under ``columns``, by default every key as first seen."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(dict.fromkeys(c for r in rows for c in r)))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def score(r: dict[str, Any]) -> float:
    """Higher is better: accuracy, or minus bits per byte for language modeling."""
    return -r["test_bpb"] if "test_bpb" in r else r["test_acc"]


def _measured(column: str, value: Any) -> bool:
    """Whether a column is a measurement (a number, averaged over seeds), not what the run is."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and column not in DESCRIPTION and not column.startswith("task.")


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per cell (study, setting) over its finished runs, one per seed: the settings of its
    first run; each measured column's mean and ``<column>_std`` (sample standard deviation, n - 1
    in the denominator; 0 for a single run); ``n`` runs; ``runs``, the rows themselves."""
    done, out = [r for r in rows if r["status"] == "done"], []
    for runs in group(done, lambda r: (r["study"], r["setting"])).values():
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
    return [max(same, key=score) for same in group(cells, lambda c: (c["study"], c["group"])).values()]


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
        knob_cols = [c for c in chosen[0] if c.startswith("task.")]
        slots = ["slots"] if any(r.get("slots") for r in chosen) else []
        state = ["state_size"] if chosen[0].get("task") == "mqar" else []  # what in-context recall is read against
        # the study's axis values (cell) first; the rest (tokens/s, MFU, KL from uniform, peak memory, ...) are in results.csv
        cols = ["cell", "backbone", "memory", *slots, "channel", "d_model", *knob_cols, "lr", "params", "flops_per_token", *state]
        cols += [*metric_cols, *usage_cols, "wall_time_s", *(["n"] if seeded else [])]
        title = "mean ± std over seeds, best mean learning rate per cell" if seeded else "best learning rate per cell"
        lines += [f"## {study} ({title})", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r, c) for c in cols) + " |" for r in chosen] + [""]
    lines += multiplier_markdown(best)
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["## failed cells", ""] + [f"- {r['study']}/{r['cell']}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)


def _fmt(cell: dict[str, Any], column: str | None, spread: bool = True) -> str:
    """``cell[column]`` in summary.md: a number in ``human`` units (± its standard deviation over the
    seeds when ``spread`` and the cell has several), text as is, ``-`` when absent."""
    value = cell.get(column)
    std = cell.get(f"{column}_std") if spread and cell["n"] > 1 else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return human(value) if std is None else f"{human(value)} ± {human(std, 2)}"


def compute_multipliers(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per memory cell of an LM grid: each seed's compute multiplier (``zoo.grid.compute``) on its
    backbone's dense curve, the MLP cells' (mean training FLOPs, mean final validation bits per byte)
    at every budget; backbones with fewer than two MLP budgets are skipped."""
    rows, out = lm_rows(best), []
    for backbone, mine in sorted(group(rows, lambda r: r["backbone"]).items()):
        curve = [(r["train_flops"], r["val_bpb"]) for r in mine if not has_memory(r)]
        if len(curve) < 2:
            continue
        for r in filter(has_memory, mine):
            seeds = [compute_multiplier(curve, run["val_bpb"], run["train_flops"]) for run in r["runs"]]
            out.append({"backbone": backbone, "channel": channel_label(r), "cell": r, "multipliers": seeds})
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
    for backbone, mine in group(found, lambda m: m["backbone"]).items():
        budget = mine[0]["cell"]["steps_planned"]
        mlp = [r for r in lm_rows(best) if r["backbone"] == backbone and not has_memory(r) and r["steps_planned"] == budget]
        for cell, multipliers in [(r, None) for r in mlp] + [(m["cell"], m["multipliers"]) for m in mine]:
            cells = [cell["study"], backbone, channel_label(cell), _fmt(cell, "test_bpb"), _fmt(cell, "val_bpb")]
            cells += [_fmt(cell, c, spread=False) for c in ("flops_per_token", "params", usage_column(cell), "train_flops")]
            cells += [_multiplier_text(multipliers) if multipliers else "1 (the curve)"]
            cells += [", ".join(map(str, multipliers)) if multipliers else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _cell(text: str) -> int | float | str:
    """A results.csv cell as ``row`` wrote it: an int, a float, or text."""
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def read_csv(path: Path) -> list[dict[str, Any]]:
    """results.csv's rows as ``row`` made them, less their empty cells (``None`` or absent)."""
    with path.open(newline="") as handle:
        return [{k: _cell(v) for k, v in r.items() if v != ""} for r in csv.DictReader(handle)]
