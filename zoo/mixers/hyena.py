"""Hyena (Poli et al. 2023, "Hyena Hierarchy") mixer, as in zoology's and safari's HyenaOperator.

With order N, ``in_proj`` makes N + 1 streams of width D, each passed through a short causal
depthwise conv (``short_filter``): gates x_1 .. x_N and a value v. Then, for n = 1 .. N-1,

    v <- x_n * v;      v_t <- sum_{s <= t} h^n_{t-s} v_s + bias^n * v_t       (per channel)

and the output is ``out_proj(x_N * v)``. The long filters h^n are implicit: a small MLP with sine
activations (``filter_fn.implicit_filter``) maps positional features of each lag to one filter value per
channel, times an exponentially decaying window (``filter_fn.modulation``); ``filter_fn.bias`` is the
skip term. The long convolution runs as an FFT convolution of length 2L, O(L log L) per channel
(the parallel form); ``step`` evaluates the causal sum over the inputs kept in its cache.

Parameter names follow zoology's ``Hyena``: in_proj, short_filter, filter_fn.{bias, implicit_filter},
out_proj. Deliberate differences: the positional features and the window's decay rates are fixed
functions computed on the fly (zoology stores the features as a parameter trained at lr 1e-5, i.e.
nearly fixed, and the rates as a buffer), and orders above 2 (zoology has only 2) lay filter n
out as columns n*D .. (n+1)*D - 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.core.tags import linear, mark_no_reinit, mark_residual_projection, parameter_count, tag_optim
from zoo.core.value_checks import check_int, is_int, is_real
from zoo.mixers.ssm_common import causal_conv, causal_conv_step


def positional_features(length: int, l_max: int, emb_dim: int, dtype=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of positions 0 .. length-1 for the implicit filter: z (length, emb_dim) = [t, cos(f_k w),
    -sin(f_k w)] with t = pos / (l_max - 1), w = 2 pi pos / l_max and (emb_dim - 1) / 2 frequencies f_k
    evenly spaced from 1e-4 to bands - 1; and t (length, 1)."""
    bands = (emb_dim - 1) // 2
    pos = torch.arange(length, dtype=dtype, device=device)[:, None]
    t = pos / max(l_max - 1, 1)
    freqs = torch.linspace(1e-4, bands - 1, bands, dtype=dtype, device=device)
    angle = freqs * (2 * math.pi * pos / l_max)  # (length, bands)
    return torch.cat([t, torch.cos(angle), -torch.sin(angle)], dim=-1), t


