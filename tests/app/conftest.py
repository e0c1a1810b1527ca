"""Fixtures for the app tests: a real Fluentd forward-protocol receiver, and peers that fail.

The receiver is @fluent-org/logger's FluentServer (tests/fluentd_receiver, installed by
scripts/install_test_services.sh), run with Node.js on 127.0.0.1 only. Tests that need it
skip when Node.js is absent.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import prometheus_client  # noqa: F401 - see below
import pytest

from tests.fluentd_receiver.process import INSTALLED as RECEIVER_INSTALLED, RECEIVER_DIR, RECEIVER_SCRIPT
from tests.fluentd_receiver.process import FluentdReceiver  # noqa: F401 - test_events_fluentd imports it from here
from tests.node_packages import require_installed

# prometheus_client picks its value class when first imported, for the process's life: multiprocess files when
# PROMETHEUS_MULTIPROC_DIR is set then. A test that runs gunicorn_conf's on_starting in-process sets it to a directory
# of its own (removed after it); imported first there, every later app in that test process counted into files in a
# deleted directory, and its error pages failed on it (a 500 'internal_server_error' instead of 'internal_error').



class Counts(collections.Counter):
    """A Spool's ``count`` callback that keeps what it was told: ``counts["dropped"]``."""

    def __call__(self, name: str, count: int) -> None:
        self[name] += count


@contextlib.contextmanager
def refusing_changes(folder: Path):
    """``folder`` takes no new file and no deletion meanwhile (read-only, or immutable for root): a folder that
    turns unwritable while the app runs."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here, and root ignores a folder's permission bits")
    else:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def receiver_command() -> list[str]:
    """`node receiver.js`, or a skip (no Node.js) / failure (not installed) that says why."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found on PATH: the Fluentd forward-protocol receiver tests need Node.js >= 18")
    require_installed(RECEIVER_INSTALLED, RECEIVER_DIR, "@fluent-org/logger")
    return [node, str(RECEIVER_SCRIPT)]


@pytest.fixture
def fluentd_receiver(tmp_path: Path) -> Iterator[FluentdReceiver]:
    receiver = FluentdReceiver(receiver_command(), tmp_path / "received.jsonl")
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.kill()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: Fluentd is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SilentPeer:
    """A TCP server that accepts and reads everything but never answers: a hung Fluentd."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.bytes_received = 0
        self._connections: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._server.settimeout(0.1)
        while not self._stopped.is_set():
            try:
                connection, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self._connections.append(connection)
            threading.Thread(target=self._swallow, args=(connection,), daemon=True).start()

    def _swallow(self, connection: socket.socket) -> None:
        with connection:
            while True:
                try:
                    data = connection.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.bytes_received += len(data)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._server.close()
        for connection in self._connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def silent_peer() -> Iterator[SilentPeer]:
    peer = SilentPeer()
    try:
        yield peer
    finally:
        peer.close()


# --- the web app (app/): a real tiny model bundle, the app serving it, its event log ------------

import importlib.util as _importlib_util  # noqa: E402 - kept with the app fixtures that use it


def _tiny_bundle_module():
    """tests/app/tiny_bundle.py by path (pytest runs with --import-mode=importlib: no package imports)."""
    path = Path(__file__).with_name("tiny_bundle.py")
    spec = _importlib_util.spec_from_file_location("shelfcast_tests_tiny_bundle", path)
    module = _importlib_util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def app_bundles(tmp_path_factory) -> tuple[Path, Path]:
    """Two real bundles trained by the real pipeline at a tiny scale (seeds 3 and 4), once per session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return _tiny_bundle_module().tiny_bundles(tmp_path_factory.getbasetemp() / "app-bundles")


@pytest.fixture
def production_dir(app_bundles, tmp_path) -> Path:
    """models/production/ of a private project, installed the way promote installs it."""
    from pipeline.bundle import copy_bundle

    target = tmp_path / "models" / "production"
    copy_bundle(app_bundles[0], target)
    return target


class AppUnderTest:
    """A created app with its client, settings and a JSON-lines event log of its own."""

    def __init__(self, app, events_path: Path):
        self.app = app
        self.client = app.test_client()
        self.events_path = events_path

    @property
    def state(self):
        return self.app.extensions["shelfcast"]

    @property
    def model(self):
        return self.state.predictor.model

    def events(self) -> list[dict[str, Any]]:
        """Every prediction event logged so far (closes the sink so all are written)."""
        self.state.sink.close()
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def make_app(tmp_path):
    """Build apps for a model directory with chosen settings; closes their sinks afterwards."""
    from app import create_app
    from app.config import AppSettings
    from app.events import PredictionEventSink

    made: list[AppUnderTest] = []

    def build(model_dir: Path, **settings: Any) -> AppUnderTest:
        events_path = tmp_path / f"events-{len(made)}" / "predictions.jsonl"
        sink = PredictionEventSink.from_environment({}, log_path=events_path,
                                                    spool_root=events_path.parent / "spool")
        settings.setdefault("reload_interval_s", 3600.0)
        made.append(AppUnderTest(create_app(AppSettings(model_dir=model_dir, **settings), sink=sink), events_path))
        return made[-1]

    yield build
    for under_test in made:
        under_test.state.sink.close()


@pytest.fixture
def served(make_app, production_dir) -> AppUnderTest:
    """The app serving the tiny production bundle (no background reloads)."""
    return make_app(production_dir)
