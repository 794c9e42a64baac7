"""Channel layers (the per-token half of a block): ``Channel(d_model, layer_idx, **kwargs)``.

``CHANNELS`` maps a channel's config name to its class; ``"none"`` leaves the block without a channel
(as in mamba-ssm's blocks); ``"memory"`` is placed by
``memory.layers`` rather than by ``backbone.channel``. Adding a channel is one module plus one line here.
"""

from zoo.memory import MemoryPlus
from zoo.mlp import SwiGLU

CHANNELS = {
    "mlp": SwiGLU,
    "memory": MemoryPlus,
    "none": None,
}
