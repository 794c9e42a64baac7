"""Channel layers (the per-token half of a block): ``Channel(d_model, layer_idx, **kwargs)``.

``CHANNELS`` maps a channel's config name to its class; ``"none"`` leaves the block without a channel
(as in mamba-ssm's blocks). Adding a channel is one module plus one line here.
"""

from zoo.mlp import SwiGLU

CHANNELS = {
    "mlp": SwiGLU,
    "none": None,
}
