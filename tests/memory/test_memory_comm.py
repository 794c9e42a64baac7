"""Bytes per token of the sharded layouts, counted by hand for one configuration."""

from zoo.memory import MemoryConfig
from zoo.memory.comm import comm_bytes_per_token


def test_comm_bytes_per_token_by_hand():
    # H=4, knn=8, k_dim=64, v_dim=128, W=4 ranks, float32
    cfg = dict(n_keys=32, heads=4, knn=8, k_dim=64, v_dim=128)
    rows = comm_bytes_per_token(MemoryConfig(**cfg, parallel="rows"), 128, 4, 4)
    # forward: 3 hops x (queries 4*64*4 + candidates 32*(8+8) + reads 32*(8+4) + partial sums 128*4)
    assert rows == {"forward": 3 * (1024 + 512 + 384 + 512), "backward": 3 * (32 * 4 + 512)}
    columns = comm_bytes_per_token(MemoryConfig(**cfg, parallel="columns"), 128, 4, 4)
    # forward: 3 hops x (reads 32*(8+4) + a 128/4-column block 32*4)
    assert columns == {"forward": 3 * (384 + 128), "backward": 3 * (32 * 4 + 128)}
    assert comm_bytes_per_token(MemoryConfig(**cfg), 128, 4, 4) == {"forward": 0.0, "backward": 0.0}
    assert comm_bytes_per_token(MemoryConfig(**cfg, parallel="rows"), 128, 1, 4)["forward"] == 0
