"""The memory's op set, one module per backend with the same signatures (as flash-linear-attention's
``ops/<algo>/{naive,chunk}.py``): ``reference`` (PyTorch: the oracle the others are tested against,
serving any op a backend lacks), ``cpu`` (memzoo's C++ kernels), ``triton`` (CUDA). Ops: ``read``,
``read_backward``, ``top_pairs``, ``rank_pairs``, ``selected_scores_backward``, ``row_adam``,
``squared_norm``, ``as_coalesced``; ``FUSED_READ``: whether ``zoo.memory.fused_read`` serves."""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from zoo.memory.ops import cpu, reference


def memory_ops(device: torch.device | str, dtype: torch.dtype) -> ModuleType:
    """The backend for ``dtype`` tensors on ``device``: ``triton`` for CUDA float32 / bfloat16 / float16 (row
    Adam only) when Triton imports, ``cpu`` for CPU float32 / float64 unless ``MEMZOO_CPU_KERNELS=0``
    or the build fails, else ``reference``; chosen once per (device type, dtype, that variable)."""
    return _choose(torch.device(device).type, dtype, cpu.setting())


@functools.cache
def _choose(device_type: str, dtype: torch.dtype, setting: str) -> ModuleType:
    if device_type == "cuda":
        from zoo.memory.ops import triton  # importing it never imports Triton; CPU runs need neither

        if dtype in triton.DTYPES and triton.available():
            return triton
    if device_type == "cpu" and dtype in cpu.DTYPES and setting != "0" and cpu.built():
        return cpu
    return reference
