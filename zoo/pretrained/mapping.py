"""What the architecture mappings share: checking that an imported ``config.json`` asks for nothing
memzoo would silently compute differently."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from zoo.core.value_checks import is_int
from zoo.model.language_model import LanguageModel

DEFAULT_ROPE_TYPES = (None, "default")


def check_fields(architecture: str, hf: dict[str, Any], rules: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """``ValueError`` listing every field of ``hf`` whose value ``rules`` (field -> (accepts, what is
    allowed)) rejects; a field absent from ``hf`` takes None."""
    bad = [
        f"{key}={hf.get(key)!r} (memzoo supports {allowed})"
        for key, (accepts, allowed) in rules.items()
        if not accepts(hf.get(key))
    ]
    if bad:
        raise ValueError(f"{architecture} config fields that change the math and that memzoo does not map: {'; '.join(bad)}")


def check_sizes(architecture: str, hf: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Each ``required`` field of ``hf`` a positive integer, each ``optional`` one absent, null or a
    positive integer; ``ValueError`` naming the first that is not."""
    for key in (*required, *optional):
        value = hf.get(key)
        if value is None and key in optional:
            continue
        if not is_int(value) or value < 1:
            what = f"{key} is missing" if key not in hf else f"{key}={value!r} is not a positive integer"
            raise ValueError(f"{architecture} config field {what}")


def rope_theta(architecture: str, hf: dict[str, Any]) -> float:
    """The rotary base of a ``config.json`` (``rope_parameters`` in transformers 5, ``rope_theta`` /
    ``rope_scaling`` before); ``ValueError`` for any scaled rotary (linear, dynamic, yarn, llama3, ...)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type")) or scaling.get("rope_type", scaling.get("type"))
    if kind not in DEFAULT_ROPE_TYPES:
        raise ValueError(
            f"{architecture} config asks for rotary scaling rope_type={kind!r}; memzoo supports the default rotary only"
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def finite_limit(value: Any) -> bool:
    """A ``time_step_limit`` that clamps nothing: (0, inf), as JSON writes it or as Python reads it."""
    if value is None:
        return True
    low, high = value
    high = float(high["__float__"]) if isinstance(high, dict) else float(high)
    return float(low) == 0.0 and math.isinf(high)


def plain_stack(model: LanguageModel, mixer: str, channel: str) -> str | None:
    """Why ``model`` is not a plain stack of ``mixer`` blocks with ``channel`` channels and no memory, or None."""
    config = model.config
    if config.memory is not None:
        return "it has memory layers"
    if config.layer_mixers() != [mixer] * config.n_layers:
        return f"its layers are {config.layer_mixers()}, not all {mixer}"
    if config.layer_channels() != [channel] * config.n_layers:
        return f"its channels are {config.layer_channels()}, not all {channel}"
    return None
