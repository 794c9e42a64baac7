"""Token shards written by memzoo-prepare, checked against the raw text: the same bytes for any number
of worker processes, each split's stream the re-tokenized text of its blocks, bits per byte from the
manifest equal to bits per byte on the text, windows across shard boundaries, ranks drawing disjoint
windows, and a resumed epoch drawing the batches an uninterrupted one draws."""

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from zoo.tasks.base import ResumableSampler, TrainLoader
from zoo.tasks.lm import LanguageModelingDataModule
from zoo.tasks.prepare import PrepareRun, _blocks_of, prepare
from zoo.tasks.token_shards import MANIFEST, SPLITS, TOKENIZER_FILE, ShardWindows, read_manifest
from zoo.training.metrics import bits_per_byte

BLOCK_BYTES = 1024
GOLDEN = (math.sqrt(5) - 1) / 2


def write_corpus(folder: Path) -> Path:
    """A directory of three text files (~60 KB, accented and non-Latin characters, long lines without
    a newline) that memzoo-prepare reads in sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog café naïve déjà vu 東京 → ∑ memory keys values".split()
    for name, lines in (("a.txt", 300), ("b/c.txt", 200), ("d.md", 150)):
        text = "\n".join(" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(lines))
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text + "\n" + "x" * 700, encoding="utf-8")  # a 700-byte run with no newline
    return folder


def prepare_corpus(source: Path, out: Path, *overrides: str) -> Path:
    """``memzoo-prepare task.path=SOURCE out=OUT block_bytes=1024 OVERRIDES``, composed and run in this process."""
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        cfg = compose("prepare", overrides=[f"task.path={source}", f"out={out}", f"block_bytes={BLOCK_BYTES}", *overrides])
    prepare(PrepareRun.check(cfg))
    return out


def reference_blocks(source: Path) -> dict[str, list[str]]:
    """Each split's blocks, in order: every file under ``source`` (sorted) cut by ``_blocks_of``, block
    k assigned by where k + 1 times the golden ratio falls (test below 0.05, val below 0.1)."""
    blocks = [
        b for f in sorted(p for p in source.rglob("*") if p.is_file()) for b in _blocks_of(f.read_text("utf-8"), BLOCK_BYTES)
    ]
    splits = {split: [] for split in SPLITS}
    for k, block in enumerate(blocks):
        position = ((k + 1) * GOLDEN) % 1.0
        splits["test" if position < 0.05 else "val" if position < 0.1 else "train"].append(block)
    return splits


def shard_stream(folder: Path, split: str) -> np.ndarray:
    """A split's tokens read straight from its shard files, in the manifest's order."""
    manifest = json.loads((folder / MANIFEST).read_text())
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    return np.concatenate([np.fromfile(folder / shard["file"], dtype=dtype) for shard in manifest["splits"][split]["shards"]])


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("source") / "corpus")


@pytest.fixture(scope="module")
def byte_dir(source, tmp_path_factory) -> Path:
    return prepare_corpus(source, tmp_path_factory.mktemp("byte") / "out", "shard_tokens=100")


@pytest.fixture(scope="module")
def bpe_dir(source, tmp_path_factory) -> Path:
    return prepare_corpus(source, tmp_path_factory.mktemp("bpe") / "out", "task.tokenizer=bpe", "task.vocab_size=300")


def test_blocks_of_cuts_text_losslessly_into_pieces_of_at_most_block_bytes(source):
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        text = file.read_text("utf-8")
        blocks = list(_blocks_of(text, BLOCK_BYTES))
        assert "".join(blocks) == text and len(blocks) > 1
        assert all(0 < len(b.encode("utf-8")) <= BLOCK_BYTES for b in blocks)


@pytest.mark.parametrize("tokenizer", [[], ["task.tokenizer=bpe", "task.vocab_size=300"]], ids=["byte", "bpe"])
def test_shards_are_the_same_bytes_for_one_and_two_worker_processes(source, tmp_path, tokenizer):
    one = prepare_corpus(source, tmp_path / "one", "shard_tokens=500", *tokenizer)
    two = prepare_corpus(source, tmp_path / "two", "shard_tokens=500", "processes=2", *tokenizer)
    a, b = files_in(one), files_in(two)
    assert a == b and len([name for name in a if name.startswith("train-")]) > 1
    assert (TOKENIZER_FILE in a) == bool(tokenizer)
    assert not (tmp_path / "one.partial").exists() and not (tmp_path / "two.partial").exists()


def test_each_byte_split_is_the_utf8_bytes_of_its_blocks_in_order_and_the_manifest_counts_them(source, byte_dir):
    manifest = read_manifest(byte_dir)
    assert (manifest.tokenizer, manifest.vocab_size, manifest.dtype, manifest.tokenizer_sha256) == ("byte", 256, "uint16", None)
    reference = reference_blocks(source)
    assert sum(len(blocks) for blocks in reference.values()) == sum(r.blocks for r in manifest.splits.values())
    for split, blocks in reference.items():
        text = "".join(blocks).encode("utf-8")
        assert bytes(shard_stream(byte_dir, split).astype(np.uint8).tolist()) == text
        record = manifest.splits[split]
        assert (record.tokens, record.bytes, record.blocks) == (len(text), len(text), len(blocks))
    sizes = {split: record.bytes / sum(r.bytes for r in manifest.splits.values()) for split, record in manifest.splits.items()}
    assert sizes == pytest.approx({"train": 0.9, "val": 0.05, "test": 0.05}, abs=0.03)  # spread by the golden ratio


def test_each_bpe_split_is_its_blocks_encoded_one_by_one_with_the_saved_tokenizer(source, bpe_dir):
    manifest = read_manifest(bpe_dir)
    tokenizer = Tokenizer.from_file(str(bpe_dir / TOKENIZER_FILE))
    assert (manifest.tokenizer, manifest.vocab_size, manifest.dtype) == ("bpe", tokenizer.get_vocab_size(), "uint16")
    assert 256 < manifest.vocab_size <= 300
    for split, blocks in reference_blocks(source).items():
        ids = [i for block in blocks for i in tokenizer.encode(block, add_special_tokens=False).ids]
        assert shard_stream(bpe_dir, split).tolist() == ids
        assert tokenizer.decode(ids) == "".join(blocks)  # byte-level: lossless
        record = manifest.splits[split]
        assert (record.tokens, record.bytes) == (len(ids), len("".join(blocks).encode("utf-8")))
        assert record.tokens < record.bytes  # merges shorten the stream


def unigram_nats(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Summed -log p(id) of a fixed random unigram model (float64)."""
    logits = torch.randn(vocab_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return -torch.log_softmax(logits, 0)[ids].sum()


def test_byte_bits_per_byte_from_the_manifest_equal_bits_per_byte_on_the_raw_text(source, byte_dir):
    seq_len = 31
    dm = LanguageModelingDataModule(data=str(byte_dir), seq_len=seq_len)
    dm.setup()
    for split, blocks in reference_blocks(source).items():
        raw = torch.tensor(list("".join(blocks).encode("utf-8")))
        windows = raw[: len(raw) // (seq_len + 1) * (seq_len + 1)].view(-1, seq_len + 1)
        want = unigram_nats(windows[:, 1:], 256) / (math.log(2) * windows[:, 1:].numel())  # nats / (ln 2 * bytes covered)
        targets = torch.stack([dm.datasets[split][w]["targets"] for w in range(len(dm.datasets[split]))])
        assert dm.bytes_per_token[split] == 1.0
        assert bits_per_byte(unigram_nats(targets, 256) / targets.numel(), dm.bytes_per_token[split]) == pytest.approx(
            float(want), rel=1e-12
        )


def test_bpe_bytes_per_token_is_the_split_text_over_its_tokens_and_gives_bits_per_byte_on_the_raw_text(source, bpe_dir):
    dm = LanguageModelingDataModule(data=str(bpe_dir), tokenizer="bpe", vocab_size=300, seq_len=15)
    dm.setup()
    manifest = read_manifest(bpe_dir)
    tokenizer = Tokenizer.from_file(str(bpe_dir / TOKENIZER_FILE))
    for split, blocks in reference_blocks(source).items():
        ids = torch.tensor([i for block in blocks for i in tokenizer.encode(block, add_special_tokens=False).ids])
        text_bytes = len("".join(blocks).encode("utf-8"))
        record = manifest.splits[split]
        assert dm.bytes_per_token[split] == record.bytes / record.tokens == text_bytes / len(ids)
        nats = unigram_nats(ids, manifest.vocab_size)  # the whole split: every token scored once
        assert bits_per_byte(nats / len(ids), dm.bytes_per_token[split]) == pytest.approx(
            float(nats / (math.log(2) * text_bytes)), rel=1e-12
        )


@pytest.mark.parametrize("seq_len", [31, 7, 150])
def test_window_w_is_the_stream_slice_w_shifted_by_one_also_across_shard_boundaries(source, byte_dir, seq_len):
    manifest = read_manifest(byte_dir)
    span = seq_len + 1
    for split, blocks in reference_blocks(source).items():
        stream = torch.tensor(list("".join(blocks).encode("utf-8")))
        shards = manifest.splits[split].shards
        assert [s.tokens for s in shards[:-1]] == [100] * (len(shards) - 1) and 0 < shards[-1].tokens <= 100
        dataset = ShardWindows(byte_dir, manifest, split, seq_len)
        assert len(dataset) == len(stream) // span and dataset.shape == (len(dataset), seq_len)
        crossing = 0
        for w in range(len(dataset)):
            item, window = dataset[w], stream[w * span : (w + 1) * span]
            assert torch.equal(item["inputs"], window[:-1]) and torch.equal(item["targets"], window[1:])
            assert item["inputs"].dtype == torch.int64
            crossing += (w * span) // 100 != ((w + 1) * span - 1) // 100
        assert crossing > 0 or len(dataset) == 0
        covered = stream[: len(dataset) * span]
        if len(dataset):
            assert dataset.id_range() == (int(covered.min()), int(covered.max()))
        with pytest.raises(IndexError):
            dataset[len(dataset)]


def test_windows_pickle_without_their_maps_and_read_the_same_after(byte_dir):
    dataset = ShardWindows(byte_dir, read_manifest(byte_dir), "train", 31)
    unopened = pickle.dumps(dataset)
    first = dataset[3]  # opens the maps
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._maps is None and pickle.dumps(dataset) == unopened  # no token is pickled into a loader worker
    assert all(torch.equal(copy[3][key], first[key]) for key in first)


@pytest.mark.parametrize("seed", [0, 7])
def test_two_ranks_draw_disjoint_windows_that_cover_the_epoch(byte_dir, seed):
    train_tokens = read_manifest(byte_dir).splits["train"].tokens
    seq_len = next(n for n in range(34, 80) if train_tokens // (n + 1) % 2)  # an odd count: drop_last leaves one out
    dm = LanguageModelingDataModule(data=str(byte_dir), seq_len=seq_len, batch_size=4, seed=seed)
    dm.setup()
    dataset = dm.datasets["train"]
    assert len(dataset) % 2 == 1
    for epoch in (0, 1):
        drawn = []
        for rank in (0, 1):
            sampler = ResumableSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=seed, drop_last=True)
            sampler.set_epoch(epoch)
            drawn.append(list(sampler))
            batch = next(iter(DataLoader(dataset, batch_size=4, sampler=sampler)))
            assert torch.equal(batch["inputs"], torch.stack([dataset[i]["inputs"] for i in drawn[-1][:4]]))
        assert len(drawn[0]) == len(drawn[1]) == len(dataset) // 2
        assert not set(drawn[0]) & set(drawn[1])
        assert len(set(drawn[0]) | set(drawn[1])) == len(dataset) - 1
    assert drawn[0] != sorted(drawn[0])  # shuffled


def test_a_loader_resumed_mid_epoch_draws_the_batches_the_uninterrupted_epoch_draws(byte_dir):
    dm = LanguageModelingDataModule(data=str(byte_dir), seq_len=31, batch_size=8, seed=3)
    dm.setup()
    dataset = dm.datasets["train"]

    def loader(done: int) -> TrainLoader:
        sampler = ResumableSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=dm.seed, drop_last=True)
        sampler.set_epoch(1)
        return TrainLoader(dataset, batch_size=8, sampler=sampler, drop_last=True, batches_done=lambda: done)

    whole = list(loader(0))
    stopped_after = 5
    state = loader(stopped_after).state_dict()
    assert state == {"examples_done": 40} and len(whole) > stopped_after
    resumed = loader(0)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(whole) - stopped_after
    for a, b in zip(rest, whole[stopped_after:]):
        assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["targets"], b["targets"])
    assert len(list(resumed)) == len(whole)  # the next pass is whole again


def test_a_byte_prepare_after_a_bpe_prepare_in_the_same_process_writes_bytes(tmp_path):
    text = "".join(f"tokens {i} and bytes {i * 7}, café {i % 13}\n" for i in range(400))  # enough pairs for 300 BPE tokens
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    prepare_corpus(tmp_path / "corpus.txt", tmp_path / "bpe", "task.tokenizer=bpe", "task.vocab_size=300")
    byte = prepare_corpus(tmp_path / "corpus.txt", tmp_path / "byte")
    assert b"".join(bytes(shard_stream(byte, split).astype(np.uint8).tolist()) for split in SPLITS) != b""
    assert sum(read_manifest(byte).splits[split].tokens for split in SPLITS) == len(text.encode("utf-8"))
    assert max(int(shard_stream(byte, split).max()) for split in SPLITS) < 256
