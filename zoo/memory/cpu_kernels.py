"""memzoo's C++ kernels for the memory layer on CPU (``csrc/memory_cpu.cpp``): the pair search, the
selected sub-key scores' backward, the value read's backward and rows-only Adam, each one pass over
its data where the PyTorch path (the reference, kept beside each call) runs a chain of small ops;
the memory read fused from the sub-key scores to the weighted value rows, and its backward, which
put the others together (``fused_read``); the float64-accumulated squared norm that gradient
clipping takes of a memory table's gradient rows; and the order check that gives a sparse row
gradient back its coalesced flag (``optim.coalesced``).

They are compiled by ``torch.utils.cpp_extension`` on first use (about 20 s, once per machine and
torch version; cached in torch's extensions folder, ``TORCH_EXTENSIONS_DIR``) and used for float32
and float64 CPU tensors. Without a C++ compiler the build fails with one warning and the memory
layer runs its PyTorch path: the same numbers up to summation order. ``MEMZOO_CPU_KERNELS=0`` turns
them off (no build is attempted); ``MEMZOO_CPU_KERNELS=baseline`` builds them without AVX2 (what a
CPU without it gets). Each op's result does not depend on the thread count.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch

KERNELS_ENV = "MEMZOO_CPU_KERNELS"
SETTINGS = {  # MEMZOO_CPU_KERNELS's values (read at each call; the build is chosen once per process)
    "1": "default: built for this CPU's vector instructions",
    "baseline": "built without AVX2, as for a CPU that lacks it",
    "0": "off: the PyTorch path",
}
SOURCE = Path(__file__).parent / "csrc" / "memory_cpu.cpp"
_DTYPES = (torch.float32, torch.float64)

# `omp simd` loop hints only (no OpenMP runtime); sqrt need not set errno, so Adam's loop vectorises
BASE_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno"]
log = logging.getLogger(__name__)


def _setting() -> str:
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
    if _setting() != "baseline" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "avx2", ["-mavx2", "-mfma"]
    return "baseline", []


def _ninja_on_path() -> None:
    """torch builds with ninja; the ``ninja`` package's binary serves when the system has none."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _needs_compiling(name: str) -> bool:
    """Whether loading ``name`` compiles first (no build of it, or one older than the source): only
    decides whether to say so (torch's private build-folder helper; True where it is missing)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        library = Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
        return not library.exists() or library.stat().st_mtime < SOURCE.stat().st_mtime
    except Exception:  # a torch without the helper: say so every time rather than never
        return True


@functools.cache
def _built() -> bool:
    """Build (or load the cached build of) the kernels into ``torch.ops.memzoo_cpu``; False, with
    one warning naming the reason, when that fails."""
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()
        isa, flags = _instruction_set()
        name = f"memzoo_cpu_{isa}"
        if _needs_compiling(name):
            log.info("compiling memzoo's CPU memory kernels (once per machine and torch version, about 20 s)")
        cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=BASE_FLAGS + flags, is_python_module=False)
    except Exception as err:  # no compiler, no headers, a failed build: the PyTorch path serves
        warnings.warn(
            f"memzoo's CPU memory kernels did not build ({type(err).__name__}: {str(err).strip()[:300]}); the memory "
            f"layer runs its PyTorch path (same numbers, slower). {KERNELS_ENV}=0 skips the build.",
            stacklevel=2,
        )
        return False
    return True


def enabled(*tensors: torch.Tensor) -> bool:
    """Whether the kernels serve these tensors: all float32 or all float64 on the CPU, the kernels on
    (``MEMZOO_CPU_KERNELS`` is not ``0``) and built. A value of ``MEMZOO_CPU_KERNELS`` outside
    ``SETTINGS`` is a ValueError naming it."""
    if _setting() == "0":
        return False
    dtype = tensors[0].dtype
    if dtype not in _DTYPES or any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        return False
    return _built()


def ops():
    """The kernels' namespace, ``torch.ops.memzoo_cpu`` (call ``enabled`` first)."""
    return torch.ops.memzoo_cpu
