"""What a Lightning trainer of a model with memory layers attaches, asked of the memory package in one
call, so the trainer knows nothing of memory internals: ``memory_callbacks(model.memory)``."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from zoo.memory.config import MemoryConfig
from zoo.memory.monitor import MemoryMonitor
from zoo.memory.sharding_callback import ShardedMemory


def memory_callbacks(memory: MemoryConfig | None, monitor: bool = True) -> list[Callback]:
    """The callbacks a model with this memory (None: no memory layers, no callbacks) needs:
    ``MemoryMonitor`` (usage, KL from uniform, read histograms, bytes sent; with ``monitor``) and
    ``ShardedMemory`` (the value tables' sharding, DDP's ignore list, gradient averaging and sharded
    optimizer state under data parallelism), in that order."""
    if memory is None:
        return []
    return [MemoryMonitor(), ShardedMemory()] if monitor else [ShardedMemory()]
