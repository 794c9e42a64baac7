"""``memzoo-prepare task.path=DIR out=OUT [task.tokenizer=bpe task.vocab_size=4096 ...]``: tokenize a
text source once into token shards and a manifest (``zoo.tasks.token_shards``), which
``memzoo-train task=lm task.data=OUT`` streams.

The source is the lm task's: the default stdlib corpus, ``task.path`` (a text file, or every file
under a directory, sorted; ``.jsonl`` files are JSON lines whose ``task.hf_text_field`` is the text),
or ``task.hf_dataset`` (streamed record by record, never held whole). Its documents are cut into
blocks of at most ``block_bytes`` (at a line end where there is one); block ``k`` goes to test, val
or train by where ``k + 1`` times the golden ratio falls in [0, 1) (below ``test_fraction``: test, below
``test_fraction + val_fraction``: val), so the splits are spread evenly over the source and fixed by
it. The tokenizer: bytes; a byte-level BPE trained on the first ``bpe_sample_bytes`` of the train
blocks; or ``task.tokenizer_path``'s pretrained ``tokenizer.json``. Blocks are tokenized by
``processes`` worker processes in order, so the shards are the same bytes for any number of them.
The directory is written as ``OUT.partial`` and renamed to ``OUT`` when complete; an interrupted
prepare leaves only ``OUT.partial``, which the next prepare of ``OUT`` removes and starts again.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from zoo.core.command_line import hydra_flags, run_composed, usage_errors
from zoo.core.dataclass_config import plain, typed
from zoo.core.value_checks import check_int
from zoo.tasks import task_options
from zoo.tasks.lm import (
    CONTROLS,
    MAX_NON_TEXT_FRACTION,
    REPLACEMENT,
    LanguageModelingDataModule,
    stdlib_docs,
    stdlib_files,
    train_bpe,
)
from zoo.tasks.token_shards import (
    FORMAT,
    FORMAT_VERSION,
    SPLITS,
    TOKENIZER_FILE,
    Manifest,
    ShardWriter,
    SplitRecord,
    file_sha256,
    token_dtype,
)

GOLDEN = (math.sqrt(5) - 1) / 2
BATCH_BLOCKS = 64  # blocks handed to the workers at once: what the prepare holds in memory, per worker


@dataclass
class PrepareOptions:
    """``prepare.yaml``'s own keys: the output directory, worker processes, tokens per shard, the
    largest block a document is cut into, the train text a BPE is trained on, and whether an
    existing ``out`` is replaced."""

    out: str
    processes: int
    shard_tokens: int
    block_bytes: int
    bpe_sample_bytes: int
    overwrite: bool


@dataclass
class PrepareRun:
    """A checked ``memzoo-prepare`` config: its options and the lm task that names the source and
    the tokenizer (checked as a run's would be; nothing read yet)."""

    options: PrepareOptions
    task: LanguageModelingDataModule

    @classmethod
    def check(cls, cfg: DictConfig) -> PrepareRun:
        options = typed(PrepareOptions, {key: cfg[key] for key in PrepareOptions.__dataclass_fields__}, "")
        for key, low in (("processes", 1), ("shard_tokens", 1), ("block_bytes", 64), ("bpe_sample_bytes", 1)):
            check_int(key, getattr(options, key), low=low)
        task = task_options(plain(cfg.task))
        if task["name"] != "lm":
            raise ValueError(f"task={task['name']!r}: memzoo-prepare tokenizes text for task=lm")
        out = Path(options.out)
        if out.exists() and not options.overwrite:
            raise ValueError(f"out={options.out!r} already exists: pass overwrite=true to replace it, or choose another out")
        if not out.parent.is_dir():
            raise ValueError(f"out={options.out!r}: its parent directory does not exist")
        task.pop("name")
        return cls(options, LanguageModelingDataModule(**task))


def _blocks_of(text: str, block_bytes: int) -> Iterator[str]:
    """``text`` in pieces of at most ``block_bytes`` UTF-8 bytes (about: cut by characters at
    ``block_bytes // 4`` and later, ending at a newline where there is one)."""
    size = max(1, block_bytes // 4)  # a character is at most 4 bytes
    start = 0
    while start < len(text):
        stop = min(len(text), start + size)
        if stop < len(text):
            newline = text.rfind("\n", start + size // 2, stop)
            stop = newline + 1 if newline >= 0 else stop
        yield text[start:stop]
        start = stop


def _documents(task: LanguageModelingDataModule) -> Iterator[str]:
    """The source's documents (files, JSON lines, records) as text, in order; undecodable bytes as U+FFFD."""
    name, split, field = task.hf
    if task.path is not None:
        path = Path(task.path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if file.suffix == ".jsonl":
                with open(file, encoding="utf-8", errors="replace") as lines:
                    for number, line in enumerate(lines, 1):
                        if line.strip():
                            yield _record_text(json.loads(line), field, f"{file}:{number}")
            else:
                yield file.read_bytes().decode("utf-8", errors="replace")
    elif name is not None:
        import datasets

        for number, record in enumerate(datasets.load_dataset(name, split=split, streaming=True)):
            yield _record_text(record, field, f"task.hf_dataset={name!r} record {number}")
    else:
        yield stdlib_docs().decode("utf-8")
        for file in stdlib_files():
            yield file.read_bytes().decode("utf-8", errors="replace")


def _record_text(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: no text field task.hf_text_field={field!r} (fields: {fields})")
    return str(record[field])


def split_of(block: int, val_fraction: float, test_fraction: float) -> str:
    """The split of block number ``block``: by where ``block + 1`` times the golden ratio falls in
    [0, 1) (the first block, at 0.618, trains)."""
    position = ((block + 1) * GOLDEN) % 1.0
    return "test" if position < test_fraction else "val" if position < test_fraction + val_fraction else "train"


def _blocks(task: LanguageModelingDataModule, block_bytes: int) -> Iterator[tuple[str, str]]:
    """(split, text) of every block of the source, in order, stopping at ``task.max_bytes`` bytes."""
    blocks = (block for doc in _documents(task) for block in _blocks_of(doc, block_bytes))
    total = 0
    for number, text in enumerate(blocks):
        if task.max_bytes is not None and total >= task.max_bytes:
            return
        data = text.encode("utf-8")
        if task.max_bytes is not None and total + len(data) > task.max_bytes:
            text = data[: task.max_bytes - total].decode("utf-8", errors="ignore")
        total += len(text.encode("utf-8"))
        yield split_of(number, task.val_fraction, task.test_fraction), text


_TOKENIZER = None  # the worker's tokenizer, loaded once per process


def _load_worker(tokenizer_json: str | None) -> None:
    global _TOKENIZER
    _TOKENIZER = None  # bytes; never the tokenizer an earlier prepare in this process left
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        _TOKENIZER = Tokenizer.from_str(tokenizer_json)


def _encode(text: str) -> tuple[np.ndarray, int, int]:
    """(token ids, UTF-8 bytes, characters that are not text: U+FFFD or control) of one block."""
    data = text.encode("utf-8")
    if _TOKENIZER is None:
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint32)
    else:
        ids = np.asarray(_TOKENIZER.encode(text, add_special_tokens=False).ids, dtype=np.uint32)
    non_text = text.count(REPLACEMENT) + len(CONTROLS.findall(text))  # as text_report counts them
    return ids, len(data), non_text


def _tokenizer_json(task: LanguageModelingDataModule, options: PrepareOptions) -> str | None:
    """The tokenizer as ``tokenizer.json`` text: None for bytes, the pretrained one as it is, or a
    BPE trained on the first ``bpe_sample_bytes`` of the train blocks."""
    if task.tokenizer_name == "byte":
        return None
    if task.tokenizer_name == "pretrained":
        return task.tokenizer.to_str()
    sample, size = [], 0
    for split, text in _blocks(task, options.block_bytes):
        if split == "train":
            sample.append(text)
            size += len(text.encode("utf-8"))
            if size >= options.bpe_sample_bytes:
                break
    if not sample:
        raise ValueError(f"{_source(task)} gives no train text to train the BPE on")
    return train_bpe("".join(sample).encode("utf-8"), task.vocab_size).to_str()


def _source(task: LanguageModelingDataModule) -> str:
    if task.path is not None:
        return f"task.path={task.path!r}"
    return f"task.hf_dataset={task.hf[0]!r}" if task.hf[0] is not None else "the default stdlib corpus"


class Progress:
    """A progress line on stderr at most every ``every`` seconds: MB read, MB/s and, when the source
    size is known, the ETA."""

    def __init__(self, total_bytes: int | None, every: float = 2.0):
        self.total, self.every, self.started, self.shown = total_bytes, every, time.perf_counter(), 0.0

    def update(self, done_bytes: int, final: bool = False) -> None:
        now = time.perf_counter() - self.started
        if not final and now - self.shown < self.every:
            return
        self.shown = now
        rate = done_bytes / max(now, 1e-9)
        line = f"memzoo-prepare: {done_bytes / 1e6:,.1f} MB in {now:.0f} s ({rate / 1e6:.1f} MB/s)"
        if self.total and not final:
            line += f", ETA {max(0.0, (self.total - done_bytes) / max(rate, 1e-9)):.0f} s"
        print(line, file=sys.stderr, flush=True)


def prepare(run: PrepareRun) -> Manifest:
    """Write ``run.options.out``: every block of the source tokenized into its split's shards, the
    tokenizer and the manifest, in ``OUT.partial`` renamed to ``OUT`` when complete. ``ValueError``
    (``OUT.partial`` removed) for an empty source, a source that is not text (more than 5% of its
    characters undecodable or control, unless ``task.allow_binary``), or ids the dtype cannot hold."""
    task, options = run.task, run.options
    out = Path(options.out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted prepare's: start again
    partial.mkdir()
    try:
        manifest = _write(task, options, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return manifest


def _write(task: LanguageModelingDataModule, options: PrepareOptions, folder: Path) -> Manifest:
    tokenizer_json = _tokenizer_json(task, options)
    if tokenizer_json is None:
        vocab_size = task.vocab_size
    else:
        from tokenizers import Tokenizer

        vocab_size = Tokenizer.from_str(tokenizer_json).get_vocab_size()
        if task.tokenizer_name == "bpe" and vocab_size != task.vocab_size:
            raise ValueError(
                f"{_source(task)}: a BPE trained on its first {options.bpe_sample_bytes:,} train bytes reaches {vocab_size} "
                f"tokens, not task.vocab_size={task.vocab_size}; lower task.vocab_size or raise bpe_sample_bytes"
            )
    dtype = token_dtype(vocab_size)
    if tokenizer_json is not None:
        (folder / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")  # byte-level BPE tokens are not ASCII
    writers = {split: ShardWriter(folder, split, dtype, options.shard_tokens) for split in SPLITS}
    records = {split: SplitRecord() for split in SPLITS}
    progress = Progress(task.corpus_bytes() if task.hf[0] is None else task.max_bytes)
    done = non_text = 0
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(options.processes, _load_worker, (tokenizer_json,)) if options.processes > 1 else None
    _load_worker(tokenizer_json)
    try:
        blocks = _blocks(task, options.block_bytes)
        while batch := list(itertools.islice(blocks, BATCH_BLOCKS * options.processes)):
            texts = [text for _, text in batch]
            encoded = pool.map(_encode, texts) if pool is not None else [_encode(text) for text in texts]
            for (split, _), (ids, size, bad) in zip(batch, encoded):
                if ids.size and int(ids.max()) >= vocab_size:
                    raise ValueError(f"the tokenizer gives id {int(ids.max())}, outside its vocabulary of {vocab_size}")
                writers[split].write(ids)
                record = records[split]
                record.tokens += ids.size
                record.bytes += size
                record.blocks += 1
                done, non_text = done + size, non_text + bad
            progress.update(done)
    finally:
        if pool is not None:
            pool.terminate()
    for split in SPLITS:
        records[split].shards = writers[split].close()
    if done == 0:
        raise ValueError(f"{_source(task)} gives an empty corpus")
    if non_text > MAX_NON_TEXT_FRACTION * done and not task.allow_binary:
        raise ValueError(
            f"{_source(task)} does not look like text: {non_text} of its characters are undecodable or control "
            f"(> {MAX_NON_TEXT_FRACTION:.0%}); pass task.allow_binary=true to prepare it anyway"
        )
    progress.update(done, final=True)
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        memzoo_version=version("memzoo"),
        source=_source(task),
        tokenizer=task.tokenizer_name,
        vocab_size=vocab_size,
        tokenizer_sha256=None if tokenizer_json is None else file_sha256(folder / TOKENIZER_FILE),
        dtype=dtype,
        splits=records,
    )
    manifest.write(folder)
    return manifest


def _prepare_job(run: PrepareRun) -> None:
    with usage_errors("memzoo-prepare"):  # what the source turns out to be (empty, not text): one line, exit code 2
        manifest = prepare(run)
    counts = ", ".join(f"{split} {manifest.splits[split].tokens:,} tokens" for split in SPLITS)
    vocabulary = f"{manifest.tokenizer} vocabulary {manifest.vocab_size:,}, {manifest.dtype}"
    print(f"memzoo-prepare: wrote {run.options.out} ({counts}; {vocabulary})")


def main() -> None:
    """``memzoo-prepare [OVERRIDE ...]``: composed and checked once (bad input: one line, exit code 2),
    then prepared. Hydra's flags (``--help``, ``--cfg job``) go to Hydra."""
    argv = sys.argv[1:]
    if hydra_flags(argv):
        import hydra

        hydra.main(version_base="1.3", config_path="pkg://zoo.configs", config_name="prepare")(lambda cfg: None)()
        return
    run_composed("prepare", "memzoo-prepare", argv, PrepareRun.check, _prepare_job)
