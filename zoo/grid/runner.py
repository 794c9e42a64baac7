"""``memzoo-grid GRID [OVERRIDE ...] [--out DIR] [--list]`` (``memzoo-grid`` is the same command, its older name):
train every cell of a benchmark grid through ``zoo.training.train.train``, each cell one job of a Hydra
multirun, then write results.csv, summary.md, figures and dashboards.

A grid (``zoo/grid/specs/<name>.yaml``, or a path to such a file) has a ``name`` and ``studies``;
each study has ``base`` overrides (any ``memzoo-train`` override), ``axes`` (override key -> list
of values; its cells are their product; a key naming several overrides, ``"a,b": [[a1, b1], [a2,
b2]]``, is one linked axis: its keys move together) and, optionally, ``seeds``: each cell then runs once per
seed (``seed=S``), and the report gives mean ± std over them. Command-line OVERRIDEs that start
with ``hydra`` choose and configure the launcher; any other is appended to every cell.

Dispatch is Hydra's: memzoo-grid composes ``zoo/configs/grid.yaml`` as a multirun whose sweep is
``cell`` (the cells still to train) and the launcher runs one job per cell: the default (basic) in
this process, one after another; ``hydra/launcher=joblib`` several side by side on this machine;
``submitit_local`` / ``submitit_slurm`` as submitit jobs. A job trains cell ``c`` of study ``s``
in ``<out>/<grid>/runs/<s>/<c>/`` like a ``memzoo-train`` run, from the overrides memzoo-grid
wrote there (``cell.json``) before launching; Hydra's own record of each job (config, log,
submitit's output) goes to ``<out>/<grid>/jobs/<time>/``. The report is read back from the cell
directories, whoever ran them.

A cell with a ``metrics.json`` (and the same overrides in its ``cell.json``) is done and is not
launched again, so an interrupted grid resumes; a cell that raises writes ``error.json`` and the
others go on. Every cell is composed and checked before any trains. SIGTERM / SIGINT stop the grid
(a cell training in this process first saves its checkpoint), the report of the finished cells is
written and the exit code is 143 / 130; any failed cell makes it 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from zoo.core.command_line import COMPOSITION_ERRORS, composition_error, usage_errors
from zoo.core.dir_lock import exclusive_dir
from zoo.core.io import atomic_write_json
from zoo.grid.safe_yaml import MAX_BYTES, load_bounded_yaml
from zoo.training.config import RunConfig
from zoo.training.signals import RunInterrupted, SignalExit, exit_on_signals

GRID_KEYS = {"name", "studies"}
LR_KEY = "optim.lr"
STUDY_KEYS = {"base", "axes", "seeds"}
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a grid or study names a directory (and a Hydra sweep value)
SCRATCH = Path("grids")  # memzoo-grid's default --out: committed results/ are written only when asked
LAUNCHER_EXTRAS = "launchers are optional: pip install 'memzoo[joblib]' or 'memzoo[submitit]'"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One training run of a grid: its study, axis values, seed (None: the study lists no
    ``seeds``) and full override list."""

    study: str
    settings: tuple[tuple[str, str], ...]
    seed: int | None
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        """The run directory's name: the axis values, then the seed."""
        seed = () if self.seed is None else (("seed", str(self.seed)),)
        return _slug(self.settings + seed)

    @property
    def setting(self) -> str:
        """The name without the seed: the runs a summary row averages."""
        return _slug(self.settings)

    @property
    def group(self) -> str:
        """The setting without the learning rate: the runs a best-of-lr table chooses between."""
        return _slug(tuple((k, v) for k, v in self.settings if k != LR_KEY))

    @property
    def key(self) -> str:
        """``<study>/<name>``: the job's ``cell`` and the run directory under ``runs/``."""
        return f"{self.study}/{self.name}"


