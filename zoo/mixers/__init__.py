"""Sequence mixers. Every mixer answers the same questions, so the model, generation and FLOP
accounting loop over layers without asking which class a layer is:

- ``Mixer(d_model, layer_idx, **options)`` (an unknown option is a ``TypeError``);
- ``forward(x: (B, L, D)) -> (B, L, D)``;
- ``allocate_cache(batch_size, max_len, device=None, dtype=None)`` and
  ``step(x_t: (B, D), cache) -> ((B, D), cache)``: one token at a time, equal to ``forward``;
- ``flops_per_token(seq_len) -> int``: forward FLOPs (2 per multiply-add), parameters' and others';
- ``state_size(seq_len) -> int``: bytes of inference state one sequence keeps.

``tests/test_interfaces.py`` runs every registered mixer through all of them.

``MIXERS`` maps a mixer's config name to its class; ``PATTERN_LETTERS`` maps the one-letter codes of
a layer pattern string (``"AAAA"``) to those names. Adding a mixer is one module plus one line in each.
"""

from zoo.mixers.attention import Attention
from zoo.mixers.based import Based
from zoo.mixers.gated_deltanet import GatedDeltaNet
from zoo.mixers.gla import GatedLinearAttention
from zoo.mixers.hyena import Hyena
from zoo.mixers.mamba import Mamba
from zoo.mixers.mamba2 import Mamba2
from zoo.mixers.sliding_window import SlidingWindowAttention

MIXERS = {
    "attention": Attention,
    "based": Based,
    "hyena": Hyena,
    "gated_deltanet": GatedDeltaNet,
    "gla": GatedLinearAttention,
    "mamba": Mamba,
    "mamba2": Mamba2,
    "sliding_window": SlidingWindowAttention,
}

PATTERN_LETTERS = {
    "A": "attention",
    "B": "based",
    "H": "hyena",
    "D": "gated_deltanet",
    "G": "gla",
    "M": "mamba",
    "S": "mamba2",
    "W": "sliding_window",
}
