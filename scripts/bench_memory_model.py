"""Whole-model training step: a memory model against the same model with its MLP, side by side in one
process, where the memory model's time goes (torch.profiler, by aten op), and what its value rows
cost in bytes moved.

Each comparison builds two ``LanguageModel``s that differ only in layer 1's channel: the SwiGLU MLP,
or a product-key memory+ layer (rows-only Adam on its values). A training step is what
``memzoo-train`` runs: forward, cross-entropy over every position, backward, gradient-norm clipping
at 1.0, the optimizer step (AdamW + RowAdam), zero_grad. The two models' steps are timed in
alternating rounds at the same thread count; the median step of each, after warm-up, gives the
ratio ``memory step / MLP step``, and each round's ratio of medians (steps timed seconds apart) gives
a paired one, its median and range over the rounds showing how much the machine moved. FLOPs per
token (``zoo.model.flops``) are listed beside: the memory layer is never more FLOPs than the MLP here.
A second table sets the memory model's extra milliseconds beside what moving its value rows costs at
the machine's copy speed (``row_traffic``): the part of that extra time that is bytes, not FLOPs.

Shapes (the issue's): d_model 64, 2 layers, memory at layer 1 with one head, k_dim 64, top-32 and
layer-normed queries (the capacity grid's memory), N = 2^10, 2^13, 2^16 slots, and the default
``memory=pkm`` (4 heads, top-8, 2^10 slots); batch 16 x 40 tokens (the facts task's capacity-grid
length); Transformer and Mamba-2.

    python scripts/bench_memory_model.py                       # one thread, writes results/bench_memory_model.{json,md}
    python scripts/bench_memory_model.py --threads 2 --out /tmp/two_threads.json
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.core.io import write_bench_results
from zoo.core.timing import copy_bandwidth, median, row_traffic_bytes
from zoo.memory import MemoryConfig
from zoo.memory.layer import MemoryPlus, memory_layers
from zoo.memory.optim import coalesced
from zoo.model.flops import forward_flops_per_token
from zoo.model.language_model import LanguageModel, build_model
from zoo.training.optim import build_optimizer, clip_grad_norm, param_groups

BACKBONES = {"transformer": "A", "mamba2": "S"}
CAPACITY_MEMORY = {"heads": 1, "knn": 32, "k_dim": 64, "query_norm": "layernorm"}
MEMORIES = {  # name -> MemoryConfig fields (layers=[1] added)
    "capacity 2^10": {**CAPACITY_MEMORY, "n_keys": 32},
    "capacity 2^13": {**CAPACITY_MEMORY, "n_keys": 91},  # 91^2 = 8281 ~ 2^13 (n_keys is an integer)
    "capacity 2^16": {**CAPACITY_MEMORY, "n_keys": 256},
    "memory=pkm (2^10)": {},
}
PROFILE_ROWS = 14
CLIP = "clip_grad_norm"
# the memory layer's forward stages, as profiler ranges put around its parts (``label_memory_stages``)
FORWARD = {
    "memory forward": "memory layer forward, all of it",
    "query": "forward: query projection",
}
READ = "forward: query and sub-key normalisation, sub-key scores, pair search, softmax weights, value rows (fused)"
REST = "forward: the rest (W1, silu, product, W2, usage counts)"
BACKWARD = {  # autograd nodes of the memory layer's own functions
    "_ProductKeyReadBackward": "backward: the fused read (rows per slot, weights, selected sub-key scores, normalisation)",
}


def make_model(backbone: str, d_model: int, vocab: int, memory: dict | None) -> LanguageModel:
    """The 2-layer ``backbone`` model with MLP channels, or with layer 1's MLP replaced by ``memory``."""
    config = {"name": backbone, "d_model": d_model, "n_layers": 2, "pattern": BACKBONES[backbone], "vocab_size": vocab}
    if backbone == "mamba2":
        config["mixer"] = {"mamba2": {"chunk_size": 16}}
    if memory is not None:
        config["memory"] = MemoryConfig(**memory, layers=[1])
    return build_model(config)


