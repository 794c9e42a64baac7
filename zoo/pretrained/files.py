"""The files of a model directory, read with the guards checkpoints get (docs/files.md): each one a
regular file directly inside the directory (``zoo.core.safe_read``; a hub download's links may lead
into its own cache folder, nowhere else), JSON of a bounded size and depth, and a safetensors file's
header parsed and checked against the file's size (dtypes known, offsets inside the data and
covering it without overlap) before any tensor is read. Every refusal is a ``ValueError`` naming the
file."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, NamedTuple

import torch

from zoo.core.safe_read import TOKENIZER_MAX_BYTES, MiB, bounded_size, parse_json, read_json_file, regular_file_inside
from zoo.core.value_checks import is_int

CONFIG_MAX_BYTES = 1 * MiB  # a config.json is a few KiB
INDEX_MAX_BYTES = 64 * MiB  # a shard index names every tensor: some 10^5 entries for the largest models
HEADER_MAX_BYTES = 100 * MiB  # safetensors' own bound on a header
HEADER_LENGTH = 8  # the header's byte count, a little-endian u64, comes first
DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F64": torch.float64,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn,
}


class TensorEntry(NamedTuple):
    """One tensor of a safetensors header: dtype, shape and its byte range in the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    def meta(self) -> torch.Tensor:
        """A tensor of this dtype and shape on the meta device: its shape to check, nothing allocated."""
        return torch.empty(self.shape, dtype=self.dtype, device="meta")


def link_root(directory: Path) -> Path | None:
    """Where the files of ``directory`` may link to: its hub cache folder for a Hugging Face hub
    download (``models--org--name/snapshots/<rev>``, whose files link to ``../../blobs``), else
    None (nowhere but the directory itself)."""
    parent = directory.resolve().parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--"):
        return parent.parent
    return None


def model_file(directory: str | Path, name: str, what: str) -> Path:
    """``directory / name`` checked as a regular file inside the model directory (not opened)."""
    directory = Path(directory)
    where = f"model directory {str(directory)!r}: {what} {name!r}"
    return regular_file_inside(directory, name, where, "model", link_root(directory))


def tokenizer_file(directory: str | Path, name: str) -> Path:
    """The model directory's tokenizer file ``name``, checked, at most ``TOKENIZER_MAX_BYTES``."""
    path = model_file(directory, name, "tokenizer file")
    bounded_size(path, TOKENIZER_MAX_BYTES, str(path))
    return path


def has_file(directory: str | Path, name: str) -> bool:
    """Whether ``directory`` has an entry ``name`` of any kind (a FIFO or a link too: ``model_file``
    then says what is wrong with it)."""
    return (Path(directory) / name).is_symlink() or (Path(directory) / name).exists()


def read_model_json(directory: str | Path, name: str, what: str, max_bytes: int) -> Any:
    """The JSON value of the model directory's file ``name``, checked and bounded."""
    path = model_file(directory, name, what)
    return read_json_file(path, max_bytes, f"{path} ({what})")


def safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors a safetensors file (checked by ``model_file``) holds, from its header alone: the
    header's length within the file and ``HEADER_MAX_BYTES``, a JSON object of tensors (and
    ``__metadata__``), each with a known dtype, a shape of non-negative integers and a byte range
    of exactly its size; the ranges inside the data section, not overlapping, and covering it."""
    size = path.stat().st_size
    if size < HEADER_LENGTH:
        raise ValueError(f"{path}: {size} bytes, too short for a safetensors file (truncated?)")
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(HEADER_LENGTH))
        if length > min(size - HEADER_LENGTH, HEADER_MAX_BYTES):
            raise ValueError(
                f"{path}: its header claims {length:,} bytes, but the file has {size - HEADER_LENGTH:,} after the length "
                f"(at most {HEADER_MAX_BYTES:,} allowed): truncated or not a safetensors file"
            )
        header = parse_json(handle.read(length), f"{path} (safetensors header)")
    if not isinstance(header, dict):
        raise ValueError(f"{path}: its safetensors header is not a JSON object")
    entries = {name: _entry(path, name, value) for name, value in header.items() if name != "__metadata__"}
    data_bytes = size - HEADER_LENGTH - length
    covered = 0
    for name, entry in sorted(entries.items(), key=lambda item: item[1].begin):
        if entry.begin != covered:
            problem = "overlaps the tensor before it" if entry.begin < covered else f"leaves bytes {covered}-{entry.begin} unused"
            raise ValueError(f"{path}: tensor {name!r} at bytes {entry.begin}-{entry.end} {problem}")
        covered = entry.end
    if covered != data_bytes:
        raise ValueError(
            f"{path}: its tensors cover {covered:,} bytes, the file holds {data_bytes:,} after its header "
            f"({'truncated' if covered > data_bytes else 'trailing bytes'})"
        )
    return entries


def _entry(path: Path, name: str, value: Any) -> TensorEntry:
    """One header entry -> ``TensorEntry``; ``ValueError`` naming the file and tensor otherwise."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(value, dict) or set(value) - {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{where}: entry {json.dumps(value)[:120]} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in DTYPES:
        raise ValueError(f"{where}: dtype {dtype!r} is not one memzoo reads; allowed: {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(_count(n) for n in shape):
        raise ValueError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(n) for n in offsets) and offsets[0] <= offsets[1]):
        raise ValueError(f"{where}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise ValueError(f"{where}: data_offsets {offsets} span {offsets[1] - offsets[0]:,} bytes, its shape needs {nbytes:,}")
    return TensorEntry(DTYPES[dtype], tuple(shape), offsets[0], offsets[1])


def _count(value: Any) -> bool:
    return is_int(value) and value >= 0


def read_safetensors_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file whose header ``safetensors_header`` accepted."""
    from zoo.pretrained.directory import safetensors_torch

    try:
        return safetensors_torch().load_file(str(path), device=str(map_location))
    except Exception as err:  # safetensors' own error type; the file changed since its header was checked
        raise ValueError(f"{path}: safetensors could not read it ({type(err).__name__}: {err})") from err
