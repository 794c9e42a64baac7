"""The sharded-memory benchmark runs end to end at toy sizes with 2 gloo ranks and writes its rows."""

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_sharded_memory.py"


def test_bench_sharded_memory_writes_rows_and_table(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    argv = ["bench_sharded_memory.py", "--tokens", "32", "64", "--d-model", "16", "--n-keys", "8", "--heads", "2",
            "--knn", "2", "--k-dim", "8", "--steps", "1", "--warmup", "0", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    rows = json.loads(out.read_text())["rows"]
    assert [(r["layout"], r["world_size"], r["tokens"]) for r in rows] == [
        ("local", 1, 32), ("local", 1, 64), ("rows", 2, 32), ("rows", 2, 64), ("columns", 2, 32), ("columns", 2, 64),
    ]
    for r in rows:
        assert set(r) >= {"layout", "world_size", "tokens", "step_ms", "comm_bytes_per_token"}
        assert r["step_ms"] > 0
        assert (r["comm_bytes_per_token"] > 0) == (r["layout"] != "local")
    assert "| layout | world size |" in out.with_suffix(".md").read_text()


def test_bench_sharded_memory_rejects_tokens_the_ranks_cannot_split(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_sharded_memory.py", "--tokens", "33"])
    with pytest.raises(ValueError, match=r"--tokens value 33 must be divisible by --world-size 2"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
