"""Shared test setup. Without CUDA, memzoo's Triton kernels run in Triton's interpreter on CPU
tensors: TRITON_INTERPRET must be set before anything imports triton (lightning does, through
torch._dynamo), because Triton's own library functions read it when they are defined."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
