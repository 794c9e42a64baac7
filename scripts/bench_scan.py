"""Selective scan speed and agreement: memzoo's scan vs its earlier chunked form and the sequential reference.

One process, float32, the same inputs for every implementation: ``selective_scan`` (the Mamba
mixer's path: step-by-step recurrence with a hand-written backward), ``chunked_autograd`` (the
earlier path: chunked parallel form differentiated by autograd, ``zoo.mixers.scan_chunked``),
``selective_scan_sequential`` (per-timestep loop, the reference every error is measured against)
and, when it imports, mamba-ssm's own ``selective_scan_ref``. Two passes per length: "fwd" (under
no_grad) and "fwd_bwd" (forward, then backward of y.sum() w.r.t. u, delta, A, B, C, D).

Inputs are shaped like a Mamba layer's: u, z, B, C ~ N(0, 1); A = -exp(U(0, log 16)), so in
[-16, -1] like S4D-real's -(1..16); D = 1; delta is a pre-activation N(0, 1) passed with
delta_softplus=True and delta_bias = -4, so dt = softplus(N(0, 1) - 4): small, median ~0.018,
99th percentile ~0.17 (the in-chunk decay of a 64-step chunk then stays under the float32 fast-path
limit of chunked_autograd; see ``_SAFE_LOG_RANGE`` in zoo/mixers/scan_chunked.py).

The per-step loops' backward is slow (each step's slice of the precomputed (batch, d_inner, L,
d_state) tensors sends back a full-size gradient, so it is quadratic in L): their fwd_bwd rows are
timed once, without warmup. selective_scan and chunked_autograd take turns within every repetition
(one warmup, then --reps), so load from other processes hits both alike; each row is the median.
Writes results/bench_scan.json and results/bench_scan.md.

    python scripts/bench_scan.py              # the issue's settings, a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch

from zoo.core.io import write_bench_results
from zoo.core.timing import median
from zoo.mixers.scan import selective_scan, selective_scan_sequential
from zoo.mixers.scan_chunked import selective_scan_chunked

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D")
DT_SHIFT = -4.0  # delta_bias: dt = softplus(N(0, 1) + DT_SHIFT)
SLOW_BACKWARD = {"sequential", "mamba_ssm_ref"}  # per-step loops: fwd_bwd timed once, no warmup


def load_mamba_ref():
    """mamba-ssm's selective_scan_ref, or (None, why) when it does not import (any error)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    except Exception as error:  # noqa: BLE001 - a missing or broken optional package only skips a row
        return None, f"{type(error).__name__}: {error}"
    return selective_scan_ref, None


