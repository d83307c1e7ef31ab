"""Each room imports only from the rooms below it: shared/ is the floor; web/ and worker/ stand on it
side by side (the web process never loads the worker or TensorFlow); cli/ and bench/ may use them all.
Read from the source (every import statement and every import_module("...") call), so a module that
is only imported on some code path counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ROOMS_ABOVE = {"web", "worker", "training", "cli", "migrations", "bench", "tests"}
HEAVY = {"tensorflow", "keras", "openvino"}

FORBIDDEN: dict[str, set[str]] = {
    "shared": ROOMS_ABOVE,
    "migrations": ROOMS_ABOVE - {"migrations"},
    "web": (ROOMS_ABOVE - {"web"}) | HEAVY,
    "worker": ROOMS_ABOVE - {"worker", "migrations"},
    "training": ROOMS_ABOVE - {"training"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of the absolute imports of one file (relative imports stay in their room)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return {name.split(".")[0] for name in names}


def crossings(root: Path, room: str, forbidden: set[str]) -> list[str]:
    return sorted(
        f"{path.relative_to(root)} imports {name}"
        for path in (root / room).rglob("*.py")
        for name in imported_packages(path) & forbidden
    )


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_nothing_above_it(room: str) -> None:
    assert crossings(PROJECT_ROOT, room, FORBIDDEN[room]) == []


def test_a_crossing_is_found(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "a.py").write_text(
        "import os\nfrom shared import b\n\ndef f():\n    from migrations import upgrade\n"
    )
    (tmp_path / "shared" / "b.py").write_text("import importlib\nimportlib.import_module('worker.tasks')\n")
    (tmp_path / "shared" / "c.py").write_text("from . import a\nimport tensorflow as tf\n")
    assert crossings(tmp_path, "shared", FORBIDDEN["shared"]) == [
        "shared/a.py imports migrations",
        "shared/b.py imports worker",
    ]
    assert crossings(tmp_path, "shared", FORBIDDEN["web"]) == [
        "shared/a.py imports migrations",
        "shared/b.py imports worker",
        "shared/c.py imports tensorflow",
    ]
