"""The six MAD synthetic tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures"), written as causal next-token problems with MAD's baseline settings as defaults.

Every generator returns ``(inputs, targets)``, each (N, L) long: ``targets[t]`` is what the model must
output after reading ``inputs[: t + 1]``, -100 where nothing is scored. Only answers are scored, in
training too (MAD trains its recall tasks on every next token and scores answers only at test time).
Each task is a frozen knob dataclass (its options, checked on construction), a pure generator whose
keyword arguments are the knobs, and a one-statement datamodule (``zoo.tasks.base.SyntheticDataModule``
adds splits, seeds and batches).

- ``icr``: key/value pairs; a key that appeared before must be answered with its value.
- ``fuzzy_icr``: the same with keys and values of 1..3 contiguous tokens.
- ``noisy_icr``: ``icr`` with pairs replaced by tokens of a separate noise vocabulary.
- ``selective_copying``: tokens scattered among blanks, reproduced in order after a copy token.
- ``compression``: a random sequence and a compression token, then position queries.
- ``memorization``: a fixed key -> value map, the same in every split, asked with no value in context.

Where this differs from MAD's reference generators (mad-lab):

- the recall tasks are MAD's multi-query variant; a sequence is cut at ``seq_len`` instead of being
  left-padded, so ``fuzzy_icr`` needs no pad token and uses the whole vocabulary for keys and values;
  ``fuzzy_icr`` draws test keys like training keys (MAD prompts only with the largest key motifs);
- ``selective_copying`` places the tokens uniformly over the context (MAD inserts blanks between them);
- ``compression`` is answered by position queries: see ``generate_compression``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.tasks.base import IGNORE_INDEX, SyntheticDataModule


def _check_num_examples(num_examples: int) -> None:
    """Raise ``ValueError`` unless a generator is asked for at least one example."""
    if num_examples < 1:
        raise ValueError(f"number of examples={num_examples} must be >= 1")


def _distinct_tokens(gen: torch.Generator, shape: tuple[int, ...], vocab: int, size: int) -> torch.Tensor:
    """-> shape + (size,) long: ``size`` distinct tokens of [0, vocab), a uniform ordered draw per row."""
    out = torch.empty(*shape, size, dtype=torch.long)
    for j in range(size):
        # the r-th of the vocab - j unused tokens: step r past every used token <= it, in ascending order
        r = torch.randint(vocab - j, shape, generator=gen)
        for used in out[..., :j].sort(dim=-1).values.unbind(-1):
            r += r >= used
        out[..., j] = r
    return out


def _first_occurrence(codes: torch.Tensor) -> torch.Tensor:
    """codes (N, P) -> (N, P) long: the position in its row where each code occurs first."""
    p = codes.shape[1]
    order = codes.argsort(dim=1, stable=True)
    ranked = codes.gather(1, order)
    starts = torch.ones_like(ranked, dtype=torch.bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    # the stable sort puts each code's earliest position at the start of its run
    run_start = torch.where(starts, torch.arange(p), 0).cummax(dim=1).values
    first = order.gather(1, run_start)
    return torch.empty_like(first).scatter_(1, order, first)


def _generate_recall(
    num_examples: int,
    seq_len: int,
    num_keys: int,
    num_values: int,
    max_key_size: int,
    max_value_size: int,
    noise_vocab_size: int,
    frac_noise: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query recall over motifs -> (inputs, targets), each (num_examples, seq_len) long.

    Keys are motifs of 1..max_key_size distinct tokens of [0, num_keys), values of 1..max_value_size
    distinct tokens of the next num_values, noise tokens follow. Each pair slot is a key and its value,
    or with probability ``frac_noise`` as many noise tokens. A key's value is the one drawn at its
    first occurrence; after a repeated key every value token is scored.
    """
    gen = torch.Generator().manual_seed(seed)
    n, k, v = num_examples, max_key_size, max_value_size
    p = seq_len // 2 + 1  # a slot holds >= 2 tokens, so p slots cover seq_len + 1 tokens

    key_size = torch.randint(1, k + 1, (n, p), generator=gen)
    value_size = torch.randint(1, v + 1, (n, p), generator=gen)
    key_tokens = _distinct_tokens(gen, (n, p), num_keys, k)
    value_tokens = _distinct_tokens(gen, (n, p), num_values, v) + num_keys

    key_valid = torch.arange(k) < key_size[..., None]  # (n, p, k)
    base = (num_keys + 1) ** torch.arange(k)
    codes = torch.where(key_valid, key_tokens + 1, 0).mul(base).sum(-1)  # one integer per key motif
    is_noise = torch.rand(n, p, generator=gen) < frac_noise
    codes = torch.where(is_noise, -1 - torch.arange(p), codes)  # a noise slot matches nothing
    first = _first_occurrence(codes)
    repeated = first < torch.arange(p)
    value_size = value_size.gather(1, first)
    value_tokens = value_tokens.gather(1, first[..., None].expand(-1, -1, v))

    tokens = torch.cat([key_tokens, value_tokens], dim=2)  # (n, p, k + v), key part then value part
    valid = torch.cat([key_valid, torch.arange(v) < value_size[..., None]], dim=2)
    answer = torch.cat([torch.zeros_like(key_valid), repeated[..., None].expand(-1, -1, v)], dim=2)
    if frac_noise > 0:
        noise = torch.randint(noise_vocab_size, tokens.shape, generator=gen) + num_keys + num_values
        tokens = torch.where(is_noise[..., None], noise, tokens)
        answer &= ~is_noise[..., None]

    # pack each row's valid tokens left to right and keep the first seq_len + 1
    valid, tokens, answer = valid.flatten(1), tokens.flatten(1), answer.flatten(1)
    pos = valid.cumsum(1) - 1
    pos = torch.where(valid & (pos <= seq_len), pos, seq_len + 1)  # the rest goes to a dropped column
    stream = torch.zeros(n, seq_len + 2, dtype=torch.long).scatter_(1, pos, tokens)[:, : seq_len + 1]
    scored = torch.zeros(n, seq_len + 2, dtype=torch.bool).scatter_(1, pos, answer)[:, 1 : seq_len + 1]
    return stream[:, :seq_len], torch.where(scored, stream[:, 1:], IGNORE_INDEX)


