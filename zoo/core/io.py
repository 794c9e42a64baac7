"""Atomic file writes: a reader never sees a half-written result file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, fsync it, then rename it over ``path``
    (a rename within one directory is atomic): ``path`` is the old file or the whole new one, never a
    half-written one. On any failure the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write`` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    """``atomic_write_text`` of ``payload`` as indented JSON."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_bench_results(json_path: str | os.PathLike, result: Any, table: str) -> None:
    """A benchmark's JSON and, beside it with a .md suffix, its markdown table; both atomically."""
    json_path = Path(json_path)
    atomic_write_json(json_path, result)
    atomic_write_text(json_path.with_suffix(".md"), table)


def format_metrics(metrics: dict[str, float]) -> str:
    """``{"test/acc": 0.5, ...}`` -> ``"test/acc 0.5, ..."`` (sorted, 4 significant digits)."""
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
