"""Channel layers (the per-token half of a block): ``Channel(d_model, layer_idx, **kwargs)``,
``forward(x: (B, L, D)) -> (B, L, D)``, ``active_parameters() -> int`` (the parameters one token
uses) and ``flops_per_token(seq_len) -> int``; ``tests/test_interfaces.py`` checks every entry.

``CHANNELS`` maps a channel's config name to its class; ``"none"`` leaves the block without a channel
(as in mamba-ssm's blocks); ``"memory"`` is placed by
``memory.layers`` rather than by ``backbone.channel``. Adding a channel is one module plus one line here.
"""

from zoo.memory import MemoryPlus
from zoo.model.mlp import SwiGLU

CHANNELS = {
    "mlp": SwiGLU,
    "memory": MemoryPlus,
    "none": None,
}
