"""``memory_ops`` picks one backend per (device type, dtype): Triton for CUDA float32 / bfloat16 /
float16, memzoo's CPU kernels for CPU float32 / float64 unless ``MEMZOO_CPU_KERNELS=0``, the PyTorch
reference otherwise. (Each backend is held equal to the reference in test_memory_cpu_kernels.py,
test_fused_read.py and test_memory_triton.py.)"""

import pytest
import torch

from zoo.memory.ops import cpu, memory_ops, reference
from zoo.memory.ops import triton as triton_backend

KERNELS_BUILT = memory_ops("cpu", torch.float32) is cpu
CPU_EXPECTED = {torch.float32: cpu, torch.float64: cpu, torch.bfloat16: reference, torch.float16: reference}
CUDA_EXPECTED = {torch.float32: triton_backend, torch.bfloat16: triton_backend, torch.float16: triton_backend}


@pytest.mark.skipif(not KERNELS_BUILT, reason="memzoo's CPU kernels did not build here (no C++ compiler?)")
@pytest.mark.parametrize("dtype", list(CPU_EXPECTED), ids=str)
def test_cpu_tensors_get_the_kernels_for_float32_and_float64_and_the_reference_otherwise(dtype):
    assert memory_ops("cpu", dtype) is CPU_EXPECTED[dtype]
    assert memory_ops(torch.device("cpu"), dtype) is CPU_EXPECTED[dtype]


@pytest.mark.parametrize("dtype", list(CPU_EXPECTED), ids=str)
def test_cpu_tensors_get_the_reference_with_the_kernels_off(monkeypatch, dtype):
    monkeypatch.setenv(cpu.KERNELS_ENV, "0")
    assert memory_ops("cpu", dtype) is reference


def test_a_bad_kernels_setting_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv(cpu.KERNELS_ENV, "yes")
    with pytest.raises(ValueError, match="MEMZOO_CPU_KERNELS='yes'; allowed: 1 .*, baseline .*, 0 "):
        memory_ops("cpu", torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the CUDA choices are untested")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_cuda_tensors_get_triton_where_it_imports_and_the_reference_otherwise(dtype):
    expected = CUDA_EXPECTED.get(dtype, reference) if triton_backend.available() else reference
    assert memory_ops("cuda", dtype) is expected


def test_every_backend_offers_the_reference_op_set():
    names = ["read", "read_backward", "top_pairs", "rank_pairs", "selected_scores_backward", "row_adam", "squared_norm"]
    for backend in (reference, cpu, triton_backend):
        assert all(callable(getattr(backend, name)) for name in [*names, "as_coalesced"]), backend.__name__
        assert isinstance(backend.FUSED_READ, bool)
