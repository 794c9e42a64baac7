"""Bytes each memory layer sends per token under ``memory.parallel``, from the tensor shapes."""

from __future__ import annotations

from zoo.memory.config import MemoryConfig

INDEX_BYTES = 8  # int64 slot ids


def comm_bytes_per_token(config: MemoryConfig, d_model: int, world_size: int, element_bytes: int) -> dict[str, float]:
    """Bytes sent over the wire per token of the global batch by one memory layer, summed over ranks
    (padding excluded), for the forward and the backward pass.

    A per-token payload of P bytes that every rank gathers, or that returns to the token's owner,
    costs (W - 1) * P per token. Rows: queries (H * k_dim) gathered; candidates (H * knn slot ids and
    2 half scores) returned; slots + weights of the k reads gathered; a full-width (v_dim) partial
    sum returned. Columns: slots + weights gathered; a v_dim / W column block returned. Backward:
    the weight gradients and the returned outputs' gradients travel back.
    """
    hops = world_size - 1
    v_dim = config.resolved_v_dim(d_model)
    reads = config.heads * config.knn
    gather_reads = reads * (INDEX_BYTES + element_bytes)
    if config.parallel == "rows":
        queries = config.heads * config.k_dim * element_bytes
        candidates = reads * (INDEX_BYTES + 2 * element_bytes)
        returned = v_dim * element_bytes
        forward = hops * (queries + candidates + gather_reads + returned)
    elif config.parallel == "columns":
        returned = v_dim // world_size * element_bytes
        forward = hops * (gather_reads + returned)
    else:
        return {"forward": 0.0, "backward": 0.0}
    backward = hops * (reads * element_bytes + returned)
    return {"forward": float(forward), "backward": float(backward)}
