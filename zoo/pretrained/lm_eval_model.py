"""An lm-evaluation-harness model, ``lm_eval --model memzoo --model_args pretrained=DIR``: a model
directory (``config.json`` + ``model.safetensors`` + ``tokenizer.json``) scored through memzoo's own
forward (log-likelihoods) and recurrent ``step`` (greedy generation). lm-eval finds only its own
models, so ``memzoo-lm-eval`` (``cli``) is lm-eval's command line with this one registered."""

from __future__ import annotations

import os
from typing import Any

import lm_eval.models  # noqa: F401  lm-eval's own models first: its registry loads them only while it is empty
import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from zoo.core.command_line import usage_errors
from zoo.model.generate import check_generation_arguments
from zoo.pretrained.directory import load_model_dir, read_config
from zoo.pretrained.files import has_file, tokenizer_file

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_TYPES = ("cpu", "cuda")
EOT_TOKENS = ("</s>", "<|endoftext|>")  # looked up in the tokenizer when config.json names no eos_token_id
TOKENIZER_FILE = "tokenizer.json"
MAX_GEN_TOKS = 256  # lm-eval's default when a task sets no max_gen_toks

Request = tuple[tuple[str, str] | None, list[int], list[int]]  # (strings or None, context ids, continuation ids)


@register_model("memzoo")
class MemzooLM(TemplateLM):
    """A memzoo model directory as an lm-eval model: log-likelihoods from one forward per batch of
    ``batch_size`` right-padded requests, greedy generation one request at a time through ``step``."""

    max_gen_toks = MAX_GEN_TOKS

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 1,
        device: str = "cpu",
        max_length: int | str = 2048,
        dtype: str = "float32",
        **kwargs: Any,
    ):
        super().__init__()
        if kwargs:
            allowed = "pretrained, batch_size, device, max_length, dtype"
            raise ValueError(f"unknown model_args {sorted(kwargs)} for --model memzoo; it takes {allowed}")
        self.batch_size = positive_int("batch_size", batch_size)
        self.max_length = positive_int("max_length", max_length)
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
        self._device = checked_device(device)
        self.tokenizer = read_tokenizer(pretrained)
        self._eot_token_id = eot_id(pretrained, self.tokenizer)
        self.model = load_model_dir(pretrained, map_location=self._device).to(dtype=DTYPES[dtype])

    @property
    def eot_token_id(self) -> int:
        return self._eot_token_id

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Text -> token ids, with no special tokens added (memzoo trains on plain token streams)."""
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Requests (strings, context ids, continuation ids) -> (sum of the continuation's log-probs,
        whether greedy decoding produces it), in order. Batches of ``batch_size``, longest first."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="memzoo loglikelihood"):
            batch = order[start : start + self.batch_size]
            for i, result in zip(batch, self._score([requests[i][1:] for i in batch])):
                results[i] = result
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], result)
        return results

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) pairs -> (log-prob sum, is greedy) each, from one forward of
        the right-padded inputs (B, L); the LM head runs on the continuation positions only (N rows)."""
        windows = [self._window(context, continuation) for context, continuation in pairs]
        inputs = torch.zeros(len(windows), max(map(len, windows)), dtype=torch.long)
        scored = torch.zeros_like(inputs, dtype=torch.bool)
        for row, (ids, (_, continuation)) in enumerate(zip(windows, pairs)):
            inputs[row, : len(ids)] = torch.tensor(ids)
            scored[row, len(ids) - len(continuation) : len(ids)] = True
        targets = torch.tensor([t for _, continuation in pairs for t in continuation], dtype=torch.long, device=self.device)
        logprobs = self.model(inputs.to(self.device), scored.to(self.device)).double().log_softmax(-1)  # (N, V) float64
        token_logprobs = logprobs.gather(1, targets[:, None]).squeeze(1)  # (N,)
        greedy = logprobs.argmax(-1) == targets  # (N,)
        sizes = [len(continuation) for _, continuation in pairs]
        return [(float(lp.sum()), bool(hit.all())) for lp, hit in zip(token_logprobs.split(sizes), greedy.split(sizes))]

    def _window(self, context: list[int], continuation: list[int]) -> list[int]:
        """The model's input for one request: context + continuation without its last token, cut from
        the left to ``max_length`` tokens; its last len(continuation) positions predict the continuation."""
        if len(continuation) > self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_length={self.max_length}")
        return (context + continuation)[-(self.max_length + 1) :][:-1]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each document's total log-likelihood (request args: (text,)), every token predicted once:
        windows of up to ``max_length`` tokens, the first one conditioned on the EOT token."""
        windows: list[Request] = []
        owners: list[int] = []
        for doc, (text,) in enumerate(request.args for request in requests):
            for context, continuation in self._rolling_windows(text):
                windows.append((None, context, continuation))
                owners.append(doc)
        totals = [0.0] * len(requests)
        for doc, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[doc] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def _rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """text -> disjoint (context ids, continuation ids) windows covering all of its tokens."""
        windows = utils.get_rolling_token_windows(
            token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
        )
        return [utils.make_disjoint_window(window) for window in windows]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations (request args: (context, gen_kwargs) with ``until`` and ``max_gen_toks``),
        each cut before its first stop string and ending before EOT."""
        outputs = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm, desc="memzoo generate_until"):
            options = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if options["do_sample"]:
                raise ValueError(f"gen_kwargs {gen_kwargs} ask for sampling; memzoo's lm-eval model decodes greedily only")
            text = self._greedy(self.tok_encode(context), options["until"], options["max_gen_toks"])
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs

    @torch.no_grad()
    def _greedy(self, prompt: list[int], until: list[str], max_gen_toks: int) -> str:
        """Prompt ids -> greedy text, one ``step`` per token (prompt included): stops at EOT, at a stop
        string in ``until`` (the text cut before it) or after ``max_gen_toks`` tokens. The prompt keeps
        its last max_length - max_gen_toks tokens; an empty one is the EOT token."""
        if max_gen_toks >= self.max_length:
            raise ValueError(f"max_gen_toks={max_gen_toks} must be < max_length={self.max_length} (room for the prompt)")
        prompt = prompt[-(self.max_length - max_gen_toks) :] or [self.prefix_token_id]
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)  # (1, P)
        check_generation_arguments(self.model, ids, max_gen_toks, 0.0, None)
        caches = self.model.allocate_caches(1, len(prompt) + max_gen_toks)
        for t in range(len(prompt)):
            logits = self.model.step(ids[:, t], caches)  # (1, V)
        generated: list[int] = []
        for _ in range(max_gen_toks):
            token = int(logits[0].argmax())
            if token == self.eot_token_id:
                break
            generated.append(token)
            if len(generated) == max_gen_toks or stop_at(self.tok_decode(generated), until) is not None:
                break
            logits = self.model.step(torch.tensor([token], device=self.device), caches)
        text = self.tok_decode(generated)
        end = stop_at(text, until)
        return text if end is None else text[:end]


