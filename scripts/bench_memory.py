"""Train-step cost of the product-key memory as the table grows: memzoo sparse and dense value updates
beside lucidrains' ``product-key-memory`` PKM (when installed), with the bytes-moved floor.

One process, the same tokens per step for every row, forward + backward + optimizer step:
- ``memory``: one memory+ layer (keys, values, W1/W2 gate) for N = 2^12 .. 2^22 slots, sparse
  (rows-only Adam) and dense (AdamW) value updates, and a SwiGLU MLP of the same d_model;
- ``read``: the memory read alone (query, product keys, top-k, softmax, value bag), memzoo sparse and
  dense, and lucidrains' ``PKM`` at the same shapes (its ``dim_head`` = k_dim / 2, its values
  d_model wide, fused Adam) — the issue's like-for-like comparison.
Each row carries analytic FLOPs per token, achieved GFLOP/s, peak memory (CUDA), and its ratio to the
bandwidth floor: the bytes a step must move at best (value rows read forward and again backward,
the touched rows' gradient written, and Adam reading/writing value, m, v of the touched rows once)
over the device's copy bandwidth measured in the same run. ``--dtype bf16`` runs under bf16
autocast with a bfloat16 value table (memzoo) / a bfloat16 module (lucidrains).
Writes results/bench_memory.json and results/bench_memory.md.

    python scripts/bench_memory.py                            # CPU, the issue's settings
    python scripts/bench_memory.py --device cuda --tokens 16384 --d-model 1024 --k-dim 512 --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import math
import platform
from pathlib import Path

import torch
from torch import nn

from zoo.core.io import write_bench_results
from zoo.core.timing import copy_bandwidth, median_seconds, row_traffic_bytes, synchronize
from zoo.memory import MemoryConfig, MemoryPlus, ProductKeys
from zoo.memory.layer import make_value_table
from zoo.model.mlp import SwiGLU
from zoo.training.optim import build_optimizer, param_groups

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class MemoryRead(nn.Module):
    """The memory read alone: (1, T, D) -> (1, T, v_dim), product-key search + value bag."""

    def __init__(self, d_model: int, config: MemoryConfig):
        super().__init__()
        self.keys = ProductKeys(d_model, config)
        self.values = make_value_table(config, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        slots, weights = self.keys(flat)
        return self.values.read(slots.flatten(1), weights.flatten(1)).view(*x.shape[:-1], -1)


def memory_flops_per_token(d_model: int, cfg: MemoryConfig, gate: bool = True) -> int:
    """Forward + backward FLOPs per token: query projection, sub-key scores, value read, and (``gate``)
    the memory+ gate W1/W2.

    2 FLOPs per multiply-add; a dense term's backward costs twice its forward. The sub-key scores are
    the exception: all n_keys scores of both halves are computed forward, but the backward runs only
    through the k selected per half (gradients to the query and to the selected sub-keys).
    """
    v_dim = cfg.resolved_v_dim(d_model)
    query = 3 * 2 * d_model * cfg.heads * cfg.k_dim
    sub_key_scores = 2 * cfg.heads * cfg.n_keys * cfg.k_dim + 2 * 2 * cfg.heads * cfg.knn * cfg.k_dim
    value_read = 3 * 2 * cfg.heads * cfg.knn * v_dim
    w1_w2 = 3 * (2 * d_model * v_dim * 2 + (2 * d_model if cfg.gate else 0)) if gate else 0
    return query + sub_key_scores + value_read + w1_w2


def mlp_flops_per_token(mlp: SwiGLU) -> int:
    d_model, hidden = mlp.w1.in_features, mlp.w1.out_features
    return 3 * 3 * 2 * d_model * hidden


def matmul_gflops(tokens: int, d_model: int, width: int, device: torch.device, dtype: torch.dtype) -> float:
    """Achieved GFLOP/s of (tokens x d_model) @ (d_model x width), the query projection's shape."""
    a = torch.randn(tokens, d_model, device=device, dtype=dtype)
    b = torch.randn(d_model, width, device=device, dtype=dtype)

    def mm() -> None:
        a @ b
        synchronize(device)

    return 2 * tokens * d_model * width / median_seconds(mm, 20, 3) / 1e9


def make_optimizer(layer: nn.Module, impl: str) -> torch.optim.Optimizer:
    """memzoo's optimizer from the parameter tags, or Adam (fused where torch has it) for lucidrains."""
    if impl == "lucidrains":
        params = list(layer.parameters())
        return torch.optim.Adam(params, lr=1e-3, fused=params[0].dtype in (torch.float32, torch.bfloat16))
    return build_optimizer(param_groups(layer, lr=1e-3, weight_decay=0.0))


