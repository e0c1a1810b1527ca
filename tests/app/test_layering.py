"""Dependencies point one way: engine <- pipeline <- app, monitoring beside the app, eventlog under both.

Read from the source with `ast` (every import, also those inside functions), so a cycle
cannot hide in a late import.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "eventlog", "pipeline", "monitoring", "app")
# package -> the project packages it may import
ALLOWED = {
    "engine": set(),
    "eventlog": set(),
    "pipeline": {"engine"},
    "monitoring": {"engine", "pipeline", "eventlog"},
    "app": {"engine", "pipeline", "eventlog", "monitoring"},
}


def project_imports(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update((name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PACKAGES)
    return found


def test_no_package_imports_against_the_layering():
    wrong = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for imported, line in project_imports(path):
                if imported != package and imported not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from app.events import TAG\n")
    assert project_imports(module) == {("app", 2)}
