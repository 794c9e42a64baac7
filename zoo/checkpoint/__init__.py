"""Checkpoint files, model-agnostic: single files written atomically and read weights-only
(``files``), and sharded runs' distributed checkpoints (``distributed``). Reading a checkpoint into
its model is ``zoo.model.loading``; Lightning's side is ``zoo.training.checkpoint_io``."""
