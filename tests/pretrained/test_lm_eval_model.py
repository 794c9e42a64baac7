"""lm-eval's ``memzoo`` model against memzoo's own forward: log-likelihoods, rolling log-likelihoods and
greedy generation recomputed here from ``model(ids)`` on a tiny Transformer saved as a model directory
with a word-level tokenizer; one run through ``lm_eval.simple_evaluate`` on a local task."""

import copy
import json
import shutil

import pytest
import torch

for _name in ("lm_eval", "tokenizers", "safetensors"):
    pytest.importorskip(_name, reason=f"{_name} is not installed (memzoo[lm-eval])")

import lm_eval  # noqa: E402
import lm_eval.api.registry  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

import zoo  # noqa: E402
from zoo.pretrained.directory import save_model_dir  # noqa: E402
from zoo.pretrained.lm_eval_model import MemzooLM, cli  # noqa: E402

SENTENCES = [
    "the cat sat on the mat",
    "the dog ran to the park",
    "a bird sang in the tree",
    "the sun rose over the hill",
    "a child read a book by the window",
    "the rain fell on the old roof",
]
EOS = "</s>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer, model directory): a 2-layer attention model over a word-level vocabulary,
    saved with its tokenizer.json and config.json's eos_token_id."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=[EOS, "[UNK]"]))
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(tokenizer_dir / "tokenizer.json"))
    torch.manual_seed(0)
    config = {"vocab_size": tokenizer.get_vocab_size(), "d_model": 32, "n_layers": 2, "mixer": {"attention": {"num_heads": 2}}}
    model = zoo.build_model(config).eval()
    out = tmp_path_factory.mktemp("models") / "tiny"
    save_model_dir(model, out, tokenizer_dir=tokenizer_dir, extra_config={"eos_token_id": tokenizer.token_to_id(EOS)})
    return model, tokenizer, out


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


@torch.no_grad()
def next_token_logprobs(model, ids: list[int]) -> torch.Tensor:
    """ids (L,) -> float64 log-probs (L, V) of the token after each position, from one forward."""
    return model(torch.tensor([ids]))[0].double().log_softmax(-1)


