"""Every config value is checked before compute: a bad type, range or non-finite number, and a run
too large for the machine, are refused with a ValueError naming the key, the value and what is
allowed, before any data, model or file is made; shipped configs pass every check."""

import re
import time

import pytest
import torch
from helpers.configs import TINY, compose_config
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from zoo.core.dataclass_config import typed
from zoo.grid.runner import expand, load_grid, shipped_grids
from zoo.model.generate import check_generation_arguments, generate
from zoo.model.language_model import ModelConfig, build_model
from zoo.model.size_budget import Budget, GiB, Part, check_size_budget, parameter_counts, run_parts
from zoo.tasks import TASKS, build_datamodule
from zoo.tasks.lm import _cap, _read_files, _utf8, path_corpus
from zoo.training.config import RunConfig
from zoo.training.train import check_run_config, train


def make_cfg(*overrides, tiny=True):
    return compose_config("train", *(TINY if tiny else []), *overrides)


def refused_before_anything(tmp_path, overrides, match, tiny=None):
    """``train`` raises a ValueError matching ``match`` and leaves the run directory empty; the config
    is the tiny MQAR run's unless another task is chosen (or ``tiny=False``)."""
    tiny = not any(o.startswith("task=") for o in overrides) if tiny is None else tiny
    with pytest.raises(ValueError, match=match):
        train(make_cfg(*overrides, tiny=tiny), tmp_path)
    assert list(tmp_path.iterdir()) == []


MUST = {  # what a message says is allowed
    "int1": r"must be an integer >= 1",
    "pos": r"must be a finite number > 0",
    "nonneg": r"must be a finite number >= 0",
    "unit": r"must be a number in \[0, 1\)",
}

