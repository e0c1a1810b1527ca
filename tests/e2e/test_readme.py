"""The README, followed as a newcomer would: its quick start and "What next" commands, one by one, on a fresh clone.

The clone is made from a copy of the working tree (tracked and not-ignored files, so uncommitted work is
tested too), committed and `git clone`d, so it has no .venv, data, models, MLflow store or DVC cache.
Every command of the two sections is taken from README.md itself and run as written, except:
- `make test`: not run again from inside the suite it belongs to (CI runs it: .ci/run);
- the ports: `make run` serves on a free port (SHELFCAST_BIND) and `make mlflow-ui` too (MLFLOW_PORT),
  and the curl commands are pointed at it, so the test does not depend on 5005/5000 being free;
- the two commands that serve until Ctrl-C (`make run`, `make mlflow-ui`) run in the background and get
  SIGINT once they have answered.
At the end the clone's `git status` must be what it was: `make run` writes only ignored or DVC-cached files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.launch import free_port

pytestmark = [pytest.mark.slow, pytest.mark.long]

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 60 * 60  # installing from PyPI, generating the data, training, the backtests (2 cores)
COMMAND_TIMEOUT_S = 10 * 60
MAX_SILENCE_S = 120  # every step that takes longer shows progress (generous: a loaded 2-core machine)
NOT_RUN = {"make test": "the test suite this test is part of; CI runs it"}


def stages_listed(dvc_status: str) -> set[str]:
    """The stages `dvc status` says are not up to date (`source` always is listed: it always runs)."""
    return set(re.findall(r"^([\w./-]+):\s*$", dvc_status, re.M)) - {"source"}


def section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", markdown, re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def without_comment(line: str) -> str:
    """The command without its trailing `# comment` (a # inside quotes is kept)."""
    quoted = None
    for index, char in enumerate(line):
        if char in "'\"" and quoted in (None, char):
            quoted = None if quoted else char
        elif char == "#" and quoted is None and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def commands(markdown_section: str) -> list[str]:
    """Every command of the section's ```bash blocks, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", markdown_section, re.S):
        for raw in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+", " ", without_comment(raw)).strip()
            if command:
                found.append(command)
    return found


def fresh_clone(tmp_path: Path) -> Path:
    """`git clone` of a commit holding the working tree's tracked and not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    source = tmp_path / "source"
    for name in filter(None, listed):
        path = REPO / name
        if path.is_file() and not path.is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    git = ["git", "-c", "user.name=readme-test", "-c", "user.email=readme-test@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=source, check=True)
    subprocess.run([*git, "add", "-A"], cwd=source, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the working tree"], cwd=source, check=True)
    subprocess.run(["git", "clone", "-q", str(source), str(tmp_path / "clone")], check=True)
    return tmp_path / "clone"


def newcomer_environment(port: int, mlflow_port: int) -> dict[str, str]:
    """A plain shell: no virtual environment active, none of the project's variables set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHELFCAST_", "MLFLOW_", "FLUENTD_", "PYTEST", "VIRTUAL_ENV", "PYTHON"))}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(SHELFCAST_BIND=f"127.0.0.1:{port}", MLFLOW_PORT=str(mlflow_port), DVC_NO_ANALYTICS="1")
    return env


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Background:
    """A command that serves until Ctrl-C, in its own process group; its output is kept with arrival times."""

    def __init__(self, command: str, cwd: Path, env: dict, log: Path):
        self.log_path = log
        self.chunks: list[tuple[float, str]] = []
        self.ready_at = float("inf")
        self.process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            while chunk := os.read(self.process.stdout.fileno(), 65536):
                text = chunk.decode(errors="replace")
                self.chunks.append((time.monotonic(), text))
                log.write(text)
                log.flush()

    def wait_until(self, url: str, timeout_s: float) -> float:
        started = time.monotonic()
        while not answers(url):
            assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.output()[-4000:]}"
            assert time.monotonic() - started < timeout_s, f"{url} not up in {timeout_s} s:\n{self.output()[-4000:]}"
            time.sleep(2)
        self.ready_at = time.monotonic()
        return self.ready_at - started

    def longest_silences(self, count: int = 3) -> list[tuple[float, str]]:
        """The longest waits between two outputs until it answered, each with the last line before it."""
        chunks = [c for c in self.chunks if c[0] <= self.ready_at] + [(self.ready_at, "(answering)")]
        gaps = [(later[0] - earlier[0], earlier[1].replace("\r", "\n").strip().splitlines()[-1:] or [""])
                for earlier, later in zip(chunks, chunks[1:])]
        return [(round(gap, 1), line[0][-200:]) for gap, line in sorted(gaps, reverse=True)[:count]]

    def interrupt(self) -> None:
        """Ctrl-C, as a person would (SIGINT to the whole process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._reader.join(timeout=10)

    def output(self) -> str:
        return "".join(text for _, text in self.chunks)


def run(command: str, cwd: Path, env: dict) -> str:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`{command}` exited with {result.returncode}:\n{output[-4000:]}"
    return output


def test_a_newcomer_follows_the_readme_on_a_fresh_clone(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start, what_next = commands(section(readme, "Quick start")), commands(section(readme, "What next"))
    assert quick_start[:2] == ["make run", "make test"], quick_start
    clone = fresh_clone(tmp_path)
    status_before = run("git status --porcelain", clone, dict(os.environ))
    port, mlflow_port = free_port(), free_port()
    env = newcomer_environment(port, mlflow_port)
    url = f"http://127.0.0.1:{port}"
    serving = None
    try:
        for command in quick_start:
            if command in NOT_RUN:
                continue
            if command == "make run":
                serving = Background(command, clone, env, tmp_path / "make-run.log")
                first_run_s = serving.wait_until(f"{url}/readyz", RUN_TIMEOUT_S)
                print(f"make run on a fresh clone: serving after {first_run_s / 60:.1f} min")
            elif command.startswith("source .venv/bin/activate"):
                where = run(f"{command} && command -v dvc mlflow python", clone, env).split()
                assert where == [str(clone / ".venv" / "bin" / n) for n in ("dvc", "mlflow", "python")], where
            else:
                run(command, clone, env)
        log = serving.output()
        silences = serving.longest_silences()
        print("make run: longest waits without output (s, after):", silences)
        assert silences[0][0] <= MAX_SILENCE_S, (f"make run printed nothing for {silences[0][0]} s "
                                                 f"after {silences[0][1]!r}")
        for stage in ("download", "prepare", "split", "train", "evaluate", "promote"):
            # evaluate's outputs are committed and training is byte-reproducible, so on a fresh clone DVC finds the
            # rebuilt candidate identical to the one results/ scored and skips evaluate: that line is its output.
            said = rf"^({stage}: |Stage '{stage}' didn't change, skipping)"
            assert re.search(said, log, re.M), f"no progress or summary line from {stage}:\n{log[-3000:]}"

        for command in what_next:
            if command == "make mlflow-ui":
                ui = Background(command, clone, env, tmp_path / "mlflow-ui.log")
                try:
                    ui.wait_until(f"http://127.0.0.1:{mlflow_port}/", 180)
                finally:
                    ui.interrupt()
                continue
            output = run(command.replace("localhost:5005", f"localhost:{port}"), clone, env)
            if command.startswith("curl"):
                body = json.loads(output)
                if "/predict" in command:
                    assert body["predictions"][0]["unit_sales"] >= 0, body
                else:
                    assert body["items"], f"`{command}` found no items"
            elif command == "make status":
                assert not stages_listed(output), output
            elif command == "make dag":
                assert all(stage in output for stage in ("download", "prepare", "split", "train", "evaluate"))
            elif command == "make plots":
                assert (clone / "dvc_plots" / "index.html").is_file()
            elif command == "make drift":
                assert "drift:" in output and (clone / "logs" / "drift" / "drift.html").is_file()

        # The form's example and /docs' examples work on the default model too.
        with urllib.request.urlopen(f"{url}/api/v1/openapi.json", timeout=30) as response:
            document = json.loads(response.read())
        example = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
        request = urllib.request.Request(f"{url}/api/v1/predict", data=json.dumps(example).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        readme_item = re.search(r'"item_nbr": (\d+)', section(readme, "What next")).group(1)
        assert example["instances"][0]["item_nbr"] == int(readme_item), "README's example is not the app's example"
    finally:
        if serving is not None:
            serving.interrupt()

    status_after = run("git status --porcelain", clone, dict(os.environ))
    assert status_after == status_before, (
        f"make run left the tree changed:\n{status_after}\n"
        + run("git diff --stat; git diff dvc.lock | head -60", clone, dict(os.environ)))
    assert not stages_listed(run("make status", clone, env))
