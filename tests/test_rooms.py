"""The package's rooms: each sub-package's ``__init__`` is a map of its modules and re-exports
nothing, and code in one room uses only what another room's modules publish in ``__all__``.

No faces, on purpose: a face loads its whole room, and the commands load only what they use
(``--probe`` no httpx, the operator commands no Jinja2).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "src" / "kanidm_mail_sender"
ROOMS = sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))
MODULES = sorted(PACKAGE.rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exported(path: Path) -> set[str] | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return None


def _defined(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


PUBLISHED = {_dotted(p): _exported(p) for p in MODULES}


@pytest.mark.parametrize("room", ROOMS, ids=lambda p: p.name)
def test_a_rooms_init_is_its_map_and_re_exports_nothing(room: Path) -> None:
    tree = ast.parse((room / "__init__.py").read_text())
    doc = ast.get_docstring(tree) or ""
    assert [type(node) for node in tree.body] == [ast.Expr], "only a docstring"
    modules = {p.stem for p in room.glob("*.py")} - {"__init__"}
    named = set(re.findall(r"``(\w+)``", doc)) & ({p.stem for p in MODULES} | modules)
    assert modules <= named, f"the map leaves out {sorted(modules - named)}"


@pytest.mark.parametrize("module", MODULES, ids=_dotted)
def test_every_module_publishes_only_what_it_defines(module: Path) -> None:
    if module.name in ("__init__.py", "__main__.py"):
        return
    exported = PUBLISHED[_dotted(module)]
    assert exported is not None, "no __all__"
    assert exported <= _defined(module), f"not defined: {sorted(exported - _defined(module))}"


def _imports_across_rooms() -> list[tuple[str, str, str]]:
    found = []
    for path in MODULES:
        here = [*_dotted(path).split("."), ""][1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            parts = node.module.split(".")
            if parts[0] != "kanidm_mail_sender" or len(parts) < 3 or parts[1] == here:
                continue
            found += [(_dotted(path), node.module, alias.name) for alias in node.names]
    return found


def test_one_room_uses_only_what_anothers_modules_publish() -> None:
    """A private name (``_explain``) or a name a module merely imports is not another
    room's to use: it would break when its module changes inside."""
    crossings = _imports_across_rooms()
    assert len(crossings) > 100  # the walk found the package's imports
    wrong = [
        f"{importer}: {name} from {module}"
        for importer, module, name in crossings
        if name not in (PUBLISHED.get(module) or set()) and f"{module}.{name}" not in PUBLISHED
    ]
    assert not wrong
