"""``memzoo-bench GRID`` (= ``python scripts/recall_bench.py GRID``): train every cell of a benchmark
grid through ``zoo.train.train``, then write results.csv, summary.md, figures and dashboards.

A grid (``configs/bench/<name>.yaml``, or a path to such a file) has a ``name`` and ``studies``;
each study has ``base`` overrides (any ``memzoo-train`` override) and ``axes`` (override key -> list
of values); its cells are the product of the axes. Cell ``c`` of study ``s`` runs in
``<out>/<grid>/runs/<s>/<c>/`` like a ``memzoo-train`` run. A cell with a ``metrics.json`` (and
the same overrides in its ``cell.json``) is done and is skipped when the grid runs again, so an
interrupted grid resumes; a cell that raises is recorded in ``error.json`` and the grid goes on.
Every cell is composed before any trains. SIGTERM / SIGINT stop the current cell at its checkpoint,
write the report of the finished cells and exit 143 / 130; any failed cell makes the exit code 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from tqdm import tqdm

from zoo.io import atomic_write_json
from zoo.signals import RunInterrupted, StopSignals

GRID_KEYS = {"name", "studies"}
LR_KEY = "optim.lr"
STUDY_KEYS = {"base", "axes"}


@dataclass(frozen=True)
class Cell:
    """One training run of a grid: its study, its axis values and the full override list."""

    study: str
    settings: tuple[tuple[str, str], ...]
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return _slug(self.settings)

    @property
    def group(self) -> str:
        """The name without the learning rate: the runs a best-of-lr table chooses between."""
        return _slug(tuple((k, v) for k, v in self.settings if k != LR_KEY))


def _slug(settings: tuple[tuple[str, str], ...]) -> str:
    text = "_".join(f"{key.split('.')[-1]}={value}" for key, value in settings)
    return re.sub(r"[^A-Za-z0-9=._-]", "-", text) or "default"


def load_grid(grid: str) -> dict[str, Any]:
    """A shipped grid name or a YAML path -> the grid mapping, checked."""
    path = Path(grid)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"grid file {grid!r} does not exist")
        text = path.read_text()
    else:
        shipped = resources.files("zoo.configs") / "bench"
        names = sorted(p.name[:-5] for p in shipped.iterdir() if p.name.endswith(".yaml"))
        if grid not in names:
            raise ValueError(f"grid {grid!r} is not a shipped grid; allowed: {names}, or a path to a .yaml file")
        text = (shipped / f"{grid}.yaml").read_text()
    values = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    unknown = sorted(set(values) - GRID_KEYS)
    if unknown or not values.get("studies"):
        raise ValueError(f"grid {grid!r} must have keys {sorted(GRID_KEYS)} with at least one study; unknown: {unknown}")
    for study, spec in values["studies"].items():
        bad = sorted(set(spec) - STUDY_KEYS)
        if bad:
            raise ValueError(f"grid study {study!r} has unknown key(s) {bad}; allowed: {sorted(STUDY_KEYS)}")
        for key, options in spec.get("axes", {}).items():
            if not isinstance(options, list) or not options:
                raise ValueError(f"grid study {study!r} axis {key!r} must be a non-empty list, got {options!r}")
    values.setdefault("name", path.stem)
    return values


def expand(grid: dict[str, Any]) -> list[Cell]:
    """Every cell of every study, in order (axes vary fastest last)."""
    cells = []
    for study, spec in grid["studies"].items():
        axes = spec.get("axes", {})
        for combo in itertools.product(*axes.values()):
            settings = tuple((key, str(value)) for key, value in zip(axes, combo))
            overrides = tuple(spec.get("base", [])) + tuple(f"{k}={v}" for k, v in settings)
            cells.append(Cell(study, settings, overrides))
    return cells


def is_done(cell: Cell, run_dir: Path) -> bool:
    """A finished run of exactly this cell: metrics.json beside a cell.json with the same overrides
    (a cell whose grid entry changed is trained again)."""
    record = run_dir / "cell.json"
    if not (run_dir / "metrics.json").is_file() or not record.is_file():
        return False
    return json.loads(record.read_text())["overrides"] == list(cell.overrides)


def compose_cell(cell: Cell):
    """The cell's ``memzoo-train`` config (Hydra composition checks every override key and value)."""
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        return compose("train", overrides=list(cell.overrides))


