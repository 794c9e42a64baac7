"""Will a run fit in memory? A coarse estimate of what training takes, from the config alone (nothing
is built or allocated: layers are counted on the meta device, the memory table and the data from
their sizes), checked against the machine before any data, model or file is made.

The estimate, per process (each DDP rank holds its own replica and generates the same data):

- layers, and embedding + LM head: 16 bytes per parameter (float32 weight, gradient, AdamW's two
  moments); the parameters of one layer of each mixer / channel are counted exactly
  (``ModelConfig.layer_parameters``), times the layers that use it;
- the memory value table: N * v_dim in ``memory.value_dtype``, its optimizer state (RowAdam: a
  float32 first moment, a float32 second moment per element or per row; dense updates: AdamW's two
  moments and a dense gradient), and the gradient rows one batch touches; 1 / world size of it per
  rank with ``memory.parallel`` rows / columns;
- activations: ``ACTIVATION_WIDTHS`` float32 vectors of width d_model per token and layer kept for
  the backward (a Transformer block keeps about 14: two norm inputs, q, k, v, the attention output,
  SwiGLU's three 8/3-wide projections), for one batch of the longest split's length;
- logits: ``LOGIT_COPIES`` float32 (batch, seq_len, vocab) tensors (logits, log-softmax, gradient);
- the dataset: what the task says its splits and their generation take (``data_bytes``).

It is meant to refuse what cannot fit (10^10 memory slots, d_model 10^7), not to predict peak
memory: it can be off by a factor of two either way. ``size_check=false`` skips it.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.core.value_checks import is_int
from zoo.memory import MemoryConfig
from zoo.mixers import MIXERS
from zoo.model.language_model import LanguageModel, ModelConfig

GiB = 2**30
FLOAT_BYTES = 4
TOKEN_BYTES = 8  # int64 token ids
DENSE_BYTES_PER_PARAMETER = 4 * FLOAT_BYTES  # weight, gradient, AdamW exp_avg and exp_avg_sq, float32
ACTIVATION_WIDTHS = 16
LOGIT_COPIES = 3
CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")  # cgroup v2: a container's memory limit
GPU_ACCELERATORS = ("gpu", "cuda", "auto")
REFERENCE_VOCAB = 128  # what a model's vocabulary is compared with when naming the key that makes it too large


@dataclass(frozen=True)
class Part:
    """One contributor to a run's memory: bytes per process, the config keys that set its size, and
    whether a GPU run holds it in device memory (the dataset stays in host memory)."""

    name: str
    bytes: int
    keys: str
    on_device: bool = True


@dataclass(frozen=True)
class Budget:
    """Bytes a run may use: host memory, and device memory (one device) for a GPU run, else None."""

    host_bytes: int
    host_source: str
    device_bytes: int | None = None
    device_source: str = ""


@dataclass(frozen=True)
class Drivers:
    """The integer config keys that set a run's size, to name the one that makes it too large.

    values: key -> its value; references: key -> the value it is compared with (its default; None
    where the default is derived, e.g. ``mlp.hidden_dim``); recount: the parts with one key set to
    its reference (may raise ``ValueError`` when that makes no valid config: the key is skipped)."""

    values: dict[str, Any]
    references: dict[str, Any]
    recount: Callable[[str, Any], list[Part]]

    def driving(self, measure: Callable[[list[Part]], int]) -> str | None:
        """The key whose value set to its reference lowers ``measure`` of the parts most (None when
        none lowers it): the largest term's own key, whatever part it sits in."""
        best, lowest = None, None
        for key, reference in self.references.items():
            try:
                need = measure(self.recount(key, reference))
            except (ValueError, TypeError, ZeroDivisionError):
                continue
            if lowest is None or need < lowest:
                best, lowest = key, need
        return best


