"""`release deploy` stopped by Ctrl-C or SIGTERM while its canary serves: it takes the candidate back out, as a failed
deploy does, and says so; a second signal during that ends it at once, naming what may be left and the command that
finishes it.

Each deploy is its own process (`python -m pipeline.release deploy`) against the session's real (sqlite) MLflow
registry and a real served app (gunicorn, hot reload), signalled once the canary serves and passed its smoke test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import release, tracking
from pipeline.release_store import CANARY, PRODUCTION

from .conftest import REPO, ServedWithUsers
from .test_release import NAME

SERVING_LINE = "deploy: smoke test passed"


class Deploying:
    """A `release deploy` process whose output lines are read as they come."""

    def __init__(self, root: Path, store, url: str, events: Path, version: str, env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.release", "deploy", "--root", str(root), "--models", str(store.root),
             "--url", url, "--events", str(events), "--version", version, "--share", "0.5", "--observe-s", "300",
             "--requests", "20"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def wait_until(self, ready, what: str) -> None:
        deadline = time.monotonic() + 180
        while not ready():
            assert self.process.poll() is None, (what, self.lines, self.process.stderr.read())
            assert time.monotonic() < deadline, (what, self.lines)
            time.sleep(0.05)

    def ended(self) -> tuple[int, list[str]]:
        errors = self.process.stderr.read()
        self.process.wait(timeout=120)
        self.reader.join(10)
        return self.process.returncode, errors.splitlines()


def assert_canary_gone(root: Path, store, url: str, production: str) -> None:
    aliases = tracking.client(root).get_registered_model(NAME).aliases
    assert str(aliases[PRODUCTION]) == production and CANARY not in aliases, aliases
    assert not store.variant_dir(CANARY).exists() and store.canary_share() == 0.0
    assert not (release.app_info(url).get("variants") or {}).get(CANARY)  # the app answers with production alone


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_deploy_withdraws_its_canary_and_says_so(host, tmp_path, signum):
    """Before, the interruption left the canary installed, its alias set and a share of users answered by it, and
    the line said "rerun it"."""
    root, store, versions = host
    production = versions["production"]
    release.end_candidate(root, store, CANARY)
    served = ServedWithUsers(store, tmp_path / "events.jsonl", tmp_path, None)  # no users: the observation waits
    try:
        deploying = Deploying(root, store, served.url, tmp_path / "events.jsonl", versions["canary"], {})
        deploying.wait_until(lambda: any(line.startswith(SERVING_LINE) for line in deploying.lines), "canary served")
        assert store.variant_dir(CANARY).exists()
        deploying.process.send_signal(signum)
        status, errors = deploying.ended()
        terminated = signum == signal.SIGTERM
        assert_canary_gone(root, store, served.url, production)
        assert status == (143 if terminated else 130), (deploying.lines, errors)
        assert len(errors) == 1, errors
        said = "release: terminated (SIGTERM); " if terminated else "release: interrupted; "
        assert errors[0].startswith(f"{said}deploy withdrew version {versions['canary']} (files removed, out of "
                                    f"service after "), errors
        assert errors[0].endswith(f"; production version {production} unchanged"), errors
    finally:
        served.close()


@pytest.mark.slow
def test_a_second_signal_while_the_canary_is_withdrawn_ends_at_once_naming_the_command_that_finishes(host, tmp_path):
    root, store, versions = host
    production = versions["production"]
    release.end_candidate(root, store, CANARY)
    served = ServedWithUsers(store, tmp_path / "events.jsonl", tmp_path, None)
    hold = tmp_path / "withdrawing"
    try:
        deploying = Deploying(root, store, served.url, tmp_path / "events.jsonl", versions["canary"],
                              {release.HOLD_WITHDRAW: str(hold)})
        deploying.wait_until(lambda: any(line.startswith(SERVING_LINE) for line in deploying.lines), "canary served")
        deploying.process.send_signal(signal.SIGTERM)
        deploying.wait_until(Path(f"{hold}.held").exists, "withdraw held")
        deploying.process.send_signal(signal.SIGINT)
        status, errors = deploying.ended()
        assert status == 143, (deploying.lines, errors)  # the first signal's
        assert errors == [f"release: terminated (SIGTERM); deploy was withdrawing version {versions['canary']}: it "
                          "may still be installed or served as canary; production is untouched; `python -m "
                          "pipeline.release end --variant canary` finishes it"], errors
        assert store.variant_dir(CANARY).exists()  # held before anything was ended: left as the line says
        ended = subprocess.run([sys.executable, "-m", "pipeline.release", "end", "--variant", CANARY, "--root",
                                str(root), "--models", str(store.root)], cwd=REPO, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert ended.returncode == 0, ended.stderr
        release.wait_for_variant(served.url, CANARY, None, 30)
        assert_canary_gone(root, store, served.url, production)
    finally:
        served.close()


class Unforeseen(Exception):
    """An error no step of deploy names (a bug in a step, a library's own exception type)."""


def failing_once_served(failure: BaseException):
    """deploy's ``say`` (its output, a public parameter) that raises ``failure`` where the app serves the canary:
    the failure then comes out of deploy's own code with the candidate installed, served and aliased."""
    def say(line: str) -> None:
        if line.startswith("deploy: the app serves the canary"):
            raise failure
    return say


def interruption_a_library_wrapped() -> RuntimeError:
    """A SIGTERM a library turned into its own error (as Python 3.11 wraps one arriving in ``__set_name__``)."""
    from pipeline.stage import Terminated

    try:
        try:
            raise Terminated()
        except Terminated as terminated:
            raise RuntimeError("Error calling __set_name__ on '_Attr' instance 'x'") from terminated
    except RuntimeError as wrapped:
        return wrapped


def test_a_deploy_failing_otherwise_after_the_install_withdraws_its_canary_and_raises_the_error(host, tmp_path):
    """Found by review: deploy withdrew its candidate on the errors it names and on a bare Ctrl-C or SIGTERM only.
    An interruption a library wrapped in its own error, or any error no step expects, left the canary installed,
    aliased and answering its share of users. Both withdraw it now; the error is raised as it was (its message
    kept; a bug's gets a note saying what deploy did) and an interruption's line says it withdrew."""
    from pipeline.stage import OUTCOME, interruption_behind

    root, store, versions = host
    production = versions["production"]
    served = ServedWithUsers(store, tmp_path / "events.jsonl", tmp_path, None)  # no users: nothing to wait for
    try:
        for failure in (Unforeseen("a step's own bug"), interruption_a_library_wrapped()):
            release.end_candidate(root, store, CANARY)
            with pytest.raises(type(failure)) as raised:
                release.deploy(root, store, served.url, release.LoggedEvents(tmp_path / "events.jsonl"),
                               versions["canary"], share=0.5, observe_s=5, reload_timeout_s=30, smoke_requests=1,
                               say=failing_once_served(failure))
            assert raised.value is failure and str(raised.value) == str(failure)
            assert_canary_gone(root, store, served.url, production)
            withdrew = f"deploy withdrew version {versions['canary']} (files removed, out of service after "
            interruption = interruption_behind(raised.value)
            if interruption is None:
                assert [note.startswith(f"deploy: {withdrew}") for note in raised.value.__notes__] == [True]
            else:
                assert getattr(interruption, OUTCOME).startswith(withdrew), getattr(interruption, OUTCOME, None)
    finally:
        served.close()


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_a_promote_or_rollback_interrupted_between_its_install_and_the_alias_move_says_what_it_may_leave(
        host, tmp_path, command):
    """Found by a probe: `release promote --version 2` (or `rollback`) terminated once it had installed the version
    as this host's production, before the registry's alias moved (held at tracking.HOLD_ALIAS_MOVE), ended
    "release: terminated (SIGTERM); rerun it (an output is only ever replaced whole: none is half-written)" while
    the host served a production the registry did not name. The line now says so and what finishes or undoes it;
    the command it names finishes the move."""
    root, store, versions = host
    if command == "rollback":  # production 2, rolling back to 1
        assert release.promote(root, store) == versions["canary"]
    target = versions["production"] if command == "rollback" else versions["canary"]
    before = versions["canary"] if command == "rollback" else versions["production"]
    hold = tmp_path / "hold"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.release", command, "--root", str(root), "--models", str(store.root),
         *(["--version", target] if command == "promote" else [])],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), tracking.HOLD_ALIAS_MOVE: str(hold)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not Path(f"{hold}.held").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert "rerun it" not in line and "none is half-written" not in line, line
    assert line.startswith(f"release: terminated (SIGTERM); release {command} was "), line
    assert f"this host may serve version {target} as production while the registry names version {before}" in line
    assert f"`python -m pipeline.release promote --version {target}` finishes it" in line, line
    assert str(tracking.client(root).get_registered_model(NAME).aliases[PRODUCTION]) == before
    assert release.main(["promote", "--version", target, "--root", str(root), "--models", str(store.root)]) == 0
    assert str(tracking.client(root).get_registered_model(NAME).aliases[PRODUCTION]) == target
