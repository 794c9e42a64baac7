"""The one mapping -> dataclass parser of memzoo's configs: ``from_mapping(ModelConfig, values, "model")``.

A config dataclass states its fields and their defaults; this turns a plain or OmegaConf mapping into
it once (at the CLI, or where a checkpoint's stored settings are read), nested dataclasses included,
and names any key the dataclass does not have. Values are checked by the dataclass's own ``validate``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

T = TypeVar("T")


def plain(value: Any) -> Any:
    """OmegaConf containers (resolved) -> plain dicts and lists; anything else as it is."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _nested_dataclass(hint: Any) -> type | None:
    """The dataclass a field annotation names (``MemoryConfig`` or ``MemoryConfig | None``), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
        return found[0] if len(found) == 1 else None
    return None


def from_mapping(cls: type[T], values: Mapping[str, Any], key_prefix: str) -> T:
    """``cls(**values)`` from a plain or OmegaConf mapping; ``key_prefix`` is how the user names these
    keys (``memory`` for ``memory.n_keys``). A field typed as a dataclass (or one or None) whose value
    is a mapping is parsed the same way, its keys named by the field (``ModelConfig.memory`` ->
    ``memory``). Raises ``ValueError`` naming unknown keys and the allowed ones."""
    values = plain(values)
    if not isinstance(values, Mapping):
        raise ValueError(f"{key_prefix}={values!r} must be a mapping of {cls.__name__} settings")
    values = {key: plain(value) for key, value in values.items()}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {key_prefix} config key(s) {unknown}; allowed: {sorted(fields)}")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{key_prefix} config lacks the key(s) {missing}, which have no default")
    hints = typing.get_type_hints(cls)
    parsed = {}
    for key, value in values.items():
        nested = _nested_dataclass(hints.get(key))
        parsed[key] = from_mapping(nested, value, key) if nested is not None and isinstance(value, Mapping) else value
    return cls(**parsed)