def make_inputs(batch: int, d_inner: int, d_state: int, length: int, seed: int = 0) -> dict:
    """float32 inputs of one scan: u, delta, z (batch, d_inner, L); A (d_inner, d_state);
    B, C (batch, d_state, L); D, delta_bias (d_inner,)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return dict(
        u=randn(batch, d_inner, length),
        delta=randn(batch, d_inner, length),
        A=-torch.exp(torch.rand(d_inner, d_state, generator=gen) * math.log(16.0)),
        B=randn(batch, d_state, length),
        C=randn(batch, d_state, length),
        D=torch.ones(d_inner),
        z=randn(batch, d_inner, length),
        delta_bias=torch.full((d_inner,), DT_SHIFT),
    )


def run_pass(scan, inputs: dict, pass_name: str):
    """One call of ``scan``: y for "fwd"; y and the gradients of y.sum() (GRAD_NAMES order) for "fwd_bwd"."""
    if pass_name == "fwd":
        with torch.no_grad():
            return scan(**inputs, delta_softplus=True), None
    leaves = {k: v.detach().requires_grad_(k in GRAD_NAMES) for k, v in inputs.items()}
    y = scan(**leaves, delta_softplus=True)
    y.sum().backward()
    return y.detach(), [leaves[name].grad for name in GRAD_NAMES]


def time_passes(impls: dict, inputs: dict, pass_name: str, reps: int, warmup: int) -> dict:
    """{name: (median seconds of ``run_pass`` over ``reps`` timed calls after ``warmup``, last result)},
    the implementations taking turns within every repetition."""
    times, outs = {name: [] for name in impls}, {}
    for rep in range(warmup + reps):
        for name, scan in impls.items():
            start = time.perf_counter()
            outs[name] = run_pass(scan, inputs, pass_name)
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: (median(t), outs[name]) for name, t in times.items()}


def max_abs_err(out, ref) -> tuple[float, dict]:
    """Largest |difference| over y (and every gradient), and the per-tensor breakdown."""
    (y, grads), (ref_y, ref_grads) = out, ref
    errors = {"y": (y - ref_y).abs().max().item()}
    if grads is not None:
        for name, got, want in zip(GRAD_NAMES, grads, ref_grads):
            errors[f"d{name}"] = (got - want).abs().max().item()
    return max(errors.values()), errors


def speedups(rows: list[dict]) -> list[dict]:
    """baseline ms / selective_scan ms for every (L, pass) and every other implementation timed there."""
    by = {(r["impl"], r["L"], r["pass"]): r["ms"] for r in rows}
    out = []
    for (impl, length, pass_name), ms in by.items():
        if impl != "selective_scan":
            continue
        for baseline in ("chunked_autograd", "sequential", "mamba_ssm_ref"):
            if (baseline, length, pass_name) in by:
                ratio = by[(baseline, length, pass_name)] / ms
                out.append({"L": length, "pass": pass_name, "baseline": baseline, "speedup": round(ratio, 2)})
    return out


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"Selective scan, float32, batch={s['batch']}, d_inner={s['d_inner']}, d_state={s['d_state']}, "
        f"chunk_size={s['chunk_size']}; {result['machine']}, torch {result['torch']}",
        "",
        "| impl | L | pass | ms | max abs err vs sequential |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['impl']} | {r['L']} | {r['pass']} | {r['ms']:.1f} | {r['max_abs_err']:.2e} |")
    lines.append("")
    lines += [f"- selective_scan vs {x['baseline']}, L={x['L']} {x['pass']}: {x['speedup']}x faster" for x in result["speedup"]]
    lines.append(f"- timing: {result['timing']}; whole run {result['total_s']} s")
    lines += [f"- skipped {impl}: {why}" for impl, why in result["skipped"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-inner", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--reps", type=int, default=5, help="timed calls per row after 1 warmup (median reported)")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("results/bench_scan.json"))
    args = parser.parse_args(argv)
    for name in ("batch", "d_inner", "d_state", "reps", "chunk_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    for length in args.lengths:
        if length < 1:
            raise ValueError(f"--lengths value {length} must be >= 1")

    impls = {
        "selective_scan": lambda **kw: selective_scan(**kw, chunk_size=args.chunk_size),
        "chunked_autograd": lambda **kw: selective_scan_chunked(**kw, chunk_size=args.chunk_size),
        "sequential": selective_scan_sequential,  # the reference: the first of the per-step loops
    }
    skipped = {}
    mamba_ref, why = load_mamba_ref()
    if mamba_ref is None:
        skipped["mamba_ssm_ref"] = why
        print(f"skipping mamba_ssm_ref: {why}", flush=True)
    else:
        impls["mamba_ssm_ref"] = mamba_ref

    start_all = time.perf_counter()
    rows, errors = [], []
    for length in args.lengths:
        inputs = make_inputs(args.batch, args.d_inner, args.d_state, length)
        for pass_name in ("fwd", "fwd_bwd"):
            once = pass_name == "fwd_bwd"
            timed = {}
            for impl in (k for k in impls if k in SLOW_BACKWARD):  # the per-step loops, one by one
                timed |= time_passes(
                    {impl: impls[impl]}, inputs, pass_name, reps=1 if once else args.reps, warmup=0 if once else 1
                )
            fast = {k: v for k, v in impls.items() if k not in SLOW_BACKWARD}
            timed |= time_passes(fast, inputs, pass_name, reps=args.reps, warmup=1)
            reference = timed["sequential"][1]
            for impl, (seconds, out) in timed.items():
                err, per_tensor = max_abs_err(out, reference)
                rows.append({"impl": impl, "L": length, "pass": pass_name, "ms": round(seconds * 1e3, 3), "max_abs_err": err})
                errors.append({"impl": impl, "L": length, "pass": pass_name, **per_tensor})
                print(rows[-1], flush=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "dtype": "float32",
        "settings": {
            "batch": args.batch,
            "d_inner": args.d_inner,
            "d_state": args.d_state,
            "lengths": args.lengths,
            "reps": args.reps,
            "chunk_size": args.chunk_size,
        },
        "inputs": "u, z, B, C ~ N(0,1); A = -exp(U(0, log 16)); D = 1; delta ~ N(0,1) with "
        f"delta_softplus=True and delta_bias = {DT_SHIFT} (dt = softplus(N(0,1) {DT_SHIFT:+}))",
        "timing": f"median of {args.reps} after 1 warmup, selective_scan and chunked_autograd taking turns; "
        f"fwd_bwd of {sorted(SLOW_BACKWARD)}: 1 call, no warmup; "
        "fwd under no_grad; fwd_bwd = backward of y.sum() w.r.t. " + ", ".join(GRAD_NAMES),
        "rows": rows,
        "errors": errors,
        "speedup": speedups(rows),
        "skipped": skipped,
        "total_s": round(time.perf_counter() - start_all, 1),
    }
    write_bench_results(args.out, result, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
