"""README is the front door and docs/ the rooms behind it: every command they show runs as shown.

The ```bash blocks of README.md and docs/*.md are read line by line, and so is every memzoo command
written in their running text (an inline code span): the test command is the one CI runs; every
memzoo-train / memzoo-eval line's overrides compose with Hydra, and a memzoo-train line passes the
checks memzoo-train makes before it starts; every memzoo-grid (or its older name memzoo-bench) line
names a shipped grid whose studies' cells compose with the line's extra overrides and pass those
checks; every script named exists and has the flags given. The ```python blocks compile, every
relative link resolves, and every repository path quoted in backticks exists.
"""

import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

CONFIG_OF = {"memzoo-train": "train", "memzoo-eval": "eval"}
GRID_COMMANDS = {"memzoo-grid", "memzoo-bench"}  # memzoo-bench: the grid runner's older name
# set-up (a story's own directory: mkdir, cd) and viewers: nothing of memzoo's to check
NOT_CHECKED = {"pip", ".", "source", "mkdir", "cd", "tensorboard"}
# lm-eval's own command line with memzoo's model registered: docs/pretrained.md runs it on a local task,
# and tests/test_readme_story.py runs that page in order, offline
RUN_BY_THE_STORY = {"memzoo-lm-eval"}
FLAGS_WITH_VALUE = {"--out", "--cfg", "-c"}  # memzoo-grid's output folder; Hydra's --cfg job
# Overrides whose value only the reader can fill in: left out of the composition, and marked here
# one by one so that none passes for a checked setting (each must still occur on some page). A ckpt=
# path of a run the page trains just before is composed like any string value.
PLACEHOLDERS = {
    "logger.entity=ME": "the reader's Weights & Biases entity",
}
SEPARATORS = {"&&", "||", ";", "|"}
ENVIRONMENT = re.compile(r"[A-Z_][A-Z0-9_]*=\S*")  # OMP_NUM_THREADS=1 before a command
HYDRA_ARGUMENT = re.compile(r"[+~]*hydra[./]")  # hydra.run.dir=..., hydra/launcher=...: for the launch, not the run
INLINE_COMMAND = re.compile(r"`(memzoo-[a-z-]+ [^`]+)`")  # `memzoo-grid quick trainer.max_steps=5` in running text
# a command in prose that is a template, not a command: DIR, FILE.yaml, GRID, backbone=B, task=<name>, task.<knob>=...
TEMPLATE = re.compile(r"<[^>]*>|\.\.\.|=[A-Z]\b|\b[A-Z]{3,}\b")
FENCE = re.compile(r"^([ \t]*)```(\w*)[ \t]*\n(.*?)^\1```", re.M | re.S)


