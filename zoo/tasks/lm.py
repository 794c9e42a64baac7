"""Language modeling on real text: next-token prediction over windows of a byte or BPE token stream.

The corpus (by default the Python interpreter's own standard library, so no download and no path is
needed) is cut, on UTF-8 character boundaries, into three contiguous byte ranges: train is the first
``1 - val_fraction - test_fraction`` of it, then val, then test. Each split is tokenized on its own
(bytes, or a byte-level BPE trained on the train split only) and cut into consecutive,
non-overlapping windows of ``seq_len + 1`` tokens; an example is ``inputs = window[:-1]``,
``targets = window[1:]``, every position scored. ``bytes_per_token`` turns the loss in nats per
token into bits per byte (``zoo.training.metrics.bits_per_byte``), a number comparable across tokenizers.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import torch

from zoo.core.safe_read import TOKENIZER_MAX_BYTES, bounded_size, regular_file_inside
from zoo.tasks.base import TOKEN_BYTES, GeneratedDataModule, check_int_option
from zoo.tasks.token_shards import Manifest, ShardWindows, read_manifest

BYTE_VOCAB_SIZE = 256
BYTES_PER_CORPUS_BYTE = 4 + 3 * TOKEN_BYTES + 2  # text copies, ids, inputs + targets, numpy/torch temporaries
TOKENIZERS = ("byte", "bpe", "pretrained")
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings"})
_TOPICS = ("pydoc_data", "topics.py")


def _utf8_boundary(data: bytes, i: int) -> int:
    """The largest offset <= i that does not fall inside a UTF-8 character of ``data``."""
    while 0 < i < len(data) and data[i] & 0xC0 == 0x80:
        i -= 1
    return i


def _cap(data: bytes, max_bytes: int | None) -> bytes:
    """``data`` cut to at most ``max_bytes`` bytes on a character boundary (``None`` = no cap)."""
    return data if max_bytes is None else data[: _utf8_boundary(data, max_bytes)]


REPLACEMENT = "\ufffd"
CONTROLS = re.compile("[\x00-\x08\x0e-\x1f]")  # control characters but tab, newlines, vertical tab, form feed
MAX_NON_TEXT_FRACTION = 0.05  # a corpus with more undecodable or control characters is not text


def _utf8(raw: bytes) -> bytes:
    """``raw`` as valid UTF-8: undecodable bytes become U+FFFD, so byte-level BPE sees the same bytes."""
    return raw.decode("utf-8", errors="replace").encode("utf-8")


def text_report(corpus: bytes) -> dict[str, int]:
    """Characters of a repaired (``_utf8``) corpus, how many are U+FFFD (undecodable byte sequences
    replaced while reading, or the rare genuine one), and how many are control characters other than
    tab, newlines, vertical tab and form feed."""
    text = corpus.decode("utf-8")
    controls = len(CONTROLS.findall(text))
    return {"chars": len(text), "replaced": text.count(REPLACEMENT), "controls": controls}


UTF8_MAX_CHAR = 4  # bytes of the longest UTF-8 character


def _read_files(files: list[Path], max_bytes: int | None) -> bytes:
    """The files' contents, in order, as repaired UTF-8, read until ``max_bytes`` is reached: of each
    file only what is still missing (plus the rest of a character cut at the end), never a whole
    large file first."""
    parts, total = [], 0
    for file in files:
        if max_bytes is not None and total >= max_bytes:
            break
        with open(file, "rb") as f:
            # a character starting before the cap is read whole, so it decodes as in the whole file
            parts.append(_utf8(f.read() if max_bytes is None else f.read(max_bytes - total + UTF8_MAX_CHAR)))
        total += len(parts[-1])
    return _cap(b"".join(parts), max_bytes)


def stdlib_files() -> list[Path]:
    """The ``.py`` files of the default corpus, sorted by their path relative to the stdlib directory."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        found += [Path(folder, f).relative_to(root) for f in files if f.endswith(".py")]
    return [root / p for p in sorted(found) if p.parts != _TOPICS]


