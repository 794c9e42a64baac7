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


def _cached(module: str, name: str) -> Callable[[], Callable | None]:
    """A lookup of ``module.name`` made once per process, on first call: the kernel, or None."""
    return functools.cache(lambda: _optional(module, name))


mamba_selective_scan = _cached("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")  # Mamba
mamba_chunk_scan = _cached("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")  # Mamba-2
causal_conv1d = _cached("causal_conv1d", "causal_conv1d_fn")
fla_chunk_gla = _cached("fla.ops.gla", "chunk_gla")  # gated linear attention
fla_chunk_gated_delta_rule = _cached("fla.ops.gated_delta_rule", "chunk_gated_delta_rule")  # Gated DeltaNet
fla_parallel_based = _cached("fla.ops.based", "parallel_based")  # BASED's Taylor linear attention
