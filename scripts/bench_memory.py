"""Train-step cost of the product-key memory layer as the table grows, sparse vs dense value updates.

One process, the same tokens per step for every row: forward + backward + optimizer step of one
memory+ layer for N = 2^12 .. 2^22 slots (sparse rows-only and dense value updates) and of a SwiGLU
MLP of the same d_model. Each row carries the layer's analytic FLOPs per token (forward + backward)
and the achieved GFLOP/s; a plain matmul of the query projection's shape gives the machine's
reference GFLOP/s. Writes results/bench_memory.json and results/bench_memory.md.

    python scripts/bench_memory.py            # the issue's settings, ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import time
from pathlib import Path

import torch

from zoo.bench import median_seconds
from zoo.io import write_bench_results
from zoo.memory import MemoryConfig, MemoryPlus
from zoo.mlp import SwiGLU
from zoo.optim import build_optimizer, param_groups


def memory_flops_per_token(d_model: int, cfg: MemoryConfig) -> int:
    """Forward + backward FLOPs per token: query projection, sub-key scores, value read, memory+ gate.

    2 FLOPs per multiply-add; a dense term's backward costs twice its forward. The sub-key scores are
    the exception: all n_keys scores of both halves are computed forward, but the backward runs only
    through the k selected per half (gradients to the query and to the selected sub-keys).
    """
    v_dim = cfg.resolved_v_dim(d_model)
    query = 3 * 2 * d_model * cfg.heads * cfg.k_dim
    sub_key_scores = 2 * cfg.heads * cfg.n_keys * cfg.k_dim + 2 * 2 * cfg.heads * cfg.knn * cfg.k_dim
    value_read = 3 * 2 * cfg.heads * cfg.knn * v_dim
    gate = 3 * (2 * d_model * v_dim * 2 + (2 * d_model if cfg.gate else 0))  # W1, W2 (+ scalar gate)
    return query + sub_key_scores + value_read + gate


def mlp_flops_per_token(mlp: SwiGLU) -> int:
    d_model, hidden = mlp.w1.in_features, mlp.w1.out_features
    return 3 * 3 * 2 * d_model * hidden


def time_steps(layer: torch.nn.Module, tokens: int, d_model: int, steps: int, warmup: int) -> float:
    """Median seconds of forward + backward + optimizer step on (1, tokens, d_model) inputs."""
    optimizer = build_optimizer(param_groups(layer, lr=1e-3, weight_decay=0.1))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, tokens, d_model, generator=gen)
    grad_out = torch.randn(1, tokens, d_model, generator=gen)

    def step() -> None:
        layer(x).backward(grad_out)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, steps, warmup)


def matmul_gflops(tokens: int, d_model: int, width: int, reps: int = 20) -> float:
    """Achieved GFLOP/s of (tokens x d_model) @ (d_model x width), the query projection's shape."""
    a, b = torch.randn(tokens, d_model), torch.randn(d_model, width)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * tokens * d_model * width * reps / (time.perf_counter() - start) / 1e9


def row(layer: str, n_slots, update, seconds: float, tokens: int, flops_per_token: int) -> dict:
    return {
        "layer": layer,
        "n_slots": n_slots,
        "update": update,
        "step_ms": round(seconds * 1e3, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "flops_per_token": flops_per_token,
        "gflops": round(flops_per_token * tokens / seconds / 1e9, 2),
    }


def markdown(result: dict) -> str:
    lines = [
        f"Reference matmul ({result['tokens']} x {result['d_model']} @ {result['d_model']} x "
        f"{result['query_width']}): {result['matmul_gflops']:.1f} GFLOP/s",
        "",
        "| layer | N slots | update | step ms | tokens/s | MFLOP/token | GFLOP/s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        n = "-" if r["n_slots"] is None else f"2^{int(math.log2(r['n_slots']))}"
        lines.append(
            f"| {r['layer']} | {n} | {r['update'] or '-'} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['flops_per_token'] / 1e6:.2f} | {r['gflops']:.1f} |"
        )
    lines += ["", *(f"- {k}: {v}" for k, v in result["checks"].items())]
    return "\n".join(lines) + "\n"


def checks(rows: list[dict]) -> dict:
    """The two ratios the layer promises, from the rows at the largest N and at 2^16."""
    by = {(r["n_slots"], r["update"]): r for r in rows if r["layer"] == "memory"}
    largest = max(n for n, _ in by)
    out = {}
    if (2**16, "sparse") in by and (largest, "sparse") in by:
        def per_flop(r):
            return r["step_ms"] / r["flops_per_token"]
        out[f"sparse time per FLOP, N=2^{int(math.log2(largest))} / N=2^16"] = round(
            per_flop(by[(largest, "sparse")]) / per_flop(by[(2**16, "sparse")]), 3
        )
    if (largest, "dense") in by and (largest, "sparse") in by:
        out[f"dense / sparse step time at N=2^{int(math.log2(largest))}"] = round(
            by[(largest, "dense")]["step_ms"] / by[(largest, "sparse")]["step_ms"], 2
        )
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--knn", type=int, default=32)
    parser.add_argument("--k-dim", type=int, default=256)
    parser.add_argument("--log2-slots", type=int, nargs="+", default=[12, 14, 16, 18, 20, 22])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench_memory.json"))
    args = parser.parse_args(argv)
    for value in args.log2_slots:
        if value < 2 or value % 2:
            raise ValueError(f"--log2-slots value {value} must be even and >= 2 (N = n_keys^2)")
    torch.manual_seed(0)

    query_width = args.heads * args.k_dim
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "tokens": args.tokens,
        "d_model": args.d_model,
        "query_width": query_width,
        "matmul_gflops": round(matmul_gflops(args.tokens, args.d_model, query_width), 2),
        "rows": [],
    }
    mlp = SwiGLU(args.d_model)
    seconds = time_steps(mlp, args.tokens, args.d_model, args.steps, args.warmup)
    result["rows"].append(row("mlp", None, None, seconds, args.tokens, mlp_flops_per_token(mlp)))
    print(result["rows"][-1], flush=True)
    for log2 in args.log2_slots:
        for update in ("sparse", "dense"):
            cfg = MemoryConfig(
                n_keys=2 ** (log2 // 2), heads=args.heads, knn=args.knn, k_dim=args.k_dim,
                layers=[0], sparse_updates=update == "sparse",
            )
            layer = MemoryPlus(args.d_model, 0, cfg)
            seconds = time_steps(layer, args.tokens, args.d_model, args.steps, args.warmup)
            flops = memory_flops_per_token(args.d_model, cfg)
            result["rows"].append(row("memory", cfg.n_slots, update, seconds, args.tokens, flops))
            print(result["rows"][-1], flush=True)
            del layer
            gc.collect()
    result["checks"] = checks(result["rows"])
    write_bench_results(args.out, result, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
