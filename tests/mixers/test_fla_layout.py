"""What GLA and Gated DeltaNet share as mixers in fla's layout: step equals forward with an explicit
cache of the expected shapes and bytes; causality and the CPU path; memory in their backbone learns;
state-dict names and shapes equal fla's layers; on CUDA with fla, fla's layer output from our module
on both paths."""

import pytest
import torch
import torch.nn.functional as F
from helpers.causality import assert_causal_on_cpu
from helpers.fla_reference import NO_FLA

from zoo import build_model
from zoo.mixers.fla_common import LinearAttentionCache
from zoo.mixers.gated_deltanet import GatedDeltaNet
from zoo.mixers.gla import GatedLinearAttention

# per mixer at d_model 16, num_heads 2: (key width, value width)
SIZES = {GatedLinearAttention: (8, 16), GatedDeltaNet: (12, 24)}  # GLA: expand_k 0.5, expand_v 1; GDN: 0.75 D, x2


@pytest.mark.parametrize("cls", list(SIZES), ids=lambda c: c.__name__)
@pytest.mark.parametrize("use_short_conv", [True, False])
def test_step_token_by_token_equals_parallel_forward_with_a_cache_of_the_declared_bytes(cls, use_short_conv):
    torch.manual_seed(0)
    mixer = cls(16, num_heads=2, use_short_conv=use_short_conv, chunk_size=4).double()
    key_dim, value_dim = SIZES[cls]
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    cache = mixer.allocate_cache(2)
    assert isinstance(cache, LinearAttentionCache)
    assert cache.state.shape == (2, 2, key_dim // 2, value_dim // 2) and cache.state.dtype == torch.float64
    windows = [cache.q_conv_state, cache.k_conv_state, cache.v_conv_state]
    if use_short_conv:
        assert [tuple(w.shape) for w in windows] == [(2, key_dim, 4), (2, key_dim, 4), (2, value_dim, 4)]
    else:
        assert windows == [None] * 3
    steps = []
    for t in range(x.shape[1]):
        y_t, returned = mixer.step(x[:, t], cache)
        assert returned is cache
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), mixer(x), rtol=0, atol=1e-12)
    conv = 4 * (2 * key_dim + value_dim) if use_short_conv else 0
    assert mixer.state_size(11) == (conv + key_dim * value_dim // 2) * 8  # float64


@pytest.mark.parametrize("cls", list(SIZES), ids=lambda c: c.__name__)
def test_forward_is_causal_and_runs_the_cpu_path(cls):
    torch.manual_seed(0)
    assert_causal_on_cpu(cls(16, num_heads=2, chunk_size=4).double(), 16)


@pytest.mark.parametrize(
    "name, letter, options",
    [
        ("gla", "G", {"chunk_size": 8}),
        ("gated_deltanet", "D", {"num_heads": 2, "chunk_size": 8}),
    ],
)
def test_memory_goes_into_the_backbone_and_it_learns(name, letter, options):
    torch.manual_seed(0)
    model = build_model(
        dict(
            vocab_size=16,
            d_model=32,
            n_layers=2,
            pattern=letter,
            channel="mlp",
            mixer={name: options},
            memory=dict(n_keys=8, knn=4, k_dim=16, layers=[1]),
        )
    )
    assert [type(b.mixer) for b in model.blocks] == [{"G": GatedLinearAttention, "D": GatedDeltaNet}[letter]] * 2
    assert type(model.blocks[1].channel).__name__ == "MemoryPlus"
    tokens = torch.randint(0, 16, (4, 12))
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if "values" not in n], lr=3e-3)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _shapes(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


@pytest.mark.parametrize(
    "cls, sizes",
    [
        (GatedLinearAttention, dict(num_heads=2, use_short_conv=False)),
        (
            GatedLinearAttention,
            dict(num_heads=4, use_short_conv=True, conv_bias=True, conv_size=3, expand_k=1.0, expand_v=2.0, gate_low_rank_dim=8),
        ),
        (GatedDeltaNet, dict(num_heads=2, head_dim=32)),
        (GatedDeltaNet, dict(num_heads=4, head_dim=8, expand_v=1.5, conv_size=3, conv_bias=True)),
        (GatedDeltaNet, dict(num_heads=2, head_dim=16, use_short_conv=False)),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
@pytest.mark.filterwarnings("ignore:ShortConvolution is crucial")  # fla's warning for use_short_conv=False
def test_state_dict_names_and_shapes_equal_fla(cls, sizes):
    layers = pytest.importorskip("fla.layers", reason=NO_FLA)
    assert _shapes(cls(64, **sizes)) == _shapes(getattr(layers, cls.__name__)(hidden_size=64, **sizes))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fla's layers need CUDA for their forward")
@pytest.mark.parametrize(
    "cls, sizes",
    [
        (GatedLinearAttention, dict(num_heads=2, use_short_conv=True)),
        (GatedDeltaNet, dict(num_heads=2, head_dim=32)),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_our_module_with_fla_state_dict_gives_fla_layer_output_on_cpu_and_on_cuda(cls, sizes):
    layers = pytest.importorskip("fla.layers", reason=NO_FLA)
    torch.manual_seed(0)
    theirs = getattr(layers, cls.__name__)(hidden_size=64, **sizes).cuda()
    x = torch.randn(2, 100, 64)
    expected = theirs(x.cuda())[0].double().cpu()
    ours = cls(64, **sizes).double()
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x.double()), expected, rtol=1e-3, atol=1e-3)
    on_gpu = cls(64, **sizes).cuda()
    on_gpu.load_state_dict(theirs.state_dict())
    assert on_gpu.uses_cuda_kernels(x.cuda())
    torch.testing.assert_close(on_gpu(x.cuda()).double().cpu(), expected, rtol=1e-3, atol=1e-3)