def _slug(settings: tuple[tuple[str, str], ...]) -> str:
    text = "_".join(f"{key.split('.')[-1]}={value}" for key, value in settings)
    return re.sub(r"[^A-Za-z0-9=._+-]", "-", text) or "default"  # '+' kept: 1e+30 and 1e-30 are different folders


def _shipped_dir():
    """The shipped grids' folder as installed (``zoo/grid/specs``, package data of ``zoo.grid``)."""
    return resources.files("zoo.grid") / "specs"


def shipped_grids() -> list[str]:
    """Names of the grids shipped in zoo/grid/specs/."""
    return sorted(p.name[:-5] for p in _shipped_dir().iterdir() if p.name.endswith(".yaml"))


def load_grid(grid: str) -> dict[str, Any]:
    """A shipped grid name or a YAML path -> the grid mapping, checked."""
    path = Path(grid)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"grid file {grid!r} does not exist (or is not a regular file)")
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"grid file {grid!r} is larger than {MAX_BYTES:,} bytes; a grid file is a few kB of YAML")
        text = path.read_text()
    else:
        names = shipped_grids()
        if grid not in names:
            raise ValueError(f"grid {grid!r} is not a shipped grid; allowed: {names}, or a path to a .yaml file")
        text = (_shipped_dir() / f"{grid}.yaml").read_text()
    values = load_bounded_yaml(text, f"grid {grid!r}")
    unknown = sorted(set(values) - GRID_KEYS)
    if unknown or not values.get("studies") or not isinstance(values["studies"], dict):
        raise ValueError(f"grid {grid!r} must have keys {sorted(GRID_KEYS)} with at least one study; unknown: {unknown}")
    name = values.setdefault("name", path.stem)
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"grid name {name!r} must be one plain name (letters, digits, '_', '.' or '-'; no '/' "
            "or '..'): results go to --out/<name>/ and nowhere else"
        )
    for study, spec in values["studies"].items():
        if not PLAIN_NAME.fullmatch(str(study)) or str(study) in (".", ".."):
            raise ValueError(f"grid study name {study!r} must be letters, digits, '_', '.' or '-' (it names a directory)")
        bad = sorted(set(spec) - STUDY_KEYS)
        if bad:
            raise ValueError(f"grid study {study!r} has unknown key(s) {bad}; allowed: {sorted(STUDY_KEYS)}")
        for key, options in spec.get("axes", {}).items():
            if not isinstance(options, list) or not options:
                raise ValueError(f"grid study {study!r} axis {key!r} must be a non-empty list, got {options!r}")
            linked = len(str(key).split(","))
            if linked > 1 and not all(isinstance(o, list) and len(o) == linked for o in options):
                raise ValueError(
                    f"grid study {study!r} linked axis {key!r} names {linked} keys: each of its values must be a list "
                    f"of {linked} values, one per key; got {options!r}"
                )
        seeds = spec.get("seeds")
        if seeds is not None and (
            not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) or not all(type(s) is int for s in seeds)
        ):
            raise ValueError(f"grid study {study!r} seeds must be a non-empty list of distinct integers, got {seeds!r}")
    return values


def expand(grid: dict[str, Any], extra: Sequence[str] = ()) -> list[Cell]:
    """Every run of every study, in order (axes vary fastest last, seeds fastest); ``extra``
    overrides are appended to every cell's."""
    cells = []
    for study, spec in grid["studies"].items():
        axes = spec.get("axes", {})
        for combo in itertools.product(*axes.values()):
            settings = tuple(pair for key, value in zip(axes, combo) for pair in _axis_settings(key, value))
            overrides = (*spec.get("base", []), *(f"{k}={v}" for k, v in settings), *extra)
            for seed in spec.get("seeds") or [None]:
                seeded = overrides if seed is None else (*overrides, f"seed={seed}")
                cells.append(Cell(study, settings, seed, seeded))
    _check_unique_folders(cells)
    return cells


