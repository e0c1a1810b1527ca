"""Every form of bind address gunicorn's --bind reads, given through SHELFCAST_BIND or GUNICORN_CMD_ARGS, to a real
gunicorn with 2 workers: served at start and after a SIGHUP reload (the new workers open their sockets late,
app/gunicorn_conf.py post_worker_init), with no traceback and no worker crash loop."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from gunicorn.util import parse_address

from app import launch
from app.address import host_and_port, shown
from tests.app.make_serve import make_serve

TCP_FORMS = ["127.0.0.1:5005", "localhost", "tcp://127.0.0.1:5005", "tcp://localhost", "[::1]:5005", "[::1]",
             ":5005", "0.0.0.0:0"]


@pytest.mark.parametrize("address", TCP_FORMS)
def test_a_tcp_bind_address_is_read_as_gunicorn_reads_it(address):
    """One parser (app/address.py) for the master's check and a late worker's socket: it read `tcp://host:port`
    and a host alone (port 8000) otherwise than gunicorn, and the master refused them."""
    _, host, port = host_and_port(address)
    assert (host, port) == (parse_address(address)[0] or "0.0.0.0", parse_address(address)[1])


def test_a_bind_address_is_shown_with_the_port_it_serves_at():
    assert shown("localhost") == "http://localhost:8000"
    assert shown("tcp://[::1]:5005", "https") == "https://[::1]:5005"
    assert shown("unix:/run/shelfcast.sock") == "unix:/run/shelfcast.sock"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def ready(address: str, path: str = "/readyz") -> bool:
    """Whether the server at a bind address (``unix:PATH`` or a TCP one) answers GET ``path`` with 200."""
    if address.startswith("unix:"):
        connection = UnixConnection(address[len("unix:"):], timeout=2)
    else:
        _, host, port = host_and_port(address)
        connection = http.client.HTTPConnection(host, port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def wait_for(condition, process: subprocess.Popen, log: Path, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:g} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def serve_and_reload(app_bundles, tmp_path: Path, settings: dict[str, str], addresses: list[str],
                     pass_fds: tuple[int, ...] = ()) -> str:
    """Start gunicorn (2 workers) with ``settings``, wait until every address answers, SIGHUP it, wait until 2 new
    workers booted and every address answers, and a few seconds more (a crash loop shows as more boots); its log."""
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "SHELFCAST_WORKERS": "2", "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
           "SHELFCAST_PREDICTION_LOG": str(tmp_path / "p.jsonl"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"),
           "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c.ctl"), **settings}
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(launch.gunicorn_command(), cwd=launch.REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, pass_fds=pass_fds)
    try:
        def every_ready() -> bool:
            return all(ready(address) for address in addresses)

        wait_for(every_ready, process, log, 60, "answer at start")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: log.read_text().count("Booting worker") >= 4, process, log, 60, "new workers")
        wait_for(every_ready, process, log, 60, "answer after the reload")
        time.sleep(3)
        assert every_ready(), log.read_text()
        text = log.read_text()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert "Traceback" not in text and "Error" not in text, text
    assert text.count("Booting worker") == 4, text
    return text


@pytest.mark.slow
def test_a_unix_socket_given_through_gunicorn_cmd_args_serves_two_workers_across_a_reload(app_bundles, tmp_path):
    """SHELFCAST_BIND (TCP) made reuse_port on, GUNICORN_CMD_ARGS's --bind unix:PATH made gunicorn serve there: each
    worker bound the path anew, and after a SIGHUP each new worker raised ValueError in listen_beside, over and
    over."""
    path = tmp_path / "s.sock"
    serve_and_reload(app_bundles, tmp_path, {"GUNICORN_CMD_ARGS": f"--bind unix:{path}"}, [f"unix:{path}"])


@pytest.mark.slow
def test_an_inherited_socket_given_through_gunicorn_cmd_args_serves_two_workers_across_a_reload(app_bundles, tmp_path):
    """--bind fd://N (a socket the caller listens on, as a supervisor hands it): after a SIGHUP each new worker
    raised ValueError in listen_beside, as for unix:PATH."""
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen()
        inherited.set_inheritable(True)
        port = inherited.getsockname()[1]
        serve_and_reload(app_bundles, tmp_path, {"GUNICORN_CMD_ARGS": f"--bind fd://{inherited.fileno()}"},
                         [f"127.0.0.1:{port}"], pass_fds=(inherited.fileno(),))


@pytest.mark.slow
def test_tcp_scheme_ipv6_and_unix_binds_at_once_serve_across_a_reload(app_bundles, tmp_path):
    """Several --bind at once, a tcp:// one among them (refused at start by the master's check before)."""
    ports = [launch.free_port(), launch.free_port()]
    binds = [f"tcp://127.0.0.1:{ports[0]}", f"[::1]:{ports[1]}", f"unix:{tmp_path / 's.sock'}"]
    serve_and_reload(app_bundles, tmp_path, {"GUNICORN_CMD_ARGS": " ".join(f"--bind {b}" for b in binds)}, binds)


