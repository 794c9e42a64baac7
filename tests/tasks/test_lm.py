"""Language modeling task: the default corpus, contiguous splits, windows, tokenizers, bits per byte."""

import inspect
import math
import socket
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from zoo.tasks.lm import LanguageModelingDataModule, stdlib_corpus, stdlib_files, token_bytes, train_bpe
from zoo.training.metrics import bits_per_byte

CONFIG = Path(__file__).resolve().parents[2] / "zoo" / "configs" / "task" / "lm.yaml"


def _byte_dm(**kwargs) -> LanguageModelingDataModule:
    dm = LanguageModelingDataModule(**{"max_bytes": 100_000, "seq_len": 32, "batch_size": 8, **kwargs})
    dm.setup()
    return dm


def _window_rows(dm: LanguageModelingDataModule, split: str) -> torch.Tensor:
    """(N, seq_len + 1): each example's window, rebuilt from its inputs and its last target."""
    data = dm.datasets[split]
    return torch.cat([data.inputs, data.targets[:, -1:]], dim=1)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the default corpus must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_default_corpus_needs_no_network_or_path_and_is_deterministic(no_network):
    a, b = stdlib_corpus(300_000), stdlib_corpus(300_000)
    assert a == b
    assert 300_000 - 4 < len(a) <= 300_000  # cut on a UTF-8 character boundary
    a.decode("utf-8")
    assert b'The "assert" statement' in a  # pydoc_data/topics.py documentation text comes first
    assert stdlib_corpus(1_000) == a[:1_000]  # a smaller cap is a prefix
    files = stdlib_files()
    assert files and all(f.suffix == ".py" for f in files)
    assert not any({"site-packages", "dist-packages", "test", "tests"} & set(f.parts) for f in files)


def test_default_datamodule_sets_up_the_same_every_time(no_network):
    a = LanguageModelingDataModule()
    a.setup()
    b = _byte_dm(max_bytes=a.max_bytes, seq_len=a.seq_len)
    for split in ("train", "val", "test"):
        assert torch.equal(a.datasets[split].inputs, b.datasets[split].inputs)
        assert torch.equal(a.datasets[split].targets, b.datasets[split].targets)
    assert len(a.datasets["test"]) >= 300
    assert a.vocab_size == 256
    batch = next(iter(a.train_dataloader()))
    assert batch["inputs"].shape == batch["targets"].shape == (32, 128)
    assert batch["inputs"].dtype == torch.long


def test_splits_are_contiguous_in_order_and_sized_by_the_fractions():
    dm = _byte_dm(val_fraction=0.1, test_fraction=0.2)
    parts = dm.split_bytes
    assert parts["train"] + parts["val"] + parts["test"] == stdlib_corpus(100_000)
    sizes = {split: len(text) / 100_000 for split, text in parts.items()}
    assert sizes == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=1e-4)


