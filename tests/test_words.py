"""No stale word: every module path, dotted name and file that the code, its docstrings, the
tests, the benchmarks, the examples and the README name must exist today. A re-lay that moves
a module then fails here instead of leaving a newcomer a wrong pointer."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import ROOT

_PACKAGE = "kanidm_mail_sender"
_ROOMS = ("core", "config", "state", "kanidm", "smtp", "engine", "runtime", "ops", "sandbox")
_DOTTED = re.compile(rf"\b{_PACKAGE}(?:\.[A-Za-z_]\w*)+")
# "from <package>.<module> import <name>" in a string (a script a test runs): the name exists.
_FROM_IMPORT = re.compile(rf"from ({_PACKAGE}(?:\.\w+)*) import (\w+)")
# `engine.sending`, `smtp.factory.make_auth`: a room's module named without the package.
_RELATIVE = re.compile(rf"(?<![\w.])((?:{'|'.join(_ROOMS)})\.[a-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_PATH = re.compile(r"(?<![\w/.-])((?:src|tests|bench|examples|\.ci)/[\w./*-]*\w)")
_PY_FILE = re.compile(r"(?<![\w/.-])([a-z_]\w*\.py)\b")
# Log event names look like dotted names (`relay.paused`); only backticked or code words
# that start with a room and name a module are checked as relative names.
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _texts() -> Iterator[tuple[Path, str]]:
    patterns = ("src/**/*.py", "tests/**/*.py", "bench/**/*.py", "examples/**/*")
    for pattern in patterns:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path.suffix not in {".pem", ".json"}:
                yield path, path.read_text(encoding="utf-8")
    for name in ("README.md", "Dockerfile", "pyproject.toml", ".ci/run"):
        yield ROOT / name, (ROOT / name).read_text(encoding="utf-8")


def _resolves(dotted: str) -> bool:
    """A module, or an attribute reached from the longest importable prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        if parts[cut - 1] == "__main__":
            return (ROOT / "src" / _PACKAGE / "__main__.py").is_file()  # importing it runs it
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


def _is_module(relative: str) -> bool:
    """Whether a relative name starts with a real module of its room (else it is a word
    such as a log event, ``state.ephemeral``)."""
    room, module = relative.split(".")[:2]
    return (ROOT / "src" / _PACKAGE / room / f"{module}.py").is_file()


def test_every_name_and_path_resolves() -> None:
    python_files = {path.name for path in ROOT.rglob("*.py") if ".venv" not in path.parts}
    stale = []
    for path, text in _texts():
        where = path.relative_to(ROOT)
        for number, line in enumerate(text.splitlines(), 1):
            for dotted in _DOTTED.findall(line):
                if not _resolves(dotted):
                    stale.append(f"{where}:{number}: {dotted}")
            for module, name in _FROM_IMPORT.findall(line):
                if not _resolves(f"{module}.{name}"):
                    stale.append(f"{where}:{number}: {module} has no {name}")
            for span in _CODE_SPAN.findall(line) + ([line] if path.suffix == ".py" else []):
                for relative in _RELATIVE.findall(span):
                    if _is_module(relative) and not _resolves(f"{_PACKAGE}.{relative}"):
                        stale.append(f"{where}:{number}: {relative}")
            for named in _PATH.findall(line):
                if not any(ROOT.glob(named)):
                    stale.append(f"{where}:{number}: {named}")
            for file_name in _PY_FILE.findall(line):
                if file_name not in python_files:
                    stale.append(f"{where}:{number}: {file_name}")
    assert not stale, "names that no longer resolve:\n" + "\n".join(stale)


def test_the_check_finds_a_stale_name() -> None:
    assert not _resolves(f"{_PACKAGE}.evidence")
    assert _resolves(f"{_PACKAGE}.engine.evidence")
    assert _is_module("smtp.factory.make_auth")
    assert _resolves(f"{_PACKAGE}.smtp.factory.make_auth")
    assert not _resolves(f"{_PACKAGE}.smtp.factory.make_oauth")
