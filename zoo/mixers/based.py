"""BASED (Arora et al. 2024): linear attention with a 2nd-order Taylor feature map, after a short
causal convolution; parameter names and shapes of flash-linear-attention's ``BasedLinearAttention``.

Per head, with q, k the ``feature_dim``-wide projections and v the ``head_dim``-wide one:

    phi(x) = [1, x / F^(1/4), vec(x x^T) / sqrt(2 F)]         (P = 1 + F + F^2 features)
    phi(q) . phi(k) = 1 + s + s^2 / 2,   s = q . k / sqrt(F)   (the Taylor expansion of exp(s))
    S_t = S_{t-1} + phi(k_t) v_t^T,   z_t = z_{t-1} + phi(k_t)  (state (P, head_dim), normaliser (P,))
    y_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)

1 + s + s^2/2 >= 1/2, so the normaliser grows at least linearly with t and never vanishes.

The convolution (depthwise, causal, SiLU; ``conv1d.weight`` (d_model, 1, conv_size) as fla's
``ShortConvolution``) runs on the mixer input before the projections, so a key can carry the
previous token, as zoology's short convolutions give every mixer; it is memzoo's addition to fla's
layer (``conv_size=0`` removes it, and the state dict is then fla's).

On CUDA with fla installed the attention runs fla's ``parallel_based`` kernel; everywhere else on
``based_chunked``, linear in length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.core.tags import linear, mark_no_reinit, mark_residual_projection, parameter_count
from zoo.core.value_checks import check_int, is_real
from zoo.mixers import kernels
from zoo.mixers.ssm_common import causal_conv_silu, causal_conv_silu_step, split_chunks

FLA_KERNEL_EPS = 1e-6
"""The normaliser eps fla's ``parallel_based`` adds (fixed there); other eps values run the own path."""

FLA_KERNEL_MAX_FEATURE_DIM = 128
"""The largest feature_dim fla's ``parallel_based`` accepts."""


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """x: (..., F) -> phi(x): (..., 1 + F + F^2) with phi(q) . phi(k) = 1 + s + s^2/2, s = q.k / sqrt(F)."""
    dim = x.shape[-1]
    square = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / (2 * dim) ** 0.5
    return torch.cat([torch.ones_like(x[..., :1]), x / dim**0.25, square], dim=-1)


