"""The README starts with the two fresh-machine commands, and CI runs the test one verbatim."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands():
    text = (REPO / "README.md").read_text()
    assert text.index("```bash") < text.index("\n## ")  # before any section
    main, tests = readme_commands()
    assert main.startswith("pip install torch==2.13.0") and main.endswith("imagetext serve --demo")
    assert tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_every_readme_cli_command_exists():
    from typer.main import get_command

    from imagetext.cli import app

    cli = get_command(app)
    text = (REPO / "README.md").read_text()
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("imagetext ") or line.startswith("imagetext runs"):
            continue
        words = [w for w in line.split("#")[0].split()[1:] if not w.startswith("-")]
        if not words:  # imagetext --help
            continue
        group = cli.commands.get(words[0])
        assert group is not None, f"README names an unknown command: {line}"
        if hasattr(group, "commands"):
            assert words[1] in group.commands, f"README names an unknown subcommand: {line}"