def stop_at(text: str, until: list[str]) -> int | None:
    """Where in ``text`` the earliest (non-empty) stop string of ``until`` begins; None when none occurs."""
    starts = [text.find(stop) for stop in until if stop and stop in text]
    return min(starts) if starts else None


def positive_int(name: str, value: int | str) -> int:
    """A model argument given as int or digit string (lm-eval passes strings) -> int >= 1, else ValueError."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return value


def checked_device(device: str) -> torch.device:
    """A ``cpu`` / ``cuda`` / ``cuda:N`` string -> torch.device; ValueError when not one, or CUDA is absent."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device; allowed: 'cpu', 'cuda', 'cuda:N'") from err
    if parsed.type not in DEVICE_TYPES:
        raise ValueError(f"device={device!r}: memzoo's lm-eval model runs on {' or '.join(DEVICE_TYPES)}")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        found = torch.cuda.device_count()
        raise ValueError(
            f"device={device!r} but this machine has {found} CUDA device(s); pass device=cpu (lm_eval's --device cpu)"
        )
    return parsed


def read_tokenizer(pretrained: str):
    """The model directory's ``tokenizer.json`` as a ``tokenizers.Tokenizer``; ValueError naming the
    directory when it has none."""
    from tokenizers import Tokenizer

    if not os.path.isdir(pretrained):
        raise ValueError(f"pretrained={pretrained!r} is not a model directory (config.json, model.safetensors, {TOKENIZER_FILE})")
    if not has_file(pretrained, TOKENIZER_FILE):
        raise ValueError(
            f"pretrained={pretrained!r} has no {TOKENIZER_FILE}: copy the tokenizer the model was trained with into it"
            " (zoo.pretrained.directory.save_model_dir(..., tokenizer_dir=...))"
        )
    path = tokenizer_file(pretrained, TOKENIZER_FILE)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises its own Exception type on a malformed file
        raise ValueError(f"{path}: not a tokenizers file: {err}") from err


def eot_id(pretrained: str, tokenizer) -> int:
    """The end-of-text id: config.json's ``eos_token_id`` (an int, or the first of a list), else the
    tokenizer's id of one of ``EOT_TOKENS``; ValueError saying what to add when there is neither."""
    eos = read_config(pretrained).get("eos_token_id")
    if isinstance(eos, list) and eos:
        eos = eos[0]
    if isinstance(eos, int) and not isinstance(eos, bool):
        return eos
    for token in EOT_TOKENS:
        if tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    raise ValueError(
        f'pretrained={pretrained!r}: no end-of-text token: add "eos_token_id": <id> to its config.json'
        f" (or a {' / '.join(EOT_TOKENS)} token to its tokenizer)"
    )


def cli() -> None:
    """``memzoo-lm-eval``: lm-eval's command line (``lm_eval run ...``) with ``--model memzoo`` registered;
    a ``ValueError`` (a refused model directory, a bad model argument) ends it with one line and exit 2."""
    from lm_eval.__main__ import cli_evaluate

    with usage_errors("memzoo-lm-eval"):
        cli_evaluate()
