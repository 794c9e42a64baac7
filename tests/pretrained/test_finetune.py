"""memzoo-train from a pretrained model: memory added, finetuned on text with the model's own
tokenizer, only the memory trained when asked; then exported and read back."""

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.configs import compose_config
from helpers.hf_models import save_tiny, save_tokenizer

import zoo
from zoo.configs import model_folder
from zoo.pretrained.export import export, main
from zoo.pretrained.importing import from_pretrained
from zoo.tasks.lm import LanguageModelingDataModule
from zoo.training.pretrained_init import InitConfig
from zoo.training.train import train

VOCAB = 320
TEXT_OPTIONS = {"tokenizer": "pretrained", "seq_len": 32, "max_bytes": 60_000}
TRAIN = [
    "task=lm",
    "task.tokenizer=pretrained",
    f"task.seq_len={TEXT_OPTIONS['seq_len']}",
    f"task.max_bytes={TEXT_OPTIONS['max_bytes']}",
    "task.batch_size=16",
    "memory=pkm",
    "memory.n_keys=8",
    "memory.knn=4",
    "memory.k_dim=16",
    "memory.layers=[1]",
    "trainer.max_steps=30",
    "trainer.val_check_interval=30",
    "trainer.enable_progress_bar=false",
    "+trainer.limit_val_batches=4",
    "+trainer.limit_test_batches=2",
    "optim.lr=3e-3",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny random Llama (grouped-query, tied) with a BPE tokenizer trained on Python's docs."""
    directory = tmp_path_factory.mktemp("tiny_llama")
    save_tiny("llama", directory, vocab_size=VOCAB, eos_token_id=0, bos_token_id=0)
    text = LanguageModelingDataModule(max_bytes=200_000).load_corpus().decode("utf-8", errors="replace")
    save_tokenizer(directory, text, vocab_size=VOCAB)
    return directory


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory) -> Path:
    """A run directory: the import + memory at layer 1, only the memory trained for 30 steps."""
    run_dir = tmp_path_factory.mktemp("run")
    train(compose_config("train", *TRAIN, f"init.pretrained={pretrained}", "init.train=memory"), run_dir)
    return run_dir


def _val_loss(model: torch.nn.Module, pretrained: Path) -> float:
    """Mean next-token loss of ``model`` over the first 4 x 16 validation windows of the run's text."""
    data = LanguageModelingDataModule(**TEXT_OPTIONS, tokenizer_path=str(pretrained), batch_size=16)
    data.setup("fit")
    inputs, targets = data.datasets["val"].inputs[:64], data.datasets["val"].targets[:64]
    with torch.no_grad():
        return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).item()


def test_finetuning_only_the_memory_lowers_validation_loss_and_leaves_the_rest_bit_unchanged(pretrained, finetuned):
    imported = from_pretrained(pretrained).eval()
    tuned = zoo.load_model(finetuned)
    assert _val_loss(tuned, pretrained) < _val_loss(imported, pretrained)
    before = imported.state_dict()
    changed = [key for key, value in tuned.state_dict().items() if key in before and not torch.equal(value, before[key])]
    assert changed == []  # every imported parameter bit-unchanged
    memory = [key for key in tuned.state_dict() if key.startswith("blocks.1.memory")]
    assert memory and any(tuned.state_dict()[k].abs().sum() > 0 for k in memory if k.endswith("w2.weight"))


def test_the_run_folder_and_checkpoint_name_the_pretrained_source(pretrained, finetuned):
    checkpoint = torch.load(finetuned / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["pretrained"] == str(pretrained)
    assert model_folder("transformer", "pkm", 8, f"{pretrained}/") == f"{pretrained.name}+pkm64"
    assert model_folder("transformer", "none", None, "HuggingFaceTB/SmolLM-135M") == "SmolLM-135M"


def test_export_then_load_model_round_trips_without_pickle(finetuned, tmp_path, monkeypatch):
    out = export(finetuned, tmp_path / "exported")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    want = zoo.load_model(finetuned)

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    got = zoo.load_model(out)
    tokens = torch.randint(0, VOCAB, (2, 21))
    with torch.no_grad():
        assert torch.equal(got(tokens), want(tokens))


def test_an_unchanged_llama_import_re_exports_to_a_directory_transformers_loads(pretrained, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = export(pretrained, tmp_path / "hf", format="hf")
    reference = transformers.LlamaForCausalLM.from_pretrained(pretrained).eval()
    reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, VOCAB, (2, 21))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, reference(tokens).logits)
    assert (out / "tokenizer.json").is_file()


def test_a_model_with_memory_is_no_llama_to_export(finetuned, tmp_path):
    with pytest.raises(ValueError, match="not LlamaForCausalLM: it has memory layers.*use format=memzoo"):
        export(finetuned, tmp_path / "hf", format="hf")


def test_init_train_memory_needs_memory_and_a_known_value():
    with pytest.raises(ValueError, match="has none: add memory=pkm"):
        InitConfig(train="memory").check(has_memory=False)
    with pytest.raises(ValueError, match="init.train='some'; allowed"):
        InitConfig(train="some").check(has_memory=True)


def test_a_pretrained_tokenizer_needs_a_path(tmp_path):
    with pytest.raises(ValueError, match="set init.pretrained=DIR"):
        LanguageModelingDataModule(tokenizer="pretrained")
    with pytest.raises(ValueError, match="no tokenizer.json there"):
        LanguageModelingDataModule(tokenizer="pretrained", tokenizer_path=str(tmp_path))


def test_memzoo_export_prints_what_it_wrote_and_refuses_bad_input_with_exit_2(finetuned, tmp_path, capsys):
    main([f"ckpt={finetuned}", f"out={tmp_path / 'out'}"])
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'out'} (config.json, ")
    for argv, message in [
        ([f"ckpt={finetuned}", f"outt={tmp_path / 'x'}"], "unknown key 'outt'; did you mean 'out'?"),
        ([f"ckpt={finetuned}"], "missing out=..."),
        ([f"ckpt={finetuned}", f"out={tmp_path / 'x'}", "format=onnx"], "format='onnx'; allowed: ['memzoo', 'hf']"),
        ([f"ckpt={finetuned}", f"out={tmp_path / 'out'}"], "exists and is not an empty directory"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
