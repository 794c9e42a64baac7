"""The sharded-memory benchmark (step time; peak memory per rank) runs end to end at toy sizes with
gloo ranks and writes its rows."""

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_sharded_memory.py"


def test_bench_sharded_memory_writes_rows_and_table(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    argv = [
        "bench_sharded_memory.py",
        "--tokens",
        "32",
        "64",
        "--d-model",
        "16",
        "--n-keys",
        "8",
        "--heads",
        "2",
        "--knn",
        "2",
        "--k-dim",
        "8",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--out",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    rows = json.loads(out.read_text())["rows"]
    assert [(r["layout"], r["world_size"], r["tokens"]) for r in rows] == [
        ("local", 1, 32),
        ("local", 1, 64),
        ("rows", 2, 32),
        ("rows", 2, 64),
        ("columns", 2, 32),
        ("columns", 2, 64),
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


def test_bench_sharded_memory_measures_each_ranks_peak_memory_while_building_saving_and_restoring(tmp_path, monkeypatch):
    out = tmp_path / "rss.json"
    argv = [
        "bench_sharded_memory.py",
        "--memory",
        "--log2-slots",
        "8",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--knn",
        "2",
        "--k-dim",
        "8",
        "--checkpoint-dir",
        str(tmp_path),
        "--out",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    rows = json.loads(out.read_text())["rows"]
    assert [(r["layout"], r["world_size"], r["read"]) for r in rows] == [
        ("rows", 1, "rows-1"),
        ("rows", 2, "rows-2"),
        ("columns", 2, "rows-2"),  # columns reshard the rows checkpoint
    ]
    for r in rows:
        assert 0 < r["start_mib"] <= min(r["construct_mib"], r["save_mib"], r["load_mib"])
        assert r["table_bytes"] == 256 * 16 * 4 and r["part_bytes"] == r["table_bytes"] // r["world_size"]
    assert "| N | table MiB | layout | W |" in out.with_suffix(".md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rss.json", "rss.md"]  # the checkpoints are removed


def test_bench_sharded_memory_rejects_a_table_size_that_is_not_a_square(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_sharded_memory.py", "--memory", "--log2-slots", "16", "17"])
    with pytest.raises(ValueError, match=r"--log2-slots value 17 must be even and >= 2"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
