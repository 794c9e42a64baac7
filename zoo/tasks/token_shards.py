"""A prepared corpus on disk: token shards plus a manifest, written once by ``memzoo-prepare`` and
read by ``task=lm task.data=DIR`` through memory maps (no corpus and no window tensor in RAM).

Layout of the directory::

    manifest.json        what the shards hold (``Manifest``)
    tokenizer.json       the BPE or pretrained tokenizer (absent for bytes)
    train-00000.bin ...  each split's tokens, little-endian uint16 (vocabularies up to 65,536) or uint32

A split's tokens are its shards' tokens in order, one stream; example ``w`` of a run with windows of
``seq_len + 1`` tokens is that stream's tokens ``[w (seq_len + 1), (w + 1)(seq_len + 1))``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.core.dataclass_config import typed
from zoo.core.safe_read import MiB, read_json_file, regular_file_inside

FORMAT = "memzoo-token-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_MAX_BYTES = 64 * MiB
SPLITS = ("train", "val", "test")
DTYPES = {"uint16": 2**16, "uint32": 2**32}  # dtype -> the vocabularies it holds
HASH_CHUNK = 16 * MiB


def token_dtype(vocab_size: int) -> str:
    """The narrowest shard dtype whose ids cover ``[0, vocab_size)``."""
    for name, limit in DTYPES.items():
        if vocab_size <= limit:
            return name
    raise ValueError(f"task.vocab_size={vocab_size} exceeds the largest shard dtype (uint32: {DTYPES['uint32']:,} ids)")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Shard:
    """One file of a split: its name (inside the directory), its token count and SHA-256."""

    file: str
    tokens: int
    sha256: str


@dataclass
class SplitRecord:
    """A split's token and UTF-8 byte counts (bits per byte = nats * tokens / (bytes ln 2) over the
    split), its blocks (``memzoo-prepare``'s pieces of documents) and shards."""

    tokens: int = 0
    bytes: int = 0
    blocks: int = 0
    shards: list[Shard] = field(default_factory=list)


@dataclass
class Manifest:
    """``manifest.json``: format and version, the memzoo version that wrote it, the source, the
    tokenizer (``byte`` / ``bpe`` / ``pretrained``, its vocabulary size and the SHA-256 of its
    ``tokenizer.json``, None for bytes), the shard dtype and each split's record."""

    format: str
    format_version: int
    memzoo_version: str
    source: str
    tokenizer: str
    vocab_size: int
    tokenizer_sha256: str | None
    dtype: str
    splits: dict[str, SplitRecord]

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    """The manifest of the prepared directory ``folder``, checked: its types and keys, a known format
    and dtype, a vocabulary the dtype holds, every split present, every shard a regular file directly
    inside ``folder`` of exactly its tokens' size, and (``verify``) every shard's and the tokenizer's
    SHA-256. ``ValueError`` naming the directory and the problem otherwise."""
    folder = Path(folder)
    where = f"task.data={str(folder)!r}"
    if not folder.is_dir():
        raise ValueError(f"{where} is not a directory (make one with memzoo-prepare)")
    path = regular_file_inside(folder, MANIFEST, f"{where}: {MANIFEST}", "prepared corpus")
    manifest = typed(Manifest, read_json_file(path, MANIFEST_MAX_BYTES, f"{where}: {MANIFEST}"), f"{where}: {MANIFEST}")
    if manifest.format != FORMAT or manifest.format_version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: {MANIFEST} is format {manifest.format!r} v{manifest.format_version}, not {FORMAT!r} v{FORMAT_VERSION}"
        )
    if manifest.dtype not in DTYPES or manifest.vocab_size > DTYPES[manifest.dtype]:
        raise ValueError(
            f"{where}: dtype {manifest.dtype!r} cannot hold vocab_size={manifest.vocab_size}; allowed: {list(DTYPES)}"
        )
    if sorted(manifest.splits) != sorted(SPLITS):
        raise ValueError(f"{where}: {MANIFEST} has splits {sorted(manifest.splits)}, not {list(SPLITS)}")
    itemsize = np.dtype(manifest.dtype).itemsize
    for split, record in manifest.splits.items():
        if record.tokens != sum(shard.tokens for shard in record.shards):
            raise ValueError(f"{where}: the {split} split's shards do not add up to its {record.tokens} tokens")
        for shard in record.shards:
            file = regular_file_inside(folder, shard.file, f"{where}: shard {shard.file!r}", "prepared corpus")
            if file.stat().st_size != shard.tokens * itemsize:
                raise ValueError(
                    f"{where}: shard {shard.file!r} is {file.stat().st_size:,} bytes, not {shard.tokens:,} {manifest.dtype} "
                    "tokens: truncated or replaced; prepare the corpus again"
                )
            if verify and file_sha256(file) != shard.sha256:
                raise ValueError(
                    f"{where}: shard {shard.file!r} does not match its SHA-256 in {MANIFEST}: altered; prepare again"
                )
    if manifest.tokenizer_sha256 is not None:
        file = regular_file_inside(folder, TOKENIZER_FILE, f"{where}: {TOKENIZER_FILE}", "prepared corpus")
        if verify and file_sha256(file) != manifest.tokenizer_sha256:
            raise ValueError(f"{where}: {TOKENIZER_FILE} does not match its SHA-256 in {MANIFEST}: not the shards' tokenizer")
    return manifest