def where(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@cache
def code_blocks(language: str) -> tuple[tuple[str, str], ...]:
    """(page, code) of every fenced block in ``language`` on every page, indentation removed."""
    blocks = []
    for page in PAGES:
        for indent, lang, code in FENCE.findall(page.read_text()):
            if lang == language:
                blocks.append((where(page), "".join(line[len(indent) :] + "\n" for line in code.splitlines())))
    return tuple(blocks)


def split_line(line: str) -> list[list[str]]:
    """One shell line -> its commands' argument lists (``a && b``: two), comments and leading
    ``NAME=value`` environment settings dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    for argv in commands:
        while argv and ENVIRONMENT.fullmatch(argv[0]):
            argv.pop(0)
    return [argv for argv in commands if argv]


@cache
def prose_commands() -> tuple[tuple[str, str], ...]:
    """(page, line) of every memzoo command written in running text (an inline code span naming a
    ``memzoo-`` command and its arguments), but templates the reader fills in (``TEMPLATE``)."""
    found = []
    for page in PAGES:
        for span in INLINE_COMMAND.findall(FENCE.sub("", page.read_text())):
            line = " ".join(span.split())
            if not TEMPLATE.search(line):
                found.append((where(page), line))
    return tuple(found)


@cache
def commands() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(page, argv) of every command in the bash blocks of README.md and docs/*.md, and in their prose."""
    found = []
    for page, code in code_blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                found += [(page, tuple(argv)) for argv in split_line(line)]
    for page, line in prose_commands():
        found += [(page, tuple(argv)) for argv in split_line(line)]
    return tuple(found)


def run_overrides(args: tuple[str, ...]) -> tuple[list[str], list[str], bool]:
    """memzoo-train / memzoo-eval / memzoo-grid arguments -> (overrides to compose, positional
    arguments, multirun): flags, Hydra's own settings and marked placeholders are left out."""
    overrides, positional, multirun = [], [], False
    rest = iter(args)
    for arg in rest:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in FLAGS_WITH_VALUE:
            next(rest, None)
        elif arg.startswith("-") or HYDRA_ARGUMENT.match(arg):
            continue
        elif "=" not in arg:
            positional.append(arg)
        elif arg not in PLACEHOLDERS:
            overrides.append(arg)
    return overrides, positional, multirun


def sweep_cases(overrides: list[str]) -> list[list[str]]:
    """A multirun's overrides -> one override list per value of each sweep (the others at their first)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    first = [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line for o in parsed
    ]
    cases = [first]
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            cases += [[*first[:i], f"{o.get_key_element()}={value}", *first[i + 1 :]] for value in o.sweep_string_iterator()]
    return cases


def installed(cfg) -> bool:
    """Whether the optional package a run's logger needs is installed (logger=wandb: the wandb extra)."""
    return cfg.logger.name != "wandb" or importlib.util.find_spec("wandb") is not None


@pytest.fixture(scope="module")
def hydra_configs():
    from hydra import initialize_config_module

    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        yield


def test_readme_is_a_front_door_of_at_most_250_lines_linking_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    unlinked = [where(p) for p in PAGES[1:] if f"]({where(p)}" not in text]
    assert not unlinked, f"README's map of docs/ misses {unlinked}"


def test_ci_runs_the_readme_test_command():
    readme_lines = [line.strip() for page, code in code_blocks("bash") if page == "README.md" for line in code.splitlines()]
    tests = [line for line in readme_lines if "pytest" in line and "slow" not in line]
    assert tests, "README has no test command"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests[0] in ci_lines, f"README's test command {tests[0]!r} is not, byte for byte, a line of .ci/run"


def test_every_command_in_readme_and_docs_is_one_the_test_knows():
    known = {*CONFIG_OF, *GRID_COMMANDS, *NOT_CHECKED, *RUN_BY_THE_STORY, "memzoo-export", "python", "python3", "bash"}
    unknown = [(page, " ".join(argv)) for page, argv in commands() if argv[0] not in known]
    assert not unknown, f"commands this test does not check (teach it, or say why not in NOT_CHECKED): {unknown}"
    assert {argv[0] for _, argv in commands()} >= {*CONFIG_OF, "memzoo-grid"}, "no command of some entry point was found"


def test_every_memzoo_train_and_eval_command_composes(hydra_configs):
    from hydra import compose

    from zoo.training.train import check_run_config

    checked = 0
    for page, argv in commands():
        if argv[0] not in CONFIG_OF:
            continue
        overrides, positional, multirun = run_overrides(argv[1:])
        assert not positional, f"{page}: `{' '.join(argv)}`: {argv[0]} takes no positional argument {positional}"
        for case in sweep_cases(overrides) if multirun else [overrides]:
            try:
                cfg = compose(CONFIG_OF[argv[0]], overrides=case)
                if argv[0] == "memzoo-train" and not cfg.init.pretrained and installed(cfg):  # the story runs imports
                    check_run_config(cfg)  # what memzoo-train checks before it starts: values, schedule, size
            except Exception as err:  # noqa: BLE001 - Hydra and the checks raise several kinds
                pytest.fail(f"{page}: `{' '.join(argv)}` does not compose or is refused ({case}): {err}")
        checked += 1
    assert checked >= 10, f"only {checked} memzoo-train / memzoo-eval commands found"


def test_every_memzoo_grid_command_names_a_shipped_grid_whose_cells_compose(hydra_configs):
    from zoo.grid.runner import compose_cell, expand, load_grid, shipped_grids
    from zoo.training.train import check_run_config

    shipped = shipped_grids()
    checked = 0
    for page, argv in commands():
        if argv[0] not in GRID_COMMANDS:
            continue
        extra, positional, _ = run_overrides(argv[1:])
        assert len(positional) == 1 and positional[0] in shipped, (
            f"{page}: `{' '.join(argv)}` must name one shipped grid {shipped}, got {positional}"
        )
        first_of_study = {}
        for cell in expand(load_grid(positional[0]), extra):
            first_of_study.setdefault(cell.study, cell)
        for cell in first_of_study.values():  # every study's base with the line's extra overrides
            try:
                check_run_config(compose_cell(cell.overrides))  # as memzoo-grid checks each cell before training
            except Exception as err:  # noqa: BLE001 - Hydra and the checks raise several kinds
                pytest.fail(f"{page}: `{' '.join(argv)}`: cell {cell.key} does not compose or is refused: {err}")
        checked += 1
    assert checked >= 3, f"only {checked} memzoo-grid commands found"


def test_every_memzoo_export_command_parses():
    from zoo.pretrained.export import parse

    lines = [argv for _, argv in commands() if argv[0] == "memzoo-export"]
    assert lines, "no page shows memzoo-export"
    for argv in lines:
        parse(list(argv[1:]))  # known keys, ckpt and out given, a known format


def test_commands_written_in_prose_are_found_and_checked_like_the_blocks():
    lines = [line for _, line in prose_commands()]
    assert "memzoo-grid quick trainer.max_steps=5" in lines  # docs/grids.md's trial, checked by the grid test above
    assert not [line for line in lines if TEMPLATE.search(line)]


def test_every_placeholder_marked_occurs_on_a_page():
    used = {arg for _, argv in commands() for arg in argv}
    assert set(PLACEHOLDERS) <= used, f"marked placeholders no page shows: {set(PLACEHOLDERS) - used}"


def test_every_script_named_exists_and_takes_the_flags_given():
    for page, argv in commands():
        if argv[0] not in ("python", "python3", "bash"):
            continue
        if argv[1] == "-m":  # python -m pytest (the test command, above); python3 -m venv
            assert argv[2] in ("pytest", "venv"), f"{page}: `{' '.join(argv)}`: a module this test does not check"
            continue
        script = ROOT / argv[1]
        assert argv[1].startswith("scripts/") and script.is_file(), f"{page}: `{' '.join(argv)}` names no script in scripts/"
        source = script.read_text()
        for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert f'"{flag}"' in source, f"{page}: `{' '.join(argv)}`: {argv[1]} has no option {flag}"


def test_every_python_block_compiles():
    blocks = code_blocks("python")
    assert blocks, "README and docs/ show no Python"
    for page, code in blocks:
        compile(code, f"{page} (python block)", "exec")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves_to_a_file_and_heading():
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for page in PAGES:
        for target in link.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file) if file else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{where(page)}: {target}")
    assert not broken, f"links to nothing: {broken}"


def test_every_repository_path_in_backticks_exists():
    path = re.compile(r"`((?:zoo|tests|scripts|docs)/[\w./-]*)`")
    missing = [f"{where(page)}: {p}" for page in PAGES for p in path.findall(page.read_text()) if not (ROOT / p).exists()]
    assert not missing, f"paths that do not exist: {missing}"
