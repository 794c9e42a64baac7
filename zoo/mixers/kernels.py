"""Optional mamba-ssm / causal-conv1d CUDA kernels, looked up lazily and never required.

Importing memzoo never imports mamba-ssm; a mixer asks once, at its first CUDA forward, whether
the kernels can be used, and otherwise runs memzoo's own PyTorch path (same numbers).
"""

from __future__ import annotations

import functools
from typing import Callable


@functools.cache
def mamba_selective_scan() -> Callable | None:
    """mamba-ssm's ``selective_scan_fn``, or None when mamba-ssm or its CUDA extension is missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken build whose extension fails to load
        return None
    return selective_scan_fn


@functools.cache
def causal_conv1d() -> Callable | None:
    """causal-conv1d's ``causal_conv1d_fn``, or None when it is not installed."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        return None
    return causal_conv1d_fn


@functools.cache
def mamba_chunk_scan() -> Callable | None:
    """mamba-ssm's ``mamba_chunk_scan_combined`` (Mamba-2), or None when mamba-ssm or Triton is missing."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # ImportError, or a broken install that fails while importing Triton
        return None
    return mamba_chunk_scan_combined
