"""The seams of a team's CI runner the test suite meets before any test of Shelfcast's own runs."""

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
import urllib.request

import pytest


@pytest.mark.parametrize("variable", ["http_proxy", "HTTP_PROXY"])
def test_a_loopback_server_is_reached_directly_where_the_runner_sets_a_proxy(monkeypatch, variable):
    """A runner behind a proxy, with no NO_PROXY: requests to the loopback servers the tests start went to the
    proxy (here a port nothing listens on) and failed: tests/conftest.py adds loopback to NO_PROXY."""
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with socket_nobody_listens_on() as dead:
        monkeypatch.setenv(variable, f"http://127.0.0.1:{dead}")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answering)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            for host in ("127.0.0.1", "localhost"):
                with urllib.request.urlopen(f"http://{host}:{server.server_port}/", timeout=10) as answer:
                    assert answer.read() == b"direct"
        finally:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_the_hosts_a_runner_sends_past_its_proxy_still_go_past_it_with_loopback_added(variable):
    """A runner that names its own mirror in one spelling only (NO_PROXY=mirror.corp.example): loopback was added to
    each spelling apart, so no_proxy held loopback alone, and urllib, requests and pip, which read no_proxy first,
    sent the mirror's requests to the proxy."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    env.update({"http_proxy": "http://127.0.0.1:9", variable: "mirror.corp.example"})
    probe = ("import tests.conftest, urllib.request as u; "
             "print([u.proxy_bypass_environment(h) for h in ('mirror.corp.example', '127.0.0.1', 'pypi.org')])")
    answer = subprocess.run([sys.executable, "-c", probe], env=env, cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=60, check=True)
    assert answer.stdout.split() == ["[True,", "True,", "False]"], answer


class Answering(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"direct")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def socket_nobody_listens_on():
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        yield closed.getsockname()[1]
