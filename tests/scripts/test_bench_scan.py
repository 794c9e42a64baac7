"""The selective scan benchmark runs end to end at toy sizes, agrees with its reference, writes JSON and a table."""

import json
import runpy
import sys
import types
from pathlib import Path

import pytest

from zoo.mixers.scan import selective_scan_sequential

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--batch", "1", "--d-inner", "8", "--d-state", "4", "--lengths", "16", "33", "--reps", "1", "--chunk-size", "8"]


def run_bench(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["bench_scan.py", *args])
    runpy.run_path(str(ROOT / "scripts" / "bench_scan.py"), run_name="__main__")


def hide_mamba_ssm(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # a None entry makes the import raise


def test_bench_scan_writes_rows_that_match_the_reference_and_a_table(tmp_path, monkeypatch):
    hide_mamba_ssm(monkeypatch)
    out = tmp_path / "bench.json"
    run_bench(monkeypatch, *TOY, "--out", str(out))
    result = json.loads(out.read_text())
    rows = result["rows"]
    impls = ("selective_scan", "chunked_autograd", "sequential")
    assert sorted((r["impl"], r["L"], r["pass"]) for r in rows) == sorted(
        (impl, length, p) for impl in impls for length in (16, 33) for p in ("fwd", "fwd_bwd")
    )
    for r in rows:
        assert set(r) == {"impl", "L", "pass", "ms", "max_abs_err"}
        assert r["ms"] > 0
        assert 0 <= r["max_abs_err"] < 1e-4, r
    assert "mamba_ssm_ref" in result["skipped"]
    assert sorted((s["L"], s["pass"], s["baseline"]) for s in result["speedup"]) == sorted(
        (length, p, baseline)
        for length in (16, 33)
        for p in ("fwd", "fwd_bwd")
        for baseline in ("chunked_autograd", "sequential")
    )
    by = {(r["impl"], r["L"], r["pass"]): r["ms"] for r in rows}
    for s in result["speedup"]:
        assert s["speedup"] == round(by[(s["baseline"], s["L"], s["pass"])] / by[("selective_scan", s["L"], s["pass"])], 2)
    table = out.with_suffix(".md").read_text()
    assert "| selective_scan | 33 | fwd_bwd |" in table and "| chunked_autograd | 33 | fwd_bwd |" in table
    assert "selective_scan vs chunked_autograd, L=33 fwd_bwd:" in table and "skipped mamba_ssm_ref" in table


def test_bench_scan_times_mamba_ssm_ref_when_it_imports(tmp_path, monkeypatch):
    """A stand-in mamba_ssm package (its ref = our sequential loop) adds a fourth impl with zero error."""
    leaf = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    leaf.selective_scan_ref = selective_scan_sequential
    for name, module in [
        ("mamba_ssm", types.ModuleType("mamba_ssm")),
        ("mamba_ssm.ops", types.ModuleType("mamba_ssm.ops")),
        ("mamba_ssm.ops.selective_scan_interface", leaf),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    out = tmp_path / "bench.json"
    run_bench(monkeypatch, *TOY[:6], "--lengths", "12", "--reps", "1", "--out", str(out))
    result = json.loads(out.read_text())
    mamba_rows = [r for r in result["rows"] if r["impl"] == "mamba_ssm_ref"]
    assert [r["pass"] for r in mamba_rows] == ["fwd", "fwd_bwd"]
    assert all(r["max_abs_err"] == 0.0 and r["ms"] > 0 for r in mamba_rows)
    assert {s["baseline"] for s in result["speedup"]} == {"chunked_autograd", "sequential", "mamba_ssm_ref"}
    assert result["skipped"] == {}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lengths", "16", "0"], r"--lengths value 0 must be >= 1"),
        (["--reps", "0"], r"--reps=0 must be >= 1"),
        (["--chunk-size", "-2"], r"--chunk-size=-2 must be >= 1"),
    ],
)
def test_bench_scan_rejects_bad_arguments_before_computing(args, message, tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    with pytest.raises(ValueError, match=message):
        run_bench(monkeypatch, *args, "--out", str(out))
    assert not out.exists()