def reference_loglikelihood(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Sum of log p(continuation | context) over its tokens, and whether each is the argmax."""
    logprobs = next_token_logprobs(model, context + continuation)[len(context) - 1 : -1]  # (n, V)
    targets = torch.tensor(continuation)
    return float(logprobs.gather(1, targets[:, None]).sum()), bool((logprobs.argmax(-1) == targets).all())


def requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(kind, doc={}, arguments=args, idx=0) for args in arguments]


def greedy_pair(model, tokenizer) -> tuple[str, str]:
    """A (context, " word") whose word is the model's argmax after the context (is_greedy True)."""
    special = {tokenizer.token_to_id(EOS), tokenizer.token_to_id("[UNK]")}
    for sentence in SENTENCES:
        context = " ".join(sentence.split()[:3])
        token = int(next_token_logprobs(model, ids_of(tokenizer, context))[-1].argmax())
        if token not in special:
            return context, " " + tokenizer.id_to_token(token)
    raise AssertionError("no context whose argmax is a word")


def test_loglikelihood_equals_log_softmax_of_memzoos_forward_and_is_greedy_its_argmax(tiny):
    model, tokenizer, out = tiny
    lm = MemzooLM(pretrained=str(out), batch_size=2)
    pairs = [("the cat sat", " on the mat"), ("a child read a book by the", " window"), greedy_pair(model, tokenizer)]
    got = lm.loglikelihood(requests("loglikelihood", pairs + [("", "the dog ran")]), disable_tqdm=True)
    eos = tokenizer.token_to_id(EOS)
    want = [reference_loglikelihood(model, ids_of(tokenizer, c), ids_of(tokenizer, x)) for c, x in pairs]
    want.append(reference_loglikelihood(model, [eos], ids_of(tokenizer, "the dog ran")))  # empty context: EOT
    assert [g for _, g in got] == [g for _, g in want]
    assert [g for _, g in got][2], "the argmax continuation must be greedy"
    for (logprob, _), (expected, _) in zip(got, want):
        assert logprob == pytest.approx(expected, abs=1e-5)


def test_loglikelihood_keeps_the_last_max_length_tokens_of_context_and_continuation(tiny):
    model, tokenizer, out = tiny
    lm = MemzooLM(pretrained=str(out), max_length=4)
    ids = ids_of(tokenizer, "a child read a book by the window")
    [(logprob, _)] = lm.loglikelihood(requests("loglikelihood", [("a child read a book by the", " window")]), True)
    assert logprob == pytest.approx(reference_loglikelihood(model, ids[-5:-1], ids[-1:])[0], abs=1e-5)


def test_loglikelihood_rolling_of_a_short_document_sums_its_token_log_probs_after_eot(tiny):
    model, tokenizer, out = tiny
    lm = MemzooLM(pretrained=str(out), dtype="float64")
    text = "the cat sat on the mat"
    full = [tokenizer.token_to_id(EOS)] + ids_of(tokenizer, text)
    logprobs = next_token_logprobs(copy.deepcopy(model).double(), full)[:-1]
    want = float(logprobs.gather(1, torch.tensor(full[1:])[:, None]).sum())
    [got] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    assert got == pytest.approx(want, abs=1e-9)


def test_loglikelihood_rolling_of_a_long_document_sums_windows_of_the_max_length_tokens_before_each(tiny):
    model, tokenizer, out = tiny
    max_length = 16
    lm = MemzooLM(pretrained=str(out), max_length=max_length, dtype="float64")
    text = " ".join(SENTENCES)
    tokens = ids_of(tokenizer, text)
    assert len(tokens) > 2 * max_length, "the document must need several windows"
    full = [tokenizer.token_to_id(EOS)] + tokens  # full[i + 1] = tokens[i]
    double = copy.deepcopy(model).double()
    want = 0.0
    for start in range(0, len(tokens), max_length):  # window: predict tokens[start:end] from the max_length before
        end = min(start + max_length, len(tokens))
        inputs = full[max(0, end - max_length) : end]
        logprobs = next_token_logprobs(double, inputs)[-(end - start) :]
        want += float(logprobs.gather(1, torch.tensor(tokens[start:end])[:, None]).sum())
    [got] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    assert got == pytest.approx(want, abs=1e-9)


@torch.no_grad()
def reference_greedy(model, prompt: list[int], eos: int, max_new: int) -> list[int]:
    """Greedy tokens after ``prompt``, one full forward per token, stopping before EOT."""
    ids, new = list(prompt), []
    for _ in range(max_new):
        token = int(model(torch.tensor([ids]))[0, -1].argmax())
        if token == eos:
            break
        ids.append(token)
        new.append(token)
    return new


def test_generate_until_equals_a_greedy_loop_over_forward_cut_at_the_stop_string(tiny):
    model, tokenizer, out = tiny
    lm = MemzooLM(pretrained=str(out), dtype="float64")
    context = "the dog ran"
    new = reference_greedy(copy.deepcopy(model).double(), ids_of(tokenizer, context), tokenizer.token_to_id(EOS), 12)
    assert len(new) >= 4, "the reference must generate a few words to cut"
    text = tokenizer.decode(new)
    stop = tokenizer.id_to_token(new[3])
    cut = text[: text.find(stop)]
    args = [(context, {"until": [stop], "max_gen_toks": 12}), (context, {"until": [], "max_gen_toks": 3})]
    got = lm.generate_until(requests("generate_until", args), disable_tqdm=True)
    assert got == [cut, tokenizer.decode(new[:3])]


def test_simple_evaluate_on_a_local_task_logs_memzoos_log_likelihood_of_each_choice(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    model, tokenizer, out = tiny
    docs = [
        {"context": "the cat sat on the", "choices": ["mat", "tree"], "label": 0},
        {"context": "a bird sang in the", "choices": ["park", "tree"], "label": 1},
        {"context": "the sun rose over the", "choices": ["hill", "roof", "book"], "label": 0},
    ]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    task = {
        "task": "memzoo_tiny",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "hf_cache")},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc"}],
    }
    (task_dir / "memzoo_tiny.yaml").write_text(json.dumps(task))  # JSON is YAML
    results = lm_eval.simple_evaluate(
        model="memzoo",
        model_args=f"pretrained={out}",
        tasks=["memzoo_tiny"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        limit=len(docs),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(results["samples"]["memzoo_tiny"], key=lambda sample: sample["doc_id"])
    assert [sample["doc"] for sample in samples] == docs
    for sample, doc in zip(samples, docs):
        context = ids_of(tokenizer, doc["context"])
        want = [reference_loglikelihood(model, context, ids_of(tokenizer, " " + choice))[0] for choice in doc["choices"]]
        got = [float(logprob) for logprob, _ in sample["filtered_resps"]]
        assert got == pytest.approx(want, abs=1e-5)


def test_bad_batch_size_and_a_directory_without_tokenizer_json_raise_value_errors_naming_them(tiny, tmp_path):
    _, _, out = tiny
    with pytest.raises(ValueError, match="batch_size=0 must be a positive int"):
        MemzooLM(pretrained=str(out), batch_size=0)
    with pytest.raises(ValueError, match="dtype='int8' must be one of"):
        MemzooLM(pretrained=str(out), dtype="int8")
    with pytest.raises(ValueError, match="device='tpu'"):
        MemzooLM(pretrained=str(out), device="tpu")
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=f"pretrained='{bare}' has no tokenizer.json"):
        MemzooLM(pretrained=str(bare))


def test_importing_the_module_registers_memzoo_with_lm_eval_and_keeps_its_own_models():
    assert lm_eval.api.registry.get_model("memzoo") is MemzooLM
    assert "hf" in lm_eval.api.registry.model_registry.keys()
    assert callable(cli)