def recall_workspace_bytes(num_examples: int, seq_len: int, max_key_size: int = 1, max_value_size: int = 1) -> int:
    """What ``_generate_recall`` holds at once, coarsely: about six int64 (n, slots, k + v) tensors
    (motif tokens, masks, positions; slots = seq_len / 2 + 1) and three (n, seq_len + 2) streams."""
    slots = seq_len // 2 + 1
    return 8 * num_examples * (6 * slots * (max_key_size + max_value_size) + 3 * (seq_len + 2))


def check_recall_sizes(
    vocab_size: int,
    seq_len: int,
    max_key_motif_size: int = 1,
    max_value_motif_size: int = 1,
    noise_vocab_size: int = 0,
    frac_noise: float = 0.0,
) -> None:
    """Raise ``ValueError`` naming the field when the sizes admit no recall example."""
    if seq_len < 2:
        raise ValueError(f"task.seq_len={seq_len} must be >= 2 (a key and its value)")
    for name, value in [("max_key_motif_size", max_key_motif_size), ("max_value_motif_size", max_value_motif_size)]:
        if value < 1:
            raise ValueError(f"task.{name}={value} must be >= 1")
    if noise_vocab_size < 0:
        raise ValueError(f"task.noise_vocab_size={noise_vocab_size} must be >= 0")
    if not 0 <= frac_noise < 1:
        raise ValueError(f"task.frac_noise={frac_noise} must be in [0, 1)")
    if frac_noise > 0 and noise_vocab_size < 1:
        raise ValueError(f"task.noise_vocab_size={noise_vocab_size} must be >= 1 when task.frac_noise={frac_noise} > 0")
    # keys take the lower half of the vocab_size - noise_vocab_size key/value tokens, values the upper
    need = max(2 * max_key_motif_size, 2 * max_value_motif_size - 1) + noise_vocab_size
    if vocab_size < need:
        raise ValueError(
            f"task.vocab_size={vocab_size} is too small: keys are up to {max_key_motif_size} distinct tokens of the "
            f"lower half of the vocab_size - noise_vocab_size key/value tokens and values up to "
            f"{max_value_motif_size} of the upper half, so vocab_size must be >= {need}"
        )


@dataclass(frozen=True)
class InContextRecall:
    """In-context recall knobs; ``vocab_size`` is the whole vocabulary. See ``generate_icr``."""

    vocab_size: int = 16
    seq_len: int = 128

    def __post_init__(self):
        check_recall_sizes(self.vocab_size, self.seq_len)

    def workspace_bytes(self, num_examples: int) -> int:
        return recall_workspace_bytes(num_examples, self.seq_len)