def _check_unique_folders(cells: list[Cell]) -> None:
    """``ValueError`` when two cells would share a run directory (values that differ only in characters
    a folder name replaces, or an axis listing a value twice): each cell trains into its own."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        other = seen.setdefault(cell.key, cell)
        if other is not cell:
            raise ValueError(
                f"grid cells {dict(other.settings)} and {dict(cell.settings)} of study {cell.study!r} would share the run "
                f"directory {cell.name!r}; make their values differ in letters, digits or '=._+-'"
            )


def _axis_settings(key: str, value: Any) -> list[tuple[str, str]]:
    """One axis value -> its (override key, value) pairs: one, or one per key of a linked axis."""
    if "," not in key:
        return [(key, str(value))]
    return [(k.strip(), str(v)) for k, v in zip(key.split(","), value)]


def _recorded(cell: Cell, run_dir: Path) -> bool:
    """The directory was made for exactly this cell (its cell.json holds the same overrides)."""
    record = run_dir / "cell.json"
    return record.is_file() and json.loads(record.read_text())["overrides"] == list(cell.overrides)


def is_done(cell: Cell, run_dir: Path) -> bool:
    """A finished run of exactly this cell: metrics.json beside a cell.json with the same overrides
    (a cell whose grid entry changed is trained again)."""
    return (run_dir / "metrics.json").is_file() and _recorded(cell, run_dir)


def compose_cell(overrides: Sequence[str]) -> DictConfig:
    """A cell's ``memzoo-train`` config (Hydra composition checks every override key and value);
    inside an initialized Hydra: memzoo-grid's, which its launchers carry into every job."""
    return compose("train", overrides=list(overrides))


def check_cells(cells: list[Cell]) -> dict[str, RunConfig]:
    """Compose and check every cell (``zoo.training.train.check_run_config``) before any trains: a typo or an
    impossible setting in the last cell fails at once, naming the cell. Raises ``ValueError``. Prints
    each distinct notice of the cells (``RunConfig.notices``) once, with how many cells it concerns.
    Returns each cell's checked run by its key: what its job trains, composed and checked only here."""
    from zoo.training.train import check_run_config

    runs, notices = {}, {}
    for cell in cells:
        try:
            runs[cell.key] = check_run_config(compose_cell(cell.overrides))
        except COMPOSITION_ERRORS as err:
            message = composition_error(err, "train", "memzoo-train", cell.overrides)
            raise ValueError(f"grid cell {cell.key} is invalid: {message}") from err
        except Exception as err:  # noqa: BLE001 - the checks raise several kinds
            raise ValueError(f"grid cell {cell.key} is invalid: {err}") from err
        for notice in runs[cell.key].notices:
            notices[notice] = notices.get(notice, 0) + 1
    for notice, count in notices.items():  # once for the grid, not once per cell
        print(f"{notice} ({count} of {len(cells)} cells)", flush=True)
    return runs


def check_dispatch(hydra_overrides: Sequence[str]) -> None:
    """Compose the launch config with the ``hydra`` overrides (launcher choice and settings), so a
    typo or a launcher that is not installed fails before any cell trains."""
    try:
        compose("grid", overrides=list(hydra_overrides), return_hydra_config=True)
    except Exception as err:  # noqa: BLE001 - Hydra raises several kinds
        raise ValueError(
            f"memzoo-grid launcher overrides {list(hydra_overrides)} are invalid ({LAUNCHER_EXTRAS}): {err}"
        ) from err