def integer_options(options: Mapping[str, Any], references: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``options`` holding an integer above their reference (or any integer where the
    reference is None) -> that reference: the candidates ``Drivers`` tries."""
    found = {}
    for key, value in options.items():
        reference = references.get(key, value)
        if is_int(value) and (reference is None or is_int(reference) and value > reference):
            found[key] = reference
    return found


def model_size_keys(config: ModelConfig, with_backbone: bool = True) -> dict[str, Any]:
    """The size-setting integer fields of ``config`` above their defaults (``Drivers.references``),
    named by their path in ``ModelConfig`` (``d_model``, ``mlp.hidden_dim``,
    ``mixer.mamba2.d_state``, ``memory.heads``, ``vocab_size``); ``with_backbone=False``: the
    memory's only (the backbone is fixed, e.g. imported)."""
    keys = {}
    if with_backbone:
        defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
        keys.update(integer_options({"d_model": config.d_model, "n_layers": config.n_layers}, defaults))
        keys.update(integer_options({"vocab_size": config.vocab_size}, {"vocab_size": REFERENCE_VOCAB}))
        keys.update({f"mlp.{k}": v for k, v in integer_options(config.mlp, {"hidden_dim": None}).items()})
        for name, options in config.mixer.items():
            if name in MIXERS:
                signature = inspect.signature(MIXERS[name]).parameters
                defaults = {k: p.default for k, p in signature.items() if p.default is not inspect.Parameter.empty}
                keys.update({f"mixer.{name}.{k}": v for k, v in integer_options(options, defaults).items()})
    if config.memory is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(MemoryConfig)}
        values = dataclasses.asdict(config.memory)
        keys.update({f"memory.{k}": v for k, v in integer_options(values, defaults).items()})
    return keys


def model_key_value(config: ModelConfig, key: str) -> Any:
    """The value at ``key`` (a ``model_size_keys`` path) of ``config``."""
    head, _, rest = key.partition(".")
    if head == "memory":
        return getattr(config.memory, rest)
    if head == "mlp":
        return config.mlp.get(rest)
    if head == "mixer":
        name, _, option = rest.partition(".")
        return config.mixer[name].get(option)
    return getattr(config, key)


def with_model_key(config: ModelConfig, key: str, value: Any) -> ModelConfig:
    """``config`` with the field at ``key`` (a ``model_size_keys`` path) set to ``value``."""
    head, _, rest = key.partition(".")
    if head == "memory":
        return dataclasses.replace(config, memory=dataclasses.replace(config.memory, **{rest: value}))
    if head == "mlp":
        return dataclasses.replace(config, mlp={**config.mlp, rest: value})
    if head == "mixer":
        name, _, option = rest.partition(".")
        return dataclasses.replace(config, mixer={**config.mixer, name: {**config.mixer[name], option: value}})
    return dataclasses.replace(config, **{key: value})


