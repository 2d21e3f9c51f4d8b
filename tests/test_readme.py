"""README.md's first steps: the two commands a newcomer runs, kept true."""

from __future__ import annotations

import re

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
