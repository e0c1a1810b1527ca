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
def mlflow_server(backend_uri: str, *extra: str, env: dict[str, str] | None = None):
    """`mlflow server` over ``backend_uri`` in its own process group: (address, its process), killed at the end.
    ``extra``: more of its options (``--app-name basic-auth``); ``env``: more of its environment."""
    from app.launch import free_port

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                               backend_uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, **(env or {})})
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


ADMIN = ("admin", "admin-pw-for-tests")


@contextlib.contextmanager
def basic_auth_mlflow_server(home: Path, users: dict[str, str]):
    """A real `mlflow server --app-name basic-auth` (MLflow's own authentication, as a team runs it) serving its
    artifacts, its stores under ``home``, with ``users`` (name: password) created by its admin (``ADMIN``), who are
    READ on everything until granted more. Yields (address, its process). Needs Flask-WTF (mlflow[auth]; the
    project's test extra pins it)."""
    import base64
    import json

    home.mkdir(parents=True, exist_ok=True)
    config = home / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{(home / 'basic_auth.db').as_posix()}\n"
                      f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
                      encoding="utf-8")
    with mlflow_server(f"sqlite:///{(home / 'mlflow.db').as_posix()}", "--app-name", "basic-auth",
                       "--serve-artifacts", "--artifacts-destination", (home / "artifacts").as_posix(),
                       env={"MLFLOW_AUTH_CONFIG_PATH": str(config),
                            "MLFLOW_FLASK_SERVER_SECRET_KEY": "tests-only"}) as (address, server):
        login = base64.b64encode(":".join(ADMIN).encode()).decode()
        for name, password in users.items():
            request = urllib.request.Request(f"{address}/api/2.0/mlflow/users/create", method="POST",
                                             data=json.dumps({"username": name, "password": password}).encode(),
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Basic {login}"})
            urllib.request.urlopen(request, timeout=30).close()
        yield address, server
