"""README is the user's door: its test command is the one CI runs, and the configs it names exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    test_lines = [c for c in readme_commands() if "pytest" in c and "-m slow" not in c]
    assert test_lines, "README has no test command"
    test_command = test_lines[0].split("&&")[-1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_config_choices_in_readme_commands_exist():
    from hydra.core.config_store import ConfigStore

    import zoo.configs  # noqa: F401 - stores the dataclass-backed choices

    stored = ConfigStore.instance().repo
    text = "\n".join(readme_commands())
    for group, choice in re.findall(r"\b(backbone|memory|optim|task|trainer|logger)=([a-z0-9_]+)", text):
        in_yaml = (ROOT / "zoo" / "configs" / group / f"{choice}.yaml").is_file()
        assert in_yaml or f"{choice}.yaml" in stored.get(group, {}), f"{group}={choice}"
