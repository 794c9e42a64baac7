"""Row- and column-sharded memory in 2 gloo processes against one process holding everything:
outputs, every gradient, checkpoints in both directions, resumed optimizer steps; setup errors."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distributed import run_ranks
from zoo import build_model
from zoo.memory import MemoryConfig, MemoryPlus, make_value_table
from zoo.memory.sharded_values import ShardedValues
from zoo.memory.sharding import save_and_load_whole_state, shard_memory
from zoo.optim import build_optimizer, param_groups
from zoo.tags import shard_of

D_MODEL = 16
TOKENS = (7, 4)  # tokens per rank: ranks may hold different counts


class TwoLayers(nn.Module):
    """Two memory+ layers sharing one value pool, ``x -> m1(x + m0(x))``."""

    def __init__(self, config: MemoryConfig):
        super().__init__()
        shared = make_value_table(config, D_MODEL)
        self.m0 = MemoryPlus(D_MODEL, 0, config, shared)
        self.m1 = MemoryPlus(D_MODEL, 1, config, shared)

    def forward(self, x):
        return self.m1(x + self.m0(x))


def memory_config(parallel: str, sparse: bool) -> MemoryConfig:
    # knn 6 > n_keys / 2: a rank's first-half block holds fewer sub-keys than knn
    return MemoryConfig(
        n_keys=8, heads=2, knn=6, k_dim=8, v_dim=12, query_norm="rmsnorm", gate=True,
        layers=[0, 1], sparse_updates=sparse, parallel=parallel,
    )


def dense(grad):
    return grad.to_dense() if grad.is_sparse else grad


def _layer_matches_one_process(rank, world, parallel, sparse, dtype, atol):
    torch.manual_seed(0)
    reference = TwoLayers(memory_config(parallel, sparse)).to(dtype)
    sharded = shard_memory(copy.deepcopy(reference))
    assert isinstance(sharded.m0.values, ShardedValues) and sharded.m0.values is sharded.m1.values
    x_all = torch.randn(sum(TOKENS), D_MODEL, dtype=dtype, requires_grad=True)
    g_all = torch.randn(sum(TOKENS), D_MODEL, dtype=dtype)
    mine = slice(sum(TOKENS[:rank]), sum(TOKENS[: rank + 1]))

    out_all = reference(x_all)
    (out_all * g_all).sum().backward()
    x = x_all.detach()[mine].clone().requires_grad_()
    out = sharded(x)
    (out * g_all[mine]).sum().backward()

    torch.testing.assert_close(out, out_all[mine], atol=atol, rtol=0)
    torch.testing.assert_close(x.grad, x_all.grad[mine], atol=atol, rtol=0)
    for (name, param), ref in zip(sharded.named_parameters(), reference.parameters()):
        shard = shard_of(param)
        if shard is None:  # replicated: this rank's gradient covers its tokens; the sum covers all
            grad = param.grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad, ref.grad, atol=atol, rtol=0, msg=name)
        else:  # each rank's shard gets the gradient of every rank's tokens through the collectives
            assert param.grad.is_sparse == sparse, name
            want = dense(ref.grad).chunk(world, shard.dim)[rank]
            torch.testing.assert_close(dense(param.grad), want, atol=atol, rtol=0, msg=name)
    # the checkpoint holds the full table, whatever the layout
    full = sharded.state_dict()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(full[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("parallel", ["rows", "columns"])
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_sharded_layers_equal_one_process_holding_everything(parallel, sparse, dtype, atol):
    run_ranks(_layer_matches_one_process, parallel, sparse, dtype, atol)


MODEL = {
    "vocab_size": 32, "d_model": D_MODEL, "n_layers": 2, "pattern": "A", "channel": "mlp",
    "mixer": {"attention": {"n_heads": 2}},
}


def model_config(parallel: str) -> dict:
    return {**MODEL, "memory": {**vars(memory_config(parallel, sparse=True)), "v_dim": 16}}


def train_steps(model, optimizer, batches):
    for inputs in batches:
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), inputs.roll(-1, 1).flatten())
        optimizer.zero_grad()
        loss.backward()
        for param in model.parameters():  # what DDP + average_sharded_gradients do for 2 ranks
            if param.grad is not None:
                if shard_of(param) is None:
                    dist.all_reduce(param.grad)
                param.grad = param.grad / dist.get_world_size()
        optimizer.step()


def make_optimizer(model):
    optimizer = build_optimizer(param_groups(model, lr=1e-2, weight_decay=0.1))
    save_and_load_whole_state(optimizer)
    return optimizer


def _checkpoints_move_between_world_sizes(rank, world, parallel, path):
    torch.manual_seed(0)
    one = build_model(model_config("none")).double()  # one process, full table
    one_opt = make_optimizer(one)
    batches = torch.randint(0, 32, (3, 2 * world, 6))
    for step in range(2):  # the single-process run sees the global batch
        logits = one(batches[step])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batches[step].roll(-1, 1).flatten())
        one_opt.zero_grad()
        loss.backward()
        one_opt.step()
    mine = slice(2 * rank, 2 * rank + 2)

    # 1 -> 2: the one-process model and optimizer state load into a sharded model and continue
    sharded = shard_memory(build_model(model_config(parallel)).double())
    sharded.load_state_dict(one.state_dict())
    sharded_opt = make_optimizer(sharded)
    sharded_opt.load_state_dict(copy.deepcopy(one_opt.state_dict()))  # as if read from a file
    with torch.no_grad():
        torch.testing.assert_close(sharded(batches[2][mine]), one(batches[2])[mine], atol=1e-12, rtol=0)
    train_steps(sharded, sharded_opt, [batches[2][mine]])
    logits = one(batches[2])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), batches[2].roll(-1, 1).flatten())
    one_opt.zero_grad()
    loss.backward()
    one_opt.step()
    for key, value in one.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[key], value, atol=1e-10, rtol=0, msg=key)

    # 2 -> 2 and 2 -> 1: a checkpoint written by the sharded run resumes identically
    state = {"model": sharded.state_dict(), "optim": sharded_opt.state_dict()}
    if rank == 0:
        torch.save(state, path)
    dist.barrier()
    saved = torch.load(path, weights_only=False)
    resumed = shard_memory(build_model(model_config(parallel)).double())
    resumed.load_state_dict(saved["model"])
    resumed_opt = make_optimizer(resumed)
    resumed_opt.load_state_dict(saved["optim"])
    more = torch.randint(0, 32, (2, 2, 6), generator=torch.Generator().manual_seed(rank))
    train_steps(sharded, sharded_opt, more)
    train_steps(resumed, resumed_opt, more)
    for key, value in sharded.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("parallel", ["rows", "columns"])
def test_checkpoints_reshard_between_one_and_two_processes(parallel, tmp_path):
    path = tmp_path / "sharded.pt"
    run_ranks(_checkpoints_move_between_world_sizes, parallel, path)
    # 2 -> 1: the sharded run's checkpoint loads into one process with the same outputs
    saved = torch.load(path, weights_only=False)
    torch.manual_seed(0)
    single = build_model(model_config("none")).double()
    single.load_state_dict(saved["model"])
    optimizer = make_optimizer(single)
    optimizer.load_state_dict(saved["optim"])
    values = single.blocks[0].channel.values.weight
    state = optimizer.state_dict()["sparse"]["state"]
    assert any(s["exp_avg"].shape == values.shape for s in state.values())


def _bad_world_size(rank, world, parallel, field, value):
    config = {**vars(memory_config(parallel, sparse=True)), field: value, "knn": 2}
    with pytest.raises(ValueError, match=rf"memory.{field}={value} must be divisible by the world size {world} for memory.parallel={parallel}"):
        shard_memory(TwoLayers(MemoryConfig(**config)))


@pytest.mark.parametrize("parallel,field,value", [("rows", "n_keys", 5), ("columns", "v_dim", 9)])
def test_world_size_that_does_not_divide_the_layout_is_an_error(parallel, field, value):
    run_ranks(_bad_world_size, parallel, field, value)


@pytest.mark.parametrize("parallel", ["rows", "columns"])
def test_sharded_layout_without_process_group_is_an_error(parallel):
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match=rf"memory.parallel='{parallel}' needs a torch.distributed process group"):
        shard_memory(TwoLayers(memory_config(parallel, sparse=True)))


def test_unknown_parallel_layout_is_an_error():
    with pytest.raises(ValueError, match=r"memory.parallel='diagonal'; allowed: \['none', 'rows', 'columns'\]"):
        memory_config("diagonal", sparse=True).validate(D_MODEL)
