"""The rooms of ``zoo`` import one way: each subpackage imports only the ones below it in
``ALLOWED`` (so the graph between subpackages has no cycle), found by parsing every module's imports,
including the ones inside functions."""

import ast
from graphlib import TopologicalSorter
from pathlib import Path

ZOO = Path(__file__).resolve().parents[1] / "zoo"

# room -> the rooms it may import (besides itself); read bottom to top
ALLOWED = {
    "core": set(),
    "checkpoint": {"core"},
    "mixers": {"core"},
    "tasks": {"core"},
    "memory": {"core", "checkpoint"},
    "model": {"core", "checkpoint", "mixers", "memory"},
    "pretrained": {"core", "checkpoint", "memory", "model"},  # Hugging Face import / export, lm-eval
    "training": {"core", "checkpoint", "mixers", "tasks", "memory", "model", "pretrained"},
    "configs": {"core", "memory", "model", "training"},  # the dataclass-backed presets
    "grid": {"core", "checkpoint", "tasks", "memory", "model", "training"},
    "": {"model", "pretrained"},  # zoo/__init__.py: the public API
}


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else ""


def imports(path: Path) -> set[str]:
    """The ``zoo...`` modules a file imports (absolute imports; memzoo uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "zoo" or name.startswith("zoo.")}


def test_the_allowed_table_has_no_cycle():
    TopologicalSorter({room: deps for room, deps in ALLOWED.items() if room}).static_order()  # raises CycleError


def test_every_subpackage_imports_only_the_rooms_below_it():
    wrong = []
    for path in sorted(ZOO.rglob("*.py")):
        module = ".".join(path.relative_to(ZOO.parent).with_suffix("").parts).removesuffix(".__init__")
        room = room_of(module)
        for target in imports(path):
            other = room_of(target)
            if other != room and other not in ALLOWED[room]:
                wrong.append(f"{module} ({room or 'zoo'}) imports {target} ({other or 'zoo'})")
    assert not wrong, "\n".join(wrong)


def test_every_module_lives_in_a_room():
    loose = sorted(p.name for p in ZOO.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside a subpackage: {loose}"


def test_zoo_is_the_only_top_level_package_the_project_installs():
    import pytest
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    root = ZOO.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    installed = find_packages(str(root), include=config["include"])
    assert {name.split(".")[0] for name in installed} == {"zoo"}
    assert "zoo.configs" in installed and "zoo.grid" in installed  # the YAML package data ships inside them
