"""The LM runs' validation curves: read from each run's TensorBoard events, written to and read
back from a grid's curves.csv (what the LM figures draw, ``zoo.tasks.figures.lm``)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo.grid.table import read_csv, write_csv
from zoo.tasks.figures.lm import Curves

CURVE_COLUMNS = ("study", "cell", "step", "train_flops", "val_bpb")


def validation_curve(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar from a run's TensorBoard events."""
    points = []
    for events in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0}).Reload()
        if tag in acc.Tags()["scalars"]:
            points += [(e.step, e.value) for e in acc.Scalars(tag)]
    return sorted(points)


def lm_curves(rows: list[dict[str, Any]], dirs: dict[tuple[str, str], Path]) -> Curves:
    """Each finished LM run's validation bits per byte from the TensorBoard events in its directory (``dirs``),
    by (study, cell): a point per validation, its step and, given the run's training FLOPs, those up to it."""
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
