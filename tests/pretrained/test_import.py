"""Hugging Face checkpoints imported into memzoo compute what transformers computes, and memory
added to them starts as an exact no-op."""

import json

import pytest
import torch
from helpers.hf_models import VOCAB, save_tiny

from zoo.pretrained.importing import from_pretrained

SMALL_MEMORY = {"n_keys": 8, "knn": 4, "k_dim": 16, "heads": 2}


def _tokens(batch: int = 3, length: int = 37, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_equal_transformers(hf_model):
    kind, directory, reference = hf_model
    model = from_pretrained(directory).eval()
    tokens = _tokens()
    with torch.no_grad():
        want, got = reference(tokens).logits, model(tokens)
    assert model.config.name == kind
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_greedy_generation_of_20_tokens_equals_transformers(hf_model):
    _, directory, reference = hf_model
    model = from_pretrained(directory).eval()
    prompt = _tokens(batch=2, length=7, seed=2)
    with torch.no_grad():
        want = reference.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
        got = __import__("zoo").generate(model, prompt, max_new_tokens=20)
    assert torch.equal(got, want)


@pytest.mark.parametrize("layers", [[1], [0, 1]])
def test_memory_added_beside_the_channel_is_a_bit_exact_no_op_at_step_0(hf_model, layers):
    _, directory, _ = hf_model
    plain = from_pretrained(directory).eval()
    with_memory = from_pretrained(directory, memory={**SMALL_MEMORY, "layers": layers}).eval()
    tokens = _tokens()
    with torch.no_grad():
        assert torch.equal(with_memory(tokens), plain(tokens))
    assert with_memory.config.memory.placement == "beside"
    assert all(with_memory.blocks[i].memory is not None for i in layers)
    assert with_memory.num_parameters() > plain.num_parameters()


def test_memory_that_replaces_the_mlp_drops_its_weights(tmp_path):
    save_tiny("llama", tmp_path)
    model = from_pretrained(tmp_path, memory={**SMALL_MEMORY, "layers": [1], "placement": "replace"})
    assert type(model.blocks[1].channel).__name__ == "MemoryPlus" and model.blocks[1].memory is None
    assert type(model.blocks[0].channel).__name__ == "SwiGLU"


def test_llama_config_is_mapped_field_by_field(tmp_path):
    save_tiny("llama", tmp_path, tie_word_embeddings=False, attention_bias=True)
    model = from_pretrained(tmp_path)
    attention = model.config.mixer["attention"]
    assert (attention["num_heads"], attention["num_kv_heads"], attention["rotary_base"]) == (4, 2, 5000.0)
    assert attention["bias"] and not model.config.tie_embeddings
    assert model.lm_head.weight is not model.embedding.weight
    assert model.blocks[0].mixer.qkv.weight.shape == ((4 + 2 * 2) * 8, 32)


@pytest.mark.parametrize(
    "kind, changes, match",
    [
        ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope_type='linear'"),
        ("mamba2", {"time_step_limit": (0.01, 0.5)}, "time_step_limit"),
    ],
)
def test_a_config_field_that_changes_the_math_and_is_not_mapped_is_an_error(tmp_path, kind, changes, match):
    save_tiny(kind, tmp_path, **changes)
    with pytest.raises(ValueError, match=match):
        from_pretrained(tmp_path)


def test_an_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        from_pretrained(tmp_path)


def test_pickled_weights_are_refused_not_loaded(tmp_path):
    save_tiny("llama", tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="never unpickles"):
        from_pretrained(tmp_path)


def test_a_path_that_is_neither_a_directory_nor_a_hub_id_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="neither a model directory nor a hub id"):
        from_pretrained(tmp_path / "missing" / "deeper")


def test_an_unchanged_import_of_each_architecture_re_exports_to_a_directory_transformers_loads(hf_model, tmp_path):
    import transformers

    from zoo.pretrained.export import export

    kind, directory, reference = hf_model
    out = export(directory, tmp_path / "hf", format="hf")
    reloaded = getattr(transformers, type(reference).__name__).from_pretrained(out).eval()
    tokens = _tokens()
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, reference(tokens).logits)


def test_a_hub_id_that_cannot_be_fetched_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests: the hub client refuses at once
    with pytest.raises(ValueError, match="'no-such-org/no-such-model' is not a local directory, and fetching it"):
        from_pretrained("no-such-org/no-such-model")
