"""Optional mamba-ssm / causal-conv1d CUDA kernels, looked up lazily and never required.

Importing memzoo never imports mamba-ssm; the first CUDA forward of a mixer looks the kernels up
(once per process), and without them the mixer runs memzoo's own PyTorch path (same numbers).
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
