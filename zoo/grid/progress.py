"""A grid's progress while its launcher trains the cells: a watcher reads the cells' run directories
(``metrics.json`` when a cell finished, ``error.json`` when it failed), so it works the same for
every launcher (in this process, joblib workers, submitit jobs), and prints one line per finished
cell with the tally, the wall time so far and an ETA from the cells finished so far.

Plain lines rather than a redrawn bar: grids run for an hour under ``nohup``, SLURM or CI, whose
logs keep every line and garble a bar's redraws."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

HEADLINE = ("test/bpb", "test/acc", "test/knowledge_bits", "test/loss")  # a finished cell's line shows the first two present


def duration(seconds: float) -> str:
    """``35s``, ``4m12s``, ``1h02m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def headline(metrics: dict[str, Any]) -> str:
    """A finished cell's result in a few words: its first two headline test metrics and wall time."""
    test = metrics.get("test") or {}
    shown = [f"{key.split('/', 1)[1]} {test[key]:.4g}" for key in HEADLINE if isinstance(test.get(key), (int, float))][:2]
    wall = metrics.get("wall_time_s")
    return ", ".join(shown + ([f"{wall:.0f} s"] if isinstance(wall, (int, float)) else []))


class GridProgress:
    """Watch ``cells`` (``[(key, run_dir)]``, the ones launched now) of a grid of ``total`` cells,
    ``total - len(cells)`` of them done earlier. Use as a context manager around the launch: it prints
    a header, then polls every ``every_s`` seconds from a background thread, and once more on exit.
    ``finished(key, run_dir)`` tells a cell done for this launch (the runner's ``is_done``); ``title``
    opens the header line."""

    def __init__(
        self,
        cells: list[tuple[str, Path]],
        total: int,
        finished: Callable[[str, Path], bool],
        title: str = "grid",
        stream: TextIO | None = None,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.waiting, self.title = list(cells), title
        self.total, self.earlier = total, total - len(cells)
        self.finished, self.stream, self.every_s, self.clock = finished, stream or sys.stdout, every_s, clock
        self.done = self.failed = 0
        self.started = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="grid-progress", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> GridProgress:
        earlier = f", {self.earlier} done earlier" if self.earlier else ""
        self._print(f"{self.title}{earlier}; training {len(self.waiting)}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        """Print a line for every watched cell that finished or failed since the last poll."""
        with self._lock:
            for key, run_dir in list(self.waiting):
                if self.finished(key, run_dir):
                    self.waiting.remove((key, run_dir))
                    self.done += 1
                    self._print(self._tally() + f"  {key}: " + headline(json.loads((run_dir / "metrics.json").read_text())))
                elif (run_dir / "error.json").is_file():
                    self.waiting.remove((key, run_dir))
                    self.failed += 1
                    error = json.loads((run_dir / "error.json").read_text()).get("error") or "?"
                    self._print(self._tally() + f"  {key}: FAILED {error.splitlines()[0]}")

    def _tally(self) -> str:
        """``[done 3/48, failed 0, to go 45 | 4m12s, ETA 63m]``: done counts earlier cells too; the ETA
        assumes the remaining cells take what the finished ones took (parallel jobs included)."""
        elapsed = self.clock() - self.started
        finished, to_go = self.done + self.failed, len(self.waiting)
        eta = duration(elapsed / finished * to_go) if finished else "?"
        return (
            f"[done {self.earlier + self.done}/{self.total}, failed {self.failed}, to go {to_go} | "
            f"{duration(elapsed)}, ETA {eta}]"
        )

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
