"""What a Lightning trainer of a model with memory layers attaches, asked of the memory package in one
call, so the trainer knows nothing of memory internals: ``memory_callbacks(model.memory)``."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from zoo.memory.config import MemoryConfig
from zoo.memory.monitor import MemoryMonitor
from zoo.memory.sharding import average_sharded_gradients, average_sparse_gradients, save_and_load_sharded_state


class ShardedMemory(Callback):
    """Average the gradients DDP does not see, save / load sharded optimizer state by parts (the tables
    are sharded by ``LitLanguageModel.configure_model``); a no-op without them. Network: ``pl_module.model``."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The optimizers exist, their checkpointed state is not restored yet."""
        for optimizer in trainer.optimizers:
            save_and_load_sharded_state(optimizer)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        average_sharded_gradients(pl_module.model, trainer.world_size)
        average_sparse_gradients(pl_module.model, trainer.world_size)


def memory_callbacks(memory: MemoryConfig | None, monitor: bool = True) -> list[Callback]:
    """The callbacks a model with this memory (None: no memory layers, no callbacks) needs:
    ``MemoryMonitor`` (usage, KL from uniform, read histograms, bytes sent; with ``monitor``) and
    ``ShardedMemory``, in that order."""
    if memory is None:
        return []
    return [MemoryMonitor(), ShardedMemory()] if monitor else [ShardedMemory()]
