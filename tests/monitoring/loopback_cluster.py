"""A loopback HTTP server that answers JSON as a cluster would, for the client behaviours osmem-server (the tests'
OpenSearch-API server) cannot show: basic auth enforced, the tasks API,
sequence numbers per shard. What it answers is the caller's rule."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator


def request_body(request: BaseHTTPRequestHandler) -> dict:
    """The request's JSON body ({} without one)."""
    length = int(request.headers.get("Content-Length") or 0)
    return json.loads(request.rfile.read(length)) if length else {}


Rule = Callable[[BaseHTTPRequestHandler], tuple[int, dict]]  # the request -> (status, JSON body)


@contextlib.contextmanager
def json_cluster(rule: Rule) -> Iterator[str]:
    """The server's URL while the block runs; every request (GET, POST, PUT) is answered by ``rule``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = rule(self)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_PUT = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
