"""The app image holds what its containers run (no Docker engine here, so the image is rebuilt from its recipe).

Its file tree is what the Dockerfile's COPY lines take from the build context that .dockerignore leaves,
with a real bundle as models/production; its Python packages are the Dockerfile's pip list and what those
require. The image's own commands then run in that tree, with every other installed distribution refused
at import: the build step, the app gunicorn serves (a forecast, /docs, /monitoring) and the files the
compose `setup` service reads.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from packaging.markers import default_environment
from packaging.requirements import Requirement

from pipeline.bundle import copy_bundle

REPO = Path(__file__).resolve().parents[2]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerignore_patterns(repo: Path) -> list[tuple[bool, re.Pattern]]:
    """(exception, regex) per .dockerignore line, in order, as Docker reads them (moby's patternmatcher)."""
    rules = []
    for line in (repo / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        rules.append((exception, re.compile(regex + r"\Z")))
    return rules


def in_build_context(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether the build context has `path`: the last rule matching it or a folder above it decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for exception, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not exception
    return not excluded


def image_tree(repo: Path, bundle: Path, target: Path) -> Path:
    """The app image's /srv/shelfcast: each `COPY src/ dst/` of the build stage, from the build context."""
    rules = dockerignore_patterns(repo)
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    copies = re.findall(r"^COPY (\S+)/ (\S+)/$", (repo / "Dockerfile").read_text(encoding="utf-8"), re.M)
    assert copies, "no COPY src/ dst/ lines in the Dockerfile"
    for source, destination in copies:
        if source == "models/production":  # a DVC output, not in git: the bundle `make fetch-model` puts there
            assert in_build_context("models/production/bundle.json", rules)
            copy_bundle(bundle, target / destination)
            continue
        for path in tracked:
            if path.startswith(source + "/") and in_build_context(path, rules) and (repo / path).is_file():
                copied = target / destination / path[len(source) + 1:]
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(repo / path, copied)
    return target


def image_distributions(repo: Path) -> set[str]:
    """The Dockerfile's pip list and everything it requires (as pip would install it), normalized names."""
    text = (repo / "Dockerfile").read_text(encoding="utf-8")
    wanted = [normalized(name) for name in re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==\d", text)]
    environment = {**default_environment(), "extra": ""}
    found: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in found:
            continue
        found.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                wanted.append(normalized(requirement.name))
    return found


def refusing_imports(tree: Path, allowed: set[str]) -> str:
    """Python that makes every top-level module of an installed distribution outside `allowed` unimportable
    (the image's own code is the tree's, not this checkout's editable install)."""
    own = {path.name for path in tree.iterdir()}
    refused = sorted({module for module, dists in importlib.metadata.packages_distributions().items()
                      if not {normalized(d) for d in dists} & allowed and module not in own})
    return textwrap.dedent(f"""
        import sys
        REFUSED = set({refused!r})
        class NotInTheImage:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in REFUSED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (not installed in the app image)", name=name)
                return None
        sys.meta_path.insert(0, NotInTheImage())
        """)


def run_in_image(tree: Path, allowed: set[str], code: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree), "NUMBA_CACHE_DIR": str(tree / ".numba_cache"),
           "SHELFCAST_MODEL_DIR": str(tree / "models" / "production"), "HOME": str(tree)}
    return subprocess.run([sys.executable, "-c", refusing_imports(tree, allowed) + textwrap.dedent(code)], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_build_context_rules_read_as_dockers():
    rules = [(False, re.compile(r"[^/]*\Z")), (True, re.compile(r"kept\Z")), (False, re.compile(r"(.*/)?x\Z"))]
    assert in_build_context("kept/a.py", rules) and not in_build_context("other/a.py", rules)
    assert not in_build_context("kept/x/a.py", rules) and not in_build_context("kept/x", rules)


@pytest.mark.slow  # end to end, 20-70 s: make test stays well under its 10 minutes
def test_the_image_builds_serves_and_sets_up_the_stack_with_only_its_own_files_and_packages(app_bundles, tmp_path):
    tree = image_tree(REPO, app_bundles[0], tmp_path / "srv")
    allowed = image_distributions(REPO)
    assert "flask" in allowed and "jinja2" in allowed and "pandas" not in allowed and "mlflow" not in allowed

    build = re.search(r'^RUN /opt/venv/bin/python -c "([^"]+)"$', (REPO / "Dockerfile").read_text(), re.M)
    assert build, "the Dockerfile's build check is not where this test reads it"
    result = run_in_image(tree, allowed, build.group(1))
    assert result.returncode == 0, result.stderr[-3000:]

    result = run_in_image(tree, allowed, """
        import app.wsgi
        client = app.wsgi.app.test_client()
        for path in ("/readyz", "/docs", "/monitoring", "/metrics"):
            assert client.get(path).status_code == 200, path
        model = client.get("/api/v1/model").get_json()
        item = client.get("/api/v1/items?limit=1").get_json()["items"][0]["item_nbr"]
        row = {"store_nbr": model["stores"][0]["store_nbr"], "item_nbr": item,
               "date": model["horizon"]["first_date"], "onpromotion": False}
        answer = client.post("/api/v1/predict", json={"instances": [row]})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        import pandas
        """)
    # all of it ran, up to the last line: the image really lacks what training needs
    assert result.stderr.count("Traceback") == 1, result.stderr[-3000:]
    assert result.stderr.strip().endswith("No module named 'pandas' (not installed in the app image)"), result.stderr

    result = run_in_image(tree, allowed, """
        from monitoring.setup_stack import SAVED_OBJECTS, index_templates
        assert index_templates() and SAVED_OBJECTS.read_bytes()
        """)
    assert result.returncode == 0, result.stderr[-3000:]
