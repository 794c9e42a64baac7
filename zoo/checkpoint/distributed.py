"""Checkpoints of sharded runs: directories written through ``torch.distributed.checkpoint`` (DCP).

A checkpoint whose model or optimizer state holds DTensors (a sharded memory's table and its Adam
moments, each rank's part) is saved by every rank together: each writes its own parts, DCP writes a
replicated tensor once, and rank 0 adds ``checkpoint.pt`` (everything that is not a tensor of the
model or optimizer state: settings, loop and scheduler state, RNG states; a ``torch.save`` file).
Nothing is gathered, so no rank ever holds the whole table.

Reading takes, for each tensor, only the pieces its template needs, whatever world size and layout
wrote it: a DTensor template of another layout (rows <-> columns, W -> W') reads this rank's new
part, a plain template the whole tensor (one process). Reads are not collective.

Atomic: the parts go to a fresh hidden directory ``.NAME.<id>.dcp`` beside the target; once every
rank has written (DCP's metadata comes last, and every file is fsynced), the target ``NAME`` becomes a
symlink to it in one rename, and the directory it pointed to before is removed. A process killed
at any moment leaves ``NAME`` pointing at a whole checkpoint; ``remove_unlinked_data`` clears the
leftovers.

No code runs on reading: DCP's own reader unpickles ``.metadata`` with plain ``pickle`` and non-tensor
items with ``torch.load(weights_only=False)``. Here ``.metadata`` is unpickled with an allow-list of
DCP's metadata classes (a checkpoint holding non-tensor items is refused), tensor data is read by DCP
with ``torch.load(weights_only=True)``, and ``checkpoint.pt`` is read by the caller weights-only.

Nothing outside the checkpoint is read, and nothing is allocated that its files cannot fill: every
file read is a regular file (never opened otherwise: a FIFO would block) directly inside the data
directory after symlinks (``file_inside``); ``.metadata``'s storage entries name such files, with
their byte ranges inside them and no transforms; the tensors it describes fit in its data files'
bytes (``fill_tensors``), and the caller may check their shapes first.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.tensor import DTensor

from zoo.core.io import atomic_write
from zoo.core.private_api import DCP_PRIVATE_GLOBALS, DCP_STORAGE_INFO
from zoo.core.safe_read import regular_file_inside
from zoo.core.value_checks import is_int

REST_FILE = "checkpoint.pt"
TENSOR_SECTIONS = ("state_dict", "optimizer_states")  # the parts of a Lightning checkpoint whose tensors DCP holds
INDEX_KEY = "distributed_tensors"  # in checkpoint.pt: [[path in the checkpoint, DCP key, sharded], ...]
METADATA_FILE = ".metadata"
_ONE_PROCESS_WARNING = "torch.distributed is disabled, unavailable or uninitialized"

_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in ("Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "MetadataIndex", "StorageMeta")
} | {("torch", "Size"), ("pathlib", "PosixPath"), *DCP_PRIVATE_GLOBALS}


def is_distributed_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DCP checkpoint directory (or a symlink to one)."""
    return (Path(path) / METADATA_FILE).is_file()


def holds_distributed_tensors(checkpoint: dict[str, Any]) -> bool:
    """Whether the model or optimizer state of ``checkpoint`` holds a DTensor (a sharded run)."""
    return any(isinstance(value, DTensor) for section in TENSOR_SECTIONS for _, value in _leaves(checkpoint.get(section)))


def _leaves(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, leaf) of nested dicts and lists (a tuple is a leaf: it stays whole in checkpoint.pt)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _leaves(value, path + (i,))
    else:
        yield path, obj


