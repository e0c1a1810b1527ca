"""The seams of a team's CI runner the test suite meets before any test of Shelfcast's own runs."""

import contextlib
import http.server
import socket
import threading
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