def host_memory() -> tuple[int, str]:
    """(bytes, what they are): physical memory (``os.sysconf``), or a smaller cgroup v2 limit."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = CGROUP_LIMIT.read_text().strip()
    except OSError:
        limit = "max"
    if limit.isdigit() and int(limit) < physical:
        return int(limit), f"this container's memory limit ({CGROUP_LIMIT})"
    return physical, "this machine's physical memory"


def machine_budget(accelerator: Any = "cpu") -> Budget:
    """The memory of this machine, and of its smallest visible CUDA device when ``accelerator`` is
    gpu / cuda / auto and CUDA is available."""
    host, source = host_memory()
    if str(accelerator) in GPU_ACCELERATORS and torch.cuda.is_available():
        device = min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        return Budget(host, source, device, f"the memory of one CUDA device ({torch.cuda.get_device_name(0)})")
    return Budget(host, source)


def processes(devices: Any) -> int:
    """Training processes on this machine: ``trainer.devices`` when a count or a list, else 1."""
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """The model's parameters from its config alone, as ``build_model(config).num_parameters()``
    counts them: ``layers`` (mixers, MLP and memory layers but the value table, their norms),
    ``embedding`` (embedding, untied LM head, final norm) and ``memory_values`` (the value table(s)).
    One layer of each mixer and the MLP are counted on the meta device. ``config`` must be valid."""
    d = config.d_model
    per_layer = config.layer_parameters()
    mixers, channels = config.layer_counts()
    layers = sum((per_layer[name] + d) * n for name, n in mixers.items())  # + the mixer's RMSNorm
    layers += (per_layer["mlp"] + d) * channels["mlp"] if channels["mlp"] else 0
    counts = {"layers": layers, "embedding": config.vocab_size * d * (1 if config.tie_embeddings else 2) + d, "memory_values": 0}
    memory = config.memory
    if memory is not None:
        table, other = memory.parameter_counts(d)
        counts["layers"] += len(memory.layers) * (other + d)
        counts["memory_values"] = table * (1 if memory.shared else len(memory.layers))
    return counts


def model_parts(config: ModelConfig, batch_size: int, seq_len: int, world: int = 1) -> list[Part]:
    """The model's parts of a training process's memory: weights and optimizer state, the memory
    table, activations and logits of one batch of ``seq_len`` tokens. ``config`` must be valid."""
    d = config.d_model
    counts = parameter_counts(config)
    parts = [
        Part(
            "layers' weights, gradients and AdamW moments",
            DENSE_BYTES_PER_PARAMETER * counts["layers"],
            "backbone.d_model / backbone.n_layers",
        ),
        Part(
            "embedding and LM head (weights, gradients, AdamW moments)",
            DENSE_BYTES_PER_PARAMETER * counts["embedding"],
            "task.vocab_size / backbone.d_model",
        ),
    ]
    tokens = batch_size * seq_len
    memory = config.memory
    if memory is not None:
        n_memory, rows, v_dim = len(memory.layers), memory.n_slots, memory.resolved_v_dim(d)
        table = rows * v_dim
        value_bytes = torch.finfo(getattr(torch, memory.value_dtype)).bits // 8
        if memory.sparse_updates:  # RowAdam's float32 moments; each layer's gradient rows (and their workspace)
            per_table = value_bytes * table + FLOAT_BYTES * (table + (rows if memory.second_moment == "row" else table))
            gradients = 2 * FLOAT_BYTES * n_memory * min(rows, tokens * memory.heads * memory.knn) * v_dim
        else:  # AdamW's two moments and a dense gradient
            per_table, gradients = (value_bytes + 3 * FLOAT_BYTES) * table, 0
        tables = 1 if memory.shared else n_memory
        shard = world if memory.parallel != "none" else 1
        parts.append(
            Part(
                "memory value table (values, optimizer state, gradient rows)",
                (tables * per_table + gradients) // shard,
                "memory.n_keys",
            )
        )
    parts.append(
        Part(
            f"activations ({ACTIVATION_WIDTHS} x d_model floats per token and layer)",
            FLOAT_BYTES * ACTIVATION_WIDTHS * tokens * d * config.n_layers,
            "task.batch_size / task.seq_len / backbone.n_layers",
        )
    )
    parts.append(
        Part(
            "logits", FLOAT_BYTES * LOGIT_COPIES * tokens * config.vocab_size, "task.batch_size / task.seq_len / task.vocab_size"
        )
    )
    return parts


def run_parts(config: ModelConfig, datamodule, slices: Sequence = (), world: int = 1) -> list[Part]:
    """Every part of one training process's memory: ``model_parts`` for the datamodule's batch size
    and longest split, and the data of the task's splits and of each test slice."""
    parts = model_parts(config, datamodule.batch_size, datamodule.max_seq_len, world)
    data = datamodule.data_bytes() + sum(s.data_bytes(["test"]) for s in slices)
    return [*parts, Part("dataset (generated splits)", data, datamodule.size_keys, on_device=False)]


def _gib(n: float) -> str:
    gib = n / GiB
    return f"{gib:,.0f} GiB" if gib >= 100 else f"{gib:.3g} GiB"


def check_size_budget(
    parts: Sequence[Part], budget: Budget, world: int = 1, drivers: Drivers | None = None, subject: str = "this run"
) -> None:
    """``ValueError`` when the parts exceed the budget: host memory (every part of ``world``
    processes on a CPU run; their datasets on a GPU run) and device memory (one process's other
    parts). The message gives the estimate, the budget, the largest part and the key to lower: the
    one of ``drivers`` whose value drives the excess, else the keys that set the largest part."""
    on_gpu = budget.device_bytes is not None
    checks = [(lambda p: not (on_gpu and p.on_device), world, budget.host_bytes, budget.host_source)]
    if on_gpu:
        checks.append((lambda p: p.on_device, 1, budget.device_bytes, budget.device_source))
    for holds, copies, have, source in checks:

        def measure(parts: list[Part], holds=holds, copies=copies) -> int:
            return copies * sum(p.bytes for p in parts if holds(p))

        need = measure(parts)
        if need <= have:
            continue
        counted = sorted((p for p in parts if holds(p)), key=lambda p: -p.bytes)
        breakdown = ", ".join(f"{p.name} {_gib(p.bytes)}" for p in counted)
        breakdown = f" for {copies} processes (each: {breakdown})" if copies > 1 else f" ({breakdown})"
        key = drivers.driving(measure) if drivers is not None else None
        lower = counted[0].keys if key is None else f"{key} (now {drivers.values[key]})"
        raise ValueError(
            f"size check: {subject} needs about {_gib(need)}{breakdown}, more than the {_gib(have)} of "
            f"{source}; the largest part is the {counted[0].name}: lower {lower} "
            "(a coarse estimate, see zoo/model/size_budget.py; size_check=false skips this check)"
        )


