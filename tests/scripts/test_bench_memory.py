"""The memory scaling benchmark runs end to end at toy sizes and writes its JSON and table."""

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_memory_writes_rows_and_table(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    argv = [
        "bench_memory.py",
        "--tokens",
        "64",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--knn",
        "2",
        "--k-dim",
        "8",
        "--log2-slots",
        "4",
        "6",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--out",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "scripts" / "bench_memory.py"), run_name="__main__")
    result = json.loads(out.read_text())
    assert result["matmul_gflops"] > 0
    rows = result["rows"]
    read = ["sparse", "dense"] + (["lucidrains"] if importlib.util.find_spec("product_key_memory") else [])
    assert [(r["layer"], r["n_slots"], r["update"]) for r in rows] == [("mlp", None, None)] + [
        (layer, n, update)
        for n in (16, 64)
        for layer, updates in (("memory", ["sparse", "dense"]), ("read", read))
        for update in updates
    ]
    for r in rows:
        assert set(r) >= {"layer", "n_slots", "update", "step_ms", "tokens_per_s", "flops_per_token", "x_floor"}
        assert r["step_ms"] > 0 and r["flops_per_token"] > 0
        if r["layer"] != "mlp":  # every memory row is measured against the same positive floor
            assert r["floor_ms"] > 0 and r["x_floor"] == pytest.approx(r["step_ms"] / r["floor_ms"], rel=0.02)
    assert result["copy_gbs"] > 0
    assert "| layer | N slots | update | step ms |" in out.with_suffix(".md").read_text()


def test_bench_memory_rejects_odd_log2_slots(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_memory.py", "--log2-slots", "5"])
    with pytest.raises(ValueError, match=r"--log2-slots value 5 must be even"):
        runpy.run_path(str(ROOT / "scripts" / "bench_memory.py"), run_name="__main__")


def test_bench_memory_rejects_more_reads_than_sub_keys(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_memory.py", "--log2-slots", "8", "--knn", "32"])
    with pytest.raises(ValueError, match=r"--log2-slots value 8 gives n_keys 16 < --knn 32"):
        runpy.run_path(str(ROOT / "scripts" / "bench_memory.py"), run_name="__main__")