@pytest.mark.slow
def test_a_tcp_scheme_in_shelfcast_bind_gives_each_worker_its_socket_across_a_reload(app_bundles, tmp_path):
    """SHELFCAST_BIND=tcp://host:port: a socket per worker (SO_REUSEPORT), the new ones opened late after a SIGHUP."""
    port = launch.free_port()
    text = serve_and_reload(app_bundles, tmp_path, {"SHELFCAST_BIND": f"tcp://127.0.0.1:{port}"},
                            [f"127.0.0.1:{port}"])
    assert f"Shelfcast serves at http://127.0.0.1:{port} (2 workers)" in text
    assert launch.listening_sockets(port) in (None, 0)  # stopped; while it ran, each worker listened:
    assert "Listening at:  (" in text, text  # gunicorn's own line is empty: no shared socket, one per worker


def test_an_ipv6_host_out_of_brackets_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "SHELFCAST_BIND": "localhost:5005:x", "SHELFCAST_WORKERS": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"), "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c.ctl")}
    done = subprocess.run(launch.gunicorn_command(), cwd=launch.REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "rror" in line or "Traceback" in line]
    assert done.returncode != 0
    assert errors == ["Error: SHELFCAST_BIND=localhost:5005:x: an IPv6 host must be in brackets; write HOST:PORT, "
                      "e.g. SHELFCAST_BIND=[::1]:5005"]


@pytest.mark.parametrize("bind", ["127.0.0.1:99999", ":abc"])
def test_make_serve_refuses_a_port_that_is_none_naming_the_setting_and_the_fix(tmp_path, bind):
    """Before, `:abc` was gunicorn's own "Error: 'abc' is not a valid port number.", naming neither the setting nor
    the address, and 99999 the master's check naming the address but not SHELFCAST_BIND."""
    status, lines = make_serve(tmp_path, {"SHELFCAST_BIND": bind})
    port = bind.rpartition(":")[2]
    assert status != 0 and lines == [f"Error: SHELFCAST_BIND={bind}: '{port}' is no port number (0 to 65535); write "
                                     "HOST:PORT, e.g. SHELFCAST_BIND=127.0.0.1:5005"], lines


def test_make_serve_refuses_a_port_in_use_naming_the_setting_and_the_fix(tmp_path):
    """Before: "Error: cannot serve at 127.0.0.1:PORT: Address already in use (is another server running there?)",
    which named no setting to change."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        status, lines = make_serve(tmp_path, {"SHELFCAST_BIND": f"127.0.0.1:{port}"})
    assert status != 0 and lines == [f"Error: SHELFCAST_BIND=127.0.0.1:{port}: cannot serve there: Address already in "
                                     "use (is another server running there? stop it, or serve at a free port, e.g. "
                                     f"SHELFCAST_BIND=127.0.0.1:{port + 1})"], lines


def start_until_it_serves(tmp_path: Path, settings: dict[str, str], arguments: list[str], port: int) -> str:
    """gunicorn (`make serve`'s command line and ``arguments``) with ``settings``, one worker and no model, until its
    worker answers GET /healthz at ``port``, then stopped: its log."""
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(tmp_path / "no-model"),
           "SHELFCAST_PREDICTION_LOG": str(tmp_path / "p.jsonl"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"),
           "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c.ctl"), **settings}
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(launch.gunicorn_command() + arguments, cwd=launch.REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ready(f"127.0.0.1:{port}", "/healthz"), process, log, 60, f"an answer at port {port}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    return log.read_text()


@pytest.mark.parametrize("given", ["-b", "GUNICORN_CMD_ARGS"])
def test_a_bad_shelfcast_bind_that_bind_overrides_does_not_stop_the_server(tmp_path, given):
    """gunicorn reads this file, then GUNICORN_CMD_ARGS, then its command line, each replacing the one before: the
    address used is --bind's. Before, SHELFCAST_BIND was checked as the file was read, whatever replaced it, and
    `SHELFCAST_BIND=:abc gunicorn ... --bind 127.0.0.1:PORT` stopped with `Error: SHELFCAST_BIND=:abc: ...`."""
    port = launch.free_port()
    settings, arguments = {"SHELFCAST_BIND": ":abc"}, [given, f"127.0.0.1:{port}"]
    if given == "GUNICORN_CMD_ARGS":
        settings["GUNICORN_CMD_ARGS"], arguments = f"--bind 127.0.0.1:{port}", []
    text = start_until_it_serves(tmp_path, settings, arguments, port)
    assert "SHELFCAST_BIND" not in text and "Traceback" not in text, text


def test_a_bind_gunicorn_cannot_parse_on_the_command_line_is_refused_in_one_line_naming_it(tmp_path):
    """`--bind :abc` was gunicorn's own "Error: 'abc' is not a valid port number.", naming neither the option nor the
    fix: the addresses used are checked as SHELFCAST_BIND is."""
    env = {**os.environ, "SHELFCAST_BIND": f"127.0.0.1:{launch.free_port()}", "SHELFCAST_WORKERS": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"), "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c.ctl")}
    done = subprocess.run(launch.gunicorn_command() + ["--bind", ":abc"], cwd=launch.REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and "[INFO]" not in line]
    assert done.returncode != 0 and lines == [
        "Error: --bind :abc: 'abc' is no port number (0 to 65535); write HOST:PORT, e.g. --bind 127.0.0.1:5005"], lines
