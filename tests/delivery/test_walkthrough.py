"""docs/walkthrough.md cannot rot: every command of it runs here, in order.

Parts 1-2 (train, gate, promote, the gate broken and fixed) on a fresh clone at the tests' small scale
(slow + long: `make test-long`); parts 3-5 (releases) against a real registry and a running Shelfcast (slow).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.release_store import CANARY, PRODUCTION, SHADOW

from .conftest import REPO, a_clone

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml

WALKTHROUGH = REPO / "docs" / "walkthrough.md"
RELEASE_PART = "## 3. Release"  # parts 1-2 train (a fresh clone at a small scale); 3-5 release (a registry, an app)
EXPECTED_FAILURE = "  # fails: "  # a command the page expects to fail, with what it prints
SERVES_UNTIL_CTRL_C = {"make mlflow-ui": "MLFLOW_PORT"}  # run in the background, stopped once it answers


def console_blocks(text: str) -> list[list[str]]:
    """The `$ ` commands of every ```console block, in order."""
    blocks = []
    for match in re.finditer(r"```console\n(.*?)```", text, re.S):
        commands = [line[2:] for line in match.group(1).splitlines() if line.startswith("$ ")]
        assert commands, f"a console block without `$ ` commands: {match.group(0)[:80]!r}"
        blocks.append(commands)
    return blocks


def parts(text: str) -> tuple[list[list[str]], list[list[str]]]:
    """(the training parts' blocks, the release parts' blocks)."""
    training, releasing = text.split(RELEASE_PART, 1)
    return console_blocks(training), console_blocks(releasing)


def test_the_walkthrough_has_every_part():
    text = WALKTHROUGH.read_text(encoding="utf-8")
    for part in ("Run the loop", "Break the gate", "shadow, then canary, then production", "Roll back", "Watch it"):
        assert part in text
    training, releasing = parts(text)
    assert len(training) >= 3 and len(releasing) >= 5
    assert any(EXPECTED_FAILURE in command for block in training for command in block)


def test_the_make_commands_of_the_loop_exist():
    for commands in parts(WALKTHROUGH.read_text(encoding="utf-8"))[0]:
        for command in commands:
            if not command.startswith("make "):
                continue
            target = command.split(EXPECTED_FAILURE)[0].split()[1:]
            done = subprocess.run(["make", "-n", "-f", "Makefile", *target], cwd=REPO, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0 and "No rule" not in done.stderr, (command, done.stderr)


def readme_test_module():
    """tests/e2e/test_readme.py by path: its Background runs a command that serves until Ctrl-C."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("delivery_tests_readme", REPO / "tests" / "e2e" / "test_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.long
def test_the_loop_and_the_broken_gate_run_on_a_fresh_clone(tmp_path, monkeypatch):
    """Parts 1-2 as written, on a fresh clone whose params.yaml is the tests' small scale: train, gate, promote,
    MLflow's UI showing the registered model; then the gate broken on purpose (the pipeline and promote fail
    as the page says) and fixed again."""
    from .actions import runner_environment
    from .runners import clone, set_params, source_repository

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the laptop's own store, as the page assumes
    readme = readme_test_module()
    repository = source_repository(REPO, tmp_path / "github")
    set_params(repository, "small scale for the test")
    laptop = clone(repository, tmp_path / "laptop")
    port = readme.free_port()
    env = runner_environment(MLFLOW_PORT=str(port))  # a plain shell: the project's local MLflow store
    started = time.monotonic()
    for commands in parts(WALKTHROUGH.read_text(encoding="utf-8"))[0]:
        for command in commands:
            if command in SERVES_UNTIL_CTRL_C:
                served = readme.Background(command, laptop, env, tmp_path / "mlflow-ui.log")
                try:
                    served.wait_until(f"http://127.0.0.1:{port}/health", 180)
                    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get?name={MODEL_NAME}"
                    with urllib.request.urlopen(url, timeout=30) as answer:
                        model = json.loads(answer.read())["registered_model"]
                    assert {a["alias"]: a["version"] for a in model["aliases"]} == {PRODUCTION: "1"}, model
                finally:
                    served.interrupt()
                continue
            done = subprocess.run(["bash", "-c", command], cwd=laptop, env=env, capture_output=True, text=True,
                                  timeout=600)
            output = done.stdout + done.stderr
            if EXPECTED_FAILURE in command:
                expected = command.split(EXPECTED_FAILURE)[1].strip()
                assert done.returncode != 0 and expected in output, (command, output[-3000:])
            else:
                assert done.returncode == 0, (command, output[-3000:])
            print(f"{command}: exit {done.returncode} after {time.monotonic() - started:.0f} s")
    assert json.loads((laptop / "results" / "evaluation.json").read_text(encoding="utf-8"))["passed"]
    versions = tracking.client(laptop).search_model_versions(f"name='{MODEL_NAME}'")
    assert len(versions) == 1  # the refused promote registered nothing
    assert subprocess.run(["git", "status", "--porcelain", "params.yaml"], cwd=laptop, capture_output=True,
                          text=True).stdout == ""  # the page's fix put params.yaml back as it was


@pytest.mark.slow
def test_every_release_command_runs_in_order(released, registry_env, tmp_path):
    """Parts 3-5 as a user runs them: a fresh host directory, only MLFLOW_TRACKING_URI and a running app."""
    from .conftest import ServedWithUsers
    from .test_release import all_series, make_app
    from pipeline.release_store import ReleaseStore

    _, uri, versions = released
    client = tracking.client(tmp_path)
    name = MODEL_NAME
    # where part 2 leaves the registry: the CI's candidate (version 2) is @shadow
    client.set_registered_model_alias(name, PRODUCTION, versions["production"])
    client.set_registered_model_alias(name, SHADOW, versions["canary"])
    try:
        client.delete_registered_model_alias(name, CANARY)
    except Exception:  # noqa: BLE001 (absent already)
        pass
    host = a_clone(tmp_path / "host")  # "any clone of this repository": its params.yaml names the model
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "SHELFCAST_PREDICTION_LOG": str(host / "logs" / "predictions.jsonl")}
    blocks = parts(WALKTHROUGH.read_text(encoding="utf-8"))[1]
    served = None
    try:
        for number, commands in enumerate(blocks):
            if number == 1:  # "Serve it in another terminal": after sync, before the first curl; and its users, whose
                # requests the canary check judges (never the smoke test's): one-row forecasts over the catalog
                store = ReleaseStore(host / "models")
                served = ServedWithUsers(store, host / "logs" / "predictions.jsonl", tmp_path,
                                         all_series(make_app(store, tmp_path / "probe-events.jsonl")))
                env["SHELFCAST_URL"] = served.url
            for command in commands:
                done = subprocess.run(["bash", "-c", command], cwd=host, env=env, capture_output=True, text=True,
                                      timeout=300)
                assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
                if "release status" in command or "release deploy" in command:
                    print(command, "->", done.stdout.strip()[-400:])
    finally:
        if served is not None:
            served.close()
    aliases = {k: str(v) for k, v in tracking.client(tmp_path).get_registered_model(name).aliases.items()}
    assert aliases == {PRODUCTION: versions["canary"]}  # the deploy of part 5 promoted version 2 again
