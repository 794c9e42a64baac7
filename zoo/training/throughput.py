"""How fast a run trains relative to its hardware, as a Lightning callback: tokens/s, step time,
model FLOPs utilization (MFU) and peak memory of the training steps.

MFU = training FLOPs per token x tokens/s per device / peak FLOP/s of one device. Training FLOPs
are 3x the model's forward count (the backward pass costs twice the forward: the PaLM / nanoGPT
convention), from what each layer declares (``zoo.model.flops``), with the LM head counted at the scored
positions only, where training computes logits; FLOPs per token are their mean over the fit's tokens. The peak is
``throughput.peak_flops`` when given, else measured: a square matmul on the run's device in its
compute dtype (Lightning's table of theoretical peaks lists some chips with structured sparsity,
e.g. H100 bf16 at 1979 TFLOP/s, twice its dense rate, so it is not used). Lightning's
``Throughput`` keeps the rolling window; validation time is not training time.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from zoo.core.timing import median_seconds
from zoo.core.value_checks import check_int, check_real
from zoo.model.flops import forward_flops_per_token, head_flops_per_token
from zoo.tasks.base import IGNORE_INDEX

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (twice the forward: gradients of inputs and of weights)
PRECISION_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}  # by the prefix of trainer.precision
CLEAR_REFS = Path("/proc/self/clear_refs")  # Linux: writing 5 resets the process's peak RSS (VmHWM)


@dataclass
class ThroughputConfig:
    """The ``throughput`` config group (``throughput=default``) is this dataclass. peak_flops: FLOP/s
    of one device for MFU, e.g. 989e12 (H100 SXM, dense bf16); None = measured (a matmul on the
    run's device). window: training steps in the rolling values logged every ``log_every_n_steps``."""

    peak_flops: float | None = None
    window: int = 20

    def __post_init__(self):
        """Ranges (the types are ``zoo.core.dataclass_config.typed``'s)."""
        check_real("throughput.peak_flops", self.peak_flops, low=0, low_open=True, null="measured: a matmul on the run's device")
        check_int("throughput.window", self.window, low=2)


def compute_dtype(precision: str) -> torch.dtype:
    """Lightning's ``trainer.precision`` ("32-true", "bf16-mixed", ...) -> the dtype matmuls run in."""
    return PRECISION_DTYPES.get(str(precision).split("-")[0], torch.float32)


@functools.lru_cache(maxsize=None)
def measured_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n x n matmul (n = 8192 on CUDA, 1024 elsewhere), median of timed repeats."""
    n, steps = (8192, 10) if device.type == "cuda" else (1024, 5)
    generator = torch.Generator(device).manual_seed(0)  # leaves the global RNG (training's) untouched
    a, b = (torch.randn(n, n, device=device, generator=generator).to(dtype) for _ in range(2))

    def step() -> None:
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return 2 * n**3 / median_seconds(step, steps=steps, warmup=2)


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak: CUDA's allocator statistics, or the process's peak RSS where Linux allows
    (False when it does not, and the peak then counts from the process's start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_memory(device: torch.device, since_reset: bool) -> tuple[int, str]:
    """(bytes, what they are): CUDA max allocated, or the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    if since_reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "process peak RSS (VmHWM) during training"
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return int(max_rss if sys.platform == "darwin" else max_rss * 1024), "process peak RSS since the process started"


class RunThroughput(Callback):
    """Training speed of a fit. Every ``log_every_n_steps`` steps, over the last ``window`` steps:
    ``train/tokens_per_s`` (all ranks), ``train/step_time_s`` and ``train/mfu``; at the end of
    training, over the whole fit: ``fit/tokens_per_s``, ``fit/step_time_s``, ``fit/mfu``,
    ``fit/peak_flops`` and ``fit/peak_memory_bytes``, also returned by ``summary()``.

    Args:
        seq_len: the training sequence length (attention's FLOPs per token depend on it).
        config: the ``throughput`` settings.
    """

    def __init__(self, seq_len: int, config: ThroughputConfig):
        self.seq_len = seq_len
        self.config = config
        self.forward_flops_per_token = self.head_flops_per_token = 0
        self.peak_flops: float | None = None
        self.peak_source = ""
        self._result: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.peak_flops is not None:
            return
        self.forward_flops_per_token = forward_flops_per_token(pl_module.model, self.seq_len)
        self.head_flops_per_token = head_flops_per_token(pl_module.model)
        if self.config.peak_flops is not None:
            self.peak_flops, self.peak_source = float(self.config.peak_flops), "throughput.peak_flops"
        else:
            device, dtype = trainer.strategy.root_device, compute_dtype(trainer.precision)
            self.peak_flops = measured_peak_flops(device, dtype)
            self.peak_source = f"measured: matmul on {device.type}, {str(dtype).removeprefix('torch.')}"

    def _now(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # time the work, not its launch
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = trainer.strategy.root_device
        self._memory_reset = reset_peak_memory(device)
        window = max(2, min(self.config.window, trainer.max_steps))
        self._throughput = Throughput(available_flops=self.peak_flops, world_size=trainer.world_size, window_size=window)
        self._batches = self._samples = self._tokens = self._flops = 0
        self._paused = 0.0
        self._started = self._now(device)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_started = self._now(trainer.strategy.root_device)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:  # validation inside the fit
            self._paused += self._now(trainer.strategy.root_device) - self._validation_started

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        elapsed = self._now(trainer.strategy.root_device) - self._started - self._paused
        inputs = batch["inputs"]
        scored = int((batch["targets"] != IGNORE_INDEX).sum())
        self._batches += 1
        self._samples += inputs.shape[0]
        self._tokens += inputs.numel()
        batch_flops = TRAIN_FLOPS_PER_FORWARD * (
            inputs.numel() * (self.forward_flops_per_token - self.head_flops_per_token) + scored * self.head_flops_per_token
        )
        self._flops += batch_flops
        self._throughput.update(
            time=elapsed, batches=self._batches, samples=self._samples, lengths=self._tokens, flops=batch_flops
        )  # Lightning's Throughput takes each batch's own FLOPs
        if trainer.global_step % trainer.log_every_n_steps == 0:
            rolling = self._throughput.compute()
            if "device/items_per_sec" in rolling:  # the window is full
                values = {
                    "train/tokens_per_s": rolling["device/items_per_sec"] * trainer.world_size,
                    "train/step_time_s": 1.0 / rolling["device/batches_per_sec"],
                }
                if "device/mfu" in rolling:
                    values["train/mfu"] = rolling["device/mfu"]
                for logger in trainer.loggers:
                    logger.log_metrics(values, step=trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = trainer.strategy.root_device
        seconds = self._now(device) - self._started - self._paused
        memory, memory_source = peak_memory(device, self._memory_reset)
        per_device = self._tokens / seconds if self._batches else 0.0
        train_flops_per_token = self._flops / self._tokens if self._batches else 0.0
        self._result = {
            "tokens_per_s": per_device * trainer.world_size,
            "step_time_s": seconds / self._batches if self._batches else 0.0,
            "train_flops_per_token": train_flops_per_token,
            "train_tokens": self._tokens * trainer.world_size,  # this fit's (a resumed run counts from the resume)
            "train_flops": self._flops * trainer.world_size,
            "mfu": per_device * train_flops_per_token / self.peak_flops,
            "peak_flops": self.peak_flops,
            "peak_flops_source": self.peak_source,
            "peak_memory_bytes": memory,
            "peak_memory_source": memory_source,
            "steps_timed": self._batches,
        }
        logged = {
            f"fit/{k}": float(v)
            for k, v in self._result.items()
            if k in ("tokens_per_s", "step_time_s", "mfu", "peak_flops", "peak_memory_bytes")
        }
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)

    def summary(self) -> dict[str, Any]:
        """The whole fit's values (empty before training ends): for metrics.json."""
        return dict(self._result)