def _set(obj: Any, path: list, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _skeleton(obj: Any) -> Any:
    """A copy of nested dicts and lists with every tensor leaf replaced by None."""
    if isinstance(obj, dict):
        return {key: _skeleton(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_skeleton(value) for value in obj]
    return None if torch.is_tensor(obj) else obj


def _identity(tensor: torch.Tensor) -> tuple | None:
    """What makes two tensors the same data (a table shared by layers, tied embeddings), for
    writing it once; None for an empty tensor (no storage to tell it by)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    if local.numel() == 0:
        return None
    placements = tensor.placements if isinstance(tensor, DTensor) else None
    return (
        local.untyped_storage().data_ptr(),
        local.storage_offset(),
        tuple(local.shape),
        local.stride(),
        local.dtype,
        local.device,
        tuple(tensor.shape),
        placements,
    )


def split_tensors(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A Lightning checkpoint -> (the checkpoint with the tensors of its model and optimizer state
    replaced by None and listed under ``INDEX_KEY``, those tensors by DCP key). A tensor appearing
    twice (same data) is stored once."""
    rest = {key: (_skeleton(value) if key in TENSOR_SECTIONS else value) for key, value in checkpoint.items()}
    tensors: dict[str, torch.Tensor] = {}
    index, seen = [], {}
    for section in TENSOR_SECTIONS:
        for path, value in _leaves(checkpoint.get(section), (section,)):
            if not torch.is_tensor(value):
                continue
            identity = _identity(value)
            key = seen.get(identity) if identity is not None else None
            if key is None:
                key = "/".join(map(str, path))
                tensors[key] = value
                if identity is not None:
                    seen[identity] = key
            index.append([list(path), key, isinstance(value, DTensor)])
    rest[INDEX_KEY] = index
    return rest, tensors


def save_distributed(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` (tensors and DTensors; a collective: every rank of the default process
    group calls it, or one process without a group) as a DCP directory published at ``path``."""
    path = Path(path)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    rest, tensors = split_tensors(checkpoint)
    names = [f".{path.name}.{uuid.uuid4().hex[:12]}.dcp"]
    if distributed:
        dist.broadcast_object_list(names, src=0)  # every rank writes into rank 0's fresh directory
    data_dir = path.parent / names[0]
    if rank == 0:
        data_dir.mkdir(parents=True)
    if distributed:
        dist.barrier()
    with warnings.catch_warnings():  # DCP warns that it runs in one process even when told to
        warnings.filterwarnings("ignore", message=_ONE_PROCESS_WARNING)
        dcp.save(tensors, storage_writer=FileSystemWriter(data_dir, sync_files=True), no_dist=not distributed)
    if rank == 0:  # DCP returns once its metadata, written after every rank's files, is on disk
        atomic_write(data_dir / REST_FILE, lambda handle: torch.save(rest, handle))
        _publish(path, data_dir)
    if distributed:
        dist.barrier()
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, data_dir: Path) -> None:
    """Point ``path`` at ``data_dir`` (a relative symlink, swapped in by one rename) and remove the
    data directory it pointed at before."""
    _fsync_dir(data_dir)
    previous = linked_data_dir(path)
    link = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.link.tmp"
    os.symlink(data_dir.name, link)
    os.replace(link, path)
    _fsync_dir(path.parent)
    if previous is not None and previous != data_dir:
        shutil.rmtree(previous, ignore_errors=True)


def linked_data_dir(path: Path) -> Path | None:
    """The data directory a published checkpoint ``path`` links to (None if it is no such link)."""
    if not path.is_symlink():
        return None
    target = path.parent / os.readlink(path)
    return target if target.parent == path.parent and target.name.endswith(".dcp") else None


def data_dir_to_read(path: str | os.PathLike) -> Path:
    """The data directory of the distributed checkpoint at ``path``: the directory itself, or the one
    its published link points to, resolved once (a save may swap the link meanwhile).
    ``UnsafeCheckpoint`` when the link leads out of the folder that holds it."""
    path = Path(path)
    data_dir = path.resolve()
    folder = path.parent.resolve()
    if path.is_symlink() and folder not in data_dir.parents:
        raise UnsafeCheckpoint(
            f"checkpoint {str(path)!r} links to {str(data_dir)!r}, outside its folder {str(folder)!r}: memzoo publishes "
            "a distributed checkpoint as a link to a data directory beside it, and reads nothing outside that folder"
        )
    return data_dir


def remove_distributed(path: str | os.PathLike) -> None:
    """Delete a published checkpoint: the link and its data directory."""
    path = Path(path)
    target = linked_data_dir(path)
    path.unlink()
    if target is not None:
        shutil.rmtree(target, ignore_errors=True)


def remove_unlinked_data(folder: Path) -> list[Path]:
    """Data directories in ``folder`` that no checkpoint links to (left by a process killed while
    saving, or before it removed the previous one); removes and returns them."""
    if not folder.is_dir():
        return []
    linked = {linked_data_dir(p) for p in folder.iterdir() if p.is_symlink()}
    stale = [p for p in folder.glob(".*.dcp") if p.is_dir() and not p.is_symlink() and p not in linked]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


class _Refused(pickle.UnpicklingError):
    """A pickle that names something other than tensor metadata."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint that would make memzoo read outside it, block on a non-regular file, or allocate
    more than its files hold."""


def file_inside(data_dir: Path, name: Any, what: str) -> Path:
    """``data_dir / name``, checked without opening it: ``name`` is one path component, and the file
    (after symlinks) is a regular file directly inside ``data_dir``. ``UnsafeCheckpoint`` naming
    ``what`` otherwise; an opened FIFO or device would block or never end."""
    try:
        return regular_file_inside(data_dir, name, f"checkpoint {str(data_dir)!r}: {what} {name!r}", "checkpoint")
    except ValueError as err:
        raise UnsafeCheckpoint(str(err)) from None


def _is_count(value: Any) -> bool:
    return is_int(value) and value >= 0


def _check_storage(metadata: Metadata, data_dir: Path) -> dict[str, int]:
    """Each storage entry of ``metadata`` -> a byte range inside a regular file of ``data_dir``, read
    as written (no transform: memzoo writes none, and one could inflate what is read). Returns the
    size of each data file."""
    entries = metadata.storage_data
    if not isinstance(entries, dict):
        raise UnsafeCheckpoint(f"checkpoint {str(data_dir)!r}: {METADATA_FILE} has no storage table")
    sizes: dict[str, int] = {}
    for index, info in entries.items():
        if (type(info).__module__, type(info).__name__) != DCP_STORAGE_INFO:  # by name: DCP exports no public one
            raise UnsafeCheckpoint(
                f"checkpoint {str(data_dir)!r}: {METADATA_FILE} has a storage entry of type {type(info).__name__}"
            )
        name = info.relative_path
        if name not in sizes:
            sizes[name] = file_inside(data_dir, name, f"{METADATA_FILE}'s data file").stat().st_size
        if not (_is_count(info.offset) and _is_count(info.length)) or info.offset + info.length > sizes[name]:
            raise UnsafeCheckpoint(
                f"checkpoint {str(data_dir)!r}: its tensor files are missing, truncated or corrupt: {METADATA_FILE} places "
                f"{getattr(index, 'fqn', index)!r} at offset {info.offset!r}, length {info.length!r} of {name!r}, "
                f"which holds {sizes[name]} bytes"
            )
        if getattr(info, "transform_descriptors", None):
            raise UnsafeCheckpoint(
                f"checkpoint {str(data_dir)!r}: {METADATA_FILE} asks to decode {name!r} with {info.transform_descriptors!r}; "
                "memzoo writes and reads plain tensor data only"
            )
    return sizes


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes, torch sizes and dtypes, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name} is not part of a checkpoint of tensors")


class _SafeReader(FileSystemReader):
    """DCP's file reader whose metadata goes through ``_MetadataUnpickler`` and whose storage
    entries are checked (``_check_storage``) before any data file is opened."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        data_dir = Path(self.path)
        with open(file_inside(data_dir, METADATA_FILE, "metadata file"), "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
        if not isinstance(metadata, Metadata):
            raise _Refused(f"{METADATA_FILE} holds a {type(metadata).__name__}, not DCP metadata")
        _check_storage(metadata, data_dir)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _read(data_dir: Path, templates: dict[str, torch.Tensor]) -> None:
    """Fill ``templates`` (tensors or DTensors, by DCP key) from ``data_dir``, each with the part it
    covers; this process alone (not a collective)."""
    if not templates:
        return
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ONE_PROCESS_WARNING)
            dcp.load(templates, storage_reader=_SafeReader(data_dir), no_dist=True)
    except CheckpointException as err:  # DCP wraps whatever failed while reading
        for failure in err.failures.values():
            if isinstance(failure[0], UnsafeCheckpoint):
                raise failure[0] from None
        raise ValueError(f"checkpoint {str(data_dir)!r}: its tensor files are missing, truncated or corrupt: {err}") from err


def read_metadata(data_dir: Path) -> Metadata:
    """The DCP metadata of ``data_dir``, its storage entries checked; ``ValueError`` for a missing,
    truncated or code-carrying one, ``UnsafeCheckpoint`` for one that points outside its files."""
    try:
        return _SafeReader(data_dir).read_metadata()
    except UnsafeCheckpoint:
        raise
    except _Refused as err:
        raise ValueError(
            f"checkpoint {str(data_dir)!r}: {METADATA_FILE} holds objects other than DCP's tensor metadata; "
            f"memzoo loads only those (no checkpoint may run code): {err}"
        ) from err
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"checkpoint {str(data_dir)!r}: {METADATA_FILE} is missing or truncated: {err}") from err


@dataclass
class SavedShards:
    """A tensor of a DCP checkpoint left on disk until its reader knows its layout: ``read(template)``
    fills ``template`` (a DTensor: this rank's part of it in any layout) and returns it. The last
    read is kept, so a tensor that appears twice (a table shared by layers) is read once."""

    data_dir: Path
    key: str
    shape: torch.Size
    dtype: torch.dtype
    _last: tuple | None = field(default=None, repr=False)

    def read(self, template: torch.Tensor) -> torch.Tensor:
        spec = (
            template.shape,
            template.dtype,
            template.device,
            getattr(template, "placements", None),
            getattr(template, "device_mesh", None),
        )
        if self._last is None or self._last[0] != spec:
            _read(self.data_dir, {self.key: template})
            self._last = (spec, template)
        return self._last[1]


def _checked_size(saved: Any, key: str, data_dir: Path) -> tuple[torch.Size, torch.dtype, int]:
    """A tensor's (shape, dtype, bytes) from its DCP metadata; ``ValueError`` if it is no tensor's."""
    if not isinstance(saved, TensorStorageMetadata):
        raise ValueError(f"checkpoint {str(data_dir)!r} lists tensor {key!r} that its DCP metadata lacks")
    size, dtype = saved.size, getattr(saved.properties, "dtype", None)
    if not isinstance(size, torch.Size) or not all(_is_count(n) for n in size) or not isinstance(dtype, torch.dtype):
        raise UnsafeCheckpoint(
            f"checkpoint {str(data_dir)!r}: {METADATA_FILE} gives tensor {key!r} size {size!r}, dtype {dtype!r}"
        )
    return size, dtype, math.prod(size) * dtype.itemsize


def fill_tensors(
    rest: dict[str, Any], data_dir: Path, whole: bool, check_shapes: Callable[[dict[str, torch.Size]], None] | None = None
) -> dict[str, Any]:
    """``checkpoint.pt``'s contents -> the checkpoint, its model and optimizer tensors read from
    ``data_dir``: replicated ones whole; sharded ones whole too with ``whole`` (one process), else as
    ``SavedShards`` for the loading modules to read their own parts of.

    Before any tensor is allocated, ``check_shapes`` (if given) sees the shape of each ``state_dict``
    entry (by its key) as the metadata states it, and the bytes the metadata describes are checked
    against the data files' sizes. ``ValueError`` for a checkpoint whose index and metadata disagree
    or whose metadata claims more than its files hold."""
    metadata = read_metadata(data_dir)
    checkpoint = dict(rest)
    index = checkpoint.pop(INDEX_KEY, None)
    if not isinstance(index, list) or not all(
        isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], list) and entry[0] and isinstance(entry[1], str)
        for entry in index
    ):
        raise ValueError(f"checkpoint {str(data_dir)!r}: {REST_FILE} lacks its {INDEX_KEY!r} index")
    saved = metadata.state_dict_metadata if isinstance(metadata.state_dict_metadata, dict) else {}
    sizes = {key: _checked_size(saved.get(key), key, data_dir) for _, key, _ in index}
    if check_shapes is not None:
        check_shapes({path[1]: sizes[key][0] for path, key, _ in index if len(path) == 2 and path[0] == "state_dict"})
    claimed = sum(nbytes for _, _, nbytes in sizes.values())  # each DCP key once: allocated once
    held = sum(_check_storage(metadata, data_dir).values())
    if claimed > held:
        key = max(sizes, key=lambda k: sizes[k][2])
        raise UnsafeCheckpoint(
            f"checkpoint {str(data_dir)!r}: {METADATA_FILE} describes {claimed:,} bytes of tensors (the largest "
            f"{key!r}, {tuple(sizes[key][0])} {sizes[key][1]}) but its data files hold {held:,} bytes; "
            "refused before allocating (a corrupt or forged checkpoint)"
        )
    values: dict[str, Any] = {}
    templates: dict[str, torch.Tensor] = {}
    for path, key, sharded in index:
        if key not in values:
            shape, dtype, _ = sizes[key]
            if sharded and not whole:
                values[key] = SavedShards(data_dir, key, shape, dtype)
            else:
                values[key] = templates[key] = torch.empty(shape, dtype=dtype)
        try:
            _set(checkpoint, path, values[key])
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"checkpoint {str(data_dir)!r}: {REST_FILE}'s index names {path!r}, which it lacks") from err
    _read(data_dir, templates)
    return checkpoint
