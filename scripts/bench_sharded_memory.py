"""Train-step cost and communication of the sharded memory layouts, side by side with one process.

For each global batch size: one memory+ layer, forward + backward + optimizer step, (a) in this
process holding the whole table (``local``), (b) row-sharded and (c) column-sharded over W gloo
ranks on this machine, each rank with 1/W of the tokens and one thread. ``comm_bytes_per_token`` is
what one layer sends per token (forward + backward, summed over ranks), from the tensor shapes.
Writes results/bench_sharded_memory.json and results/bench_sharded_memory.md.

    python scripts/bench_sharded_memory.py     # ~2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.bench import median_seconds
from zoo.io import write_bench_results
from zoo.memory import MemoryConfig, MemoryPlus
from zoo.memory.comm import comm_bytes_per_token
from zoo.memory.sharding import shard_memory
from zoo.optim import build_optimizer, param_groups


def memory_config(args, parallel: str) -> MemoryConfig:
    return MemoryConfig(
        n_keys=args.n_keys, heads=args.heads, knn=args.knn, k_dim=args.k_dim, layers=[0], parallel=parallel
    )


def step_seconds(layer: MemoryPlus, tokens: int, args, sync=None) -> float:
    """Median seconds of one train step of ``layer`` on ``tokens`` tokens (``sync`` first, if given)."""
    optimizer = build_optimizer(param_groups(layer, lr=1e-3, weight_decay=0.1))
    gen = torch.Generator().manual_seed(dist.get_rank() if dist.is_initialized() else 0)
    x = torch.randn(1, tokens, args.d_model, generator=gen)
    grad_out = torch.randn(1, tokens, args.d_model, generator=gen)

    def step() -> None:
        if sync is not None:
            sync()
        layer(x).backward(grad_out)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, args.steps, args.warmup)


def _rank_main(rank: int, world: int, port: int, args, parallel: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    layer = shard_memory(MemoryPlus(args.d_model, 0, memory_config(args, parallel)))
    times = {tokens: step_seconds(layer, tokens // world, args, sync=dist.barrier) for tokens in args.tokens}
    if rank == 0:
        torch.save(times, out)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (gloo threads can abort it after the work is done)


def sharded_seconds(args, parallel: str) -> dict[int, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        mp.spawn(_rank_main, args=(args.world_size, port, args, parallel, out), nprocs=args.world_size, join=True)
        return torch.load(out)


def markdown(result: dict) -> str:
    lines = [
        f"{result['machine']}; d_model {result['d_model']}, N = {result['n_slots']} slots, heads "
        f"{result['heads']}, knn {result['knn']}, k_dim {result['k_dim']}, v_dim {result['v_dim']}, float32",
        "",
        "| layout | world size | tokens / step | step ms | vs local | comm bytes / token | value rows x cols per rank |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    local = {r["tokens"]: r["step_ms"] for r in result["rows"] if r["layout"] == "local"}
    for r in result["rows"]:
        lines.append(
            f"| {r['layout']} | {r['world_size']} | {r['tokens']} | {r['step_ms']:.1f} | "
            f"{r['step_ms'] / local[r['tokens']]:.2f}x | {r['comm_bytes_per_token']:.0f} | {r['table_per_rank']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192], help="global tokens per step")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-keys", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--knn", type=int, default=32)
    parser.add_argument("--k-dim", type=int, default=256)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench_sharded_memory.json"))
    args = parser.parse_args(argv)
    for tokens in args.tokens:
        if tokens % args.world_size:
            raise ValueError(f"--tokens value {tokens} must be divisible by --world-size {args.world_size}")
    for parallel in ("rows", "columns"):
        memory_config(args, parallel).validate(args.d_model)
        memory_config(args, parallel).check_world_size(args.d_model, args.world_size)

    local_cfg = memory_config(args, "none")
    v_dim = local_cfg.resolved_v_dim(args.d_model)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "d_model": args.d_model, "n_slots": local_cfg.n_slots, "heads": args.heads, "knn": args.knn,
        "k_dim": args.k_dim, "v_dim": v_dim,
        "rows": [],
    }
    torch.manual_seed(0)
    layer = MemoryPlus(args.d_model, 0, local_cfg)
    for tokens in args.tokens:
        seconds = step_seconds(layer, tokens, args)
        result["rows"].append({"layout": "local", "world_size": 1, "tokens": tokens, "step_ms": round(seconds * 1e3, 2),
                               "comm_bytes_per_token": 0.0, "table_per_rank": f"{local_cfg.n_slots} x {v_dim}"})
        print(result["rows"][-1], flush=True)
    del layer
    world = args.world_size
    for parallel, shape in (("rows", f"{local_cfg.n_slots // world} x {v_dim}"), ("columns", f"{local_cfg.n_slots} x {v_dim // world}")):
        sent = comm_bytes_per_token(memory_config(args, parallel), args.d_model, world, element_bytes=4)
        for tokens, seconds in sharded_seconds(args, parallel).items():
            result["rows"].append({"layout": parallel, "world_size": world, "tokens": tokens,
                                   "step_ms": round(seconds * 1e3, 2),
                                   "comm_bytes_per_token": sent["forward"] + sent["backward"], "table_per_rank": shape})
            print(result["rows"][-1], flush=True)
    write_bench_results(args.out, result, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