def weight_parts(config: ModelConfig) -> list[Part]:
    """The memory a model's weights take once built (float32 weights, the value table in its dtype):
    what reading a model directory allocates before any gradient or optimizer state."""
    counts = parameter_counts(config)
    memory = config.memory
    value_bytes = FLOAT_BYTES if memory is None else torch.finfo(getattr(torch, memory.value_dtype)).bits // 8
    parts = [
        Part("layers' weights", FLOAT_BYTES * counts["layers"], "d_model / n_layers"),
        Part("embedding and LM head", FLOAT_BYTES * counts["embedding"], "vocab_size / d_model"),
        Part("memory value table", value_bytes * counts["memory_values"], "memory.n_keys"),
    ]
    return [part for part in parts if part.bytes]


def check_model_size(
    config: ModelConfig, where: str, names: Callable[[str], str], budget: Budget | None = None, with_backbone: bool = True
) -> None:
    """``ValueError`` led by ``where`` (the file the config came from) when the weights of the model
    ``config`` describes would not fit ``budget`` (None: this machine's memory), before anything is
    built; it names, through ``names`` (a ``model_size_keys`` path -> the file's own key), the key
    whose value drives the excess. Counts without listing the layers, so any size is refused at once."""
    keys = model_size_keys(config, with_backbone)
    values = {names(key): model_key_value(config, key) for key in keys}
    references = {names(key): reference for key, reference in keys.items()}
    paths = {names(key): key for key in keys}
    drivers = Drivers(values, references, lambda key, value: weight_parts(with_model_key(config, paths[key], value)))
    try:
        check_size_budget(weight_parts(config), budget or Budget(*host_memory()), drivers=drivers, subject="its model")
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def generation_bytes(model: LanguageModel, batch: int, length: int) -> tuple[int, int]:
    """(output token ids, inference caches) in bytes for generating ``batch`` sequences of ``length``
    tokens: the ids as the new-token list and the concatenated output (int64 twice), and every
    mixer's cache (``state_size``: a KV cache grows with the length, a recurrent state does not)."""
    ids = 2 * TOKEN_BYTES * batch * length
    return ids, batch * sum(block.mixer.state_size(length) for block in model.blocks)


def check_generation_size(
    model: LanguageModel, batch: int, prompt_len: int, max_new_tokens: int, budget_bytes: int | None = None
) -> None:
    """``ValueError`` naming ``max_new_tokens`` when the output ids and caches of a generation exceed
    ``budget_bytes`` (None: the memory of the model's device, or of this machine), before any is
    allocated."""
    if budget_bytes is None:
        weight = next(model.parameters())
        if weight.is_cuda:
            budget_bytes, source = torch.cuda.get_device_properties(weight.device).total_memory, "its CUDA device's memory"
        else:
            budget_bytes, source = host_memory()
    else:
        source = "the given budget"
    length = prompt_len + max_new_tokens
    ids = 2 * TOKEN_BYTES * batch * length
    caches = 0
    if ids <= budget_bytes:  # a mixer may refuse a length (hyena: l_max) on its own; the size comes first
        ids, caches = generation_bytes(model, batch, length)
    if ids + caches > budget_bytes:
        raise ValueError(
            f"max_new_tokens={max_new_tokens}: {batch} sequence(s) of {prompt_len} + {max_new_tokens} tokens need about "
            f"{_gib(ids + caches)} (token ids {_gib(ids)}, inference caches {_gib(caches)}), more than the "
            f"{_gib(budget_bytes)} of {source}; lower max_new_tokens or the batch"
        )
