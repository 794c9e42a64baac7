"""Row- and column-sharded memory in 2 gloo processes against one process holding everything:
rank-local initialisation, outputs, every gradient, checkpoints in both directions (a one-process
state into ranks; distributed checkpoints into one process and across layouts), resumed optimizer
steps bit for bit; setup errors."""

import copy

import pytest
import torch
import torch.distributed as dist
from helpers.distributed import run_ranks
from torch import nn
from torch.distributed.tensor import DTensor

from zoo import build_model
from zoo.checkpoint.distributed import save_distributed
from zoo.checkpoint.files import load_checkpoint_file
from zoo.core.tags import shard_of
from zoo.memory import MemoryConfig, MemoryPlus, make_value_table, values
from zoo.memory.sharded_values import ShardedValues
from zoo.memory.sharding import save_and_load_sharded_state, shard_memory
from zoo.memory.values import draw_values_
from zoo.training.optim import build_optimizer, param_groups

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
        n_keys=8,
        heads=2,
        knn=6,
        k_dim=8,
        v_dim=12,
        query_norm="rmsnorm",
        gate=True,
        layers=[0, 1],
        sparse_updates=sparse,
        parallel=parallel,
    )


def dense(grad):
    return grad.to_dense() if grad.is_sparse else grad


def _layer_matches_one_process(rank, world, parallel, sparse, dtype, atol):
    torch.manual_seed(0)
    reference = TwoLayers(memory_config("none", sparse)).to(dtype)
    torch.manual_seed(0)
    sharded = TwoLayers(memory_config(parallel, sparse)).to(dtype)
    assert sharded.m0.values.weight.is_meta  # nothing is built whole: each rank draws its part
    shard_memory(sharded)
    assert isinstance(sharded.m0.values, ShardedValues) and sharded.m0.values is sharded.m1.values
    for (name, param), ref in zip(sharded.named_parameters(), reference.parameters()):  # the same init, bit for bit
        if shard_of(param) is not None:
            assert torch.equal(param, ref.chunk(world, shard_of(param).dim)[rank]), name
        else:
            assert torch.equal(param, ref), name
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
    # the state dict holds this rank's part of the table as a DTensor of the whole (no gathering)
    state = sharded.state_dict()
    for key, value in reference.state_dict().items():
        if isinstance(state[key], DTensor):
            assert state[key].shape == value.shape and state[key].to_local().data_ptr() == sharded.m0.values.weight.data_ptr()
            torch.testing.assert_close(state[key].full_tensor(), value, atol=0, rtol=0, msg=key)
        else:
            torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=key)
    # such a state dict loads into a model of the same layout as it is; another layout's is refused
    twin = shard_memory(TwoLayers(memory_config(parallel, sparse)).to(dtype))
    twin.load_state_dict(state)
    assert torch.equal(twin.m0.values.weight, sharded.m0.values.weight)
    other = shard_memory(TwoLayers(memory_config("columns" if parallel == "rows" else "rows", sparse)).to(dtype))
    with pytest.raises(ValueError, match=r"cannot load into this rank's chunk .* save it as a distributed checkpoint"):
        other.load_state_dict(state)


@pytest.mark.parametrize("parallel", ["rows", "columns"])
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_sharded_layers_equal_one_process_holding_everything(parallel, sparse, dtype, atol):
    run_ranks(_layer_matches_one_process, parallel, sparse, dtype, atol)


MODEL = {
    "vocab_size": 32,
    "d_model": D_MODEL,
    "n_layers": 2,
    "pattern": "A",
    "channel": "mlp",
    "mixer": {"attention": {"num_heads": 2}},
}


def model_config(parallel: str, second_moment: str = "full") -> dict:
    memory = {**vars(memory_config(parallel, sparse=True)), "v_dim": 16, "second_moment": second_moment}
    return {**MODEL, "memory": memory}


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
    save_and_load_sharded_state(optimizer)
    return optimizer


