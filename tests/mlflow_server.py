"""A real `mlflow server` on 127.0.0.1 for the tests that need one (tracking, registry, release commands)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


@contextlib.contextmanager
def mlflow_server(backend_uri: str):
    """`mlflow server` over ``backend_uri`` in its own process group: (address, its process), killed at the end."""
    from app.launch import free_port

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                               backend_uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", server
    finally:
        gone(server)


def gone(server: subprocess.Popen) -> None:
    """The server and its workers (uvicorn, job runners: its own process group) killed at once, as a crash would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(30)


@contextlib.contextmanager
def unanswering_server():
    """The address of a server that takes connections and never answers (a hung tracking server, or a proxy in front
    of one that died): a socket that listens and never accepts, so the kernel completes every TCP handshake."""
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
