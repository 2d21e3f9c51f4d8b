"""README.md's first steps: the two commands a newcomer runs, kept true."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from kanidm_mail_sender.cli import _parser
from tests.helpers import ROOT

_README = (ROOT / "README.md").read_text(encoding="utf-8")


def _first_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", _README.split("\n---\n", 1)[0])


def test_the_readme_starts_with_the_sandbox_and_the_test_command() -> None:
    sandbox, tests = _first_commands()
    assert sandbox.endswith(".venv/bin/kanidm-mail-sender-sandbox")
    assert tests.endswith(".venv/bin/python -m pytest")
    for command in (sandbox, tests):
        # An older Python is refused at once, before pip's long quiet search.
        assert command.startswith("python3 -c 'import sys; sys.exit(sys.version_info < (3, 11)")


def test_ci_runs_the_readme_test_command_exactly() -> None:
    _, tests = _first_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines()


def _options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """(subcommand or "", option) for every option the CLI parses."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((name, option) for _, option in _options(sub))
        yield from (("", option) for option in action.option_strings)


def test_every_flag_in_help_is_in_the_readme_tables() -> None:
    """Top-level flags in the flags table, a command's flags in that command's row (the -c,
    -m and --json every command shares are said once, above the table)."""
    rows = [line for line in _README.splitlines() if line.startswith("| `")]
    shared = {"-c", "--client-config", "-m", "--mail-sender-config", "--json", "-h", "--help"}
    missing = []
    for command, option in _options(_parser({})):
        if command and option in shared:
            continue
        if option in ("-h", "--help") and not command:
            option = "--help"
        owners = [row for row in rows if row.startswith(f"| `{command}")] if command else rows
        if not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", row) for row in owners):
            missing.append(f"{command} {option}".strip())
    assert not missing, f"not in README's tables: {missing}"
