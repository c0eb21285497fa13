"""The docs' commands are real: every `rbs` command shown parses with the CLI as shipped (options
and choices exist), and the README's own-model example is the one docs/own-model.md shows (it is
run verbatim by `test_own_model.py`). `.ci/run` builds the docs with `mkdocs build --strict`."""

from __future__ import annotations

import re
import shlex

import click
import pytest
import typer

from robustbench_sparse.cli import app
from robustbench_sparse.runtime import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = {"HEAD_IP": "127.0.0.1"}


def _shell_lines(text: str) -> list[str]:
    """The command lines of the page's shell code blocks (continuations joined, comments cut)."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


COMMANDS = sorted({(page.name, line) for page in PAGES for line in _shell_lines(page.read_text(encoding="utf-8"))
                   if line.startswith("rbs ")})


def test_the_docs_show_the_main_commands():
    shown = {line.split()[1] for _, line in COMMANDS}
    assert {"benchmark", "train", "evaluate", "transfer", "report", "baseline", "check", "zoo"} <= shown


@pytest.mark.parametrize(("page", "line"), COMMANDS)
def test_every_rbs_command_in_the_docs_parses(page, line):
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    args = shlex.split(line)[1:]
    group = typer.main.get_command(app)
    command = group.get_command(click.Context(group), args[0])
    assert command is not None, f"{page}: `{line}`: no command {args[0]!r}"
    try:
        command.make_context(args[0], args[1:])  # parses and checks every option; runs nothing
    except click.UsageError as err:
        pytest.fail(f"{page}: `{line}` does not parse: {err}")


def test_the_own_model_example_is_the_same_in_the_readme_and_the_docs():
    def example(text: str) -> str:
        section = text[text.index("## Benchmark your own model"):]
        return re.search(r"```python\n(.*?)```", section, re.S).group(1)

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    docs = (REPO_ROOT / "docs" / "own-model.md").read_text(encoding="utf-8")
    assert "## Benchmark your own model" in docs or "```python" in docs
    docs_code = re.findall(r"```python\n(.*?)```", docs, re.S)
    assert example(readme) in docs_code