def test_byte_windows_are_consecutive_non_overlapping_and_stay_inside_their_split():
    dm = _byte_dm()
    for split, text in dm.split_bytes.items():
        rows = _window_rows(dm, split)
        assert rows.shape == (len(text) // 33, 33)
        assert bytes(rows.flatten().tolist()) == text[: rows.numel()]


def test_targets_are_inputs_shifted_by_one_and_every_position_scored():
    dm = _byte_dm()
    data = dm.datasets["train"]
    assert torch.equal(data.inputs[:, 1:], data.targets[:, :-1])
    assert (data.targets >= 0).all() and (data.targets < 256).all()


def test_byte_tokenizer_has_one_byte_per_token():
    assert _byte_dm().bytes_per_token == {"train": 1.0, "val": 1.0, "test": 1.0}


def test_bits_per_byte_by_hand():
    assert bits_per_byte(math.log(256), 1.0) == pytest.approx(8.0)  # uniform over bytes: 8 bits each
    assert bits_per_byte(2 * math.log(2), 4.0) == pytest.approx(0.5)  # 2 bits per 4-byte token


def test_bpe_bytes_per_token_and_bits_per_byte_on_a_hand_counted_corpus(tmp_path):
    # "ab " * 1000: train is the first 2400 bytes, val the next 300, test the last 300. With one merge
    # (vocab 257) the most frequent pair (a, b) becomes "ab", so each "ab " is the tokens "ab", " ".
    # A test window of 4 tokens is [ab, " ", ab, " "]; its targets [" ", ab, " "] cover 4 bytes.
    corpus = tmp_path / "ab.txt"
    corpus.write_bytes(b"ab " * 1000)
    dm = LanguageModelingDataModule(
        vocab_size=257, tokenizer="bpe", seq_len=3, path=str(corpus), val_fraction=0.1, test_fraction=0.1
    )
    dm.setup()
    assert [len(dm.split_bytes[s]) for s in ("train", "val", "test")] == [2400, 300, 300]
    assert len(dm.datasets["test"]) == 200 // 4
    assert dm.bytes_per_token["test"] == pytest.approx(4 / 3)
    # 1 bit per token over 4/3 bytes per token
    assert bits_per_byte(math.log(2), dm.bytes_per_token["test"]) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def bpe_dm(tmp_path_factory):
    words = "the quick brown fox jumps over the lazy dog while a café sign says naïve → déjà vu".split()
    train = " ".join(words[(7 * i) % len(words)] for i in range(4000))
    held_out = " ".join(["zqxv zqxv zqxvzqxv"] * 300)  # only in val and test
    path = tmp_path_factory.mktemp("bpe") / "corpus.txt"
    path.write_text(train + " " + held_out, encoding="utf-8")
    half = len((" " + held_out).encode()) / len((train + " " + held_out).encode()) / 2
    dm = LanguageModelingDataModule(
        vocab_size=300, tokenizer="bpe", seq_len=16, path=str(path), val_fraction=half, test_fraction=half
    )
    dm.setup()
    return dm


def test_bpe_is_trained_on_the_train_split_only(bpe_dm):
    assert "zq" not in bpe_dm.split_bytes["train"].decode() and "zqxv" in bpe_dm.split_bytes["test"].decode()
    vocab = bpe_dm.tokenizer.get_vocab()
    assert 256 < len(vocab) <= 300
    merged = [b for b in token_bytes(bpe_dm.tokenizer) if len(b) > 1]
    assert all(b in bpe_dm.split_bytes["train"] for b in merged)
    assert not any(pair in b for b in merged for pair in (b"zq", b"qx", b"xv"))
    assert train_bpe(bpe_dm.split_bytes["train"], 300).get_vocab() == vocab  # deterministic, train bytes alone


def test_bpe_tokens_spell_each_split_exactly_and_bytes_per_token_counts_target_bytes(bpe_dm):
    table = token_bytes(bpe_dm.tokenizer)
    for split, text in bpe_dm.split_bytes.items():
        ids = bpe_dm.tokenizer.encode(text.decode("utf-8")).ids
        assert b"".join(table[i] for i in ids) == text  # lossless, non-ASCII included
        targets = bpe_dm.datasets[split].targets
        counted = sum(len(table[i]) for i in targets.flatten().tolist())
        assert bpe_dm.bytes_per_token[split] == pytest.approx(counted / targets.numel())
    assert bpe_dm.bytes_per_token["train"] > 1


def test_path_file_and_directory_corpora(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_bytes(b"B" * 300)
    (tmp_path / "docs" / "a.txt").write_bytes(b"A" * 300)
    (tmp_path / "docs" / "sub" / "c.txt").write_bytes(b"C" * 400)
    directory = _byte_dm(path=str(tmp_path / "docs"), seq_len=8, val_fraction=0.3, test_fraction=0.4)
    assert b"".join(directory.split_bytes.values()) == b"A" * 300 + b"B" * 300 + b"C" * 400
    assert directory.split_bytes["test"] == b"C" * 400
    single = _byte_dm(path=str(tmp_path / "docs" / "b.txt"), seq_len=8, val_fraction=0.2, test_fraction=0.2)
    assert b"".join(single.split_bytes.values()) == b"B" * 300


def test_config_keys_are_the_constructor_arguments_and_build_the_datamodule():
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG))
    assert cfg.pop("name") == "lm"
    assert list(cfg) == list(inspect.signature(LanguageModelingDataModule).parameters)
    cfg["seed"] = 0
    assert LanguageModelingDataModule(**cfg).max_bytes == cfg["max_bytes"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tokenizer="word"), r"tokenizer='word' is not a tokenizer; allowed: \['byte', 'bpe', 'pretrained'\]"),
        (dict(vocab_size=512), r"vocab_size=512 must be 256 with task.tokenizer='byte'"),
        (dict(vocab_size=256, tokenizer="bpe"), r"vocab_size=256 must be > 256 with task.tokenizer='bpe'"),
        (dict(seq_len=0), r"seq_len=0 must be an integer >= 1"),
        (dict(max_bytes=0), r"max_bytes=0 must be an integer >= 1 or null"),
        (dict(val_fraction=0.0), r"val_fraction=0.0 must be in \(0, 1\)"),
        (dict(test_fraction=1.0), r"test_fraction=1.0 must be in \(0, 1\)"),
        (dict(val_fraction=0.5, test_fraction=0.5), r"val_fraction=0.5 \+ task.test_fraction=0.5 must be < 1"),
        (dict(path="/no/such/corpus"), r"path='/no/such/corpus' does not exist"),
        (dict(path=".", hf_dataset="wikitext"), r"path='.' and task.hf_dataset='wikitext' are exclusive"),
        (dict(max_bytes=1000, seq_len=128), r"max_bytes=1000 leaves the smallest split about 50 bytes, .* 129"),
        (dict(batch_size=0), r"batch_size=0 must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_naming_the_field_before_loading(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LanguageModelingDataModule(**kwargs)


@pytest.mark.parametrize(
    "package, kwargs, match",
    [
        ("datasets", dict(hf_dataset="wikitext"), r"hf_dataset='wikitext' .*network.*pip install datasets"),
        ("tokenizers", dict(tokenizer="bpe", vocab_size=512), r"tokenizer='bpe' .*pip install tokenizers"),
    ],
)
def test_missing_optional_package_names_the_pip_package(monkeypatch, package, kwargs, match):
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ValueError, match=match):
        LanguageModelingDataModule(**kwargs)