def time_steps(layer: nn.Module, impl: str, args, device: torch.device) -> tuple[float, float | None]:
    """(median seconds of forward + backward + optimizer step on (1, tokens, d_model) inputs, peak
    GiB allocated on CUDA or None)."""
    optimizer = make_optimizer(layer, impl)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, args.tokens, args.d_model, generator=gen, device=device)
    grad_out = None
    dtype = DTYPES[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step() -> None:
        nonlocal grad_out
        with autocast:
            out = layer(x)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=gen, device=device, dtype=out.dtype)
        out.backward(grad_out)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(step, args.steps, args.warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def touched_rows(layer: MemoryRead | MemoryPlus, tokens: int, d_model: int, device: torch.device) -> int:
    """Distinct value rows one step reads, on the benchmark's own input."""
    x = torch.randn(tokens, d_model, generator=torch.Generator(device=device).manual_seed(0), device=device)
    with torch.no_grad():
        slots, _ = layer.keys(x)
    return int(slots.unique().numel())


def row(layer: str, n_slots, update, seconds: float, tokens: int, flops_per_token: int, peak, floor) -> dict:
    return {
        "layer": layer,
        "n_slots": n_slots,
        "update": update,
        "step_ms": round(seconds * 1e3, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "flops_per_token": flops_per_token,
        "gflops": round(flops_per_token * tokens / seconds / 1e9, 2),
        "peak_gib": None if peak is None else round(peak, 2),
        "floor_ms": None if floor is None else float(f"{floor * 1e3:.4g}"),
        "x_floor": None if floor is None else round(seconds / floor, 2),
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['machine']}, torch {result['torch']}, {result['dtype']}, {result['tokens']} tokens, "
        f"d_model {result['d_model']}, heads {result['heads']}, top-{result['knn']}, k_dim {result['k_dim']}",
        "",
        f"Reference matmul ({result['tokens']} x {result['d_model']} @ {result['d_model']} x "
        f"{result['query_width']}): {result['matmul_gflops']:.1f} GFLOP/s; copy bandwidth "
        f"{result['copy_gbs']:.1f} GB/s",
        "",
        "| layer | N slots | update | step ms | tokens/s | MFLOP/token | GFLOP/s | peak GiB | floor ms | x floor |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        n = "-" if r["n_slots"] is None else f"2^{int(math.log2(r['n_slots']))}"
        if "error" in r:
            lines.append(f"| {r['layer']} | {n} | {r['update']} | error: {r['error'][:60]} | | | | | | |")
            continue
        extra = [("-" if r[k] is None else f"{r[k]:.3g}") for k in ("peak_gib", "floor_ms", "x_floor")]
        lines.append(
            f"| {r['layer']} | {n} | {r['update'] or '-'} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['flops_per_token'] / 1e6:.2f} | {r['gflops']:.1f} | {' | '.join(extra)} |"
        )
    lines += ["", *(f"- {k}: {v}" for k, v in result["checks"].items())]
    return "\n".join(lines) + "\n"


def checks(rows: list[dict]) -> dict:
    """The ratios the layer promises, from the rows at the largest N and at 2^16."""
    ok = [r for r in rows if "error" not in r]
    by = {(r["layer"], r["n_slots"], r["update"]): r for r in ok}
    sizes = sorted({r["n_slots"] for r in ok if r["n_slots"] is not None})
    out = {}
    if not sizes:
        return out
    largest = sizes[-1]
    name = f"2^{int(math.log2(largest))}"

    def per_flop(r):
        return r["step_ms"] / r["flops_per_token"]

    if ("memory", 2**16, "sparse") in by and ("memory", largest, "sparse") in by:
        out[f"sparse time per FLOP, N={name} / N=2^16"] = round(
            per_flop(by[("memory", largest, "sparse")]) / per_flop(by[("memory", 2**16, "sparse")]), 3
        )
    if ("memory", largest, "dense") in by and ("memory", largest, "sparse") in by:
        out[f"dense / sparse step time at N={name}"] = round(
            by[("memory", largest, "dense")]["step_ms"] / by[("memory", largest, "sparse")]["step_ms"], 2
        )
    for n in sorted({2**16, largest} & set(sizes)):
        theirs, ours = by.get(("read", n, "lucidrains")), by.get(("read", n, "sparse"))
        if theirs and ours:
            out[f"lucidrains / memzoo sparse read step time at N=2^{int(math.log2(n))}"] = round(
                theirs["step_ms"] / ours["step_ms"], 2
            )
    return out


def build(kind: str, impl: str, args, log2: int, device: torch.device) -> nn.Module:
    """One benchmarked module: ``memory`` (memory+ layer) or ``read``, memzoo sparse / dense or lucidrains."""
    cfg = MemoryConfig(
        n_keys=2 ** (log2 // 2),
        heads=args.heads,
        knn=args.knn,
        k_dim=args.k_dim,
        layers=[0],
        sparse_updates=impl == "sparse",
        value_dtype="bfloat16" if args.dtype == "bf16" and impl == "sparse" else "float32",
    )
    with device:  # built where it runs: initialising a 2^22 x 1024 table on the host alone takes ~30 s
        if impl == "lucidrains":
            from product_key_memory import PKM

            module = PKM(args.d_model, heads=args.heads, num_keys=cfg.n_keys, topk=args.knn, dim_head=args.k_dim // 2)
            return module.to(dtype=DTYPES[args.dtype])
        return MemoryPlus(args.d_model, 0, cfg) if kind == "memory" else MemoryRead(args.d_model, cfg)


def step_floor_seconds(args, log2: int, device: torch.device, copy_bps: float) -> float:
    """The bandwidth floor of one step at N = 2^log2 (the same for every implementation of the shape):
    ``row_traffic_bytes`` with the distinct rows memzoo's search touches on the benchmark's input."""
    cfg = MemoryConfig(n_keys=2 ** (log2 // 2), heads=args.heads, knn=args.knn, k_dim=args.k_dim)
    with device:
        touched = touched_rows(MemoryRead(args.d_model, cfg), args.tokens, args.d_model, device)
    element_bytes = DTYPES[args.dtype].itemsize
    reads = args.tokens * cfg.heads * cfg.knn
    return row_traffic_bytes(reads, touched, args.d_model, element_bytes) / copy_bps


def measure(kind: str, impl: str, args, log2: int, device: torch.device, floor: float) -> dict:
    cfg = MemoryConfig(n_keys=2 ** (log2 // 2), heads=args.heads, knn=args.knn, k_dim=args.k_dim)
    flops = memory_flops_per_token(args.d_model, cfg, gate=kind == "memory")
    try:
        module = build(kind, impl, args, log2, device)
        seconds, peak = time_steps(module, impl, args, device)
        result = row(kind, cfg.n_slots, impl, seconds, args.tokens, flops, peak, floor)
    except (RuntimeError, ImportError) as error:  # e.g. out of memory at 2^22: recorded, the rest goes on
        result = {"layer": kind, "n_slots": cfg.n_slots, "update": impl, "error": f"{type(error).__name__}: {error}"}
    module = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--knn", type=int, default=32)
    parser.add_argument("--k-dim", type=int, default=256)
    parser.add_argument("--log2-slots", type=int, nargs="+", default=[12, 14, 16, 18, 20, 22])
    parser.add_argument("--kinds", nargs="+", choices=["memory", "read"], default=["memory", "read"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench_memory.json"))
    args = parser.parse_args(argv)
    for value in args.log2_slots:
        if value < 2 or value % 2:
            raise ValueError(f"--log2-slots value {value} must be even and >= 2 (N = n_keys^2)")
        if 2 ** (value // 2) < args.knn:
            raise ValueError(f"--log2-slots value {value} gives n_keys {2 ** (value // 2)} < --knn {args.knn}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
    device = torch.device(args.device)
    torch.manual_seed(0)

    query_width = args.heads * args.k_dim
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    )
    copy_bps = copy_bandwidth(device, (1024 if device.type == "cuda" else 256) << 20)
    result = {
        "machine": machine,
        "torch": torch.__version__,
        "device": args.device,
        "dtype": args.dtype,
        "tokens": args.tokens,
        "d_model": args.d_model,
        "heads": args.heads,
        "knn": args.knn,
        "k_dim": args.k_dim,
        "query_width": query_width,
        "matmul_gflops": float(f"{matmul_gflops(args.tokens, args.d_model, query_width, device, DTYPES[args.dtype]):.4g}"),
        "copy_gbs": float(f"{copy_bps / 1e9:.4g}"),
        "rows": [],
    }
    mlp = SwiGLU(args.d_model).to(device)
    seconds, peak = time_steps(mlp, "mlp", args, device)
    result["rows"].append(row("mlp", None, None, seconds, args.tokens, mlp_flops_per_token(mlp), peak, None))
    print(result["rows"][-1], flush=True)
    del mlp
    impls = {"memory": ["sparse", "dense"], "read": ["sparse", "dense"]}
    if importlib.util.find_spec("product_key_memory") is not None:
        impls["read"].append("lucidrains")
    for log2 in args.log2_slots:
        floor = step_floor_seconds(args, log2, device, copy_bps)
        for kind in args.kinds:
            for impl in impls[kind]:
                result["rows"].append(measure(kind, impl, args, log2, device, floor))
                print(result["rows"][-1], flush=True)
    result["checks"] = checks(result["rows"])
    write_bench_results(args.out, result, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
