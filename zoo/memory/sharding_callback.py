"""What data-parallel training of a memory needs from Lightning, in one callback: shard the value
tables once the process group exists (each rank drawing only its part), keep the parts and the
replicated rows-only tables out of DDP, average their gradients, and save / load sharded optimizer
state by parts. ``zoo.memory.callbacks.memory_callbacks`` hands it to the trainer."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from zoo.memory.sharding import (
    average_sharded_gradients,
    average_sparse_gradients,
    broadcast_replicated_sparse,
    ddp_ignored_parameter_names,
    save_and_load_sharded_state,
    shard_memory,
)


class ShardedMemory(Callback):
    """A no-op for models without memory tables (or in one process). Expects the module's network in
    ``pl_module.model``."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before the strategy wraps the model (DDP) and before checkpoint weights load: the process
        group exists by now, and a resumed checkpoint's table (whole, or a distributed checkpoint's
        parts in any layout) loads into this rank's part."""
        shard_memory(pl_module.model)
        # DDP reads this attribute of the module it wraps. torch has no public way to set it: its own
        # setter, DistributedDataParallel._set_params_and_buffers_to_ignore_for_model, is private too
        # (and sets this same attribute), and Lightning's DDPStrategy takes no ignore list.
        pl_module._ddp_params_and_buffers_to_ignore = ddp_ignored_parameter_names(pl_module)
        if trainer.world_size > 1:
            broadcast_replicated_sparse(pl_module.model)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The optimizers exist, their checkpointed state is not restored yet."""
        for optimizer in trainer.optimizers:
            save_and_load_sharded_state(optimizer)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        average_sharded_gradients(pl_module.model, trainer.world_size)
        average_sparse_gradients(pl_module.model, trainer.world_size)
