"""Sequence mixers: ``Mixer(d_model, layer_idx, **kwargs)``, ``forward(x: (B,L,D)) -> (B,L,D)``.

``MIXERS`` maps a mixer's config name to its class; ``PATTERN_LETTERS`` maps the one-letter codes of
a layer pattern string (``"AAAA"``) to those names. Adding a mixer is one module plus one line in each.
"""

from zoo.mixers.attention import Attention
from zoo.mixers.mamba import Mamba
from zoo.mixers.mamba2 import Mamba2

MIXERS = {
    "attention": Attention,
    "mamba": Mamba,
    "mamba2": Mamba2,
}

PATTERN_LETTERS = {
    "A": "attention",
    "M": "mamba",
    "S": "mamba2",
}
