"""The commands that are not stages (release, fetch-model, dvc-push) end on Ctrl-C and SIGTERM as a stage does.

Each runs for real against a server that accepts its connection and never answers (a hung MLflow tracking server,
a hung DVC HTTP remote) and is sent the signal while it waits there. Before, they only handed the signals back to
Python's defaults: Ctrl-C was a KeyboardInterrupt traceback (exit -2), SIGTERM an end with no word (-15), and
`dvc push` was left running, orphaned, holding DVC's lock (the next push failed "Unable to acquire lock")."""

import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINE = "{}: {}; rerun it (an output is only ever replaced whole: none is half-written)"
WORDS = {"SIGINT": ("interrupted", 130), "SIGTERM": ("terminated (SIGTERM)", 143)}


class SilentServer:
    """Accepts every connection on 127.0.0.1 and never answers; ``asked`` is set once a request's bytes arrive."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.asked = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.held.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection):
        try:
            if connection.recv(65536):
                self.asked.set()
        except OSError:
            pass

    def close(self):
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def dvc_project_pushing_to(tmp_path: Path, url: str) -> Path:
    """A DVC project (no git) with one tracked folder, its default remote the HTTP ``url``."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    project = tmp_path / "project"
    (project / "sales").mkdir(parents=True)
    (project / "sales" / "day1.csv").write_text("store,units\n1,3\n", encoding="utf-8")
    for command in ([dvc, "init", "-q", "--no-scm"], [dvc, "add", "-q", "sales"],
                    [dvc, "remote", "add", "-d", "shared", f"{url}/store"]):
        subprocess.run(command, cwd=project, check=True, capture_output=True, timeout=120)
    return project


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def still_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shown_on(terminal: int) -> str:
    """What a pseudo-terminal whose other end is closed was shown."""
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: all read
            break
        if not chunk:
            break
        shown += chunk
    return shown.decode("utf-8", "replace")


# (the command's module and arguments, the name its lines use, the signal, stderr on a terminal). One case per
# command in make test (6-18 s each on 2 busy cores: a DVC project's setup, MLflow's import); the rest are slow.
CASES = {
    "release status, Ctrl-C": ("release status", "release", "SIGINT", False),
    "fetch-model, SIGTERM": ("registry_fetch", "fetch-model", "SIGTERM", False),
    "dvc-push on a terminal, SIGTERM": ("dvc_remote push", "dvc-push", "SIGTERM", True),
}
SLOW_CASES = {
    "release status, SIGTERM": ("release status", "release", "SIGTERM", False),
    "dvc-push in CI, SIGTERM": ("dvc_remote push", "dvc-push", "SIGTERM", False),
    "dvc-push on a terminal, Ctrl-C": ("dvc_remote push", "dvc-push", "SIGINT", True),
}


@pytest.mark.parametrize("case", [*sorted(CASES), *(pytest.param(case, marks=pytest.mark.slow)
                                                     for case in sorted(SLOW_CASES))])
def test_a_signal_while_the_command_waits_on_its_server_is_the_one_line_and_status(case, silent_server, tmp_path):
    module_args, name, signal_name, on_terminal = {**CASES, **SLOW_CASES}[case]
    module, *args = module_args.split()
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=silent_server.url)
    if module == "dvc_remote":
        cwd = dvc_project_pushing_to(tmp_path, silent_server.url)
    else:
        cwd = tmp_path
        shutil.copy(REPO / "params.yaml", cwd / "params.yaml")
    terminal, their_end = pty.openpty() if on_terminal else (None, subprocess.PIPE)
    process = subprocess.Popen([sys.executable, "-m", f"pipeline.{module}", *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=their_end, text=True)
    try:
        if on_terminal:
            os.close(their_end)
        assert silent_server.asked.wait(120), f"{module_args} never asked its server: {process.communicate()}"
        time.sleep(0.2)  # its request is sent: it waits for the answer
        helpers = children_of(process.pid)
        process.send_signal(getattr(signal, signal_name))
        out, err = process.communicate(timeout=60)
        if on_terminal:
            err = shown_on(terminal)
    finally:
        if process.poll() is None:
            process.kill()
        if terminal is not None:
            os.close(terminal)
    word, status = WORDS[signal_name]
    told = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(f"{name}:") or "Trace" in line]
    assert (process.returncode, out, told) == (status, "", [LINE.format(name, word)]), err
    assert not [pid for pid in helpers if still_running(pid)], f"left running: {helpers}"  # dvc push ended too


def test_ctrl_c_while_fetch_model_still_imports_names_it_as_its_other_lines_do(silent_server, tmp_path):
    """pipeline/__init__.py's start guard named the command after its module: Ctrl-C in fetch-model's first second
    said ``registry_fetch: interrupted``, a moment later ``fetch-model: interrupted``, its errors ``fetch-model:``."""
    from .test_stage import _wait_until_numpy_loads

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    process = subprocess.Popen([sys.executable, "-m", "pipeline.registry_fetch"], cwd=tmp_path, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=silent_server.url),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_until_numpy_loads(process)  # its imports run (MLflow's still to come): the start guard's moment
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err) == (130, "", LINE.format("fetch-model", "interrupted") + "\n")