BAD_VALUES = [
    # optim: AdamW's arguments
    (["optim.weight_decay=-1"], rf"^optim\.weight_decay=-1\.0 {MUST['nonneg']}$"),
    (["optim.weight_decay=nan"], rf"^optim\.weight_decay=nan {MUST['nonneg']}$"),
    (["optim.weight_decay=inf"], rf"^optim\.weight_decay=inf {MUST['nonneg']}$"),
    (["optim.weight_decay=1e30"], r"^optim\.weight_decay=1e\+30 with optim\.lr=0\.003: .* lr \* weight_decay must be < 1$"),
    (["optim.lr=1", "optim.weight_decay=1"], r"^optim\.weight_decay=1\.0 with optim\.lr=1\.0: .*must be < 1$"),
    (["optim.betas=[0.9]"], r"^optim\.betas=\[0\.9\] must be two numbers in \[0, 1\) \(Adam's beta1, beta2\)$"),
    (["optim.betas=[0.9,1.0]"], r"^optim\.betas=\[0\.9, 1\.0\] must be two numbers in \[0, 1\)"),
    (["optim.betas=[0.9,nan]"], r"^optim\.betas=\[0\.9, nan\] must be two numbers in \[0, 1\)"),
    (["optim.eps=0"], rf"^optim\.eps=0\.0 {MUST['pos']}$"),
    (["optim.eps=-1"], rf"^optim\.eps=-1\.0 {MUST['pos']}$"),
    (["optim.eps=inf"], rf"^optim\.eps=inf {MUST['pos']}$"),
    (["optim.total_steps=0"], r"^optim\.total_steps=0 must be an integer >= 1 or null \(trainer\.max_steps\)$"),
    (["optim.total_steps=-5"], r"^optim\.total_steps=-5 must be an integer >= 1 or null"),
    (["optim.min_lr_ratio=nan"], r"^optim\.min_lr_ratio=nan must be a number in \[0, 1\]$"),
    (["optim.min_lr_ratio=1.5"], r"^optim\.min_lr_ratio=1\.5 must be a number in \[0, 1\]$"),
    (["optim.warmup_steps=-1"], r"^optim\.warmup_steps=-1 must be an integer >= 0 or null \(a tenth of the schedule\)$"),
    # trainer
    (
        ["trainer.val_check_interval=0"],
        r"^trainer\.val_check_interval=0 must be an integer >= 1 \(training steps .* or a number in \(0, 1\]",
    ),
    (["trainer.val_check_interval=1.5"], r"^trainer\.val_check_interval=1\.5 must be an integer >= 1"),
    (["trainer.val_check_interval=nan"], r"^trainer\.val_check_interval=nan must be an integer >= 1"),
    (["trainer.val_check_interval=abc"], r"^trainer\.val_check_interval: Value 'abc' of type 'str' is incompatible"),
    (["trainer.log_every_n_steps=0"], r"^trainer\.log_every_n_steps=0 must be an integer >= 1 or null"),
    (["trainer.log_every_n_steps=-1"], r"^trainer\.log_every_n_steps=-1 must be an integer >= 1"),
    (["trainer.log_every_n_steps=abc"], r"^trainer\.log_every_n_steps: Value 'abc' of type 'str' could not be converted"),
    (["trainer.max_steps=abc"], r"^trainer\.max_steps: Value 'abc' of type 'str' could not be converted to Integer$"),
    (["trainer.max_steps=true"], r"^trainer\.max_steps: Value 'True' of type 'bool' could not be converted to Integer$"),
    (["trainer.max_steps=0"], r"^trainer\.max_steps=0 must be an integer >= 1$"),
    (["trainer.gradient_clip_val=inf"], r"^trainer\.gradient_clip_val=inf must be a finite number >= 0 or null \(no clipping\)$"),
    (["trainer.check_val_every_n_epoch=0"], r"^trainer\.check_val_every_n_epoch=0 must be an integer >= 1 or null"),
    # the run's own values
    (["seed=-1"], r"^seed=-1 must be an integer in \[0, 4294967295\]$"),
    (["seed=abc"], r"^seed: Value 'abc' of type 'str' could not be converted to Integer$"),
    (["collective_timeout_s=0"], r"^collective_timeout_s=0\.0 must be a finite number > 0$"),
    (["collective_timeout_s=inf"], r"^collective_timeout_s=inf must be a finite number > 0$"),
    (["seed=nan"], r"^seed: Value 'nan' of type 'float' could not be converted to Integer$"),
    ([f"seed={2**70}"], rf"^seed={2**70} must be an integer in \[0, 4294967295\]$"),
    (["size_check=maybe"], r"^size_check: Value 'maybe' is not a valid bool \(type str\)$"),
    (["overwrite=maybe"], r"^overwrite: Value 'maybe' is not a valid bool \(type str\)$"),
    (["checkpoint.every_n_train_steps=-1"], r"^checkpoint\.every_n_train_steps=-1 must be an integer >= 0 or null"),
    # task sizes and knobs, typed and ranged, named task.<key>
    (["task.num_train=abc"], r"^task\.num_train: Value 'abc' of type 'str' could not be converted to Integer$"),
    (["task.num_test=abc"], r"^task\.num_test: Value 'abc' of type 'str' could not be converted to Integer$"),
    (["task.num_val=1.5"], r"^task\.num_val: Value '1\.5' of type 'float' could not be converted to Integer$"),
    (["task.num_val=0"], r"^task\.num_val=0 must be an integer >= 1 or null \(= num_test\)$"),
    (["task.seq_len=abc"], r"task\.seq_len: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task.vocab_size=abc"], r"task\.vocab_size: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task.num_kv_pairs=abc"], r"task\.num_kv_pairs: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task.test_seq_len=abc"], r"task\.test_seq_len: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task.power_a=inf"], r"task\.power_a=inf must be a finite number > 0"),
    (["task.random_non_queries=maybe"], r"task\.random_non_queries: Value 'maybe' is not a valid bool"),
    (["+task.unknown_knob=1"], r"^task\.unknown_knob: Key 'unknown_knob' not in 'MQARDataModule'; allowed: \['batch_size', "),
    (["task.batch_size=abc"], r"task\.batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task.batch_size=0"], r"task\.batch_size=0 must be an integer >= 1"),
    (["task.seed=-1"], r"task\.seed=-1 must be an integer in \[0, 4294967295\]"),
    (["task.num_workers=abc"], r"task\.num_workers: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task=facts", "task.num_train=abc"], r"task\.num_train: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task=facts", "task.seq_len=0"], r"task\.seq_len=0 must be an integer >= 1"),
    (["task=facts", "task.num_facts=0"], r"task\.num_facts=0 must be a positive integer"),
    (["task=lm", "task.seq_len=abc"], r"task\.seq_len: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task=lm", "task.max_bytes=0"], r"task\.max_bytes=0 must be an integer >= 1 or null \(no cap\)"),
    (["task=lm", "task.val_fraction=abc"], r"task\.val_fraction: Value 'abc' of type 'str' could not be converted to Float"),
    (["task=lm", "task.allow_binary=maybe"], r"task\.allow_binary: Value 'maybe' is not a valid bool"),
    (["task=icr", "task.seq_len=abc"], r"task\.seq_len: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task=noisy_icr", "task.frac_noise=nan"], r"task\.frac_noise=nan must be in \[0, 1\)"),
    (["task=memorization", "task.map_seed=-1"], r"task\.map_seed=-1 must be in \[0, 4294967295\]"),
    # backbone and its mixers
    (["backbone.pattern=5"], r"^backbone\.pattern=5 must be a string of mixer letters .* or a non-empty list of names"),
    (["backbone.channel=5"], r"^backbone\.channel=5 must be a string or a non-empty list of names"),
    (["backbone.d_model=abc"], r"^backbone\.d_model: Value 'abc' of type 'str' could not be converted to Integer$"),
    (["backbone.d_model=true"], r"^backbone\.d_model: Value 'True' of type 'bool' could not be converted to Integer$"),
    (["backbone.n_layers=0"], r"^backbone\.n_layers=0 must be a positive integer$"),
    (["backbone.norm_eps=-1"], rf"^backbone\.norm_eps=-1\.0 {MUST['pos']}$"),
    (["backbone.norm_eps=nan"], rf"^backbone\.norm_eps=nan {MUST['pos']}$"),
    (["backbone.tie_embeddings=maybe"], r"^backbone\.tie_embeddings: Value 'maybe' is not a valid bool \(type str\)$"),
    (["backbone.mixer.attention.dropout=-1"], rf"^backbone\.mixer\.attention: attention dropout=-1 {MUST['unit']}$"),
    (["backbone.mixer.attention.dropout=2"], rf"^backbone\.mixer\.attention: attention dropout=2 {MUST['unit']}$"),
    (["backbone.mixer.attention.dropout=nan"], rf"^backbone\.mixer\.attention: attention dropout=nan {MUST['unit']}$"),
    (["backbone.mixer.attention.rotary_base=0"], rf"^backbone\.mixer\.attention: attention rotary_base=0 {MUST['pos']}$"),
    (["backbone.mixer.attention.rotary_base=-1"], rf"^backbone\.mixer\.attention: attention rotary_base=-1 {MUST['pos']}$"),
    (["backbone.mixer.attention.rotary_base=nan"], rf"^backbone\.mixer\.attention: attention rotary_base=nan {MUST['pos']}$"),
    (
        ["backbone.mixer.attention.num_heads=true"],
        r"^backbone\.mixer\.attention: attention num_heads=True must be a positive divisor",
    ),
    (
        ["backbone=sliding_window", "backbone.mixer.sliding_window.dropout=1"],
        rf"^backbone\.mixer\.sliding_window: attention dropout=1 {MUST['unit']}$",
    ),
    (["backbone=mamba", "backbone.mixer.mamba.dt_max=inf"], r"^backbone\.mixer\.mamba: mamba dt_min=0\.001, dt_max=inf: need"),
    (
        ["backbone=mamba2", "backbone.mixer.mamba2.d_state=true"],
        r"^backbone\.mixer\.mamba2: mamba2 d_state=True must be a positive integer",
    ),
    (["backbone=gla", "backbone.mixer.gla.norm_eps=nan"], r"^backbone\.mixer\.gla: gla norm_eps=nan must be > 0 and finite"),
    (["backbone=gla", "backbone.mixer.gla.expand_k=inf"], r"^backbone\.mixer\.gla: gla expand_k=inf must be positive"),
    (
        ["backbone=gated_deltanet", "backbone.mixer.gated_deltanet.expand_v=nan"],
        r"^backbone\.mixer\.gated_deltanet: gated_deltanet expand_v=nan must be positive",
    ),
    (["backbone=hyena", "backbone.mixer.hyena.w=inf"], r"^backbone\.mixer\.hyena: hyena w=inf must be a finite number"),
    (["backbone=based", "backbone.mixer.based.eps=inf"], r"^backbone\.mixer\.based: based eps=inf must be >= 0 and finite"),
    # the memory
    (["memory=pkm", "memory.temperature=inf"], rf"^memory\.temperature=inf {MUST['pos']}$"),
    (["memory=pkm", "memory.temperature=0"], rf"^memory\.temperature=0\.0 {MUST['pos']}$"),
    (["memory=pkm", "memory.value_lr=inf"], rf"^memory\.value_lr=inf {MUST['pos']} or null \(1e-3 \* n_keys / 32\)$"),
    (["memory=pkm", "memory.value_lr=nan"], rf"^memory\.value_lr=nan {MUST['pos']} or null \(1e-3 \* n_keys / 32\)$"),
    (["memory=pkm", "memory.n_keys=0"], r"^memory\.n_keys=0 must be a positive integer$"),
    # throughput
    (["throughput.peak_flops=inf"], r"^throughput\.peak_flops=inf must be a finite number > 0"),
]


