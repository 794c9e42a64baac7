"""Reading files a user hands memzoo as data, never as instructions about the file system: a file is
taken only when it is a regular file directly inside the directory it belongs to (checked with
``stat`` before it is opened, so a FIFO never blocks and a link never leads out), of a bounded size,
and JSON is parsed with a bounded nesting depth. Every refusal is a ``ValueError`` naming the file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

MiB = 2**20
TOKENIZER_MAX_BYTES = 256 * MiB  # the largest tokenizer.json files are tens of MiB
MAX_JSON_DEPTH = 64  # config.json and tokenizer files nest a few levels; a deeper file is hostile or broken
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def regular_file_inside(folder: str | os.PathLike, name: Any, where: str, kind: str, root: Path | None = None) -> Path:
    """``folder / name``, checked without opening it: ``name`` is one path component, and the file (after
    symlinks) is a regular file inside ``root`` (default: directly inside ``folder``). ``ValueError``
    led by ``where`` otherwise, saying memzoo reads ``kind`` files (``checkpoint``, ``model``) only there."""
    folder = Path(folder)
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise ValueError(f"{where} is not a file name inside the {kind} directory (memzoo reads nothing outside it)")
    target = (folder / name).resolve()
    inside = target.parent == folder.resolve() if root is None else root.resolve() in target.parents
    if not inside:
        raise ValueError(f"{where} is a link to {str(target)!r}, outside the {kind} directory (memzoo reads nothing outside it)")
    try:
        mode = target.stat().st_mode
    except OSError as err:
        raise ValueError(f"{where} is missing: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):
        what = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
        raise ValueError(f"{where} is {what}, not a regular file; memzoo reads {kind} files from regular files only")
    return target


def bounded_size(path: Path, max_bytes: int, where: str) -> int:
    """``path``'s size in bytes; ``ValueError`` led by ``where`` when it is over ``max_bytes``."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{where} is {size:,} bytes, more than the {max_bytes:,} such a file may have")
    return size


def json_depth(value: Any) -> int:
    """How deeply ``value``'s lists and objects nest (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(data: bytes, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """UTF-8 JSON ``data`` -> its value, nested at most ``max_depth`` deep; ``ValueError`` led by
    ``where`` for invalid JSON or deeper nesting (which Python's parser would meet as RecursionError)."""
    try:
        value = json.loads(data)
        too_deep = json_depth(value) > max_depth
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from err
    except RecursionError:
        too_deep = True
    if too_deep:
        raise ValueError(f"{where}: its JSON nests deeper than {max_depth} levels (no model or tokenizer file does)")
    return value


def read_json_file(path: Path, max_bytes: int, where: str | None = None) -> Any:
    """The JSON value of the regular file ``path`` (checked by the caller), at most ``max_bytes``."""
    where = where or str(path)
    bounded_size(path, max_bytes, where)
    return parse_json(path.read_bytes(), where)
