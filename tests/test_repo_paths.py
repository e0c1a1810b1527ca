"""Every repository path named in the docs and in comments exists, and every make target is in `make help`.

Cheap checks that keep the text honest: a renamed or deleted file (monitoring/setup.sh, say) must
not live on in a README line, a docstring or a config comment, and `make help` cannot fall behind
the Makefiles.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import project_with_make

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("engine", "pipeline", "app", "monitoring", "benchmarks", "tests", "scripts", ".ci", ".github")
ROOT_FILES = ("README.md", "ARCHITECTURE.md", "BENCHMARKS.md", "Makefile", "dvc.yaml", "params.yaml", "pyproject.toml",
              "Dockerfile", "docker-compose.yml", ".dvcignore", ".dockerignore")
# Text that names paths: the docs, and the comments/docstrings of code and configuration.
SCANNED_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".mk", ".conf", ".sh", ".js", ".html", ".css"}
PATH_PATTERN = re.compile(
    r"(?<![\w./-])((?:" + "|".join(re.escape(d) for d in SOURCE_DIRS) + r")/[\w./*{},-]*[\w/*}])")
IGNORED_PARTS = ("node_modules", "__pycache__")


def scanned_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = [REPO / name for name in listed if name]
    return sorted(p for p in files if p.is_file() and (p.suffix in SCANNED_SUFFIXES or p.name in ROOT_FILES)
                  and not any(part in IGNORED_PARTS for part in p.parts) and p.name != Path(__file__).name)


def exists(named: str) -> bool:
    named = named.rstrip("/.")
    if "{" in named:  # a{b,c}d: every alternative must exist
        head, alternatives, tail = re.match(r"([^{]*)\{([^}]*)\}(.*)", named).groups()
        return all(exists(head + option + tail) for option in alternatives.split(","))
    if "*" in named:
        return any(REPO.glob(named))
    module, _, attribute = named.rpartition(".")  # pipeline/bundle.copy_bundle names a function of a module
    return (REPO / named).exists() or (attribute.isidentifier() and (REPO / f"{module}.py").is_file())


def test_every_path_named_in_docs_and_comments_exists():
    missing = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for named in PATH_PATTERN.findall(line):
                named = re.sub(r":\d+(?:-\d+)?$", "", named)  # file.py:18-240 names lines of a file
                if set(named.strip("/").split("/")) <= set(SOURCE_DIRS):
                    continue  # prose: "pipeline/app/monitoring" means the three packages
                if not exists(named):
                    missing.append(f"{path.relative_to(REPO)}:{number}: {named}")
    assert not missing, "paths named but not in the repository:\n" + "\n".join(missing)


def test_make_help_lists_every_target_of_every_makefile():
    makefiles = [REPO / "Makefile", REPO / "monitoring" / "delivery.mk"]
    defined = set()
    for makefile in makefiles:
        defined |= set(re.findall(r"^([a-z][a-z0-9_-]*):(?!=)", makefile.read_text(encoding="utf-8"), re.M))
    result = subprocess.run(["make", "--no-print-directory", "-s", "help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^  make (\S+)\s+\S", result.stdout, re.M)
    assert sorted(listed) == sorted(defined), \
        f"make help lists {sorted(listed)}, the Makefiles define {sorted(defined)}"
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize("named, real", [("pipeline/{train,evaluate}.py", True), ("app/templates/*.html", True),
                                          ("monitoring/setup.sh", False), ("engine/ops/nn.py", True),
                                          ("pipeline/bundle.copy_bundle", True), ("pipeline/bundle.nothing.py", False)])
def test_the_path_check_understands_braces_and_globs(named, real):
    assert exists(named) is real


NOQA = re.compile(r"#\s*noqa\b(?::\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?(?P<rest>.*)$")


def test_every_noqa_says_why():
    """A suppressed lint finding names its rule and the reason it does not apply (`# noqa: E402 - why`)."""
    bare = []
    for path in scanned_files():
        if path.suffix != ".py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = NOQA.search(line)
            if match and not re.search(r"[A-Za-z]{3}", match.group("rest")):
                bare.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not bare, "\n".join(bare)


def test_ruff_checks_every_python_file_in_the_repository():
    """Found by review: pyproject.toml's ``extend-exclude = ["models", ...]`` (meant for the top-level output folder)
    matched every folder named so, and tests/pipeline/models (31 files) went unlinted, 8 findings standing. Every
    tracked or new Python file is among those ``ruff check --show-files`` lists."""
    import sys

    ruff = Path(sys.executable).with_name("ruff")
    shown = subprocess.run([str(ruff), "check", "--show-files", "."], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout
    checked = {Path(line.strip()).resolve() for line in shown.splitlines() if line.strip().endswith(".py")}
    missed = [str(p.relative_to(REPO)) for p in scanned_files() if p.suffix == ".py" and p.resolve() not in checked]
    assert not missed, "ruff does not check:\n" + "\n".join(missed)


@pytest.mark.slow  # make mlflow-ui with a real server, 12 s: make test stays under 10 min
@pytest.mark.parametrize("team_store", [False, True])
def test_make_mlflow_ui_opens_the_store_the_stages_write_in_a_folder_named_with_query_characters(tmp_path, team_store):
    """The target built ``sqlite:///$(CURDIR)/mlflow.db`` itself: in a project folder named ``runs?2`` SQLAlchemy read
    ``?2/mlflow.db`` as a query and the UI opened (and created) a store ``runs`` beside it, and ``a%20b`` opened
    ``a b``, while the stages (pipeline.tracking.sqlite_uri) escape both. The target asks pipeline.tracking.
    With MLFLOW_TRACKING_URI naming a sqlite store the stages write there, and the UI served the project's own, empty
    store instead; a server's URI still leaves the UI on the project's store (the server has its own UI)."""
    import os
    import sys

    from pipeline import tracking

    project = tmp_path / "runs?2 100%20"
    team = tmp_path / "team store" / "mlflow.db"
    (project / "monitoring").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "monitoring/delivery.mk"):
        (project / name).write_bytes((REPO / name).read_bytes())
    (project / ".venv" / "bin").mkdir(parents=True)
    bin_dir = project / ".venv" / "bin"
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    # mlflow prints what it was started with instead of serving
    (bin_dir / "mlflow").write_text('#!/bin/sh\nfor arg in "$@"; do echo "arg: $arg"; done\n', encoding="utf-8")
    for tool in ("python", "mlflow"):
        (bin_dir / tool).chmod(0o755)
    (project / ".venv" / ".installed").touch()
    if team_store:
        team.parent.mkdir()
    store = team if team_store else project / "mlflow.db"
    env = dict(os.environ, PYTHONPATH=str(REPO),
               MLFLOW_TRACKING_URI=tracking.sqlite_uri(team) if team_store else "http://elsewhere.invalid:5000")
    done = subprocess.run(["make", "--no-print-directory", "-s", "mlflow-ui"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    args = [line[len("arg: "):] for line in done.stdout.splitlines() if line.startswith("arg: ")]
    uri = args[args.index("--backend-store-uri") + 1]
    assert uri == tracking.sqlite_uri(store) and tracking.local_store_path(uri) == store
    assert "MLflow UI: open http://127.0.0.1:5000/#/experiments" in done.stdout


def test_make_mlflow_ui_on_a_port_in_use_stops_at_once_in_one_line(tmp_path):
    """Found by a probe (two users' MLflow UIs on one host, both on the default 5000): mlflow ui took a minute
    (69 s on a busy 2-core machine) to start its server, logged "[Errno 98] error while attempting to bind", and
    exited 0, so make reported success and the address it had printed opened the other user's runs. The target
    now checks the port first (app/address.py, as gunicorn's master does) and mlflow is never started."""
    import os
    import socket

    project = project_with_make(tmp_path / "project", {"mlflow": 'echo "mlflow started"'})
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_PORT=str(port))
        done = subprocess.run(["make", "--no-print-directory", "-s", "mlflow-ui"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "mlflow started" not in done.stdout, (done.stdout, done.stderr)
    errors = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert errors == [f"Error: cannot serve at 127.0.0.1:{port}: Address already in use (is another server running "
                      "there? choose another port: make mlflow-ui MLFLOW_PORT=5001)"], done.stderr


def test_make_targets_run_with_dvc_analytics_and_mlflow_telemetry_off():
    """Every recipe (make run's stages, the servers) inherits both opt-outs, whatever the user's environment says."""
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_NO_ANALYTICS", "MLFLOW_DISABLE_TELEMETRY")}
    shown = subprocess.run(["make", "-s", "--no-print-directory", "--eval",
                            "show-opt-outs: ; @echo $$DVC_NO_ANALYTICS $$MLFLOW_DISABLE_TELEMETRY", "show-opt-outs"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["1", "true"]


DOCS = ("README.md", "ARCHITECTURE.md", "BENCHMARKS.md")
# A command the docs show: `python -m pipeline.train ...`, `.venv/bin/python benchmarks/accuracy.py ...`, up to the
# end of its code span, or of its line in a code block (whose `# comment` may name flags of the same command).
DOC_COMMAND = re.compile(r"python3? (?:-m ((?:pipeline|monitoring|benchmarks|app|scripts)(?:\.\w+)*)|"
                         r"((?:benchmarks|scripts|pipeline|monitoring)/\w+\.py))([^\n]*)")


def _module_file(module: str) -> Path:
    path = REPO / Path(*module.split("."))
    return path / "__main__.py" if path.is_dir() else path.with_suffix(".py")


def _option_strings(source: Path) -> set[str]:
    """The `--options` a program's source spells out, its own or those of the repository modules it imports."""
    text = source.read_text(encoding="utf-8")
    for imported in re.findall(r"^\s*from ((?:pipeline|monitoring|benchmarks|app|engine)(?:\.\w+)*) import", text,
                               re.M):
        if _module_file(imported).is_file():
            text += _module_file(imported).read_text(encoding="utf-8")
    return set(re.findall(r"""["'](--[a-z][\w-]*)["']""", text)) | {"--help"}


def test_every_command_line_option_the_docs_show_exists():
    """Every `--option` of a `python -m …` or `python benchmarks/….py` command the docs show is one the program
    defines: a renamed or removed flag (`--skip-lightgbm`, `--actuals`) must not live on in a copy-paste line."""
    unknown = []
    for doc in DOCS:
        for number, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
            in_block = re.match(r"\s*(?:\.venv/bin/)?python", line) is not None
            for module, script, rest in DOC_COMMAND.findall(line):
                rest = rest if in_block else rest.split("`")[0]
                source = _module_file(module) if module else REPO / script
                if not source.is_file():
                    continue  # a path that does not exist is test_every_path_named_in_docs_and_comments_exists's
                options = _option_strings(source)
                unknown += [f"{doc}:{number}: {module or script} {flag}" for flag in
                            re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)
                            if flag not in options and f"unrecognized arguments: {flag}" not in line]
    assert not unknown, "options the docs show that their program does not define:\n" + "\n".join(unknown)


def test_every_make_target_the_docs_show_exists():
    """Every `make TARGET` the docs quote (`make metrics`, `TEST_WORKERS=1 make test`) is a target of the Makefiles."""
    defined = set()
    for makefile in (REPO / "Makefile", REPO / "monitoring" / "delivery.mk"):
        defined |= set(re.findall(r"^([a-z][a-z0-9_-]*):(?!=)", makefile.read_text(encoding="utf-8"), re.M))
    unknown = []
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        code = re.findall(r"`([^`\n]+)`", text) + re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
        for span in code:
            for target in re.findall(r"(?:^|[;&|(]\s*|\s)make (?:-\S+ )*(?:[A-Z_]+=\S* )*([a-z][\w-]*)", span, re.M):
                if target not in defined:
                    unknown.append(f"{doc}: make {target}")
    assert not unknown, "make targets the docs show that no Makefile defines:\n" + "\n".join(sorted(set(unknown)))


def test_the_readme_retrains_beside_the_running_app_with_a_command_that_does_not_serve_again(tmp_path):
    """README "What next" has the app serving from `make run` in one terminal, then has a parameter changed and the
    model retrained for the running app to swap in. It said `make run` again: its pipeline and promotion ran, then
    its own gunicorn found the address taken and make failed (`cannot serve there: Address already in use`, exit 2)
    after a retrain that had worked. The command it names now runs the pipeline and promotion and serves nothing."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    bullet = re.search(r"^- Change a number in the `train:` section.*?(?=^- )", readme, re.S | re.M).group(0)
    command = re.search(r"`(make [a-z][\w -]*)`", bullet).group(1)
    project = project_with_make(tmp_path)
    result = subprocess.run([*command.split()[:1], "-n", *command.split()[1:]], cwd=project, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"dvc repro\s*$", result.stdout, re.M), result.stdout
    assert "-m pipeline.promote" in result.stdout, result.stdout
    assert "gunicorn" not in result.stdout and "serve" not in result.stdout, f"`{command}` serves:\n{result.stdout}"
