"""Optional CUDA kernels (mamba-ssm, causal-conv1d, flash-linear-attention), looked up lazily and
never required.

Importing memzoo never imports them; the first CUDA forward of a mixer looks the kernels up (once
per process), and without them the mixer runs memzoo's own PyTorch path (same numbers).
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable


def _optional(module: str, name: str) -> Callable | None:
    """``module.name``, or None when the import fails for any reason (missing package, a build
    without its CUDA extension, a Triton that does not load)."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:
        return None


@functools.cache
def mamba_selective_scan() -> Callable | None:
    """mamba-ssm's ``selective_scan_fn`` (Mamba), or None."""
    return _optional("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")


@functools.cache
def mamba_chunk_scan() -> Callable | None:
    """mamba-ssm's ``mamba_chunk_scan_combined`` (Mamba-2), or None."""
    return _optional("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")


@functools.cache
def causal_conv1d() -> Callable | None:
    """causal-conv1d's ``causal_conv1d_fn``, or None."""
    return _optional("causal_conv1d", "causal_conv1d_fn")


@functools.cache
def fla_chunk_gla() -> Callable | None:
    """flash-linear-attention's ``chunk_gla`` (gated linear attention), or None."""
    return _optional("fla.ops.gla", "chunk_gla")


@functools.cache
def fla_chunk_gated_delta_rule() -> Callable | None:
    """flash-linear-attention's ``chunk_gated_delta_rule`` (Gated DeltaNet), or None."""
    return _optional("fla.ops.gated_delta_rule", "chunk_gated_delta_rule")


@functools.cache
def fla_parallel_based() -> Callable | None:
    """flash-linear-attention's ``parallel_based`` (BASED's Taylor linear attention), or None."""
    return _optional("fla.ops.based", "parallel_based")