class ShardWriter:
    """Appends token arrays to a split's shards in ``folder``, a new shard each ``shard_tokens``
    tokens; ``close()`` returns the shards written."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, np.dtype(dtype).newbyteorder("<"), shard_tokens
        self.shards: list[Shard] = []
        self._file: BinaryIO | None = None

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file, self._digest, self._tokens = open(self.folder / name, "wb"), hashlib.sha256(), 0
        self.shards.append(Shard(name, 0, ""))

    def write(self, ids: np.ndarray) -> None:
        """Append ``ids`` (1-D integers, already checked against the vocabulary)."""
        ids = ids.astype(self.dtype, copy=False)
        while ids.size:
            if self._file is None or self._tokens == self.shard_tokens:
                self._finish()
                self._open()
            part, ids = ids[: self.shard_tokens - self._tokens], ids[self.shard_tokens - self._tokens :]
            data = part.tobytes()
            self._file.write(data)
            self._digest.update(data)
            self._tokens += part.size

    def _finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1] = Shard(self.shards[-1].file, self._tokens, self._digest.hexdigest())
            self._file = None

    def close(self) -> list[Shard]:
        self._finish()
        return self.shards


class ShardWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens of one split of a prepared directory, read from memory-mapped
    shards as they are asked for: item ``w`` is ``{"inputs": (seq_len,), "targets": (seq_len,)}``
    (int64), the window's tokens shifted by one, every target scored. The maps open lazily, so the
    dataset pickles small into DataLoader workers."""

    def __init__(self, folder: Path, manifest: Manifest, split: str, seq_len: int):
        record = manifest.splits[split]
        self.files = [folder / shard.file for shard in record.shards]
        self.starts = np.cumsum([0] + [shard.tokens for shard in record.shards])
        self.dtype, self.seq_len = manifest.dtype, seq_len
        self.num_windows = int(record.tokens // (seq_len + 1))
        self._maps: list[np.memmap] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def _tokens(self, start: int, stop: int) -> np.ndarray:
        """The split's tokens ``[start, stop)``, across shard boundaries."""
        if self._maps is None:
            self._maps = [np.memmap(file, dtype=np.dtype(self.dtype).newbyteorder("<"), mode="r") for file in self.files]
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        while start < stop:
            offset = start - self.starts[first]
            part = self._maps[first][offset : offset + stop - start]
            parts.append(part)
            start += part.size
            first += 1
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def __len__(self) -> int:
        return self.num_windows

    @property
    def shape(self) -> tuple[int, int]:
        """(windows, seq_len), as a tensor dataset's inputs."""
        return (self.num_windows, self.seq_len)

    def id_range(self) -> tuple[int, int]:
        """The least and greatest token id of the windows (a scan of the maps)."""
        ids = self._tokens(0, self.num_windows * (self.seq_len + 1)) if self.num_windows else np.zeros(1, dtype=np.int64)
        return int(ids.min()), int(ids.max())

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not 0 <= idx < self.num_windows:
            raise IndexError(f"window {idx} of {self.num_windows}")
        span = self.seq_len + 1
        window = torch.from_numpy(self._tokens(idx * span, (idx + 1) * span).astype(np.int64))
        return {"inputs": window[:-1], "targets": window[1:]}
