"""Mamba mixer: mamba-ssm's parameter layout, recurrent step equals the parallel forward, CPU path."""

import pytest
import torch

from zoo import build_model
from zoo.mixers.mamba import Mamba
from zoo.mixers.scan import selective_scan

# mamba_ssm.modules.mamba_simple.Mamba(d_model=32): d_inner 64, d_state 16, d_conv 4, dt_rank ceil(32/16) = 2
MAMBA_SSM_STATE_32 = {
    "A_log": (64, 16),
    "D": (64,),
    "in_proj.weight": (128, 32),
    "conv1d.weight": (64, 1, 4),
    "conv1d.bias": (64,),
    "x_proj.weight": (34, 64),
    "dt_proj.weight": (64, 2),
    "dt_proj.bias": (64,),
    "out_proj.weight": (32, 64),
}


def test_state_dict_has_mamba_ssm_names_and_shapes():
    state = Mamba(32).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == MAMBA_SSM_STATE_32


def test_init_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(64, dt_min=0.001, dt_max=0.1)
    torch.testing.assert_close(m.A_log.exp(), torch.arange(1, 17.0).repeat(128, 1))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.dt_proj.weight.abs().max() <= 4**-0.5  # U(+-dt_rank^-1/2), dt_rank = ceil(64/16) = 4
    assert torch.equal(m.D, torch.ones(128))


def test_state_dict_moves_from_mamba_ssm():
    mamba_simple = pytest.importorskip("mamba_ssm.modules.mamba_simple", reason="mamba-ssm is not installed")
    theirs = mamba_simple.Mamba(d_model=32, use_fast_path=False)
    ours = Mamba(32)
    assert {k: tuple(v.shape) for k, v in theirs.state_dict().items()} == MAMBA_SSM_STATE_32
    ours.load_state_dict(theirs.state_dict(), strict=True)


def test_chunked_scan_matches_mamba_ssm_reference_scan():
    interface = pytest.importorskip("mamba_ssm.ops.selective_scan_interface", reason="mamba-ssm is not installed")
    gen = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(2, 8, 40, generator=gen) for _ in range(3))
    A = -torch.rand(8, 4, generator=gen) * 4
    B, C = (torch.randn(2, 4, 40, generator=gen) for _ in range(2))
    D, bias = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    ours = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, chunk_size=16)
    theirs = interface.selective_scan_ref(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("length", [1, 5, 70])
def test_step_token_by_token_equals_parallel_forward(length):
    torch.manual_seed(0)
    mixer = Mamba(24, chunk_size=16).double()
    x = torch.randn(3, length, 24, dtype=torch.float64)
    cache = mixer.allocate_cache(3)
    stepped = torch.stack([mixer.step(x[:, t], cache)[0] for t in range(length)], dim=1)
    torch.testing.assert_close(stepped, mixer(x), rtol=0, atol=1e-9)


def test_mamba_is_causal_and_uses_the_cpu_path_here():
    torch.manual_seed(0)
    mixer = Mamba(16)
    x = torch.randn(1, 12, 16)
    y = x.clone()
    y[:, 7:] = torch.randn(1, 5, 16)
    torch.testing.assert_close(mixer(x)[:, :7], mixer(y)[:, :7])
    assert mixer.uses_cuda_kernels(x) is False


def test_memory_goes_into_a_mamba_backbone_and_it_learns():
    torch.manual_seed(0)
    model = build_model(
        dict(
            vocab_size=16, d_model=32, n_layers=2, pattern="M", channel="none", memory=dict(n_keys=8, knn=4, k_dim=16, layers=[1])
        )
    )
    assert [type(b.mixer).__name__ for b in model.blocks] == ["Mamba", "Mamba"]
    assert model.blocks[0].channel is None and type(model.blocks[1].channel).__name__ == "MemoryPlus"
    tokens = torch.randint(0, 16, (4, 12))
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if "values" not in n], lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_state=0), r"mamba d_state=0 must be a positive integer"),
        (dict(dt_rank="big"), r"mamba dt_rank='big' must be 'auto'"),
        (dict(dt_min=0.5, dt_max=0.1), r"dt_min=0.5, dt_max=0.1"),
    ],
)
def test_bad_mamba_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba(16, **kwargs)


def test_unknown_mamba_option_is_an_error():
    with pytest.raises(ValueError, match=r"unexpected keyword argument 'state_size'"):
        build_model(dict(vocab_size=8, d_model=16, n_layers=1, pattern="M", mixer={"mamba": {"state_size": 4}}))
