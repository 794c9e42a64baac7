"""Generation through the recurrent path equals greedy decoding with the full forward, for every
backbone with memory; loading from a checkpoint; bad arguments."""

import pytest
import torch

from zoo import build_model
from zoo.model.generate import generate

MEMORY = {"n_keys": 8, "heads": 2, "knn": 4, "k_dim": 8, "layers": [1]}
BACKBONES = {
    "transformer": {"pattern": "A", "channel": "mlp"},
    "mamba": {"pattern": "M", "channel": "none", "mixer": {"mamba": {"d_state": 8}}},
    "mamba2": {"pattern": "S", "channel": "none", "mixer": {"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4}}},
    "hybrid": {"pattern": "MA", "channel": "mlp", "mixer": {"mamba": {"d_state": 8}}},
    "hyena": {"pattern": "H", "channel": "mlp", "mixer": {"hyena": {"l_max": 16, "filter_order": 8}}},
    "gla": {"pattern": "G", "channel": "mlp", "mixer": {"gla": {"chunk_size": 4}}},
    "gated_deltanet": {"pattern": "D", "channel": "mlp", "mixer": {"gated_deltanet": {"num_heads": 2, "chunk_size": 4}}},
}


def model_for(backbone: str):
    torch.manual_seed(0)
    config = {"vocab_size": 23, "d_model": 16, "n_layers": 2, "memory": MEMORY, **BACKBONES[backbone]}
    return build_model(config).double().eval()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_greedy_generation_equals_argmax_of_the_full_forward_token_by_token(backbone):
    model = model_for(backbone)
    prompt = torch.randint(0, 23, (3, 5), generator=torch.Generator().manual_seed(1))
    got = generate(model, prompt, max_new_tokens=9)
    ids = prompt
    with torch.no_grad():
        for _ in range(9):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, ids)


def test_step_logits_equal_the_full_forward_at_every_position():
    model = model_for("hybrid")
    ids = torch.randint(0, 23, (2, 12))
    caches = model.allocate_caches(2, 12)
    with torch.no_grad():
        full = model(ids)
        stepped = torch.stack([model.step(ids[:, t], caches) for t in range(12)], dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-10, rtol=0)


def test_sampling_respects_top_k_and_is_seeded():
    model = model_for("transformer")
    prompt = torch.zeros(4, 2, dtype=torch.long)
    a = generate(model, prompt, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, generate(model, prompt, 6))  # top-1 sampling is greedy
    b = generate(model, prompt, 6, temperature=1.5, top_k=5, generator=torch.Generator().manual_seed(3))
    c = generate(model, prompt, 6, temperature=1.5, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b, c)


@pytest.mark.parametrize(
    "prompt,kwargs,match",
    [
        (torch.tensor([[1, 23]]), {}, r"prompt token ids must be in \[0, 23\); got 1..23"),
        (torch.tensor([1, 2]), {}, r"prompt_ids must be \(batch >= 1, length >= 1\)"),
        (torch.zeros(0, 3, dtype=torch.long), {}, r"prompt_ids must be \(batch >= 1, length >= 1\), got shape \(0, 3\)"),
        (torch.tensor([[1]]), {"temperature": float("nan")}, r"temperature=nan must be a finite number >= 0"),
        (torch.tensor([[1]]), {"top_k": 2.5}, r"top_k=2.5 must be an int"),
        (torch.tensor([[1]]), {"temperature": -1.0}, r"temperature=-1.0 must be >= 0"),
        (torch.tensor([[1]]), {"top_k": 24}, r"top_k=24 must be an int in \[1, vocab_size=23\]"),
    ],
)
def test_bad_generation_arguments_are_errors(prompt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(model_for("transformer"), prompt, 3, **kwargs)


@pytest.mark.parametrize(
    "prompt, max_new, match",
    [
        (torch.tensor([[1.0, 2.0]]), 3, r"prompt_ids must be an integer \(long\) tensor of token ids, got torch.float32"),
        ([[1, 2]], 3, r"prompt_ids must be an integer \(long\) tensor of token ids, got list"),
        (torch.tensor([[1]]), 2.5, r"max_new_tokens must be an int, got 2.5"),
    ],
)
def test_generation_arguments_of_the_wrong_type_are_type_errors(prompt, max_new, match):
    with pytest.raises(TypeError, match=match):
        generate(model_for("transformer"), prompt, max_new)
