"""The memory's ops as memzoo's C++ kernels on CPU (``csrc/memory_cpu.cpp``) with ``reference``'s
signatures, each one pass over its data; plus the read fused from sub-key scores to value rows and
back (``zoo.memory.fused_read``). Compiled by ``torch.utils.cpp_extension`` on first use (about
20 s, once per machine and torch version; cached in ``TORCH_EXTENSIONS_DIR``), for float32 / float64
CPU tensors; a failed build warns once and the reference serves (the same numbers up to summation
order). ``MEMZOO_CPU_KERNELS=0`` turns them off (no build); ``=baseline`` builds them without AVX2.
Each op's result does not depend on the thread count."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

from zoo.memory.ops.reference import read  # noqa: F401  (no read kernel: torch's embedding bag serves)
from zoo.memory.workspace import Workspace

KERNELS_ENV = "MEMZOO_CPU_KERNELS"
SETTINGS = {  # MEMZOO_CPU_KERNELS's values (read at each call; the build is chosen once per process)
    "1": "default: built for this CPU's vector instructions",
    "baseline": "built without AVX2, as for a CPU that lacks it",
    "0": "off: the PyTorch path",
}
SOURCE = Path(__file__).parents[1] / "csrc" / "memory_cpu.cpp"
DTYPES = (torch.float32, torch.float64)  # the dtypes the kernels serve
FUSED_READ = True

# `omp simd` loop hints only (no OpenMP runtime); sqrt need not set errno, so Adam's loop vectorises
BASE_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno"]
log = logging.getLogger(__name__)


def setting() -> str:
    """``MEMZOO_CPU_KERNELS``, checked: one of ``SETTINGS``."""
    value = os.environ.get(KERNELS_ENV, "1")
    if value not in SETTINGS:
        raise ValueError(f"{KERNELS_ENV}={value!r}; allowed: " + ", ".join(f"{k} ({v})" for k, v in SETTINGS.items()))
    return value


def _instruction_set() -> tuple[str, list[str]]:
    """The vector instructions to build for: AVX2 + FMA where torch found them on this CPU (unless
    ``MEMZOO_CPU_KERNELS=baseline``), else the x86-64 / aarch64 baseline. The name is part of the
    build's name, so a build folder shared by machines of different CPUs (a cluster's home) never
    hands one the other's instructions."""
    if setting() != "baseline" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "avx2", ["-mavx2", "-mfma"]
    return "baseline", []


def _ninja_on_path() -> None:
    """torch builds with ninja; the ``ninja`` package's binary serves when the system has none."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build_folder(name: str) -> Path:
    """Where the build of ``name`` goes, made if missing: ``TORCH_EXTENSIONS_DIR`` (else torch's default
    build root), per Python and torch version, as torch's own default places it."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    folder = Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@functools.cache
def built() -> bool:
    """Build (or load the cached build of) the kernels into ``torch.ops.memzoo_cpu``; False, with
    one warning naming the reason, when that fails."""
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()
        isa, flags = _instruction_set()
        name = f"memzoo_cpu_{isa}_{hashlib.sha1(str(SOURCE).encode()).hexdigest()[:8]}"  # a build per checkout
        folder = _build_folder(name)
        library = folder / f"{name}.so"
        if not library.exists() or library.stat().st_mtime < SOURCE.stat().st_mtime:
            log.info("compiling memzoo's CPU memory kernels (once per machine and torch version, about 20 s)")
        cpp_extension.load(
            name=name, sources=[str(SOURCE)], extra_cflags=BASE_FLAGS + flags, build_directory=str(folder), is_python_module=False
        )
    except Exception as err:  # no compiler, no headers, a failed build: the PyTorch path serves
        warnings.warn(
            f"memzoo's CPU memory kernels did not build ({type(err).__name__}: {str(err).strip()[:300]}); the memory "
            f"layer runs its PyTorch path (same numbers, slower). {KERNELS_ENV}=0 skips the build.",
            stacklevel=2,
        )
        return False
    return True


def kernels():
    """The kernels' namespace, ``torch.ops.memzoo_cpu`` (once ``built()``)."""
    return torch.ops.memzoo_cpu


def read_backward(table, slots, weights, grad_out, workspace: Workspace | None, needs=(True, True)):
    """``reference.read_backward`` in one pass (both gradients, whatever ``needs``; rows in ``workspace``)."""
    out = workspace.take(slots.numel(), table.shape[1], table.dtype) if workspace is not None else None
    return kernels().bag_backward(table, slots, weights, grad_out, out)


def top_pairs(scores: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.top_pairs``: ``rank_pairs`` of the two halves."""
    return rank_pairs(scores[:, :, 0], scores[:, :, 1], knn)


def rank_pairs(scores1, scores2, knn: int, first_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.rank_pairs``: one pass of the kernel per (token, head)."""
    t, heads = scores1.shape[:2]
    idx, halves = kernels().pair_topk(scores1.flatten(0, 1), scores2.flatten(0, 1), knn, first_offset)
    return idx.view(t, heads, 2, knn), halves.view(t, heads, 2, knn)


def selected_scores_backward(q, keys, idx, grad, needs=(True, True)) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.selected_scores_backward`` (both gradients, whatever ``needs``)."""
    dim, n_keys = keys.shape[-1], keys.shape[2]
    grad_q, grad_keys = kernels().selected_scores_backward(
        q.reshape(-1, dim), keys.reshape(-1, dim), idx.flatten(0, 2), grad.flatten(0, 2), n_keys
    )
    return grad_q.view_as(q), grad_keys.view_as(keys)


def row_adam(param, exp_avg, exp_avg_sq, rows, grad, lr, beta1, beta2, eps, step, workspace=None) -> None:
    """``reference.row_adam`` (moments in the parameter's dtype), each row read and written once; no ``workspace``."""
    kernels().row_adam(param, exp_avg, exp_avg_sq, rows, grad, lr, beta1, beta2, eps, step)


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """``reference.squared_norm`` in place, without the float64 copy."""
    return kernels().squared_norm(x)


def as_coalesced(grad: torch.Tensor) -> torch.Tensor:
    """``reference.as_coalesced`` in one call."""
    return kernels().as_coalesced(grad)
