"""``MemoryConfig``: the arguments of the product-key memory channel, checked before any compute."""

from __future__ import annotations

from dataclasses import dataclass, field

from zoo.core.value_checks import check_real
from zoo.memory.optim import SECOND_MOMENTS  # the layouts RowAdam keeps

QUERY_NORMS = ("none", "layernorm", "rmsnorm")
PARALLEL_LAYOUTS = ("none", "rows", "columns")
PLACEMENTS = ("replace", "beside")
VALUE_DTYPES = ("float32", "bfloat16")
VALUE_LR_PER_KEY = 1e-3 / 32  # the value table's default learning rate per sub-key: 1e-3 at n_keys=32, 8e-3 at 256


@dataclass
class MemoryConfig:
    """Product-key memory (Lample et al. 2019) with the memory+ channel (Berges et al. 2024).

    n_keys: sub-keys per half; the table has N = n_keys ** 2 slots.
    heads: independent queries per token; their reads add up.
    knn: slots read per head (top-k), at most n_keys.
    k_dim: query/key width, even (each half is k_dim / 2).
    v_dim: value width (and the memory+ inner width); None = d_model.
    query_norm: none | layernorm | rmsnorm; when set, both query halves and all sub-keys are normalised
        (without affine parameters) before scoring.
    temperature: softmax temperature over the k selected scores.
    query_bias: whether the query projection has a bias.
    gate: multiply the output by a learned scalar sigmoid gate ``sigmoid(w_g . x)``.
    layers: indices of the layers with this memory.
    placement: replace | beside | null. ``replace``: the memory is the layer's channel (in place of
        its MLP); ``beside``: the layer keeps its channel and the memory follows it as a residual
        sub-layer of its own, ``x + memory(norm(x))``. null (default): replace in a model trained from
        scratch, beside in a pretrained import (``init.pretrained``), whose memory then starts as an
        exact no-op.
    shared: one value table serves every memory layer (each keeps its own query, keys, W1, W2).
    sparse_updates: values get sparse gradients and a rows-only lazy Adam update (RowAdam).
    value_lr: learning rate of the value table (same warmup + cosine schedule as the rest); None
        (default): ``VALUE_LR_PER_KEY * n_keys``, 1e-3 at 32 x 32 slots, growing with the square root
        of the table (``resolved_value_lr``): a row is read, so updated, about N times less often in
        a table of N slots, and at a fixed rate a large table's rows barely move from their init.
    value_dtype: float32 | bfloat16, the value table's storage (bfloat16 halves the bytes read; reads
        still accumulate in float32 and the optimizer's moments stay float32). Needs sparse_updates.
    second_moment: full | row. ``row`` keeps one Adam second moment per value row (partial-rowwise
        Adam) instead of one per element, so optimizer state is ~1x the table instead of 2x.
        Needs sparse_updates.
    parallel: none | rows | columns. ``rows``: each rank owns 1/W of the slots (a block of first
        sub-key indices) with their values, searches them for every rank's tokens, and the global
        top-k is merged from the ranks' candidates. ``columns``: each rank owns 1/W of every value
        row (along v_dim) and reads it for every rank's tokens. Both need a process group (trainer=ddp).
    name: the preset's name (``memory=pkm``, ``memory=pkm_large``), what results tables show.

    The ``memory=pkm`` config group is this dataclass (``zoo/configs/__init__.py``): every default lives here.
    """

    n_keys: int = 32
    heads: int = 4
    knn: int = 8
    k_dim: int = 64
    v_dim: int | None = None
    query_norm: str = "none"
    temperature: float = 1.0
    query_bias: bool = True
    gate: bool = False
    layers: list[int] = field(default_factory=lambda: [1])
    placement: str | None = None
    shared: bool = True
    sparse_updates: bool = True
    value_lr: float | None = None
    value_dtype: str = "float32"
    second_moment: str = "full"
    parallel: str = "none"
    name: str = "pkm"

    @property
    def n_slots(self) -> int:
        return self.n_keys**2

    def resolved_value_lr(self) -> float:
        """``value_lr``, or when None ``VALUE_LR_PER_KEY * n_keys``."""
        return VALUE_LR_PER_KEY * self.n_keys if self.value_lr is None else self.value_lr

    def resolved_v_dim(self, d_model: int) -> int:
        return d_model if self.v_dim is None else self.v_dim

    def validate(self, d_model: int, n_layers: int | None = None) -> None:
        """Raise ``ValueError`` naming the field, its value and what is allowed: ranges, choices and
        cross-field rules (the types are ``zoo.core.dataclass_config.typed``'s)."""
        for name in ("n_keys", "heads", "knn", "k_dim"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"memory.{name}={value!r} must be a positive integer")
        if self.knn > self.n_keys:
            raise ValueError(f"memory.knn={self.knn} must be <= memory.n_keys={self.n_keys}")
        if self.k_dim % 2:
            raise ValueError(f"memory.k_dim={self.k_dim} must be even (it is split into two halves)")
        if self.resolved_v_dim(d_model) < 1:
            raise ValueError(f"memory.v_dim={self.v_dim!r} must be a positive integer or null (= d_model)")
        if self.query_norm not in QUERY_NORMS:
            raise ValueError(f"memory.query_norm={self.query_norm!r}; allowed: {list(QUERY_NORMS)}")
        check_real("memory.temperature", self.temperature, low=0, low_open=True)
        if self.placement not in (*PLACEMENTS, None):
            raise ValueError(f"memory.placement={self.placement!r}; allowed: {list(PLACEMENTS)} or null")
        if self.parallel not in PARALLEL_LAYOUTS:
            raise ValueError(f"memory.parallel={self.parallel!r}; allowed: {list(PARALLEL_LAYOUTS)}")
        if self.value_dtype not in VALUE_DTYPES:
            raise ValueError(f"memory.value_dtype={self.value_dtype!r}; allowed: {list(VALUE_DTYPES)}")
        if self.second_moment not in SECOND_MOMENTS:
            raise ValueError(f"memory.second_moment={self.second_moment!r}; allowed: {list(SECOND_MOMENTS)}")
        for name, default in (("value_dtype", "float32"), ("second_moment", "full")):
            if getattr(self, name) != default and not self.sparse_updates:
                raise ValueError(
                    f"memory.{name}={getattr(self, name)!r} needs memory.sparse_updates=true "
                    f"(the rows-only optimizer); with dense updates only {default!r} is allowed"
                )
        if self.parallel == "columns" and self.second_moment == "row":
            raise ValueError(
                "memory.second_moment='row' does not go with memory.parallel='columns': each rank would keep one "
                "second moment per row from its own columns only, not the whole row's as one process does; "
                "use memory.parallel=rows or memory.second_moment=full"
            )
        check_real("memory.value_lr", self.value_lr, low=0, low_open=True, null="1e-3 * n_keys / 32")
        if n_layers is not None:
            if not self.layers:
                raise ValueError("memory.layers=[] names no layer; give at least one index, or use memory=none")
            for idx in self.layers:
                if not 0 <= idx < n_layers:
                    raise ValueError(
                        f"memory.layers has index {idx!r}; allowed: 0..{n_layers - 1} (backbone.n_layers={n_layers})"
                    )
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"memory.layers={self.layers} repeats a layer index")

    def parameter_counts(self, d_model: int) -> tuple[int, int]:
        """(value table, everything else of one memory layer): the table's N * v_dim, and the query
        projection, sub-keys, W1, W2 and gate of a ``MemoryPlus`` layer, from the config alone."""
        v_dim = self.resolved_v_dim(d_model)
        query = d_model * self.heads * self.k_dim + (self.heads * self.k_dim if self.query_bias else 0)
        sub_keys = self.heads * self.n_keys * self.k_dim  # (heads, 2, n_keys, k_dim / 2)
        gate = d_model + 1 if self.gate else 0
        return self.n_slots * v_dim, query + sub_keys + 2 * d_model * v_dim + gate

    def check_world_size(self, d_model: int, world_size: int) -> None:
        """Raise ``ValueError`` when ``world_size`` ranks cannot split this memory's ``parallel`` layout."""
        if self.parallel == "rows" and self.n_keys % world_size:
            raise ValueError(
                f"memory.n_keys={self.n_keys} must be divisible by the world size {world_size} for "
                "memory.parallel=rows (each rank owns n_keys / world_size first sub-keys)"
            )
        v_dim = self.resolved_v_dim(d_model)
        if self.parallel == "columns" and v_dim % world_size:
            raise ValueError(
                f"memory.v_dim={v_dim} must be divisible by the world size {world_size} for "
                "memory.parallel=columns (each rank owns v_dim / world_size columns)"
            )
