"""YAML from users' files with bounds: a file of at most ``MAX_BYTES`` whose aliases expand to at
most ``MAX_NODES`` values and never refer to themselves, so a "billion laughs" alias bomb or a
recursive alias is a clear error instead of a hang or a ``RecursionError``. Parsing is PyYAML's safe
loader (no tags that build Python objects); the expanded size is counted on the node graph before
anything is expanded."""

from __future__ import annotations

from typing import Any

import yaml
from omegaconf import OmegaConf

MAX_BYTES = 1 << 20  # a grid spec is a few kB
MAX_NODES = 100_000  # values after alias expansion; the largest shipped grid has a few hundred


def _expanded_size(root: yaml.Node, source: str, limit: int) -> int:
    """The number of values ``root`` becomes once every alias is expanded (a shared node counts each
    time it is used); raises ``ValueError`` past ``limit`` or on a node that contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: deep nesting cannot overflow Python's stack
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = (
            [item for pair in node.value for item in pair]
            if isinstance(node, yaml.MappingNode)
            else (list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        )
        if not children_done:
            if key in open_nodes:
                raise ValueError(f"{source}: a YAML alias refers to a node that contains it (a recursive alias)")
            open_nodes.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise ValueError(f"{source}: a YAML alias refers to a node that contains it (a recursive alias)")
                stack.append((child, False))
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[key] > limit:
            raise ValueError(
                f"{source}: its YAML aliases expand to more than {limit:,} values (an alias bomb?); "
                "write the values out or use fewer nested aliases"
            )
    return sizes[id(root)]


def load_bounded_yaml(text: str, source: str, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> Any:
    """YAML ``text`` (read from ``source``, named in errors) -> plain containers, interpolations
    resolved by OmegaConf; ``ValueError`` for a file too large, malformed YAML, a recursive alias
    or aliases that expand past ``max_nodes`` values."""
    if len(text.encode("utf-8")) > max_bytes:
        raise ValueError(f"{source} is larger than {max_bytes:,} bytes; a grid file is a few kB of YAML")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"{source} is not valid YAML: {err}") from err
    if root is None:
        raise ValueError(f"{source} is empty")
    _expanded_size(root, source, max_nodes)
    values = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    if not isinstance(values, dict):
        raise ValueError(f"{source} must hold a mapping, not a {type(values).__name__}")
    return values
