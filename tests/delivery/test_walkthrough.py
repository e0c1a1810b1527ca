"""docs/walkthrough.md cannot rot: its commands run here, in order, against a real registry and Shelfcast."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.release_store import CANARY, PRODUCTION, SHADOW

from .conftest import REPO

WALKTHROUGH = REPO / "docs" / "walkthrough.md"
MAKE_ONLY = "<!-- walkthrough-test: make -n -->"


def console_blocks(text: str) -> list[tuple[bool, list[str]]]:
    """(checked with make -n only, commands) for every ```console block, in order."""
    blocks = []
    for match in re.finditer(r"(<!-- walkthrough-test: make -n -->\n)?```console\n(.*?)```", text, re.S):
        commands = [line[2:] for line in match.group(2).splitlines() if line.startswith("$ ")]
        assert commands, f"a console block without `$ ` commands: {match.group(0)[:80]!r}"
        blocks.append((match.group(1) is not None, commands))
    return blocks


def test_the_walkthrough_has_every_part():
    text = WALKTHROUGH.read_text(encoding="utf-8")
    for part in ("Run the loop", "Break the gate", "shadow, then canary, then production", "Roll back", "Watch it"):
        assert part in text
    blocks = console_blocks(text)
    assert [make_only for make_only, _ in blocks][:2] == [True, True] and not any(m for m, _ in blocks[2:])


def test_the_make_commands_of_the_loop_exist():
    for make_only, commands in console_blocks(WALKTHROUGH.read_text(encoding="utf-8")):
        if not make_only:
            continue
        for command in commands:
            assert command.startswith("make "), command
            done = subprocess.run(["make", "-n", "-f", "Makefile", *command.split()[1:]], cwd=REPO, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0 and "No rule" not in done.stderr, (command, done.stderr)


@pytest.mark.slow
def test_every_release_command_runs_in_order(released, registry_env, tmp_path):
    """Parts 3-5 as a user runs them: a fresh host directory, only MLFLOW_TRACKING_URI and a running app."""
    from .test_release import ServedApp
    from pipeline.release_store import ReleaseStore

    _, uri, versions = released
    client = tracking.client(tmp_path)
    name = tracking.REGISTERED_MODEL
    # where part 2 leaves the registry: the CI's candidate (version 2) is @shadow
    client.set_registered_model_alias(name, PRODUCTION, versions["production"])
    client.set_registered_model_alias(name, SHADOW, versions["canary"])
    try:
        client.delete_registered_model_alias(name, CANARY)
    except Exception:  # noqa: BLE001 (absent already)
        pass
    host = tmp_path / "host"
    host.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "SHELFCAST_PREDICTION_LOG": str(host / "logs" / "predictions.jsonl")}
    blocks = [commands for make_only, commands in console_blocks(WALKTHROUGH.read_text(encoding="utf-8"))
              if not make_only]
    served = None
    try:
        for number, commands in enumerate(blocks):
            if number == 1:  # "Serve it in another terminal": after sync, before the first curl
                served = ServedApp(ReleaseStore(host / "models"), host / "logs" / "predictions.jsonl", tmp_path, None)
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