class Sin(nn.Module):
    """sin(freq * x) with a trainable frequency per feature; freq: (1, dim), initialised to ``w``."""

    def __init__(self, dim: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((1, dim), float(w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ExponentialModulation(nn.Module):
    """Window exp(-t |delta_c|) + shift over the filter's channels: the fastest decaying channel reaches
    ``target`` at t = fast_decay_pct, the slowest at t = slow_decay_pct (t = 1 is position l_max - 1);
    rates evenly spaced over the D channels of each of the ``n_filters`` filters, fixed (zoology's
    modulation_lr = 0) and computed in the filter's dtype."""

    def __init__(self, d_model: int, n_filters: int, fast_decay_pct: float, slow_decay_pct: float, target: float, shift: float):
        super().__init__()
        self.d_model, self.n_filters, self.shift = d_model, n_filters, shift
        self.slowest, self.fastest = math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """t: (L, 1), h: (L, n_filters * D) -> h times the window, (L, n_filters * D)."""
        deltas = torch.linspace(self.slowest, self.fastest, self.d_model, dtype=h.dtype, device=h.device)
        return h * (torch.exp(-t * deltas.abs().repeat(self.n_filters)) + self.shift)


class HyenaFilter(nn.Module):
    """The implicit long filters: positional features (L, emb_dim) -> MLP with sine activations ->
    (L, n_filters * D), times the decay window; plus the skip term ``bias`` (n_filters * D,)."""

    def __init__(
        self,
        d_model: int,
        n_filters: int,
        l_max: int,
        emb_dim: int,
        filter_order: int,
        num_inner_mlps: int,
        w: float,
        modulation: dict,
    ):
        super().__init__()
        self.d_model, self.n_filters, self.l_max, self.emb_dim = d_model, n_filters, l_max, emb_dim
        self.bias = nn.Parameter(torch.randn(n_filters * d_model))
        act = Sin(filter_order, w)  # one frequency vector shared by every activation, as in zoology
        layers = [linear(emb_dim, filter_order, bias=True), act]
        for _ in range(num_inner_mlps):
            layers += [linear(filter_order, filter_order, bias=True), act]
        layers.append(linear(filter_order, n_filters * d_model, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(d_model, n_filters, **modulation)
        for param in self.parameters():
            tag_optim(param, weight_decay=0.0)  # zoology trains the filter without weight decay
        mark_no_reinit(self.bias)

    def filter(self, length: int) -> torch.Tensor:
        """Filter values at lags 0 .. length-1: (n_filters, D, length)."""
        weight = self.bias
        # positions in at least float32: bf16 cannot tell integers above 256 apart
        exact = torch.promote_types(weight.dtype, torch.float32)
        features = positional_features(length, self.l_max, self.emb_dim, exact, weight.device)
        z, t = (f.to(weight.dtype) for f in features)
        h = self.modulation(t, self.implicit_filter(z))  # (length, n_filters * D)
        return h.view(length, self.n_filters, self.d_model).permute(1, 2, 0)

    def skip(self) -> torch.Tensor:
        """The skip term per filter and channel: (n_filters, D)."""
        return self.bias.view(self.n_filters, self.d_model)


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """u: (..., D, L), k: (D, L) -> y (..., D, L) with y_t = sum_{s <= t} k_{t-s} u_s, as a product of
    real FFTs of length 2L (zero padding keeps the circular wrap-around out of the first L outputs)."""
    length = u.shape[-1]
    n = 2 * length
    spectrum = torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :length]


@dataclass
class HyenaCache:
    """Inference state of one Hyena layer: the short conv's window and every long-conv input so far."""

    conv_state: torch.Tensor  # (B, (order + 1) * D, short_filter_order)
    history: torch.Tensor  # (B, order - 1, D, max_len): inputs of each long convolution, by position
    length: int = 0


class Hyena(nn.Module):
    """Hyena operator: in_proj -> short causal conv -> (gate, implicit long conv) x (order - 1) ->
    gate -> out_proj.

    Args (zoology's names and defaults; zoology sets ``l_max`` to the training length):
        d_model: width D.
        layer_idx: position of this layer in the stack.
        l_max: longest sequence; the positional features are scaled to it (t = 1 at l_max - 1), so
            it shapes the filters, and longer inputs or caches are an error.
        order: N, the depth of the recurrence (N + 1 projections, N - 1 long convolutions); >= 2.
        filter_order: width of the implicit filter's MLP.
        emb_dim: size of the positional features (t plus (emb_dim - 1) / 2 cosine/sine pairs); odd, >= 3.
        num_inner_mlps: hidden (filter_order x filter_order) layers of the filter MLP.
        short_filter_order: length of the short causal depthwise conv.
        w: initial frequency of the sine activations.
        fast_decay_pct, slow_decay_pct, target, shift: the decay window (``ExponentialModulation``).

    Biases: in_proj, out_proj and short_filter have them, as in zoology.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        l_max: int = 2048,
        order: int = 2,
        filter_order: int = 64,
        emb_dim: int = 3,
        num_inner_mlps: int = 2,
        short_filter_order: int = 3,
        w: float = 1.0,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
        shift: float = 0.0,
    ):
        super().__init__()
        check_int("hyena d_model", d_model)
        check_int("hyena l_max", l_max)
        check_int("hyena order", order, low=2)
        check_int("hyena filter_order", filter_order)
        check_int("hyena num_inner_mlps", num_inner_mlps, low=0)
        check_int("hyena short_filter_order", short_filter_order)
        if not is_int(emb_dim) or emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"hyena emb_dim={emb_dim!r} must be an odd integer >= 3 (t, then cosine/sine pairs)")
        if not all(is_real(pct) and pct > 0 for pct in (fast_decay_pct, slow_decay_pct)):
            raise ValueError(f"hyena fast_decay_pct={fast_decay_pct}, slow_decay_pct={slow_decay_pct} must be > 0")
        if not (is_real(target) and 0 < target < 1):
            raise ValueError(f"hyena target={target!r} must be in (0, 1)")
        for name, value in [("w", w), ("shift", shift)]:
            if not is_real(value):
                raise ValueError(f"hyena {name}={value!r} must be a finite number")
        self.layer_idx = layer_idx
        self.d_model, self.l_max, self.order = d_model, l_max, order
        self.filter_order, self.emb_dim, self.num_inner_mlps = filter_order, emb_dim, num_inner_mlps
        self.short_filter_order = short_filter_order
        width = (order + 1) * d_model

        self.in_proj = linear(d_model, width, bias=True)  # -> [x_1 .. x_N, v]
        self.short_filter = nn.Conv1d(width, width, short_filter_order, groups=width, padding=short_filter_order - 1)
        self.filter_fn = HyenaFilter(
            d_model,
            order - 1,
            l_max,
            emb_dim,
            filter_order,
            num_inner_mlps,
            w,
            modulation=dict(fast_decay_pct=fast_decay_pct, slow_decay_pct=slow_decay_pct, target=target, shift=shift),
        )
        self.out_proj = mark_residual_projection(linear(d_model, d_model, bias=True))
        for param in self.short_filter.parameters():
            mark_no_reinit(param)  # PyTorch's conv init, as in zoology
        tag_optim(self.short_filter.bias, weight_decay=0.0)

    def _check_length(self, length: int, what: str) -> None:
        if length > self.l_max:
            raise ValueError(f"hyena {what}={length} exceeds l_max={self.l_max}; raise backbone.mixer.hyena.l_max")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, D) -> (B, L, D); L <= l_max."""
        length = hidden.shape[1]
        self._check_length(length, "sequence length")
        u = causal_conv(self.in_proj(hidden).transpose(1, 2), self.short_filter)  # (B, (N+1) D, L)
        *gates, v = u.unflatten(1, (self.order + 1, self.d_model)).unbind(1)  # each (B, D, L)
        # the FFT needs float32 at least (no bf16 FFT); the filter is shared by the batch, so computing
        # it in full precision costs little
        work = torch.promote_types(v.dtype, torch.float32)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            filters = self.filter_fn.filter(length).to(work)  # (N-1, D, L)
            skip = self.filter_fn.skip().to(work)  # (N-1, D)
            for n in range(self.order - 1):
                v = (gates[n] * v).to(work)
                v = fft_causal_conv(v, filters[n]) + skip[n, :, None] * v
        y = (gates[-1] * v.to(gates[-1].dtype)).transpose(1, 2)  # (B, L, D)
        return self.out_proj(y)

    def allocate_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> HyenaCache:
        """Empty cache for ``step`` with room for ``max_len`` <= l_max positions."""
        self._check_length(max_len, "cache max_len")
        weight = self.in_proj.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        width = (self.order + 1) * self.d_model
        return HyenaCache(
            conv_state=torch.zeros(batch_size, width, self.short_filter_order, device=device, dtype=dtype),
            history=torch.zeros(batch_size, self.order - 1, self.d_model, max_len, device=device, dtype=dtype),
        )

    def step(self, hidden: torch.Tensor, cache: HyenaCache) -> tuple[torch.Tensor, HyenaCache]:
        """One token: hidden (B, D) -> (B, D). Each long convolution is the direct sum over the inputs
        in ``cache`` (O(t) per channel at position t; the filter is re-evaluated at lags 0 .. t).
        ``cache`` is updated in place and returned."""
        pos = cache.length
        if pos >= cache.history.shape[-1]:
            raise ValueError(f"hyena cache is full ({cache.history.shape[-1]} positions); allocate a longer one")
        u = causal_conv_step(self.in_proj(hidden), cache.conv_state, self.short_filter)
        *gates, v = u.unflatten(1, (self.order + 1, self.d_model)).unbind(1)  # each (B, D)
        lags_reversed = self.filter_fn.filter(pos + 1).flip(-1)  # (N-1, D, t+1): [s] = h_{t-s}
        skip = self.filter_fn.skip()
        for n in range(self.order - 1):
            v = gates[n] * v
            cache.history[:, n, :, pos] = v
            v = (cache.history[:, n, :, : pos + 1] * lags_reversed[n]).sum(-1) + skip[n] * v
        cache.length += 1
        return self.out_proj(gates[-1] * v), cache

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token (2 per multiply-add) at sequence length L = ``seq_len``:

        - in_proj, short_filter, out_proj: 2 per weight and bias;
        - the N gate products: 1 per element, N * D;
        - each of the (N-1) D long-conv channels, as FFT convolution of size n = 2L: three real FFTs
          (input, filter, inverse) at 2.5 n log2(n) each, amortised over the L tokens (15 log2(2L)),
          the spectrum product (L + 1 complex multiplies at 6, over L tokens), and the skip term (2);
        - the implicit filter, evaluated once per position of a sequence: 2 per MLP weight and bias
          plus 1 for the window, per filter value (sine evaluations and features not counted).
        """
        n_channels = (self.order - 1) * self.d_model
        dense = sum(parameter_count(m) for m in (self.in_proj, self.short_filter, self.out_proj))
        mlp = sum(parameter_count(m) for m in self.filter_fn.implicit_filter if isinstance(m, nn.Linear))
        fft = 15 * math.log2(2 * seq_len) + 6 * (seq_len + 1) / seq_len + 2
        total = 2 * dense + self.order * self.d_model + n_channels * fft + 2 * mlp + n_channels
        return round(total)

    def state_size(self, seq_len: int) -> int:
        """Bytes of inference state per sequence of ``seq_len`` tokens: the short conv's window and the
        inputs of the N - 1 long convolutions at every position (grows with seq_len, like a KV cache)."""
        self._check_length(seq_len, "state_size seq_len")
        width = (self.order + 1) * self.d_model
        elements = width * self.short_filter_order + (self.order - 1) * self.d_model * seq_len
        return elements * self.in_proj.weight.element_size()