def checkpoint_of(model, optimizer, parallel, second_moment="full"):
    """What Lightning's checkpoint holds of a run (model, optimizer, settings)."""
    return {
        "state_dict": model.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "hyper_parameters": {"model": model_config(parallel, second_moment)},
    }


def restore(model, optimizer, path):
    """What resuming a sharded run does: read the checkpoint leaving sharded tensors on disk
    (``DistributedCheckpointDDP.load_checkpoint``), then load the module and the optimizer."""
    checkpoint = load_checkpoint_file(path, whole=False)
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])


def tensors_in(obj) -> list[torch.Tensor]:
    """The tensors of nested dicts / lists, in order; a DTensor as this rank's part."""
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in tensors_in(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in tensors_in(value)]
    return [obj.to_local() if isinstance(obj, DTensor) else obj] if torch.is_tensor(obj) else []


def local_tensors(model, optimizer) -> list[torch.Tensor]:
    """Every tensor of the model's and the optimizer's state, in order, sharded ones as this rank's part."""
    return tensors_in(model.state_dict()) + tensors_in(optimizer.state_dict())


def assert_same_tensors(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), i


def _checkpoints_move_between_world_sizes(rank, world, parallel, second_moment, path):
    torch.manual_seed(0)
    one = build_model(model_config("none", second_moment)).double()  # one process, full table
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
    sharded = shard_memory(build_model(model_config(parallel, second_moment)).double())
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
    state = sharded.state_dict()
    for key, value in one.state_dict().items():
        got = state[key].full_tensor() if isinstance(state[key], DTensor) else state[key]
        torch.testing.assert_close(got, value, atol=1e-10, rtol=0, msg=key)

    # 2 -> 2: a distributed checkpoint of the sharded run resumes bit for bit
    save_distributed(checkpoint_of(sharded, sharded_opt, parallel, second_moment), path)
    with torch.no_grad():
        outputs = sharded(batches[2])  # every rank feeds the global batch: every rank gets all outputs
    if rank == 0:
        torch.save({"inputs": batches[2], "outputs": outputs}, path.parent / "outputs.pt")
    resumed = shard_memory(build_model(model_config(parallel, second_moment)).double())
    resumed_opt = make_optimizer(resumed)
    restore(resumed, resumed_opt, path)
    assert_same_tensors(local_tensors(resumed, resumed_opt), local_tensors(sharded, sharded_opt))
    more = torch.randint(0, 32, (2, 2, 6), generator=torch.Generator().manual_seed(rank))
    train_steps(sharded, sharded_opt, more)
    train_steps(resumed, resumed_opt, more)
    assert_same_tensors(local_tensors(resumed, resumed_opt), local_tensors(sharded, sharded_opt))


def load_in_one_process(path, second_moment="full"):
    """A checkpoint read whole into one process's model and optimizer (what ``load_model`` does)."""
    checkpoint = load_checkpoint_file(path)
    model = build_model(model_config("none", second_moment)).double()
    model.load_state_dict(checkpoint["state_dict"])
    optimizer = make_optimizer(model)
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    return checkpoint, model, optimizer