def prepare(cell: Cell, run_dir: Path) -> None:
    """A fresh directory for the cell's job, holding only ``cell.json``: a cell interrupted half-way,
    failed or changed starts over."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "cell.json", {"study": cell.study, "seed": cell.seed, "overrides": list(cell.overrides)})


class CellJob:
    """The task function of memzoo-grid's multirun: trains the cell its job config names (``cell``),
    the run ``check_cells`` composed and checked for it; a failure is written to ``error.json``. It
    holds the grid's directory and the checked runs (typed settings, their datamodules before any
    data is made: a few kB each), which launchers pickle to other processes and machines."""

    def __init__(self, root: Path, runs: dict[str, RunConfig], verbose: bool = False):
        self.root, self.runs, self.verbose = root, runs, verbose

    def __call__(self, cfg: DictConfig) -> str:
        from zoo.core.quiet import quiet_dependencies
        from zoo.grid.devices import one_device_per_job
        from zoo.training.train import train

        quiet_dependencies(self.verbose)
        run_dir = self.root / "runs" / cfg.cell
        overrides = json.loads((run_dir / "cell.json").read_text())["overrides"]
        started = time.perf_counter()
        try:
            run = self.runs[cfg.cell]
            with one_device_per_job(run.trainer, HydraConfig.get().job.num):
                train(run, run_dir, notices=False)  # check_cells printed them once
            return "done"
        except RunInterrupted as stopped:  # past Hydra's runner (it catches Exception): the grid stops
            raise SignalExit(stopped.exit_code) from stopped
        except Exception as err:  # noqa: BLE001 - a failed cell is recorded; the others go on
            error = {
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
                "overrides": overrides,
                "wall_time_s": round(time.perf_counter() - started, 2),
            }
            atomic_write_json(run_dir / "error.json", error)
            log.error(f"cell {cfg.cell} failed: {error['error']}")
            return "failed"


def launch(
    cells: list[Cell], runs: dict[str, RunConfig], root: Path, hydra_overrides: Sequence[str], total: int, verbose: bool = False
) -> None:
    """One Hydra multirun job per cell (training its checked run of ``runs``), run by the launcher
    ``hydra_overrides`` choose, with a line of progress per finished cell (of ``total`` in the grid);
    ``verbose``: the dependencies' logging and the launcher's job listing as they come
    (``zoo.core.quiet``); inside memzoo-grid's initialized Hydra.
    Hydra has no public call for a multirun of a given task function (``hydra.main`` wraps one
    around ``sys.argv``), so this is the one its ``main`` makes."""
    from zoo.grid.progress import GridProgress

    for cell in cells:
        prepare(cell, root / "runs" / cell.study / cell.name)
    sweep = ",".join(f"'{cell.key}'" for cell in cells)  # keys hold '=': quoted for the override parser
    chatty = ["hydra.hydra_logging.root.level=INFO"] if verbose else []  # the launcher's per-job listing
    overrides = [f"root='{root}'", f"cell={sweep}", *chatty, *hydra_overrides]
    by_key = {cell.key: cell for cell in cells}
    watched = [(cell.key, root / "runs" / cell.key) for cell in cells]
    title = f"{root.name}: {total} cells in {root}"
    with GridProgress(watched, total, finished=lambda key, run_dir: is_done(by_key[key], run_dir), title=title):
        GlobalHydra.instance().hydra.multirun(config_name="grid", task_function=CellJob(root, runs, verbose), overrides=overrides)


def collect(cells: list[Cell], root: Path) -> list[dict[str, Any]]:
    """One record per cell that finished (``metrics.json``) or failed (``error.json``) under its
    current overrides, in grid order: what the report is built from."""
    records = []
    for cell in cells:
        run_dir = root / "runs" / cell.study / cell.name
        record = {
            "study": cell.study,
            "cell": cell.name,
            "setting": cell.setting,
            "group": cell.group,
            "seed": cell.seed,
            "dir": str(run_dir),
        }
        if is_done(cell, run_dir):
            record.update(status="done", metrics=json.loads((run_dir / "metrics.json").read_text()))
        elif (run_dir / "error.json").is_file() and _recorded(cell, run_dir):
            error = json.loads((run_dir / "error.json").read_text())["error"]
            record.update(status="failed", error=error.splitlines()[0])
        else:
            continue
        records.append(record)
    return records


def is_dispatch_override(override: str) -> bool:
    """``hydra/launcher=joblib``, ``hydra.launcher.n_jobs=2``, ``+hydra...``: for the launch, not the cells."""
    return re.match(r"[+~]*hydra[./]", override) is not None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=(
            "Train a benchmark grid (backbones x memory x sizes x tasks, each cell one memzoo-train run), one Hydra job "
            "per cell, skipping cells already done; write results.csv, summary.md and figures under OUT/<grid>/."
        ),
        epilog=(
            "examples: memzoo-grid quick --list | memzoo-grid quick trainer.max_steps=5 (a shortened trial) | "
            "memzoo-grid quick hydra/launcher=joblib hydra.launcher.n_jobs=2 (two cells at a time). "
            "Docs: docs/grids.md (grid files, output, launchers), docs/results.md (what the shipped grids measured)."
        ),
    )
    parser.add_argument("grid", help=f"a shipped grid (zoo/grid/specs/<name>.yaml: {', '.join(shipped_grids())}) or a .yaml path")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="hydra/launcher=joblib hydra.launcher.n_jobs=4 ... choose how cells are launched "
        "(basic, joblib, submitit_local, submitit_slurm); any other memzoo-train override is added to every cell",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=SCRATCH,
        help=f"results go to OUT/<grid name>/ (default {SCRATCH}/, a scratch folder git ignores; "
        "--out results writes into the committed results/)",
    )
    parser.add_argument("--list", action="store_true", help="print the cells and their overrides, train nothing")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="Lightning's and the launcher's own logging, as they come (quiet by default)"
    )
    args = parser.parse_intermixed_args(argv)
    grid = load_grid(args.grid)
    hydra_overrides = [o for o in args.overrides if is_dispatch_override(o)]
    cell_overrides = [o for o in args.overrides if not is_dispatch_override(o)]
    cells = expand(grid, cell_overrides)
    if args.list:
        for cell in cells:
            print(f"{cell.key}: {' '.join(cell.overrides)}")
        return
    from zoo.grid.report import write_report

    root = (args.out / grid["name"]).resolve()
    stopped = launcher_error = None
    with initialize_config_module(config_module="zoo.configs", version_base="1.3", job_name="memzoo-grid"):
        check_dispatch(hydra_overrides)
        runs = check_cells(cells)
        with exclusive_dir(root, what="grid", choose="pass another --out"):  # one memzoo-grid per grid directory
            pending = [c for c in cells if not is_done(c, root / "runs" / c.study / c.name)]
            with exit_on_signals():
                try:
                    if pending:
                        launch(pending, runs, root, hydra_overrides, len(cells), args.verbose)
                except SignalExit as stop:
                    stopped = stop
                except Exception as err:  # noqa: BLE001 - e.g. a submitit job that died: report what finished
                    launcher_error = err
                    traceback.print_exc()
            records = collect(cells, root)
            paths = write_report(records, root, cell_overrides) if records else []
    failed = [r for r in records if r["status"] == "failed"]
    again = shlex.join(["memzoo-grid", *(argv if argv is not None else sys.argv[1:])])
    print(f"{len(records) - len(failed)} of {len(cells)} cells done; " + ", ".join(str(p) for p in paths))
    if failed:
        print("failed: " + ", ".join(f"{r['study']}/{r['cell']} ({r['error']})" for r in failed))
    if stopped is not None:
        print(f"stopped by {stopped.signal_name}: rerun `{again}` to continue", file=sys.stderr)
        sys.exit(stopped.code)
    if launcher_error is not None:
        print(f"the launcher stopped ({type(launcher_error).__name__}): rerun `{again}` to continue", file=sys.stderr)
    if launcher_error is not None or failed:
        sys.exit(1)


def cli() -> None:
    """``memzoo-grid``: ``main``, with bad input (a grid file, a cell's key or value, a launcher)
    ending in one message and exit code 2 instead of a traceback (``HYDRA_FULL_ERROR=1``: the traceback)."""
    with usage_errors("memzoo-grid"):
        main()


if __name__ == "__main__":
    cli()