def check_cells(cells: list[Cell]) -> None:
    """Compose and check every cell (``zoo.train.check_run_config``) before any trains: a typo or an
    impossible setting in the last cell fails at once, naming the cell. Raises ``ValueError``."""
    from zoo.train import check_run_config

    for cell in cells:
        try:
            check_run_config(compose_cell(cell))
        except Exception as err:  # noqa: BLE001 - Hydra and the checks raise several kinds
            raise ValueError(f"grid cell {cell.study}/{cell.name} is invalid: {err}") from err


def run_cell(cell: Cell, run_dir: Path) -> dict[str, Any]:
    """Train one cell (fresh directory); returns its metrics.json content."""
    from zoo.train import train

    if run_dir.exists():
        shutil.rmtree(run_dir)  # a cell interrupted half-way, or changed, starts over
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "cell.json", {"study": cell.study, "overrides": list(cell.overrides)})
    return train(compose_cell(cell), run_dir)


def run_grid(grid: dict[str, Any], out: Path, stop: StopSignals | None = None) -> list[dict[str, Any]]:
    """Run (or skip, when done) every cell; returns one record per cell reached. With ``stop``, a
    signal ends the grid after the current cell stops (its checkpoint saved): the records so far
    are returned and ``stop.received`` says which signal."""
    root = out / grid["name"]
    records = []
    cells = expand(grid)
    bar = tqdm(cells, desc=f"grid {grid['name']}", unit="run")
    for cell in bar:
        run_dir = root / "runs" / cell.study / cell.name
        bar.set_postfix_str(f"{cell.study}/{cell.name}")
        record = {"study": cell.study, "cell": cell.name, "group": cell.group, "dir": str(run_dir)}
        if is_done(cell, run_dir):
            record.update(status="done", metrics=json.loads((run_dir / "metrics.json").read_text()))
        else:
            started = time.perf_counter()
            try:
                record.update(status="done", metrics=run_cell(cell, run_dir))
            except RunInterrupted:
                tqdm.write(f"cell {cell.study}/{cell.name} stopped by a signal; the grid stops (rerun to resume)")
                break
            except Exception as err:  # noqa: BLE001 - a failed cell is recorded; the grid goes on
                error = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                         "overrides": list(cell.overrides), "wall_time_s": round(time.perf_counter() - started, 2)}
                atomic_write_json(run_dir / "error.json", error)
                record.update(status="failed", error=error["error"].splitlines()[0])
                tqdm.write(f"cell {cell.study}/{cell.name} failed: {error['error']}")
        records.append(record)
        if stop is not None and stop.received is not None:
            break
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train a benchmark grid and write its tables and figures.")
    parser.add_argument("grid", help="a shipped grid (configs/bench/<name>.yaml: quick, zoology, memory_scaling, second_moment) or a .yaml path")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results go to OUT/<grid name>/")
    parser.add_argument("--list", action="store_true", help="print the cells and their overrides, train nothing")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    if args.list:
        for cell in expand(grid):
            print(f"{cell.study}/{cell.name}: {' '.join(cell.overrides)}")
        return
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from zoo.report import write_report

    cells = expand(grid)
    check_cells(cells)
    with StopSignals() as stop:
        records = run_grid(grid, args.out, stop)
        paths = write_report(records, args.out / grid["name"]) if records else []
    failed = [r for r in records if r["status"] == "failed"]
    print(f"{len(records) - len(failed)} of {len(cells)} cells done; " + ", ".join(str(p) for p in paths))
    if failed:
        print("failed: " + ", ".join(f"{r['study']}/{r['cell']} ({r['error']})" for r in failed))
    if stop.received is not None:
        print(f"stopped by {signal.Signals(stop.received).name}: rerun `memzoo-bench {args.grid}` to continue", file=sys.stderr)
        sys.exit(128 + stop.received)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
