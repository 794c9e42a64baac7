"""The private torch names memzoo relies on where no public way does the job (docs/memory.md lists all,
Hydra's and Lightning's too); tests/core/test_private_api.py fails naming any that upstream changed."""

from __future__ import annotations

import torch

DDP_IGNORE_ATTRIBUTE = "_ddp_params_and_buffers_to_ignore"
DCP_STORAGE_INFO = ("torch.distributed.checkpoint.filesystem", "_StorageInfo")  # a .metadata storage entry's class
DCP_PRIVATE_GLOBALS = (  # what a distributed checkpoint's .metadata pickles besides public classes
    DCP_STORAGE_INFO,
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.serialization", "_get_layout"),
)


def keep_out_of_ddp(module: torch.nn.Module, names: list[str]) -> None:
    """Make DDP, wrapping ``module`` later, leave its parameters ``names`` alone (torch's setter of this
    attribute is private too, pytorch#43690; Lightning's DDPStrategy takes no ignore list)."""
    setattr(module, DDP_IGNORE_ATTRIBUTE, list(names))


def embedding_bag_weights_backward(grad_out, table, slots, offsets, bags) -> torch.Tensor:
    """grad_out (B, d), table (N, d), slots, bags (M,) (rows read, bag of each) -> (M,) ``table[slots[m]] .
    grad_out[bags[m]]``: the bag's gradient to its weights, which autograd gives only in token order."""
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(grad_out, table, slots, offsets, bags, 0, -1)