def stdlib_docs() -> bytes:
    """The reference-manual text of ``pydoc_data/topics.py`` (its ``topics`` values, sorted by key), or b""."""
    topics_file = Path(sysconfig.get_paths()["stdlib"]).joinpath(*_TOPICS)
    if not topics_file.is_file():
        return b""
    for node in ast.parse(topics_file.read_bytes()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
            return "".join(topics[key] for key in sorted(topics)).encode("utf-8")
    return b""


def stdlib_corpus(max_bytes: int | None = None) -> bytes:
    """The default corpus, the same bytes on every call of the same interpreter, gathered as:

    1. ``stdlib_docs()``: the documentation text in ``pydoc_data/topics.py`` (the reference-manual
       sections behind ``help("topic")``), if present: the values of its ``topics`` dict in sorted
       key order;
    2. ``stdlib_files()``: every ``.py`` file under ``sysconfig.get_paths()["stdlib"]``, in sorted
       order of its relative path, skipping directories named ``site-packages`` / ``dist-packages``
       (third-party code), ``test`` / ``tests`` / ``idle_test`` (test suites) and ``encodings``
       (generated codec tables), and ``pydoc_data/topics.py`` itself.

    Files are concatenated verbatim (invalid UTF-8 replaced by U+FFFD), read only until ``max_bytes``
    is reached, and the whole is cut to ``max_bytes`` on a character boundary (``None`` = all of
    it, about 10.4 MB on CPython 3.11).
    """
    docs = _cap(stdlib_docs(), max_bytes)
    remaining = None if max_bytes is None else max_bytes - len(docs)
    return docs + _read_files(stdlib_files(), remaining)


def _check_path(path: str | Path) -> None:
    if not Path(path).exists():
        raise ValueError(f"task.path={str(path)!r} does not exist; give a text file or a directory of them")


def path_corpus(path: str | Path, max_bytes: int | None = None) -> bytes:
    """A text file, or every file under a directory (recursively, sorted by relative path), concatenated."""
    _check_path(path)
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return _read_files(files, max_bytes)


def hf_corpus(name: str, split: str, text_field: str, max_bytes: int | None = None) -> bytes:
    """Records of a Hugging Face dataset (streamed, in order), their ``text_field`` joined by blank lines."""
    import datasets

    parts, total = [], 0
    for record in datasets.load_dataset(name, split=split, streaming=True):
        if max_bytes is not None and total >= max_bytes:
            break
        if text_field not in record:
            raise ValueError(f"task.hf_text_field={text_field!r} is not a field of {name!r}; fields: {sorted(record)}")
        parts.append(str(record[text_field]).encode("utf-8", errors="replace") + b"\n\n")
        total += len(parts[-1])
    return _cap(b"".join(parts), max_bytes)


def split_corpus(corpus: bytes, val_fraction: float, test_fraction: float) -> dict[str, bytes]:
    """Contiguous train / val / test byte ranges of ``corpus`` (val and test ``round(fraction * len)`` bytes,
    taken from the end), cut on UTF-8 character boundaries."""
    n = len(corpus)
    test_start = _utf8_boundary(corpus, n - round(n * test_fraction))
    val_start = _utf8_boundary(corpus, test_start - round(n * val_fraction))
    return {"train": corpus[:val_start], "val": corpus[val_start:test_start], "test": corpus[test_start:]}


def train_bpe(text: bytes, vocab_size: int):
    """A byte-level BPE (``tokenizers.Tokenizer``) trained on ``text`` up to ``vocab_size`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([text.decode("utf-8")], trainer=trainer)
    return tokenizer


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte -> that byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = iter(range(256, 512))
    return {chr(b if b in printable else next(stand_ins)): b for b in range(256)}


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each id of a byte-level BPE ``tokenizer`` stands for, indexed by id."""
    chars = _byte_level_chars()
    vocab = tokenizer.get_vocab()
    table = [b""] * len(vocab)
    for token, idx in vocab.items():
        table[idx] = bytes(chars[c] for c in token)
    return table


def load_tokenizer(path: str | Path | None):
    """A ``tokenizers.Tokenizer`` from ``path`` (a ``tokenizer.json``, or a directory holding one);
    ``ValueError`` naming the path when there is none."""
    if path is None:
        raise ValueError(
            "task.tokenizer=pretrained reads a pretrained tokenizer.json: set init.pretrained=DIR (its directory's) "
            "or task.tokenizer_path=PATH"
        )
    _require("tokenizers", "tokenizer", "pretrained", "reads a pretrained tokenizer.json with the `tokenizers` library")
    from tokenizers import Tokenizer

    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    if not (file.exists() or file.is_symlink()):
        raise ValueError(f"task.tokenizer_path={str(path)!r}: no tokenizer.json there (a slow tokenizer alone is not read)")
    where = f"task.tokenizer_path={str(path)!r}: {file.name!r}"
    bounded_size(regular_file_inside(file.parent, file.name, where, "tokenizer"), TOKENIZER_MAX_BYTES, str(file))
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises its own Exception type on a malformed file
        raise ValueError(f"task.tokenizer_path={str(path)!r}: {file} is not a tokenizers file: {err}") from err


def windows(ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N,) -> (inputs, targets), each (N // (seq_len + 1), seq_len): consecutive windows, shifted by one."""
    rows = ids[: ids.numel() // (seq_len + 1) * (seq_len + 1)].view(-1, seq_len + 1)
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def _require(package: str, field: str, value: object, why: str) -> None:
    """Raise ``ValueError`` naming ``field`` when the optional ``package`` is not importable."""
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"task.{field}={value!r} {why}, but `{package}` is not installed: pip install {package}")


def read_prepared(data: str, tokenizer: str, vocab_size: int, pretrained, source: str | None) -> Manifest:
    """The manifest of the prepared directory ``task.data`` (``read_manifest``: shards checked), made
    with the run's tokenizer: the same ``task.tokenizer`` and ``task.vocab_size``, or for
    ``pretrained`` the same ``tokenizer.json``; ``ValueError`` naming both otherwise, or a source
    (``task.path`` / ``task.hf_dataset``) set beside it."""
    if source is not None:
        raise ValueError(
            f"task.data={data!r} is a prepared corpus; task.path / task.hf_dataset={source!r} cannot be set beside it"
        )
    manifest = read_manifest(data)
    if pretrained is not None:
        if hashlib.sha256(pretrained.to_str().encode()).hexdigest() != manifest.tokenizer_sha256:
            raise ValueError(f"task.data={data!r} was prepared with another tokenizer than task.tokenizer_path's")
    elif (tokenizer, vocab_size) != (manifest.tokenizer, manifest.vocab_size):
        raise ValueError(
            f"task.data={data!r} was prepared with task.tokenizer={manifest.tokenizer} task.vocab_size={manifest.vocab_size}; "
            f"this run has task.tokenizer={tokenizer} task.vocab_size={vocab_size}: set those, or prepare it again"
        )
    return manifest


class LanguageModelingDataModule(GeneratedDataModule):
    """Next-token prediction on the default stdlib corpus, a local ``path``, or a Hugging Face dataset.

    Args:
        vocab_size: 256 for ``tokenizer="byte"``; the BPE vocabulary size (> 256) for ``"bpe"``; not
            read for ``"pretrained"`` (the tokenizer's own size).
        tokenizer: ``"byte"`` (token = byte), ``"bpe"`` (byte-level BPE, ``tokenizers``, trained on
            the train split only) or ``"pretrained"`` (a pretrained model's ``tokenizer.json``).
        tokenizer_path: for ``tokenizer="pretrained"``, a ``tokenizer.json`` or the directory holding
            it; ``memzoo-train init.pretrained=DIR`` sets it to DIR when left null.
        seq_len: tokens per example; windows hold ``seq_len + 1`` tokens.
        path: a text file or a directory (all files under it, sorted) instead of the default corpus.
        hf_dataset, hf_split, hf_text_field: a Hugging Face dataset instead (needs ``datasets`` and
            network); records' ``hf_text_field`` joined by blank lines.
        max_bytes: cap on the corpus size before splitting (``None`` = all of it).
        allow_binary: read a corpus that is mostly not text (more than 5% undecodable or control characters).
        data: a directory ``memzoo-prepare`` wrote: its splits are streamed from memory-mapped token
            shards (nothing tokenized, no corpus in RAM); ``tokenizer`` and ``vocab_size`` must be
            the ones it was prepared with.
        val_fraction, test_fraction: shares of the corpus bytes for the val and test splits (taken
            from the end, test last).
        batch_size, seed, num_workers: see ``GeneratedDataModule``.

    After ``setup``: ``bytes_per_token[split]`` = bytes covered by the split's targets / number of
    targets (1.0 for bytes; for a pretrained tokenizer, whose tokens need not be byte-level, the
    split's bytes / its tokens), ``split_bytes[split]`` the split's text, and ``tokenizer`` the trained
    ``tokenizers.Tokenizer`` (``None`` for bytes).
    """

    def __init__(
        self,
        vocab_size: int = BYTE_VOCAB_SIZE,
        tokenizer: str = "byte",
        tokenizer_path: str | None = None,
        seq_len: int = 128,
        path: str | None = None,
        hf_dataset: str | None = None,
        hf_split: str = "train",
        hf_text_field: str = "text",
        max_bytes: int | None = 4_000_000,
        allow_binary: bool = False,
        data: str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        check_int_option("vocab_size", vocab_size, 2)
        check_int_option("seq_len", seq_len, 1)
        check_int_option("max_bytes", max_bytes, 1, null="no cap")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"task.tokenizer={tokenizer!r} is not a tokenizer; allowed: {list(TOKENIZERS)}")
        if tokenizer == "byte" and vocab_size != BYTE_VOCAB_SIZE:
            raise ValueError(f"task.vocab_size={vocab_size} must be {BYTE_VOCAB_SIZE} with task.tokenizer='byte'")
        if tokenizer == "bpe":
            if vocab_size <= BYTE_VOCAB_SIZE:
                raise ValueError(
                    f"task.vocab_size={vocab_size} must be > {BYTE_VOCAB_SIZE} with task.tokenizer='bpe' "
                    "(256 byte tokens plus merges)"
                )
            _require("tokenizers", "tokenizer", tokenizer, "trains a BPE with the `tokenizers` library")
        self.tokenizer = None
        if tokenizer == "pretrained":
            self.tokenizer = load_tokenizer(tokenizer_path)
            vocab_size = self.tokenizer.get_vocab_size()
        for name, value in [("val_fraction", val_fraction), ("test_fraction", test_fraction)]:
            if not 0 < value < 1:
                raise ValueError(f"task.{name}={value} must be in (0, 1)")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"task.val_fraction={val_fraction} + task.test_fraction={test_fraction} must be < 1 (the rest is the train split)"
            )
        if path is not None and hf_dataset is not None:
            raise ValueError(f"task.path={path!r} and task.hf_dataset={hf_dataset!r} are exclusive; set one or neither")
        self.prepared = None if data is None else read_prepared(data, tokenizer, vocab_size, self.tokenizer, path or hf_dataset)
        if self.prepared is not None:
            vocab_size = self.prepared.vocab_size
        if path is not None:
            _check_path(path)
        if hf_dataset is not None:
            _require("datasets", "hf_dataset", hf_dataset, "downloads a Hugging Face dataset (network access)")
        if max_bytes is not None:
            smallest = min(val_fraction, test_fraction, 1 - val_fraction - test_fraction)
            if max_bytes * smallest < seq_len + 1:
                raise ValueError(
                    f"task.max_bytes={max_bytes} leaves the smallest split about {int(max_bytes * smallest)} bytes, "
                    f"fewer than one window of seq_len + 1 = {seq_len + 1} tokens"
                )
        self.vocab_size = vocab_size
        self.data = data
        self.tokenizer_name = tokenizer
        self.seq_len = seq_len
        self.path = path
        self.hf = (hf_dataset, hf_split, hf_text_field)
        self.max_bytes = max_bytes
        self.allow_binary = allow_binary
        self.corpus_report: dict[str, int] = {}
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_bytes: dict[str, bytes] = {}
        self.bytes_per_token: dict[str, float] = {}
        self._ids: dict[str, torch.Tensor] = {}
        self._token_bytes: torch.Tensor | None = None
        self._split_bytes_per_token: dict[str, float] = {}

    @property
    def max_seq_len(self) -> int:
        return self.seq_len

    size_keys = "task.max_bytes"

    def corpus_bytes(self) -> int | None:
        """The corpus size before reading it: ``max_bytes``, or the files' sizes when they are less or
        there is no cap; None for a Hugging Face dataset without a cap (not known before streaming)."""
        if self.path is not None:
            path = Path(self.path)
            files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
            size = sum(p.stat().st_size for p in files)
            return size if self.max_bytes is None else min(size, self.max_bytes)
        if self.hf[0] is not None:
            return self.max_bytes
        if self.max_bytes is not None:
            return self.max_bytes
        return sum(p.stat().st_size for p in stdlib_files()) + len(stdlib_docs())

    def data_bytes(self, splits=None) -> int:
        """``BYTES_PER_CORPUS_BYTE`` per corpus byte: the text and its repaired copy, the split copies,
        int64 token ids and the windows' int64 inputs and targets (all splits: the corpus is read and
        tokenized whole); 0 when the size is not known before reading (``corpus_bytes``), and for a
        prepared directory (``task.data``: memory-mapped, read as the batches are drawn)."""
        return 0 if self.prepared is not None else BYTES_PER_CORPUS_BYTE * (self.corpus_bytes() or 0)

    def load_corpus(self) -> bytes:
        """The configured corpus, capped at ``max_bytes``."""
        if self.path is not None:
            return path_corpus(self.path, self.max_bytes)
        if self.hf[0] is not None:
            return hf_corpus(*self.hf, max_bytes=self.max_bytes)
        return stdlib_corpus(self.max_bytes)

    def _source(self) -> str:
        if self.path is not None:
            return f"task.path={self.path!r}"
        return f"task.hf_dataset={self.hf[0]!r}" if self.hf[0] is not None else "the default stdlib corpus"

    def _tokenize(self) -> None:
        """Load and split the corpus, build the tokenizer on train, and encode every split to ids."""
        corpus = self.load_corpus()
        if not corpus:
            raise ValueError(f"{self._source()} gives an empty corpus")
        self.corpus_report = report = text_report(corpus)
        non_text = (report["replaced"] + report["controls"]) / max(1, report["chars"])
        if non_text > MAX_NON_TEXT_FRACTION and not self.allow_binary:
            raise ValueError(
                f"{self._source()} does not look like text: {report['replaced']} undecodable byte sequences and "
                f"{report['controls']} control characters in {report['chars']} characters ({non_text:.0%} > "
                f"{MAX_NON_TEXT_FRACTION:.0%}); pass task.allow_binary=true to train on it anyway"
            )
        if report["replaced"]:
            warnings.warn(f"{self._source()}: {report['replaced']} undecodable byte sequences replaced by U+FFFD", stacklevel=2)
        self.split_bytes = split_corpus(corpus, self.val_fraction, self.test_fraction)
        if self.tokenizer_name == "bpe":
            self.tokenizer = train_bpe(self.split_bytes["train"], self.vocab_size)
            self._token_bytes = torch.tensor([len(b) for b in token_bytes(self.tokenizer)], dtype=torch.float64)
        split_ids = {}
        for split, text in self.split_bytes.items():
            if self.tokenizer is None:
                ids = torch.from_numpy(np.frombuffer(text, dtype=np.uint8).astype(np.int64))
            else:
                encoded = self.tokenizer.encode(text.decode("utf-8"), add_special_tokens=False)
                ids = torch.tensor(encoded.ids, dtype=torch.long)
            if ids.numel() < self.seq_len + 1:
                sizes = ", ".join(f"{s} {len(b)} bytes" for s, b in self.split_bytes.items())
                raise ValueError(
                    f"{self._source()} is too short (task.max_bytes={self.max_bytes}): the {split} split has "
                    f"{ids.numel()} tokens, fewer than one window of task.seq_len + 1 = {self.seq_len + 1} ({sizes})"
                )
            split_ids[split] = ids
            if self.tokenizer_name == "pretrained":
                self._split_bytes_per_token[split] = len(text) / ids.numel()
        self._ids = split_ids

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is not None:
            self._stream()
            return
        if not self._ids:
            self._tokenize()
        super().setup(stage)

    def _stream(self) -> None:
        """The splits of the prepared directory as windows read from its memory-mapped shards;
        bits per byte from the manifest's byte and token counts of each split."""
        for split in self.splits:
            if split in self.datasets:
                continue
            record = self.prepared.splits[split]
            windows = ShardWindows(Path(self.data), self.prepared, split, self.seq_len)
            if len(windows) == 0:
                raise ValueError(
                    f"task.data={self.data!r}: the {split} split has {record.tokens} tokens, fewer than one window of "
                    f"task.seq_len + 1 = {self.seq_len + 1}; lower task.seq_len or prepare a larger source"
                )
            self.datasets[split] = windows
            self.bytes_per_token[split] = record.bytes / record.tokens

    def generate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = windows(self._ids[split], self.seq_len)
        if split in self._split_bytes_per_token:
            self.bytes_per_token[split] = self._split_bytes_per_token[split]
        elif self._token_bytes is None:
            self.bytes_per_token[split] = 1.0
        else:
            self.bytes_per_token[split] = float(self._token_bytes[targets].mean())
        return inputs, targets
