"""Start the production server (gunicorn with app/gunicorn_conf.py, as `make serve`) in a child process.

One command line and one start-up check for `python -m app`, the tests that serve over real
sockets, and the serving benchmarks, so what they measure is what `make serve` runs.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping

from app.config import worker_count

CONFIG = Path(__file__).with_name("gunicorn_conf.py")
REPO = CONFIG.parents[1]
WSGI_APP = "app.wsgi:app"  # what gunicorn serves (benchmarks can serve another app under the same settings)
# Not inherited from the caller's environment: a debugger in production, or events sent to a Fluentd the caller
# happens to use. A server that should log to Fluentd is given FLUENTD_HOST in its settings.
NOT_INHERITED = ("FLASK_DEBUG", "FLUENTD_HOST")


class ServerNotReady(RuntimeError):
    """The server exited or did not answer /readyz in time (it is stopped); the message ends with its log's tail."""

    def __init__(self, message: str, pid: int):
        super().__init__(message)
        self.pid = pid  # gunicorn's master, stopped by the time this reaches the caller


def gunicorn_command(wsgi_app: str = WSGI_APP) -> list[str]:
    """The production server's command line (the gunicorn next to this Python)."""
    return [str(Path(sys.executable).with_name("gunicorn")), "--config", str(CONFIG), wsgi_app]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServedApp:
    process: subprocess.Popen
    port: int
    log_path: Path
    _log: IO[str]
    tls: ssl.SSLContext | None = None  # the client side of a server given --certfile/--keyfile: it speaks https

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """gunicorn's master; its children are the workers."""
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (workers flush their events), then SIGKILL after ``timeout_s``; the exit status."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(timeout=10)
        finally:
            self._log.close()


def start(settings: Mapping[str, str], log_path: Path, cores: set[int] | None = None,
          timeout_s: float = 120, wsgi_app: str = WSGI_APP, tls: ssl.SSLContext | None = None,
          port: int | None = None, open_files: int | None = None) -> ServedApp:
    """The server on a free loopback port (or ``port``: one of a range agreed on a shared machine), answering
    /readyz; ``settings`` are environment variables (SHELFCAST_*, PROMETHEUS_MULTIPROC_DIR, FLUENTD_*) over this
    process's environment; ``cores``: the cores
    it may use (Linux), as `taskset` would give them; ``wsgi_app``: another app under the same settings (it must
    answer GET /readyz); ``tls``: the client context that trusts its certificate, for a server given one
    (GUNICORN_CMD_ARGS="--certfile ... --keyfile ..."); ``open_files``: its open-file limit, soft and hard, as
    `ulimit -n` sets it. ServerNotReady if it exits first or time runs out;
    app.config.SettingsError, nothing started, for a SHELFCAST_WORKERS gunicorn_conf would refuse."""
    port = free_port() if port is None else port
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(settings)
    env["SHELFCAST_BIND"] = f"127.0.0.1:{port}"
    workers = worker_count(env, cores)  # as gunicorn_conf reads it; SettingsError (naming it) before a start
    log = open(log_path, "w", encoding="utf-8")
    try:
        process = subprocess.Popen(gunicorn_command(wsgi_app), cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=process_limits(cores, open_files))
    except BaseException:  # e.g. no gunicorn next to this Python: the error as it is, no open log left behind
        log.close()
        raise
    served = ServedApp(process, port, log_path, log, tls)
    try:
        wait_until_ready(served, timeout_s, workers)
    except BaseException:
        served.stop(timeout_s=10)
        raise
    return served


def process_limits(cores: set[int] | None, open_files: int | None):
    """What the server's process is given before it runs: its cores, its open-file limit; None where neither."""
    if cores is None and open_files is None:
        return None

    def limit() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)
        if open_files is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    return limit


LISTEN, ESTABLISHED = "0A", "01"  # TCP states as /proc/net/tcp writes them


def socket_inodes(port: int, state: str) -> set[str] | None:
    """Inodes of the local sockets on ``port`` in TCP ``state`` (Linux: /proc/net/tcp*; None elsewhere): how many
    workers listen (each opens its socket once its app has loaded, app/gunicorn_conf.py), which worker holds
    which client connection (benchmarks/app_load.py)."""
    try:
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if Path(table).exists():
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                        found.add(fields[9])
        return found
    except (OSError, IndexError, ValueError):
        return None


def listening_sockets(port: int) -> int | None:
    inodes = socket_inodes(port, LISTEN)
    return None if inodes is None else len(inodes)


def wait_until_ready(served: ServedApp, timeout_s: float, workers: int = 1) -> None:
    """Until /readyz answers 200 and every worker listens (a client connecting earlier would land on the first
    worker only: S1's keep-alive connections would all stay there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if served.process.poll() is not None:
            raise ServerNotReady(f"gunicorn exited ({served.process.returncode}) before it was ready; "
                                 f"{served.log_path}:\n{served.log_tail()}", served.pid)
        try:
            with urllib.request.urlopen(f"{served.url}/readyz", timeout=2, context=served.tls) as response:
                listening = listening_sockets(served.port)
                if response.status == 200 and (listening is None or listening >= workers):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServerNotReady(f"gunicorn did not answer /readyz within {timeout_s:g} s; "
                                 f"{served.log_path}:\n{served.log_tail()}", served.pid)
        time.sleep(0.2)
