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


# Calls that import a module named by a string: importlib.import_module("app.events"), __import__("app"),
# werkzeug's/Flask's import_string("app.config:X"), pkgutil.resolve_name, runpy.run_module, find_spec.
DYNAMIC_IMPORTS = {"import_module", "__import__", "import_string", "resolve_name", "run_module", "find_spec"}


def _called_name(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def project_imports(path: Path) -> set[tuple[str, int]]:
    """(project package, line) of every import in the file: statements anywhere (also inside functions), and
    calls that import a module named by a string constant (a late ``importlib.import_module("app.events")`` is
    as much a cycle as an import statement). A dynamic import whose name is not a constant counts as ``?``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and _called_name(node) in DYNAMIC_IMPORTS and node.args:
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                found.add(("?", node.lineno))  # cannot be checked: name the module as a constant
                continue
            names = [first.value.replace(":", ".")]
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


def test_the_check_sees_an_import_by_name_in_a_function(tmp_path):
    """Found by a probe: a lazy import by name (monitoring calling importlib.import_module("app.events") in a
    function) passed the check, though it is the same cycle at run time."""
    module = tmp_path / "m.py"
    module.write_text("import importlib\nfrom werkzeug.utils import import_string\n\n\n"
                      "def f(name):\n    importlib.import_module('app.events')\n    __import__('app')\n"
                      "    import_string('app.config:AppSettings')\n    importlib.import_module(name)\n"
                      "    importlib.util.find_spec('distributed_ucxx')\n")
    assert project_imports(module) == {("app", 6), ("app", 7), ("app", 8), ("?", 9)}
