"""The whole-model benchmark (memory model vs MLP model) runs end to end at toy sizes, times both
models of a row on the same batch, profiles the chosen memory, counts
the value rows' traffic, and refuses bad arguments."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from zoo.core.timing import row_traffic_bytes

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
        assert row["extra_ms"] == pytest.approx(row["memory_ms"] - row["mlp_ms"], abs=2e-3)
        assert 0 < row["touched_rows"] <= min(1024, 2 * 8 * 32)  # 16 tokens x heads x knn = 512 reads at most
        assert row["row_traffic_mib"] > 0 and row["copy_gibs"] > 0 and row["row_traffic_ms"] > 0
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
    assert "| rows touched / step |" in table


def test_row_traffic_counts_each_pass_over_the_rows():
    # 2 reads of 3-wide float32 rows, 1 touched row: forward 2 x 12 B, backward 2 x 12, gradient written 12
    # and read by Adam 12, values, m, v each read and written (3 x 2 x 12)
    assert row_traffic_bytes(reads=2, touched_rows=1, v_dim=3, element_bytes=4) == 24 + 24 + 12 + 12 + 72
    # bfloat16 values: the reads and the values' read + write at 2 B, the gradient and moments float32
    assert row_traffic_bytes(reads=2, touched_rows=1, v_dim=3, element_bytes=2) == 12 + 12 + 12 + 12 + 12 + 48


def test_bench_memory_model_rejects_a_non_positive_size(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_memory_model.py", "--batch", "0"])
    with pytest.raises(ValueError, match="--batch=0 must be >= 1"):
        runpy.run_path(SCRIPT, run_name="__main__")
