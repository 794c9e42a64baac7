"""memzoo's settings typed by OmegaConf's structured configs (the library Hydra composes with):
``typed(ModelConfig, values, "model")`` turns a plain or OmegaConf mapping into the dataclass, and
``typed_options`` a callable's keyword arguments (a task's options) typed by its signature. Type
conversion (``"3"`` -> 3 for an int, 3 -> 3.0 for a float) and the type, unknown-key and
missing-key errors are OmegaConf's; ranges and cross-field rules are each config's ``validate``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


def plain(value: Any) -> Any:
    """OmegaConf containers (resolved) -> plain dicts and lists; anything else as it is."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def typed(cls: type[T], values: Mapping[str, Any], key: str) -> T:
    """``cls`` (a dataclass) from a mapping of its fields, nested dataclass fields from mappings too;
    ``key`` is how the user names these settings (``memory`` for ``memory.n_keys``). A mapping
    given for a plain-dict field (``ModelConfig.mixer``) replaces its default. Raises
    ``ValueError`` as ``<key>.<field>: <OmegaConf's reason>`` for a value of the wrong type, an
    unknown key (with the allowed ones) or a missing one."""
    values = plain(values)
    if not isinstance(values, Mapping):
        raise ValueError(f"{key}={values!r} must be a mapping of {cls.__name__} settings")
    try:
        schema = OmegaConf.structured(cls)
        for name in values:  # a mapping given for a plain-dict field replaces its default (a merge would add to it)
            if name in schema and OmegaConf.is_dict(schema[name]) and OmegaConf.get_type(schema, name) is dict:
                schema[name] = {}
        return OmegaConf.to_object(OmegaConf.merge(schema, values))
    except OmegaConfBaseException as err:
        reason = str(err.msg).splitlines()[0]
        if isinstance(err, ConfigKeyError) and dataclasses.is_dataclass(err.object_type):
            reason += f"; allowed: {sorted(f.name for f in dataclasses.fields(err.object_type) if f.init)}"
        raise ValueError(f"{'.'.join(part for part in (key, err.full_key) if part)}: {reason}") from None


def _options_schema(function: Callable) -> type:
    """A dataclass named as ``function`` with one field per parameter of its signature (type: its
    annotation, Any without one; default: its default, none without one)."""
    fields = []
    for param in inspect.signature(function, eval_str=True).parameters.values():
        kind = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = param.default
        if default is inspect.Parameter.empty:
            fields.append((param.name, kind))
        else:
            fields.append((param.name, kind, dataclasses.field(default_factory=functools.partial(copy.deepcopy, default))))
    return dataclasses.make_dataclass(function.__name__, fields)


def typed_options(function: Callable, options: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``options`` for ``function`` (a class: its constructor's), each typed by its parameter's
    annotation through ``typed``; the ones given, the function fills in the rest."""
    schema = typed(_options_schema(function), options, key)
    return {name: getattr(schema, name) for name in plain(options)}