def test_empty_or_too_short_corpus_raises_with_the_sizes(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"path='.*empty.txt' gives an empty corpus"):
        _byte_dm(path=str(tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_bytes(b"x" * 100)
    sizes = r"\(train 90 bytes, val 5 bytes, test 5 bytes\)"
    with pytest.raises(ValueError, match=r"val split has 5 tokens, .*seq_len \+ 1 = 33 " + sizes):
        _byte_dm(path=str(tmp_path / "short.txt"))


def test_a_corpus_that_is_not_text_is_refused_unless_allowed(tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 200)
    module = LanguageModelingDataModule(path=str(binary), seq_len=16, max_bytes=None, batch_size=4)
    with pytest.raises(
        ValueError, match=r"blob.bin' does not look like text: \d+ undecodable byte sequences and \d+ control characters"
    ):
        module.setup()
    allowed = LanguageModelingDataModule(path=str(binary), seq_len=16, max_bytes=None, batch_size=4, allow_binary=True)
    with pytest.warns(UserWarning, match=r"undecodable byte sequences replaced by U\+FFFD"):
        allowed.setup()
    assert allowed.corpus_report["replaced"] > 0


def test_a_text_corpus_with_a_few_bad_bytes_trains_and_reports_how_many_were_replaced(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_bytes(("hello world, " * 400).encode() + b"\xff\xfe" + b" and more text" * 20)
    module = LanguageModelingDataModule(path=str(text), seq_len=16, max_bytes=None, batch_size=4)
    with pytest.warns(UserWarning, match=r"notes.txt'\): 2 undecodable byte sequences replaced|notes.txt': 2 undecodable"):
        module.setup()
    assert module.corpus_report["replaced"] == 2