class TrainStep:
    """One training step of ``model`` on a fixed batch, as memzoo-train takes it; ``taken`` and
    ``clipped`` count the steps and those whose gradient norm exceeded ``MAX_NORM`` (only those pay
    the clipping's multiply on CPU)."""

    MAX_NORM = 1.0

    def __init__(self, model: LanguageModel, inputs: torch.Tensor, targets: torch.Tensor):
        self.model, self.inputs, self.targets = model, inputs, targets
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(param_groups(model, lr=1e-3, weight_decay=0.1))
        self.taken = self.clipped = 0

    def __call__(self) -> None:
        logits = self.model(self.inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), self.targets.flatten())
        loss.backward()
        with torch.profiler.record_function(CLIP):
            norm = clip_grad_norm(self.params, self.MAX_NORM)
        self.taken += 1
        self.clipped += bool(norm > self.MAX_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def alternating_rounds(steps: dict[str, TrainStep], rounds: int, per_round: int, warmup: int) -> dict[str, list]:
    """Seconds per step of each step function, timed in ``rounds`` alternating rounds of ``per_round``
    steps each (after ``warmup`` untimed steps each), so drifts of the machine hit all alike: for each
    name, one list of ``per_round`` times per round. The steps' counts start after the warm-up."""
    for step in steps.values():
        for _ in range(warmup):
            step()
        step.taken = step.clipped = 0
    times: dict[str, list[list[float]]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append([])
            for _ in range(per_round):
                start = time.perf_counter()
                step()
                times[name][-1].append(time.perf_counter() - start)
    return times


def round_ratios(times: dict[str, list], numerator: str, denominator: str) -> list[float]:
    """Per alternating round, the median step of ``numerator`` over that of ``denominator``: a ratio
    of steps timed seconds apart, which a slow spell of a shared machine moves less than the ratio
    of the whole run's medians."""
    return sorted(median(a) / median(b) for a, b in zip(times[numerator], times[denominator]))


def profile(step: TrainStep, steps: int) -> list[dict]:
    """The aten ops of ``steps`` training steps by self CPU time: name, calls, ms per step, share."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [
        {
            "op": e.key,
            "calls_per_step": round(e.count / steps, 1),
            "ms_per_step": round(e.self_cpu_time_total / steps / 1e3, 3),
            "share": round(e.self_cpu_time_total / total, 3),
        }
        for e in events[:PROFILE_ROWS]
    ]


def _in_range(name: str, fn):
    """``fn`` run inside a profiler range called ``name``."""

    @functools.wraps(fn)
    def ranged(*args, **kwargs):
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)

    return ranged


def label_memory_stages(model: LanguageModel) -> None:
    """Put profiler ranges around each memory layer's forward (``"memory forward"``), its read
    (``"read"``: the query, search, weights and value rows) and its query projection (``FORWARD``'s names). The
    layer's code is unchanged: its modules' bound methods are wrapped on these instances only."""
    for layer in model.modules():
        if isinstance(layer, MemoryPlus):
            layer.forward = _in_range("memory forward", layer.forward)
            layer.read = _in_range("read", layer.read)
            layer.keys.projected = _in_range("query", layer.keys.projected)


def stage_profile(step: TrainStep, steps: int) -> list[dict]:
    """Where a memory model's training step goes, by stage (ms per step, inclusive of what each
    stage calls): the memory layer's forward and its parts, the backward of its fused read,
    the whole backward, clipping, both optimizers, and the step itself."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    label_memory_stages(step.model)
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with torch.profiler.record_function("step"):
                step()
    node = "autograd::engine::evaluate_function: "  # one range per autograd node run (its own, unprefixed, sits inside)
    totals = {event.key: event.cpu_time_total / steps / 1e3 for event in prof.key_averages()}
    backward = sum(ms for key, ms in totals.items() if key.startswith(node))
    stages = {label: totals.get(key, 0.0) for key, label in FORWARD.items()}
    stages[READ] = totals.get("read", 0.0) - totals.get("query", 0.0)
    stages[REST] = totals.get("memory forward", 0.0) - totals.get("read", 0.0)
    stages.update({label: totals.get(node + key, 0.0) for key, label in BACKWARD.items()})
    stages["backward of the whole model (every autograd node)"] = backward
    stages["gradient clipping (norm over all, sparse rows coalesced)"] = totals.get(CLIP, 0.0)
    stages["optimizer: AdamW on the dense parameters"] = totals.get("Optimizer.step#AdamW.step", 0.0)
    stages["optimizer: rows-only Adam on the value rows"] = totals.get("Optimizer.step#RowAdam.step", 0.0)
    stages["the whole training step"] = totals.get("step", 0.0)
    return [{"stage": label, "ms_per_step": round(ms, 3)} for label, ms in stages.items()]


def row_traffic(step: TrainStep) -> dict:
    """What the memory model's value rows cost in bytes, beside its extra time: the distinct rows one
    step's gradient touches (one more, untimed, forward and backward), the least bytes a step moves
    for them (``row_traffic_bytes``), the copy speed at the run's thread count over a buffer as large
    as the table and its two Adam moments (so from the cache level or memory that holds them), and
    that traffic's time at that speed."""
    (layer,) = memory_layers(step.model).values()
    table = layer.values.weight
    F.cross_entropy(step.model(step.inputs).flatten(0, 1), step.targets.flatten()).backward()
    touched = coalesced(table.grad)._nnz()
    step.optimizer.zero_grad(set_to_none=True)
    reads = step.inputs.numel() * layer.config.heads * layer.config.knn
    traffic = row_traffic_bytes(reads, touched, table.shape[1], table.element_size())
    state_bytes = table.numel() * (table.element_size() + 2 * 4)  # values, and m and v in float32 (as counted above)
    copy_bps = copy_bandwidth(table.device, state_bytes // 2, steps=50)  # the copy's two buffers: state_bytes
    return {
        "touched_rows": touched,
        "row_traffic_mib": round(traffic / 2**20, 2),
        "copy_gibs": round(copy_bps / 2**30, 1),
        "row_traffic_ms": round(traffic / copy_bps * 1e3, 3),
    }


def compare(backbone: str, memory_name: str, args) -> dict:
    """One row: the MLP model and the memory model of ``backbone`` timed side by side."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen)
    targets = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen)
    models = {
        "mlp": make_model(backbone, args.d_model, args.vocab, None),
        "memory": make_model(backbone, args.d_model, args.vocab, MEMORIES[memory_name]),
    }
    steps = {name: TrainStep(model, inputs, targets) for name, model in models.items()}
    times = alternating_rounds(steps, args.rounds, args.steps, args.warmup)
    seconds = {name: median([t for one_round in rounds for t in one_round]) for name, rounds in times.items()}
    paired = round_ratios(times, "memory", "mlp")
    flops = {name: forward_flops_per_token(model, args.seq_len) for name, model in models.items()}
    row = {
        "backbone": backbone,
        "memory": memory_name,
        "n_slots": models["memory"].config.memory.n_slots,
        "mlp_ms": round(seconds["mlp"] * 1e3, 3),
        "memory_ms": round(seconds["memory"] * 1e3, 3),
        "ratio": round(seconds["memory"] / seconds["mlp"], 3),
        "round_ratio_median": round(median(paired), 3),
        "round_ratio_min": round(paired[0], 3),
        "round_ratio_max": round(paired[-1], 3),
        "mlp_flops_per_token": flops["mlp"],
        "memory_flops_per_token": flops["memory"],
        "timed_steps": steps["memory"].taken,
        "mlp_steps_clipped": steps["mlp"].clipped,
        "memory_steps_clipped": steps["memory"].clipped,
        "extra_ms": round((seconds["memory"] - seconds["mlp"]) * 1e3, 3),
        **row_traffic(steps["memory"]),
    }
    if args.profile and memory_name == args.profile:
        row["profile_memory"] = profile(steps["memory"], args.profile_steps)
        row["profile_mlp"] = profile(steps["mlp"], args.profile_steps)
        row["stages_memory"] = stage_profile(steps["memory"], args.profile_steps)
    return row


def markdown(result: dict) -> str:
    lines = [
        f"{result['machine']}, torch {result['torch']}, {result['threads']} thread(s); batch {result['batch']} x "
        f"{result['seq_len']} tokens, d_model {result['d_model']}, 2 layers, memory at layer 1; median step of "
        f"{result['rounds']} x {result['steps']} alternating steps after {result['warmup']} warm-up",
        "",
        "memory / MLP: the ratio of the two medians; per round: the median over rounds of each round's ratio "
        "of medians (steps timed seconds apart), and the least and greatest round; clipped: the timed steps whose "
        f"gradient norm exceeded {TrainStep.MAX_NORM:g} (MLP / memory model), the only ones that pay the clipping's multiply",
        "",
        "| backbone | memory | N slots | MLP model ms | memory model ms | memory / MLP | per round: median (min-max) "
        "| kFLOP/token MLP | kFLOP/token memory | clipped |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['backbone']} | {r['memory']} | {r['n_slots']} | {r['mlp_ms']:.2f} | {r['memory_ms']:.2f} | "
            f"{r['ratio']:.3f} | {r['round_ratio_median']:.3f} ({r['round_ratio_min']:.3f}-{r['round_ratio_max']:.3f}) | "
            f"{r['mlp_flops_per_token'] / 1e3:.1f} | {r['memory_flops_per_token'] / 1e3:.1f} | "
            f"{r['mlp_steps_clipped']} / {r['memory_steps_clipped']} of {r['timed_steps']} |"
        )
    lines += [
        "",
        "Value rows: distinct rows one step touches; the least bytes a step moves for them (each row read "
        "forward and backward, the rows' gradient written, Adam reading it and reading + writing values, m, v); "
        f"the copy speed at {result['threads']} thread(s) over a buffer as large as the table and its moments; that "
        "traffic's time at that speed, beside the memory model's extra time per step",
        "",
        "| backbone | memory | rows touched / step | row traffic MiB | copy GiB/s | traffic at copy speed ms | memory - MLP ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['backbone']} | {r['memory']} | {r['touched_rows']} | {r['row_traffic_mib']:.1f} | {r['copy_gibs']:.1f} | "
            f"{r['row_traffic_ms']:.2f} | {r['extra_ms']:.2f} |"
            for r in result["rows"]
        ),
    ]
    for r in result["rows"]:
        if r.get("stages_memory"):
            lines += [
                "",
                f"Stages: {r['backbone']} + {r['memory']}, ms per step inclusive of what each stage calls "
                "(torch.profiler ranges; the profiler's own overhead included)",
                "",
                "| stage | ms / step |",
                "| --- | ---: |",
                *(f"| {s['stage']} | {s['ms_per_step']:.3f} |" for s in r["stages_memory"]),
            ]
        for model in ("memory", "mlp"):
            table = r.get(f"profile_{model}")
            if not table:
                continue
            lines += [
                "",
                f"Profile: {r['backbone']} {'+ ' + r['memory'] if model == 'memory' else 'with its MLP'}, "
                f"ops by self CPU time per step (torch.profiler; the profiler's own overhead included)",
                "",
                "| op | calls / step | ms / step | share |",
                "| --- | ---: | ---: | ---: |",
                *(f"| `{p['op']}` | {p['calls_per_step']:g} | {p['ms_per_step']:.3f} | {p['share']:.1%} |" for p in table),
            ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=40)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=["transformer", "mamba2"])
    parser.add_argument("--memories", nargs="+", choices=list(MEMORIES), default=list(MEMORIES))
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (each model in each)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile", choices=list(MEMORIES), default="capacity 2^16", help="the memory whose steps are profiled")
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/bench_memory_model.json"))
    args = parser.parse_args(argv)
    for name in ("threads", "batch", "seq_len", "d_model", "vocab", "rounds", "steps", "profile_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    torch.set_num_threads(args.threads)
    result = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "d_model": args.d_model,
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": [],
    }
    for backbone in args.backbones:
        for memory in args.memories:
            result["rows"].append(compare(backbone, memory, args))
            r = result["rows"][-1]
            print(
                f"{backbone} {memory}: MLP {r['mlp_ms']:.2f} ms, memory {r['memory_ms']:.2f} ms, x{r['ratio']:.3f} "
                f"(per round x{r['round_ratio_median']:.3f}, {r['round_ratio_min']:.3f}-{r['round_ratio_max']:.3f})",
                flush=True,
            )
    write_bench_results(args.out, result, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
