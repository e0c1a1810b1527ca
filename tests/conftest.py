"""Loaded before the other conftests: this test process runs the pipeline's OpenBLAS kernels
(pipeline/blas.py), as the stage processes the tests start do, so what each makes agrees."""

import os
from pathlib import Path

import pipeline.blas  # noqa: F401 - first, before anything loads numpy

# MLflow 3 reports usage to its servers and writes ~/.config/mlflow from every process: the tests (and the
# stages, servers and clones they start, which inherit this) stay on 127.0.0.1 and out of the user's home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# DVC does the same unless a repository's config says `analytics = false` (ours does; the repositories tests `dvc
# init` do not): each dvc command there left a report in the temp folder for a daemon that never reached its server.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# The servers the tests start listen on loopback, and a runner behind a proxy (HTTP_PROXY / http_proxy set, as a
# team's CI often is) sent their requests through it: urllib and requests bypass it only for the hosts NO_PROXY
# names, so every test of a loopback server failed (tests/pipeline/test_download.py: "failed after 3 attempt(s):
# Connection refused" with a proxy on a dead port). Both spellings get the runner's entries of either one and loopback
# (urllib and requests read no_proxy before NO_PROXY: loopback added to each apart left a runner's NO_PROXY=mirror.corp
# hidden behind no_proxy=127.0.0.1,...), for this process and the stages, servers and clients it starts; npm still
# reaches its registry by the proxy (monitoring/delivery.mk does the same for make's targets).
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_bypassed: list[str] = []
for _host in [*os.environ.get("NO_PROXY", "").split(","), *os.environ.get("no_proxy", "").split(","), *LOOPBACK]:
    if _host.strip() and _host.strip() not in _bypassed:
        _bypassed.append(_host.strip())
os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(_bypassed)


def honouring_file_modes(command: list[str]) -> list[str]:
    """``command`` as a process that file modes stop: as is for a plain user; for root (CI), under setpriv
    without the capabilities that let root read a mode-000 file (a skip when setpriv is missing)."""
    import os
    import shutil

    import pytest

    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("root reads a file of mode 000, and setpriv (util-linux) is not here to drop that")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *command]


def small_disk(folder, size: str, inodes: int | None = None):
    """A context manager: a tmpfs of ``size`` (mount's size=, e.g. 256k) and, if given, room for ``inodes`` files and
    folders (its root one of them) mounted at ``folder`` (made if missing) and unmounted after, for tests that need a
    disk that fills up for real; a skip where mounting needs root."""
    import contextlib
    import subprocess
    from pathlib import Path

    import pytest

    @contextlib.contextmanager
    def mounted():
        where = Path(folder)
        where.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + ("" if inodes is None else f",nr_inodes={inodes}")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)

    return mounted()


def without_waiting(call, fifo, seconds=30):
    """``call()``'s result or exception; AssertionError if it is still running after ``seconds`` (a read waiting on
    the named pipe ``fifo`` for a writer: it is then released by opening the pipe for writing, and closing it)."""
    import os
    import threading

    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            outcome["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the waiting reader gets end-of-file
        worker.join(seconds)
        raise AssertionError(f"still waiting on the named pipe {fifo} after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def project_with_make(root: Path, tools: dict[str, str] | None = None) -> Path:
    """A folder with the repository's Makefiles and a .venv whose python is this one (the install step is done),
    and a script in .venv/bin for each of ``tools`` (name: its sh body), standing in for that command."""
    import sys

    repo = Path(__file__).resolve().parents[1]
    (root / "monitoring").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "monitoring/delivery.mk"):
        (root / name).write_bytes((repo / name).read_bytes())
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool, body in {"python": f'exec "{sys.executable}" "$@"', **(tools or {})}.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        (bin_dir / tool).chmod(0o755)
    (root / ".venv" / ".installed").touch()
    return root


def builtin_drift_thresholds(folder: Path) -> str:
    """A ``--params`` file for ``monitoring.drift`` with no ``drift:`` section: the built-in thresholds, whatever the
    repository's params.yaml says (a file that does not exist is an error there)."""
    path = Path(folder) / "builtin-thresholds.yaml"
    path.write_text("")
    return str(path)
