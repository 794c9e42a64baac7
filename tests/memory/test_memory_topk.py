"""Product-key search returns exactly the brute-force top-k over all N = n_keys^2 slot scores."""

import pytest
import torch

from zoo.memory import MemoryConfig, ProductKeys, product_topk


def brute_force_topk(scores1, scores2, knn):
    n_keys = scores1.shape[-1]
    full = (scores1.unsqueeze(-1) + scores2.unsqueeze(-2)).flatten(-2)  # (..., N), slot a*n + b
    assert full.shape[-1] == n_keys**2
    return full.topk(knn, dim=-1)


@pytest.mark.parametrize("n_keys, knn, heads", [(4, 1, 1), (8, 4, 2), (16, 16, 3), (33, 7, 4)])
def test_product_topk_equals_brute_force(n_keys, knn, heads):
    gen = torch.Generator().manual_seed(n_keys * 100 + knn)
    s1 = torch.randn(50, heads, n_keys, generator=gen, dtype=torch.float64)
    s2 = torch.randn(50, heads, n_keys, generator=gen, dtype=torch.float64)
    scores, slots = product_topk(s1, s2, knn)
    ref_scores, ref_slots = brute_force_topk(s1, s2, knn)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=0)
    assert torch.equal(slots, ref_slots)


@pytest.mark.parametrize("query_norm", ["none", "layernorm", "rmsnorm"])
def test_module_search_equals_brute_force_over_all_slots(query_norm):
    torch.manual_seed(0)
    cfg = MemoryConfig(n_keys=12, heads=3, knn=5, k_dim=8, query_norm=query_norm, temperature=0.7)
    keys = ProductKeys(16, cfg).double()
    x = torch.randn(40, 16, dtype=torch.float64)
    slots, weights = keys(x)
    # independent path: each slot's key is the concatenation of its two sub-keys
    q = keys.query(x).view(40, 3, 2, 4)
    sub = keys.sub_keys

    def norm(t):
        if query_norm == "layernorm":
            return (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        if query_norm == "rmsnorm":
            return t / (t.pow(2).mean(-1, keepdim=True) + torch.finfo(t.dtype).eps).sqrt()
        return t

    q, sub = norm(q).flatten(-2), norm(sub)
    full_keys = torch.cat(
        [sub[:, 0].unsqueeze(2).expand(-1, -1, 12, -1), sub[:, 1].unsqueeze(1).expand(-1, 12, -1, -1)], dim=-1
    ).flatten(1, 2)  # (H, N, k_dim), slot a*n + b
    all_scores = torch.einsum("thd,hnd->thn", q, full_keys)
    ref_scores, ref_slots = all_scores.topk(5, dim=-1)
    assert torch.equal(slots, ref_slots)
    torch.testing.assert_close(weights, torch.softmax(ref_scores / 0.7, -1), rtol=1e-10, atol=1e-12)
    assert slots.min() >= 0 and slots.max() < 144


@pytest.mark.parametrize("n_keys, knn, heads", [(16, 4, 1), (32, 32, 2), (64, 8, 4)])
def test_the_fused_search_of_both_halves_equals_the_search_half_by_half(n_keys, knn, heads, monkeypatch):
    from zoo.memory import product_keys

    gen = torch.Generator().manual_seed(n_keys)
    q = torch.randn(300, heads, 2, 12, generator=gen)
    keys = torch.randn(heads, 2, n_keys, 12, generator=gen)
    monkeypatch.setattr(product_keys, "SEARCH_CHUNK_ELEMENTS", 40 * heads * 2 * n_keys)  # several token chunks
    idx, halves = product_keys.local_search(q, keys, knn)
    want_idx, want_halves = product_keys.search_pairs(q, keys[:, 0], keys[:, 1], knn)  # the path it replaced
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(halves, want_halves, rtol=1e-6, atol=1e-6)
