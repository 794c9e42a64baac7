"""Train-step cost and communication of the sharded memory layouts, side by side with one process;
with ``--memory``, peak host memory per rank as the table grows.

Step cost: for each global batch size, one memory+ layer, forward + backward + optimizer step, (a) in
this process holding the whole table (``local``), (b) row-sharded and (c) column-sharded over W gloo
ranks on this machine, each rank with 1/W of the tokens and one thread. ``comm_bytes_per_token`` is
what one layer sends per token (forward + backward, summed over ranks), from the tensor shapes.
Writes results/bench_sharded_memory.json and .md.

Memory (``--memory``): for each N = 2^(--log2-slots), one memory+ layer over W gloo ranks (rows at
W = 1 and W = --world-size, columns at W = --world-size), each rank's peak resident memory (VmHWM,
reset before each phase) while it builds the layer (rank-local init), while it saves the layer and
its Adam moments (after one step) as a distributed checkpoint, and while it builds a fresh layer and
restores both from a checkpoint (rows read their own; columns read the rows one: resharding).
Writes results/bench_sharded_memory_rss.json and .md.

    python scripts/bench_sharded_memory.py     # ~2 minutes on 2 CPU cores
    python scripts/bench_sharded_memory.py --memory --d-model 128   # N = 2^16 .. 2^22; ~14 GB of RAM at 2^22
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.checkpoint.distributed import save_distributed
from zoo.checkpoint.files import load_checkpoint_file
from zoo.core.io import write_bench_results
from zoo.core.timing import median_seconds, peak_rss, reset_peak_rss
from zoo.memory import MemoryConfig, MemoryPlus
from zoo.memory.comm import comm_bytes_per_token
from zoo.memory.sharding import save_and_load_sharded_state, shard_memory
from zoo.training.optim import build_optimizer, param_groups

MIB = 2**20


def memory_config(args, parallel: str) -> MemoryConfig:
    return MemoryConfig(n_keys=args.n_keys, heads=args.heads, knn=args.knn, k_dim=args.k_dim, layers=[0], parallel=parallel)


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


def join_group(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)


def leave_group() -> None:
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (gloo threads can abort it after the work is done)


def _rank_main(rank: int, world: int, port: int, args, parallel: str, out: str) -> None:
    join_group(rank, world, port)
    layer = sharded_layer(args, parallel)
    times = {tokens: step_seconds(layer, tokens // world, args, sync=dist.barrier) for tokens in args.tokens}
    if rank == 0:
        torch.save(times, out)
    leave_group()


def spawn(body, world: int, *args) -> None:
    """``body(rank, world, port, *args)`` in ``world`` processes (they join one gloo group on ``port``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(body, args=(world, port, *args), nprocs=world, join=True)


def sharded_seconds(args, parallel: str) -> dict[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        spawn(_rank_main, args.world_size, args, parallel, out)
        return torch.load(out)


def sharded_layer(args, parallel: str) -> MemoryPlus:
    """A sharded memory+ layer: each rank draws only its part of the table."""
    return shard_memory(MemoryPlus(args.d_model, 0, memory_config(args, parallel)))


def layer_optimizer(layer: MemoryPlus) -> torch.optim.Optimizer:
    optimizer = build_optimizer(param_groups(layer, lr=1e-3, weight_decay=0.1))
    save_and_load_sharded_state(optimizer)
    return optimizer


def save_layer(layer, optimizer, path: Path) -> None:
    """The layer and its optimizer as a distributed checkpoint, every rank writing its part."""
    state = {"state_dict": layer.state_dict(), "optimizer_states": [optimizer.state_dict()], "hyper_parameters": {"model": {}}}
    save_distributed(state, path)


def _memory_rank(rank: int, world: int, port: int, args, parallel: str, folder: str, read: str, out: str) -> None:
    """One rank of ``--memory``: peak RSS while building, saving and restoring; JSON to ``out``."""
    join_group(rank, world, port)
    result = {"start_mib": reset_peak_rss() / MIB}

    def measure(phase: str, work):
        reset_peak_rss()
        started = time.perf_counter()
        value = work()
        result[f"{phase}_s"] = round(time.perf_counter() - started, 2)
        result[f"{phase}_mib"] = peak_rss() / MIB
        return value

    layer = measure("construct", lambda: sharded_layer(args, parallel))
    optimizer = layer_optimizer(layer)
    result["part_bytes"] = layer.values.weight.numel() * layer.values.weight.element_size()
    layer(torch.randn(1, 8, args.d_model)).sum().backward()
    optimizer.step()  # the Adam moments exist from here on
    measure("save", partial(save_layer, layer, optimizer, Path(folder) / f"{parallel}-{world}.ckpt"))
    del layer, optimizer
    gc.collect()

    def restore():
        layer = sharded_layer(args, parallel)
        optimizer = layer_optimizer(layer)
        checkpoint = load_checkpoint_file(Path(folder) / read, whole=False)
        layer.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer_states"][0])

    measure("load", restore)
    Path(out.format(rank=rank)).write_text(json.dumps(result))
    leave_group()


def memory_rows(args) -> list[dict]:
    """One row per (N, layout, world size), each phase's peak over ranks."""
    rows = []
    for log2 in args.log2_slots:
        sized = argparse.Namespace(**{**vars(args), "n_keys": 2 ** (log2 // 2)})
        table_bytes = 2**log2 * memory_config(sized, "none").resolved_v_dim(args.d_model) * 4
        with tempfile.TemporaryDirectory(dir=args.checkpoint_dir) as folder:
            for parallel, world, read in (
                ("rows", 1, "rows-1.ckpt"),
                ("rows", args.world_size, f"rows-{args.world_size}.ckpt"),
                ("columns", args.world_size, f"rows-{args.world_size}.ckpt"),
            ):
                out = os.path.join(folder, "rank{rank}.json")
                spawn(_memory_rank, world, sized, parallel, folder, read, out)
                ranks = [json.loads(Path(out.format(rank=r)).read_text()) for r in range(world)]
                row = {
                    "log2_slots": log2,
                    "layout": parallel,
                    "world_size": world,
                    "table_bytes": table_bytes,
                    "read": read.removesuffix(".ckpt"),
                }
                for key in ranks[0]:
                    row[key] = max(r[key] for r in ranks)
                    row[key] = round(row[key], 2) if isinstance(row[key], float) else row[key]
                rows.append(row)
                print(row, flush=True)
    return rows


def memory_markdown(result: dict) -> str:
    lines = [
        f"{result['machine']}; one memory+ layer, v_dim {result['v_dim']}, float32 table and Adam moments; peak RSS per "
        "rank (the largest over ranks), MiB, and as a share of one process's (rows, W = 1) at the same N",
        "",
        "| N | table MiB | layout | W | part MiB / rank | start | construct | save | load (reads) "
        "| construct / 1 proc | save / 1 proc | load / 1 proc |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    one = {r["log2_slots"]: r for r in result["rows"] if r["world_size"] == 1}
    for r in result["rows"]:
        ref = one[r["log2_slots"]]
        lines.append(
            f"| 2^{r['log2_slots']} | {r['table_bytes'] / MIB:.0f} | {r['layout']} | {r['world_size']} | "
            f"{r['part_bytes'] / MIB:.0f} | "
            f"{r['start_mib']:.0f} | {r['construct_mib']:.0f} | {r['save_mib']:.0f} | {r['load_mib']:.0f} ({r['read']}) | "
            f"{r['construct_mib'] / ref['construct_mib']:.2f} | {r['save_mib'] / ref['save_mib']:.2f} | "
            f"{r['load_mib'] / ref['load_mib']:.2f} |"
        )
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--d-model", type=int, default=256, help="model width, and the table's v_dim")
    parser.add_argument("--n-keys", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--knn", type=int, default=32)
    parser.add_argument("--k-dim", type=int, default=256)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="measure peak memory per rank instead of step time")
    parser.add_argument(
        "--log2-slots",
        type=int,
        nargs="+",
        default=[16, 18, 20, 22],
        help="--memory: table sizes N = 2^value (even: N = n_keys^2)",
    )
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=None, help="--memory: where checkpoints are written (a temp dir inside)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/bench_sharded_memory.json, with --memory ..._rss.json)"
    )
    args = parser.parse_args(argv)
    if args.memory:
        return memory_main(args)
    for tokens in args.tokens:
        if tokens % args.world_size:
            raise ValueError(f"--tokens value {tokens} must be divisible by --world-size {args.world_size}")
    for parallel in ("rows", "columns"):
        memory_config(args, parallel).validate(args.d_model)
        memory_config(args, parallel).check_world_size(args.d_model, args.world_size)

    local_cfg = memory_config(args, "none")
    v_dim = local_cfg.resolved_v_dim(args.d_model)
    result = {
        "machine": machine(),
        "torch": torch.__version__,
        "d_model": args.d_model,
        "n_slots": local_cfg.n_slots,
        "heads": args.heads,
        "knn": args.knn,
        "k_dim": args.k_dim,
        "v_dim": v_dim,
        "rows": [],
    }
    torch.manual_seed(0)
    layer = MemoryPlus(args.d_model, 0, local_cfg)
    for tokens in args.tokens:
        seconds = step_seconds(layer, tokens, args)
        result["rows"].append(
            {
                "layout": "local",
                "world_size": 1,
                "tokens": tokens,
                "step_ms": round(seconds * 1e3, 2),
                "comm_bytes_per_token": 0.0,
                "table_per_rank": f"{local_cfg.n_slots} x {v_dim}",
            }
        )
        print(result["rows"][-1], flush=True)
    del layer
    world = args.world_size
    for parallel, shape in (
        ("rows", f"{local_cfg.n_slots // world} x {v_dim}"),
        ("columns", f"{local_cfg.n_slots} x {v_dim // world}"),
    ):
        sent = comm_bytes_per_token(memory_config(args, parallel), args.d_model, world, element_bytes=4)
        for tokens, seconds in sharded_seconds(args, parallel).items():
            result["rows"].append(
                {
                    "layout": parallel,
                    "world_size": world,
                    "tokens": tokens,
                    "step_ms": round(seconds * 1e3, 2),
                    "comm_bytes_per_token": sent["forward"] + sent["backward"],
                    "table_per_rank": shape,
                }
            )
            print(result["rows"][-1], flush=True)
    write_bench_results(args.out or Path("results/bench_sharded_memory.json"), result, markdown(result))
    print(markdown(result))
    return result


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def memory_main(args) -> dict:
    """``--memory``: check every size first, then measure."""
    for log2 in args.log2_slots:
        if log2 % 2 or log2 < 2:
            raise ValueError(f"--log2-slots value {log2} must be even and >= 2 (N = n_keys^2 with n_keys = 2^(value/2))")
        sized = argparse.Namespace(**{**vars(args), "n_keys": 2 ** (log2 // 2)})
        for parallel in ("rows", "columns"):
            memory_config(sized, parallel).validate(args.d_model)
            memory_config(sized, parallel).check_world_size(args.d_model, args.world_size)
    result = {
        "machine": machine(),
        "torch": torch.__version__,
        "v_dim": args.d_model,
        "heads": args.heads,
        "knn": args.knn,
        "k_dim": args.k_dim,
        "rows": memory_rows(args),
    }
    table = memory_markdown(result)
    write_bench_results(args.out or Path("results/bench_sharded_memory_rss.json"), result, table)
    print(table)
    return result


if __name__ == "__main__":
    main()
