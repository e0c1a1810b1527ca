"""dvc.yaml's code deps of each stage are exactly the repository modules its command imports.

Computed, not listed: the imports of ``python -m pipeline.<stage>`` are followed
through the repository (every ``import`` statement, at module level or inside a
function), so a new import in any module a stage uses fails here until dvc.yaml
names it, and a dep that nothing imports any more fails too. Otherwise DVC would
skip a stage whose code changed, or rerun one for a change it cannot see.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from pipeline.versions import MODEL_CODE

from .conftest import REPO

PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
COMMAND = re.compile(r"^python -m (pipeline\.\w+)(\s|$)")


def module_file(name: str) -> Path | None:
    """The repository file of a dotted module name, or None (a third-party or stdlib module)."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file() and candidate.resolve().is_relative_to(REPO) and ".venv" not in candidate.parts:
            return candidate
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Dotted names of everything ``path`` imports (absolute or relative, anywhere in the file)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    # importing a.b.c runs a/__init__.py and a/b/__init__.py too
    return {".".join(name.split(".")[:k]) for name in names for k in range(1, name.count(".") + 2)}


def stage_imports(module: str) -> set[Path]:
    """Every repository file that running ``module`` may import, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path))
    return seen


def _is_empty_marker(path: Path) -> bool:
    """A package __init__ with no statements beyond a docstring (changing it changes nothing)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def _declared(stage: dict) -> list[str]:
    return [next(iter(dep)) if isinstance(dep, dict) else dep for dep in stage.get("deps", [])]


def _is_code(dep: str) -> bool:
    path = REPO / dep
    return dep.endswith(".py") or (path.is_dir() and any(path.rglob("*.py")))


def _covered_by(file: Path, deps: list[str]) -> bool:
    return any(file == REPO / dep or (REPO / dep).is_dir() and file.is_relative_to(REPO / dep) for dep in deps)


STAGES = sorted(name for name, stage in PIPELINE.items() if COMMAND.match(stage["cmd"]))


def test_every_stage_is_a_pipeline_module():
    assert {"source", "download", "prepare", "split", "train", "evaluate"} <= set(STAGES), STAGES


@pytest.mark.parametrize("name", STAGES)
def test_stage_deps_are_exactly_its_imports(name):
    stage = PIPELINE[name]
    module = COMMAND.match(stage["cmd"]).group(1)
    imports = {path for path in stage_imports(module) if not _is_empty_marker(path) or path.name != "__init__.py"}
    declared = [dep for dep in _declared(stage) if _is_code(dep)]
    missing = sorted(str(p.relative_to(REPO)) for p in imports if not _covered_by(p, declared))
    assert not missing, f"dvc.yaml stage '{name}' imports but does not declare: {', '.join(missing)}"
    # A dep nothing imports is stale, unless it is model code the stage hashes (pipeline/versions.py MODEL_CODE).
    hashed = set(MODEL_CODE) if REPO / "pipeline" / "versions.py" in imports else set()
    unused = [dep for dep in declared
              if dep not in hashed and not any(_covered_by(p, [dep]) for p in imports)]
    assert not unused, f"dvc.yaml stage '{name}' declares deps it never imports: {', '.join(unused)}"


def test_model_code_hash_covers_exactly_what_train_and_evaluate_declare():
    """promote compares the hash of MODEL_CODE: it must be the code DVC reruns train/evaluate for."""
    declared = {dep for name in ("train", "evaluate") for dep in _declared(PIPELINE[name]) if _is_code(dep)}
    assert set(MODEL_CODE) == declared, (f"only in MODEL_CODE: {sorted(set(MODEL_CODE) - declared)}; "
                                         f"only in dvc.yaml: {sorted(declared - set(MODEL_CODE))}")


def test_the_import_walk_finds_function_level_and_relative_imports():
    """The checker itself: a lazy import inside a function and engine's relative imports are followed."""
    evaluate = stage_imports("pipeline.evaluate")
    assert REPO / "pipeline" / "tracking.py" in evaluate  # imported inside a function
    assert REPO / "pipeline" / "stage.py" in evaluate
    engine_files = [p for p in stage_imports("engine") if p.is_relative_to(REPO / "engine")]
    assert len(engine_files) > 5  # engine/__init__.py's relative imports reach its modules