@pytest.mark.parametrize("parallel,second_moment", [("rows", "row"), ("columns", "full")])
def test_checkpoints_reshard_between_one_and_two_processes(parallel, second_moment, tmp_path):
    path = tmp_path / "sharded.ckpt"
    run_ranks(_checkpoints_move_between_world_sizes, parallel, second_moment, path)
    # 2 -> 1: the sharded run's distributed checkpoint loads into one process with the same outputs
    _, single, optimizer = load_in_one_process(path, second_moment)
    saved = torch.load(tmp_path / "outputs.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(single(saved["inputs"]), saved["outputs"], atol=1e-12, rtol=0)
    values = single.blocks[0].channel.values.weight
    state = [s for s in optimizer.state_dict()["sparse"]["state"].values() if "exp_avg" in s]
    moments = values.shape[:1] if second_moment == "row" else values.shape
    assert [(s["exp_avg"].shape, s["exp_avg_sq"].shape) for s in state] == [(values.shape, moments)]


def _distributed_checkpoints_move_between_layouts(rank, world, folder):
    torch.manual_seed(0)
    batches = torch.randint(0, 32, (4, 2 * world, 6))
    mine = slice(2 * rank, 2 * rank + 2)
    rows = shard_memory(build_model(model_config("rows")).double())
    rows_opt = make_optimizer(rows)
    train_steps(rows, rows_opt, [b[mine] for b in batches[:2]])
    save_distributed(checkpoint_of(rows, rows_opt, "rows"), folder / "rows.ckpt")
    with torch.no_grad():
        outputs = rows(batches[2])
    if rank == 0:
        torch.save({"inputs": batches[2], "outputs": outputs}, folder / "outputs.pt")

    # rows -> columns: each rank reads its columns of what the row-sharded ranks wrote
    columns = shard_memory(build_model(model_config("columns")).double())
    columns_opt = make_optimizer(columns)
    restore(columns, columns_opt, folder / "rows.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(columns(batches[2]), outputs, atol=1e-12, rtol=0)
    save_distributed(checkpoint_of(columns, columns_opt, "columns"), folder / "columns.ckpt")

    # columns -> rows: the same parts as before, and training resumes bit for bit
    back = shard_memory(build_model(model_config("rows")).double())
    back_opt = make_optimizer(back)
    restore(back, back_opt, folder / "columns.ckpt")
    assert_same_tensors(local_tensors(back, back_opt), local_tensors(rows, rows_opt))
    train_steps(rows, rows_opt, [b[mine] for b in batches[2:]])
    train_steps(back, back_opt, [b[mine] for b in batches[2:]])
    assert_same_tensors(local_tensors(back, back_opt), local_tensors(rows, rows_opt))


def test_distributed_checkpoint_of_row_shards_loads_into_one_process_into_columns_and_back(tmp_path):
    run_ranks(_distributed_checkpoints_move_between_layouts, tmp_path)
    by_rows, one, one_opt = load_in_one_process(tmp_path / "rows.ckpt")
    by_columns = load_checkpoint_file(tmp_path / "columns.ckpt")
    # the column-sharded ranks held exactly the model and optimizer state the row-sharded ones wrote
    for section in ("state_dict", "optimizer_states"):
        assert_same_tensors(tensors_in(by_columns[section]), tensors_in(by_rows[section]))
    saved = torch.load(tmp_path / "outputs.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(one(saved["inputs"]), saved["outputs"], atol=1e-12, rtol=0)
    assert_same_tensors(tensors_in(one_opt.state_dict()), tensors_in(by_rows["optimizer_states"][0]))


def test_any_split_of_the_initial_table_draws_the_same_numbers(monkeypatch):
    monkeypatch.setattr(values, "INIT_BLOCK_ELEMENTS", 48)  # 4 rows per generator: splits cut through blocks
    n_slots, v_dim = 52, 12
    whole = draw_values_(torch.empty(n_slots, v_dim), 1234, n_slots, v_dim)
    torch.testing.assert_close(whole.std(), torch.tensor(v_dim**-0.5), atol=0.03, rtol=0)
    for world in (2, 4, 13):
        rows = [
            draw_values_(torch.empty(n_slots // world, v_dim), 1234, n_slots, v_dim, r * n_slots // world, 0)
            for r in range(world)
        ]
        assert torch.equal(torch.cat(rows), whole)
    for world in (2, 3, 4):
        cols = [
            draw_values_(torch.empty(n_slots, v_dim // world), 1234, n_slots, v_dim, 0, r * v_dim // world) for r in range(world)
        ]
        assert torch.equal(torch.cat(cols, dim=1), whole)
    assert not torch.equal(draw_values_(torch.empty(n_slots, v_dim), 1235, n_slots, v_dim), whole)


def _bad_world_size(rank, world, parallel, field, value):
    config = {**vars(memory_config(parallel, sparse=True)), field: value, "knn": 2}
    with pytest.raises(
        ValueError, match=rf"memory.{field}={value} must be divisible by the world size {world} for memory.parallel={parallel}"
    ):
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