@pytest.mark.parametrize("overrides, match", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_key_value_and_what_is_allowed_before_anything_is_made(tmp_path, overrides, match):
    refused_before_anything(tmp_path, overrides, match)


OVERSIZED = [  # one size-driving key set far too large: the refusal names that key, whatever part it inflates
    (["memory=pkm", "memory.n_keys=100000"], "memory value table", "memory.n_keys"),
    (["memory=pkm", "memory.heads=1000000"], "layers' weights", "memory.heads"),
    (["memory=pkm", "memory.k_dim=100000000"], "layers' weights", "memory.k_dim"),
    (["memory=pkm", "memory.v_dim=10000000"], "memory value table", "memory.v_dim"),
    (["memory=pkm", "memory.knn=32", "memory.n_keys=20000"], "memory value table", "memory.n_keys"),
    (["backbone.d_model=10000000"], "layers' weights", "backbone.d_model"),
    (["backbone.n_layers=1000000"], "activations", "backbone.n_layers"),
    (["backbone.mlp.hidden_dim=100000000"], "layers' weights", "backbone.mlp.hidden_dim"),
    (["backbone=mamba", "backbone.mixer.mamba.d_state=100000000"], "layers' weights", "backbone.mixer.mamba.d_state"),
    (["task.num_train=10000000000"], r"dataset \(generated splits\)", "task.num_train"),
    (["task.num_test=10000000000"], r"dataset \(generated splits\)", "task.num_test"),
    (["task.seq_len=1000000000"], r"dataset \(generated splits\)", "task.seq_len"),
    (["task.test_seq_len=100000000"], "activations", "task.test_seq_len"),
    (["task.batch_size=100000000"], "activations", "task.batch_size"),
    (["task.vocab_size=1000000000"], r"dataset \(generated splits\)", "task.vocab_size"),  # MQAR draws keys from it
    (["task=facts", "task.num_values=1000000000"], "logits", "task.num_values"),
    (["task=facts", "task.num_entities=1000000000"], "logits", "task.num_entities"),  # each name is tokens of the vocabulary
]


@pytest.mark.parametrize("overrides, part, key", OVERSIZED, ids=[" ".join(o) for o, _, _ in OVERSIZED])
def test_a_run_too_large_for_the_machine_is_refused_naming_the_key_that_drives_the_excess(tmp_path, overrides, part, key):
    started = time.perf_counter()
    value = re.escape(overrides[-1].split("=")[1])
    match = (
        rf"^size check: this run needs about [\d,.]+ GiB \(.*\), more than the [\d,.]+ GiB of .*; "
        rf"the largest part is the {part}.*: lower {re.escape(key)} \(now {value}\) \(a coarse estimate.*"
        r"size_check=false skips this check\)$"
    )
    refused_before_anything(tmp_path, overrides, match, tiny=False)
    assert time.perf_counter() - started < 30  # nothing of that size was made


def tiny_estimate(*overrides):
    cfg = make_cfg(*overrides)
    datamodule = build_datamodule(OmegaConf.to_container(cfg.task, resolve=True))
    return sum(p.bytes for p in run_parts(RunConfig.from_hydra(cfg).model, datamodule))


def test_size_check_false_lets_a_run_over_the_budget_pass_the_check():
    need = tiny_estimate("memory=pkm")
    check_run_config(make_cfg("memory=pkm"), Budget(need, "a fake budget"))  # exactly fits
    with pytest.raises(ValueError, match=r"needs about .* GiB .*, more than the .* GiB of a fake budget; the largest part"):
        check_run_config(make_cfg("memory=pkm"), Budget(need - 1, "a fake budget"))
    check_run_config(make_cfg("memory=pkm", "size_check=false"), Budget(need - 1, "a fake budget"))


def test_shipped_train_yaml_turns_the_size_check_on():
    assert make_cfg(tiny=False).size_check is True


def test_the_size_check_splits_host_and_device_memory_and_counts_every_process():
    parts = [Part("weights", 6 * GiB, "backbone.d_model"), Part("dataset", 3 * GiB, "task.num_train", on_device=False)]
    check_size_budget(parts, Budget(9 * GiB, "host"))
    with pytest.raises(
        ValueError, match=r"about 18 GiB for 2 processes \(each: weights 6 GiB, dataset 3 GiB\), more than the 9 GiB of host"
    ):
        check_size_budget(parts, Budget(9 * GiB, "host"), world=2)
    check_size_budget(parts, Budget(3 * GiB, "host", 6 * GiB, "device"))  # the weights on the GPU, the data on the host
    with pytest.raises(
        ValueError, match=r"about 6 GiB \(weights 6 GiB\), more than the 5 GiB of device; .* lower backbone\.d_model"
    ):
        check_size_budget(parts, Budget(3 * GiB, "host", 5 * GiB, "device"))
    with pytest.raises(
        ValueError,
        match=r"about 6 GiB for 2 processes \(each: dataset 3 GiB\), more than the 5 GiB of host; .* lower task\.num_train",
    ):
        check_size_budget(parts, Budget(5 * GiB, "host", 6 * GiB, "device"), world=2)


def test_a_gpu_run_is_budgeted_by_its_device_memory_and_a_cpu_run_by_the_machines(monkeypatch):
    from types import SimpleNamespace

    from zoo.model import size_budget

    host = size_budget.host_memory()[0]
    assert host > 0 and size_budget.machine_budget("cpu") == Budget(host, size_budget.host_memory()[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two 80 GiB devices
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * GiB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "a test GPU")
    budget = size_budget.machine_budget("gpu")
    assert (budget.host_bytes, budget.device_bytes) == (host, 80 * GiB) and "a test GPU" in budget.device_source
    assert size_budget.machine_budget("cpu").device_bytes is None


MODELS = [
    dict(d_model=32, n_layers=2, pattern="A", mixer={"attention": {"num_heads": 2}}),
    dict(d_model=32, n_layers=4, pattern="MA", tie_embeddings=False),
    dict(d_model=32, n_layers=3, pattern="S", channel="none", mixer={"mamba2": {"headdim": 16}}),
    dict(d_model=32, n_layers=2, pattern="BW"),
    dict(d_model=32, n_layers=2, pattern="HG"),
    dict(d_model=48, n_layers=2, pattern="D"),
    dict(d_model=32, n_layers=2, pattern="A", memory={"n_keys": 8, "k_dim": 8, "layers": [1]}),
    dict(
        d_model=32,
        n_layers=3,
        pattern="A",
        memory={"n_keys": 8, "k_dim": 8, "layers": [0, 2], "shared": False, "gate": True, "query_bias": False, "v_dim": 24},
    ),
]


@pytest.mark.parametrize("values", MODELS, ids=lambda v: f"{v['pattern']}{'+memory' if 'memory' in v else ''}")
def test_parameters_counted_from_the_config_equal_the_built_models(values):
    config = typed(ModelConfig, {"vocab_size": 50, **values}, "model")
    config.validate()
    assert sum(parameter_counts(config).values()) == build_model({"vocab_size": 50, **values}).num_parameters()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_bounds_its_generated_data_before_generating_it(name):
    options = {"lm": {"max_bytes": 100_000}, "facts": {"num_train": 250}}.get(name, {"num_train": 48, "num_test": 24})
    task = {**OmegaConf.to_container(make_cfg(f"task={name}", tiny=False).task, resolve=True), **options, "seed": 1}
    datamodule = build_datamodule(task)
    estimate = datamodule.data_bytes()
    datamodule.setup()
    held = sum(d.inputs.nbytes + d.targets.nbytes for d in datamodule.datasets.values())
    assert held <= estimate <= 50 * held + 2**20
    assert datamodule.max_seq_len == max(d.inputs.shape[1] for d in datamodule.datasets.values())


def shipped_configs():
    presets = [
        ["backbone=" + b]
        for b in ("based", "gated_deltanet", "gla", "hybrid", "hyena", "mamba", "mamba2", "sliding_window", "transformer")
    ]
    presets += [["memory=pkm"], ["memory=pkm_large"], ["trainer=ddp"], ["trainer=gpu"]]
    presets += [["task=" + t] for t in sorted(TASKS)]
    return [[]] + presets


@pytest.mark.parametrize("overrides", shipped_configs(), ids=lambda o: " ".join(o) or "default")
def test_the_default_run_and_every_shipped_preset_pass_every_check(overrides):
    check_run_config(make_cfg(*overrides, tiny=False))


def distinct_cells(cells):
    """The cells that differ in more than the learning rate, and the first cell of each learning rate
    (within a study): zoology's 1,024 cells are 4 learning rates of 256 settings."""
    seen, kept = set(), []
    for cell in cells:
        lr = dict(cell.settings).get("optim.lr")
        keys = {(cell.study, "setting", cell.group, cell.seed), (cell.study, "lr", lr)}
        if not keys <= seen:
            kept.append(cell)
        seen |= keys
    return kept


@pytest.mark.parametrize("grid", shipped_grids())
def test_every_cell_of_every_shipped_grid_passes_every_check(grid):
    cells = distinct_cells(expand(load_grid(grid)))
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        for cell in cells:
            check_run_config(compose("train", overrides=list(cell.overrides)))


def test_generating_more_tokens_than_memory_holds_is_refused_before_allocating():
    model = build_model({"vocab_size": 16, "d_model": 16, "n_layers": 2, "pattern": "MA"}).eval()
    prompt = torch.tensor([[1, 2, 3]])
    started = time.perf_counter()
    with pytest.raises(
        ValueError,
        match=r"^max_new_tokens=1000000000000: 1 sequence\(s\) of 3 \+ 1000000000000 tokens need "
        r"about [\d,]+ GiB \(token ids [\d,]+ GiB, inference caches .*\), more than the .* GiB of "
        r".*; lower max_new_tokens or the batch$",
    ):
        generate(model, prompt, 10**12)
    assert time.perf_counter() - started < 5
    # the KV cache counts: 2 layers' worth of a one-layer attention cache is over a budget the ids fit in
    ids = 2 * 8 * (3 + 100)
    with pytest.raises(ValueError, match=r"max_new_tokens=100: .*inference caches"):
        check_generation_arguments(model, prompt, 100, 0.0, None, memory_budget=ids + 100)
    check_generation_arguments(model, prompt, 100, 0.0, None, memory_budget=2**30)


def test_a_capped_corpus_reads_only_what_it_needs_of_a_huge_file(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello, text\n" * 100)
    with open(corpus / "b.bin", "wb") as f:
        f.truncate(20 * 2**30)  # 20 GiB, sparse: no disk used
    started = time.perf_counter()
    data = path_corpus(corpus, max_bytes=400_000)
    assert time.perf_counter() - started < 2
    assert len(data) == 400_000 and data.startswith(b"hello, text\n")


def test_reading_a_capped_file_gives_the_bytes_reading_it_whole_gives(tmp_path):
    text = ("aé€😀 b\n".encode() + b"\xff\xe2\x82" + "ü".encode()) * 40  # multibyte characters and invalid bytes
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    for cap in range(1, len(text) + 8):
        assert _read_files([path], cap) == _cap(_utf8(text), cap), cap


def test_an_uncapped_huge_corpus_is_refused_by_the_size_check_naming_max_bytes(tmp_path):
    with open(tmp_path / "big.txt", "wb") as f:
        f.truncate(20 * 2**30)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    refused_before_anything(
        run_dir,
        ["task=lm", f"task.path={tmp_path / 'big.txt'}", "task.max_bytes=null"],
        r"the largest part is the dataset \(generated splits\): lower task\.max_bytes",
    )
