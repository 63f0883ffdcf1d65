"""The README's map holds: imports run api -> dispatch -> backends -> execution, never back up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("api", "dispatch", "backends", "execution")
"""Top to bottom: a package may import only from itself and the packages after it."""


def _imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_nothing_from_the_layers_above_it(package: str) -> None:
    above = set(LAYERS[: LAYERS.index(package)])

    upward = {
        str(path.relative_to(REPO)): sorted(_imported_packages(path) & above)
        for path in sorted((REPO / package).rglob("*.py"))
        if _imported_packages(path) & above
    }

    assert upward == {}


def test_the_check_sees_imports_in_any_form(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import api.keys\nfrom dispatch.rollout import policy\ndef f():\n    import os\n"
    )

    assert _imported_packages(module) == {"api", "dispatch"}