def generate_icr(
    num_examples: int,
    vocab_size: int = InContextRecall.vocab_size,
    seq_len: int = InContextRecall.seq_len,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-context recall -> (inputs, targets), each (num_examples, seq_len) long.

    ``k v k v ...``: keys uniform over [0, vocab/2), each example's key -> value map uniform over
    [vocab/2, vocab). The target at a key that appeared before is its value; nothing else is scored.
    """
    check_recall_sizes(vocab_size, seq_len)
    _check_num_examples(num_examples)
    half = vocab_size // 2
    return _generate_recall(num_examples, seq_len, half, vocab_size - half, 1, 1, 0, 0.0, seed)


class InContextRecallDataModule(SyntheticDataModule, knobs=InContextRecall, generator=generate_icr, test_overrides=("seq_len",)):
    """MAD in-context recall splits; see ``generate_icr`` and ``SyntheticDataModule``."""


@dataclass(frozen=True)
class FuzzyInContextRecall:
    """Fuzzy in-context recall knobs; ``vocab_size`` is the whole vocabulary. See ``generate_fuzzy_icr``."""

    vocab_size: int = 16
    seq_len: int = 128
    max_key_motif_size: int = 3
    max_value_motif_size: int = 3

    def __post_init__(self):
        check_recall_sizes(self.vocab_size, self.seq_len, self.max_key_motif_size, self.max_value_motif_size)

    def workspace_bytes(self, num_examples: int) -> int:
        return recall_workspace_bytes(num_examples, self.seq_len, self.max_key_motif_size, self.max_value_motif_size)


def generate_fuzzy_icr(
    num_examples: int,
    vocab_size: int = FuzzyInContextRecall.vocab_size,
    seq_len: int = FuzzyInContextRecall.seq_len,
    max_key_motif_size: int = FuzzyInContextRecall.max_key_motif_size,
    max_value_motif_size: int = FuzzyInContextRecall.max_value_motif_size,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuzzy in-context recall -> (inputs, targets), each (num_examples, seq_len) long.

    Keys are motifs of 1..max_key_motif_size distinct contiguous tokens of [0, vocab/2), values of
    1..max_value_motif_size of [vocab/2, vocab); a key is the whole motif (``a b`` and ``a b c`` are
    different keys). After a repeated key motif every token of its value motif is scored; the first
    is the target at the key's last token, which is unambiguous: it is scored only when the key motif
    read so far is complete and was seen before.
    """
    check_recall_sizes(vocab_size, seq_len, max_key_motif_size, max_value_motif_size)
    _check_num_examples(num_examples)
    half = vocab_size // 2
    return _generate_recall(
        num_examples, seq_len, half, vocab_size - half, max_key_motif_size, max_value_motif_size, 0, 0.0, seed
    )


class FuzzyInContextRecallDataModule(
    SyntheticDataModule, knobs=FuzzyInContextRecall, generator=generate_fuzzy_icr, test_overrides=("seq_len",)
):
    """MAD fuzzy in-context recall splits; see ``generate_fuzzy_icr`` and ``SyntheticDataModule``."""


@dataclass(frozen=True)
class NoisyInContextRecall:
    """Noisy in-context recall knobs; ``vocab_size`` is the whole vocabulary, noise tokens included.
    See ``generate_noisy_icr``."""

    vocab_size: int = 32
    seq_len: int = 128
    noise_vocab_size: int = 16
    frac_noise: float = 0.2

    def __post_init__(self):
        check_recall_sizes(self.vocab_size, self.seq_len, noise_vocab_size=self.noise_vocab_size, frac_noise=self.frac_noise)

    def workspace_bytes(self, num_examples: int) -> int:
        return recall_workspace_bytes(num_examples, self.seq_len)


def generate_noisy_icr(
    num_examples: int,
    vocab_size: int = NoisyInContextRecall.vocab_size,
    seq_len: int = NoisyInContextRecall.seq_len,
    noise_vocab_size: int = NoisyInContextRecall.noise_vocab_size,
    frac_noise: float = NoisyInContextRecall.frac_noise,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy in-context recall -> (inputs, targets), each (num_examples, seq_len) long.

    ``icr`` over the first ``vocab_size - noise_vocab_size`` tokens; each pair slot is instead two
    tokens of the last ``noise_vocab_size`` with probability ``frac_noise``. Noise is never scored
    and never counts as an occurrence of a key.
    """
    check_recall_sizes(vocab_size, seq_len, noise_vocab_size=noise_vocab_size, frac_noise=frac_noise)
    _check_num_examples(num_examples)
    kv = vocab_size - noise_vocab_size
    return _generate_recall(num_examples, seq_len, kv // 2, kv - kv // 2, 1, 1, noise_vocab_size, frac_noise, seed)


class NoisyInContextRecallDataModule(
    SyntheticDataModule, knobs=NoisyInContextRecall, generator=generate_noisy_icr, test_overrides=("seq_len",)
):
    """MAD noisy in-context recall splits; see ``generate_noisy_icr`` and ``SyntheticDataModule``."""


def check_selective_copying_sizes(vocab_size: int, seq_len: int, num_tokens_to_copy: int) -> None:
    """Raise ``ValueError`` naming the field when the sizes admit no selective-copying example."""
    if vocab_size < 3:
        raise ValueError(f"task.vocab_size={vocab_size} must be >= 3 (a blank, a copy token and a token to copy)")
    if num_tokens_to_copy < 1:
        raise ValueError(f"task.num_tokens_to_copy={num_tokens_to_copy} must be >= 1")
    if seq_len < 2 * num_tokens_to_copy + 2:
        raise ValueError(
            f"task.seq_len={seq_len} is too short for num_tokens_to_copy={num_tokens_to_copy}: need seq_len >= "
            f"2 * num_tokens_to_copy + 2 = {2 * num_tokens_to_copy + 2} "
            "(the tokens, a blank, the copy token and the copy region)"
        )


@dataclass(frozen=True)
class SelectiveCopying:
    """Selective copying knobs; ``vocab_size`` includes the blank and the copy token. See
    ``generate_selective_copying``."""

    vocab_size: int = 16
    seq_len: int = 256
    num_tokens_to_copy: int = 16

    def __post_init__(self):
        check_selective_copying_sizes(self.vocab_size, self.seq_len, self.num_tokens_to_copy)


def generate_selective_copying(
    num_examples: int,
    vocab_size: int = SelectiveCopying.vocab_size,
    seq_len: int = SelectiveCopying.seq_len,
    num_tokens_to_copy: int = SelectiveCopying.num_tokens_to_copy,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective copying -> (inputs, targets), each (num_examples, seq_len) long.

    ``num_tokens_to_copy`` tokens of [0, vocab - 2) at uniformly random places among blanks
    (``vocab - 2``), then the copy token (``vocab - 1``) and ``num_tokens_to_copy`` blanks; the target
    at the i-th of these blanks is the i-th scattered token (MAD's layout), nothing else is scored.
    """
    check_selective_copying_sizes(vocab_size, seq_len, num_tokens_to_copy)
    _check_num_examples(num_examples)
    gen = torch.Generator().manual_seed(seed)
    n, m = num_examples, num_tokens_to_copy
    context = seq_len - m - 1
    tokens = torch.randint(vocab_size - 2, (n, m), generator=gen)
    places = torch.rand(n, context, generator=gen).argsort(dim=1)[:, :m].sort(dim=1).values

    inputs = torch.full((n, seq_len), vocab_size - 2, dtype=torch.long)
    inputs.scatter_(1, places, tokens)
    inputs[:, context] = vocab_size - 1
    targets = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)
    targets[:, context + 1 :] = tokens
    return inputs, targets


class SelectiveCopyingDataModule(SyntheticDataModule, knobs=SelectiveCopying, generator=generate_selective_copying):
    """MAD selective copying splits; see ``generate_selective_copying`` and ``SyntheticDataModule``."""


def check_compression_sizes(vocab_size: int, seq_len: int) -> None:
    """Raise ``ValueError`` naming the field when the sizes admit no compression example."""
    if seq_len < 3 or seq_len % 2 == 0:
        raise ValueError(f"task.seq_len={seq_len} must be odd and >= 3: m tokens, the compression token, m position queries")
    m = (seq_len - 1) // 2
    if vocab_size < m + 3:
        raise ValueError(
            f"task.vocab_size={vocab_size} is too small for seq_len={seq_len}: it holds the symbols, the compression "
            f"token and {m} position-query tokens, so vocab_size must be >= {m + 3} (two symbols)"
        )


@dataclass(frozen=True)
class Compression:
    """Compression knobs; ``vocab_size`` = symbols + 1 + (seq_len - 1) / 2. See ``generate_compression``."""

    vocab_size: int = 47
    seq_len: int = 63

    def __post_init__(self):
        check_compression_sizes(self.vocab_size, self.seq_len)


def generate_compression(
    num_examples: int, vocab_size: int = Compression.vocab_size, seq_len: int = Compression.seq_len, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compression -> (inputs, targets), each (num_examples, seq_len) long.

    With m = (seq_len - 1) / 2 and s = vocab_size - 1 - m symbols: m random symbols, the compression
    token ``s``, then one query per position in random order (token ``s + 1 + i`` asks for the i-th
    symbol); the target at a query is the symbol it asks for, nothing else is scored.

    MAD instead encodes seq_len - 1 symbols plus the compression token and trains an MLP decoder to
    rebuild every symbol from the one output vector at the compression token. A causal next-token LM
    has no such decoder, so here the model itself must answer position queries from what it has read:
    a recurrent model must hold all m symbols in its state at the compression token, while attention
    may still look back at them. The defaults (47, 63) keep MAD's 15 symbols and 31-symbol sequence.
    """
    check_compression_sizes(vocab_size, seq_len)
    _check_num_examples(num_examples)
    gen = torch.Generator().manual_seed(seed)
    n, m = num_examples, (seq_len - 1) // 2
    symbols = vocab_size - 1 - m
    tokens = torch.randint(symbols, (n, m), generator=gen)
    asked = torch.rand(n, m, generator=gen).argsort(dim=1)  # position asked by each query

    inputs = torch.cat([tokens, torch.full((n, 1), symbols), asked + symbols + 1], dim=1)
    targets = torch.cat([torch.full((n, m + 1), IGNORE_INDEX), tokens.gather(1, asked)], dim=1)
    return inputs, targets


class CompressionDataModule(SyntheticDataModule, knobs=Compression, generator=generate_compression):
    """Compression splits, answered by position queries; see ``generate_compression`` and ``SyntheticDataModule``."""


def check_memorization_sizes(vocab_size: int, seq_len: int) -> None:
    """Raise ``ValueError`` naming the field when the sizes admit no memorization example."""
    if vocab_size < 3:
        raise ValueError(f"task.vocab_size={vocab_size} must be >= 3 (a key, a value and the insert token)")
    if seq_len < 2 or seq_len % 2:
        raise ValueError(f"task.seq_len={seq_len} must be even and >= 2 (key, insert-token pairs)")


def memorization_map(vocab_size: int, map_seed: int) -> torch.Tensor:
    """-> (num_keys,) long: the value of each key 0..num_keys-1, num_keys = (vocab_size - 1) // 2."""
    check_memorization_sizes(vocab_size, 2)
    num_keys = (vocab_size - 1) // 2
    gen = torch.Generator().manual_seed(map_seed)
    return torch.randperm(vocab_size - 1 - num_keys, generator=gen)[:num_keys] + num_keys


@dataclass(frozen=True)
class Memorization:
    """Memorization knobs; ``vocab_size`` includes the insert token and sets the number of facts,
    (vocab_size - 1) // 2; every split asks the one map drawn from ``map_seed``. See
    ``generate_memorization``."""

    vocab_size: int = 256
    seq_len: int = 32
    map_seed: int = 12345

    def __post_init__(self):
        check_memorization_sizes(self.vocab_size, self.seq_len)
        if not 0 <= self.map_seed <= 2**32 - 1:
            raise ValueError(f"task.map_seed={self.map_seed} must be in [0, {2**32 - 1}]")


def generate_memorization(
    num_examples: int,
    vocab_size: int = Memorization.vocab_size,
    seq_len: int = Memorization.seq_len,
    map_seed: int = Memorization.map_seed,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memorization -> (inputs, targets), each (num_examples, seq_len) long.

    ``k INSERT k INSERT ...``: keys uniform over [0, (vocab - 1) / 2), INSERT = vocab - 1; the target
    at INSERT is the key's value under ``memorization_map(vocab_size, map_seed)`` (an injective map
    into the remaining tokens), which never appears in the inputs. Keys are not scored.
    """
    check_memorization_sizes(vocab_size, seq_len)
    _check_num_examples(num_examples)
    values = memorization_map(vocab_size, map_seed)
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randint(len(values), (num_examples, seq_len // 2), generator=gen)

    inputs = torch.full((num_examples, seq_len), vocab_size - 1, dtype=torch.long)
    inputs[:, 0::2] = keys
    targets = torch.full((num_examples, seq_len), IGNORE_INDEX, dtype=torch.long)
    targets[:, 1::2] = values[keys]
    return inputs, targets


class MemorizationDataModule(SyntheticDataModule, knobs=Memorization, generator=generate_memorization):
    """MAD memorization splits; see ``generate_memorization`` and ``SyntheticDataModule``."""
