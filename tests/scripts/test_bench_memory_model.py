"""The whole-model benchmark (memory model vs MLP model) runs end to end at toy sizes, times both
models of a row on the same batch, profiles the chosen memory, and refuses bad arguments."""

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "bench_memory_model.py")


def test_bench_memory_model_writes_a_row_per_backbone_and_memory_and_the_profile(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    argv = ["bench_memory_model.py", "--batch", "2", "--seq-len", "8", "--d-model", "16", "--rounds", "2", "--steps", "1"]
    argv += ["--warmup", "0", "--memories", "capacity 2^10", "memory=pkm (2^10)", "--profile", "capacity 2^10"]
    argv += ["--profile-steps", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(SCRIPT, run_name="__main__")
    result = json.loads(out.read_text())
    rows = {(r["backbone"], r["memory"]): r for r in result["rows"]}
    assert set(rows) == {(b, m) for b in ("transformer", "mamba2") for m in ("capacity 2^10", "memory=pkm (2^10)")}
    for row in rows.values():
        assert row["n_slots"] == 1024 and row["ratio"] == pytest.approx(row["memory_ms"] / row["mlp_ms"], rel=1e-3, abs=2e-3)
        assert 0 < row["memory_flops_per_token"] and 0 < row["mlp_flops_per_token"]
        assert 0 < row["round_ratio_min"] <= row["round_ratio_median"] <= row["round_ratio_max"]
        assert row["timed_steps"] == 2 and 0 <= row["mlp_steps_clipped"] <= 2 and 0 <= row["memory_steps_clipped"] <= 2
    profiled = rows[("transformer", "capacity 2^10")]
    for model in ("memory", "mlp"):  # ops by self time, largest first (which ops lead is noise at toy sizes)
        ops = profiled[f"profile_{model}"]
        assert ops and all(p["op"] and p["calls_per_step"] > 0 for p in ops)
        assert [p["ms_per_step"] for p in ops] == sorted((p["ms_per_step"] for p in ops), reverse=True)
        assert 0 < sum(p["share"] for p in ops) <= 1.001
    stages = {s["stage"]: s["ms_per_step"] for s in profiled["stages_memory"]}  # each stage within the step
    whole = stages.pop("the whole training step")
    assert whole > 0 and all(0 <= ms <= whole for ms in stages.values())
    assert (
        stages["forward: query and sub-key normalisation, sub-key scores, pair search, softmax weights, value rows (fused)"] > 0
    )
    assert stages["backward: the fused read (rows per slot, weights, selected sub-key scores, normalisation)"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| memory / MLP |" in table and "Profile: transformer + capacity 2^10" in table
    assert "Stages: transformer + capacity 2^10" in table


def test_bench_memory_model_rejects_a_non_positive_size(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_memory_model.py", "--batch", "0"])
    with pytest.raises(ValueError, match="--batch=0 must be >= 1"):
        runpy.run_path(SCRIPT, run_name="__main__")