def _chunk_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q, k: (b, n, T, h, F) -> causal Taylor scores 1 + s + s^2/2 within each chunk, (b, n, h, T, T),
    zero above the diagonal. Computed from s directly: F multiply-adds per pair instead of P."""
    s = torch.einsum("bnthf,bnshf->bnhts", q, k) * q.shape[-1] ** -0.5
    causal = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    return torch.where(causal, 1 + s + 0.5 * s * s, 0.0)


def based_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int, eps: float) -> torch.Tensor:
    """Normalised causal Taylor linear attention, chunked: exact scores inside chunks of
    ``chunk_size`` steps, the (P, head_dim) state and (P,) normaliser carried between chunks.

    q, k: (b, L, h, F); v: (b, L, h, dv) -> y: (b, L, h, dv).
    """
    if chunk_size < 1:
        raise ValueError(f"based chunk_size={chunk_size} must be >= 1")
    # (b, L, h, d) -> (b, n, T, h, d); padded steps come after every real one: causality hides them
    qc, kc, vc = (split_chunks(t, chunk_size) for t in (q, k, v))
    scores = _chunk_scores(qc, kc)  # (b, n, h, T, T)
    num = torch.einsum("bnhts,bnshv->bnthv", scores, vc)
    den = scores.sum(-1).transpose(-1, -2)  # (b, n, T, h)

    if qc.shape[1] > 1:  # the state entering chunk c >= 1 sums chunks 0..c-1: the last chunk feeds none
        phi_k = taylor_features(kc[:, :-1])  # (b, n-1, T, h, P)
        state = torch.einsum("bnshp,bnshv->bnhpv", phi_k, vc[:, :-1]).cumsum(1)  # entering chunks 1..n-1
        normaliser = phi_k.sum(2).cumsum(1)  # (b, n-1, h, P)
        phi_q = taylor_features(qc[:, 1:])
        num = torch.cat([num[:, :1], num[:, 1:] + torch.einsum("bnthp,bnhpv->bnthv", phi_q, state)], dim=1)
        den = torch.cat([den[:, :1], den[:, 1:] + torch.einsum("bnthp,bnhp->bnth", phi_q, normaliser)], dim=1)
    y = num / (den + eps).unsqueeze(-1)
    return y.flatten(1, 2)[:, : q.shape[1]]


@dataclass
class BasedCache:
    """Recurrent state of one BASED layer: the conv window (None without conv), the Taylor state
    and its normaliser."""

    conv_state: torch.Tensor | None  # (B, d_model, conv_size)
    state: torch.Tensor  # (B, num_heads, P, head_dim)
    normaliser: torch.Tensor  # (B, num_heads, P)


class Based(nn.Module):
    """Short causal conv + SiLU -> q, k (num_heads x feature_dim), v (num_heads x head_dim) ->
    normalised Taylor linear attention per head -> o_proj.

    Args (fla's names; fla's ``num_key_value_heads`` must equal ``num_heads`` there, so it is not
    an option here):
        d_model: model width D (fla's ``hidden_size``).
        layer_idx: position of this layer in the stack.
        feature_dim: F, width of q and k per head before the feature map (state P = 1 + F + F^2 rows).
        num_heads: H <= D; head_dim = D // H (as in fla, H need not divide D: v and o then use
            H * head_dim < D channels). The default 2 gives head_dim 32-64 at D = 64-128.
        eps: added to the normaliser. The default is the value fla's kernel adds; with another value
            the own path runs on CUDA too.
        conv_size: kernel width of the short depthwise causal conv on the input; 0 = no conv.
        chunk_size: chunk length of the own path.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        feature_dim: int = 16,
        num_heads: int = 2,
        eps: float = FLA_KERNEL_EPS,
        conv_size: int = 4,
        chunk_size: int = 64,
    ):
        super().__init__()
        check_int("based d_model", d_model)
        check_int("based feature_dim", feature_dim)
        check_int("based num_heads", num_heads)
        check_int("based conv_size", conv_size, low=0)
        check_int("based chunk_size", chunk_size)
        if num_heads > d_model:
            raise ValueError(f"based num_heads={num_heads} must be <= d_model={d_model}")
        if not (is_real(eps) and eps >= 0):
            raise ValueError(f"based eps={eps!r} must be >= 0 and finite")
        self.layer_idx = layer_idx
        self.feature_dim, self.num_heads, self.head_dim = feature_dim, num_heads, d_model // num_heads
        self.n_features = 1 + feature_dim + feature_dim**2
        self.eps, self.conv_size, self.chunk_size = eps, conv_size, chunk_size

        self.conv1d = None
        if conv_size:
            self.conv1d = nn.Conv1d(d_model, d_model, conv_size, groups=d_model, padding=conv_size - 1, bias=False)
            mark_no_reinit(self.conv1d.weight)  # keeps PyTorch's conv init, as the Mamba convs do
        self.q_proj = linear(d_model, num_heads * feature_dim)
        self.k_proj = linear(d_model, num_heads * feature_dim)
        self.v_proj = linear(d_model, num_heads * self.head_dim)
        self.o_proj = mark_residual_projection(linear(num_heads * self.head_dim, d_model))

    def uses_cuda_kernels(self, x: torch.Tensor) -> bool:
        """Whether forward runs fla's ``parallel_based`` for ``x``: a CUDA input, an importable fla
        (looked up once per process), and an eps and feature_dim the kernel implements."""
        return (
            x.is_cuda
            and self.eps == FLA_KERNEL_EPS
            and self.feature_dim <= FLA_KERNEL_MAX_FEATURE_DIM
            and kernels.fla_parallel_based() is not None
        )

    def _qkv(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """u: (..., D) -> q, k (..., H, F) and v (..., H, head_dim)."""
        q = self.q_proj(u).unflatten(-1, (self.num_heads, self.feature_dim))
        k = self.k_proj(u).unflatten(-1, (self.num_heads, self.feature_dim))
        return q, k, self.v_proj(u).unflatten(-1, (self.num_heads, self.head_dim))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k: (B, L, H, F), v: (B, L, H, head_dim) -> (B, L, H, head_dim)."""
        if self.uses_cuda_kernels(q):
            return kernels.fla_parallel_based()(q, k, v, scale=self.feature_dim**-0.5, use_norm=True)
        work = torch.promote_types(q.dtype, torch.float32)
        # bf16 autocast would run the carried sums in bf16; keep them in the work dtype
        with torch.autocast(device_type=q.device.type, enabled=False):
            y = based_chunked(q.to(work), k.to(work), v.to(work), self.chunk_size, self.eps)
        return y.to(v.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, D) -> (B, L, D)."""
        if self.conv1d is not None:
            hidden = causal_conv_silu(hidden.transpose(1, 2), self.conv1d).transpose(1, 2)
        y = self._attend(*self._qkv(hidden))
        return self.o_proj(y.flatten(-2))

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token (2 per multiply-add): the projections and convolution, plus per
        head the update and readout of the (P, head_dim) state and the (P,) normaliser (the feature
        expansion, 2 F^2 products, is 1/head_dim of that and not counted)."""
        return 2 * parameter_count(self) + 4 * self.num_heads * self.n_features * (self.head_dim + 1)

    def state_size(self, seq_len: int) -> int:
        """Bytes of inference state per sequence (any length): conv window, Taylor state, normaliser."""
        conv = self.conv1d.weight.shape[0] * self.conv_size if self.conv1d is not None else 0
        elements = conv + self.num_heads * self.n_features * (self.head_dim + 1)
        return elements * self.q_proj.weight.element_size()

    def allocate_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> BasedCache:
        """Zero state for ``step`` (a fixed size: ``max_len`` is not needed)."""
        weight = self.q_proj.weight
        options = dict(device=device or weight.device, dtype=dtype or weight.dtype)
        conv_state = None
        if self.conv1d is not None:
            conv_state = torch.zeros(batch_size, self.conv1d.weight.shape[0], self.conv_size, **options)
        return BasedCache(
            conv_state=conv_state,
            state=torch.zeros(batch_size, self.num_heads, self.n_features, self.head_dim, **options),
            normaliser=torch.zeros(batch_size, self.num_heads, self.n_features, **options),
        )

    def step(self, hidden: torch.Tensor, cache: BasedCache) -> tuple[torch.Tensor, BasedCache]:
        """One token: hidden (B, D) -> (B, D); ``cache`` is updated in place and returned."""
        if self.conv1d is not None:
            hidden = causal_conv_silu_step(hidden, cache.conv_state, self.conv1d)
        q, k, v = self._qkv(hidden)  # (B, H, F), (B, H, F), (B, H, head_dim)
        phi_q, phi_k = taylor_features(q), taylor_features(k)  # (B, H, P)
        cache.state.add_(phi_k.unsqueeze(-1) * v.unsqueeze(-2))
        cache.normaliser.add_(phi_k)
        num = torch.einsum("bhp,bhpv->bhv", phi_q, cache.state)
        den = (phi_q * cache.normaliser).sum(-1, keepdim=True) + self.eps
        return self.o_proj((num / den).flatten(-2)), cache
