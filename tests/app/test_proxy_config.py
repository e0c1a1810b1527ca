"""deploy/nginx.conf (the buffering proxy docker-compose puts in front of the app): valid nginx configuration,
and what it adds in front of gunicorn (pipelined requests answered at once).

Checked with the real nginx when it is installed (apt-get install nginx-light: `.ci/run` does, through
scripts/install_nginx.sh); skipped otherwise. The upstream `app:5005` is a compose service name, so the
tests point it at 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from app import launch

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin"))
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return nginx


def proxy_config(tmp_path: Path, upstream_port: int, listen_port: int, edit=lambda text: text) -> Path:
    """deploy/nginx.conf with the app at 127.0.0.1:``upstream_port``, listening on ``listen_port``, in the
    foreground and writing only under ``tmp_path``; ``edit``: a change of the config's text first."""
    text = edit(CONF.read_text(encoding="utf-8"))
    assert "server app:5005;" in text and "client_max_body_size 1m;" in text and "proxy_request_buffering on;" in text
    (tmp_path / "site.conf").write_text(text.replace("server app:5005;", f"server 127.0.0.1:{upstream_port};")
                                        .replace("listen 5005;", f"listen 127.0.0.1:{listen_port};"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\ndaemon off;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
        f"include {tmp_path}/site.conf; }}\n")
    return tmp_path / "nginx.conf"


def test_the_proxy_configuration_passes_nginx_t(tmp_path: Path) -> None:
    config = proxy_config(tmp_path, 5005, 15005)  # -t binds nothing
    checked = subprocess.run([nginx_binary(), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_the_proxy_drops_idle_upstream_connections_before_gunicorn_does() -> None:
    """nginx's upstream keep-alive (default 60 s) outlived gunicorn's (5 s): a request nginx writes into an idle
    connection just as gunicorn closes it gets a 502, as nginx does not retry a POST."""
    import re

    upstream = re.search(r"upstream shelfcast_app \{(.*?)\}", CONF.read_text(encoding="utf-8"), re.S).group(1)
    timeout = re.search(r"^\s*keepalive_timeout (\d+)s;", upstream, re.M)
    assert timeout, "the upstream block sets no keepalive_timeout: nginx keeps idle connections 60 s"
    # read, not imported: importing gunicorn's config sets PROMETHEUS_MULTIPROC_DIR for the whole test process
    gunicorn_conf = (CONF.parents[1] / "app" / "gunicorn_conf.py").read_text(encoding="utf-8")
    assert int(timeout.group(1)) < int(re.search(r"^keepalive = (\d+)$", gunicorn_conf, re.M).group(1))


def pipelined_answers(port: int, requests: int, wait_s: float) -> tuple[int, float]:
    """Send ``requests`` GET /healthz in one write on one connection: how many 200s came back within
    ``wait_s``, and when the last of them did."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as client:
        started = time.monotonic()
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * requests)
        received, last = b"", 0.0
        client.settimeout(0.2)
        while received.count(b"HTTP/1.1 200") < requests and time.monotonic() - started < wait_s:
            try:
                chunk = client.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            received, last = received + chunk, time.monotonic() - started
    return received.count(b"HTTP/1.1 200"), last


@pytest.mark.slow  # ~10 s: a gunicorn server, and nginx when installed
def test_pipelined_requests_are_answered_at_once_by_gunicorn_and_behind_the_proxy(app_bundles, tmp_path):
    """README "Slow clients, limits and headers": gunicorn's gthread worker answered the first of pipelined
    requests and left the rest until the client sent more (or keep-alive closed); app/gunicorn_worker.py hands
    them on, and compose's nginx does not pipeline to it."""
    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(tmp_path / "p.jsonl")}, tmp_path / "gunicorn.log")
    try:
        answered, last = pipelined_answers(served.port, 3, wait_s=4.0)
        assert answered == 3 and last < 1.0, (answered, last)
        nginx = nginx_binary()
        listen = launch.free_port()
        proxy = subprocess.Popen([nginx, "-c", str(proxy_config(tmp_path, served.port, listen))],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                    break
                except OSError:
                    assert proxy.poll() is None and time.monotonic() < deadline, \
                        (tmp_path / "error.log").read_text(errors="replace")
                    time.sleep(0.05)
            answered, last = pipelined_answers(listen, 3, wait_s=4.0)
            assert answered == 3 and last < 1.0, (answered, last)
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)
    finally:
        served.stop()


class Upstream:
    """A stand-in for gunicorn on 127.0.0.1: /app answers as the app does (its own security headers, here the drift
    report's policy), /app-502 too but with a 502 of its own, any other path as gunicorn's own error pages do (a 431:
    no such headers)."""

    APP_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                   "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}

    def __init__(self) -> None:
        import http.server
        import threading

        headers = self.APP_HEADERS
        self.received: list[list[tuple[str, str]]] = []  # each request's header fields as the app got them
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                received.append([(name.lower(), value) for name, value in self.headers.items()])
                own = self.path in ("/app", "/app-502")
                self.send_response(502 if self.path == "/app-502" else 200 if own else 431)
                for name, value in (headers.items() if own else ()):
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                self.close_connection = True  # none kept for nginx to reuse: once stopped, the app is down

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_proxy(tmp_path: Path, upstream_port: int, edit=lambda text: text) -> tuple[subprocess.Popen, int]:
    listen = launch.free_port()
    proxy = subprocess.Popen([nginx_binary(), "-c", str(proxy_config(tmp_path, upstream_port, listen, edit))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
            return proxy, listen
        except OSError:
            assert proxy.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "error.log").read_text(errors="replace")
            time.sleep(0.05)


def answer_headers(port: int, request: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The status line and the header fields (in order, repeats kept) of the answer to ``request``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = client.recv(65536)
            if not chunk:
                break
            reply += chunk
    lines = reply.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return lines[0], [(name.strip().lower(), value.strip()) for name, _, value in
                      (line.partition(":") for line in lines[1:])]


def test_every_answer_through_the_proxy_carries_the_security_headers_once(tmp_path):
    """Found by a probe: the app's security headers were on the app's own answers only, so through compose's nginx
    its error pages (413 for a body over 1 MiB, 400, 414, 502 while the app is down, 504) and gunicorn's own (431
    for headers over its limits) had no Content-Security-Policy, X-Content-Type-Options nor X-Frame-Options. The
    proxy adds each one the upstream did not send; an answer that has its own (the drift report's policy) keeps
    it, not sent twice."""
    from app import SECURITY_HEADERS

    upstream = Upstream()
    proxy, port = start_proxy(tmp_path, upstream.port)
    try:
        cases = {
            "the app's own": b"GET /app HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "gunicorn's own 431": b"GET /gunicorn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "nginx's 413": b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
            "nginx's 413 for a chunked body": b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\n"
                                              b"Transfer-Encoding: chunked\r\n\r\n200000\r\n" + b" " * 65536,
            "nginx's 400": b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "nginx's 414": b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        }
        answers = {case: answer_headers(port, request) for case, request in cases.items()}
        upstream.stop()
        answers["nginx's 502 (the app is down)"] = answer_headers(
            port, b"GET /app HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    for case, (status, headers) in answers.items():
        names = [name for name, _ in headers]
        for name, value in SECURITY_HEADERS.items():
            assert names.count(name.lower()) == 1, (case, status, headers)
            if case == "the app's own":
                assert dict(headers)[name.lower()] == Upstream.APP_HEADERS[name]
            else:
                assert dict(headers)[name.lower()] == value, (case, status, name)
        assert dict(headers).get("server") == "nginx", (case, headers)  # never gunicorn's
    assert [answers[case][0].split()[1] for case in cases if case.startswith("nginx")] == \
        ["413", "413", "400", "414"] and answers["nginx's 502 (the app is down)"][0].split()[1] == "502"


def test_a_person_the_app_does_not_answer_gets_a_page_saying_what_to_do(tmp_path):
    """Found by a probe of what a failed request looks like: with the app down or restarting behind compose's nginx,
    a store manager sending the form got nginx's bare "502 Bad Gateway" page (no language, no words about what
    happened, nothing to click). The proxy's own 502 and 504 are now a page of Shelfcast's, with the status kept;
    an error the app itself answers passes through as it was."""
    import http.client

    from app import SECURITY_HEADERS

    def get(port: int, path: str) -> tuple[int, dict[str, str], str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
        finally:
            connection.close()

    upstream = Upstream()
    proxy, port = start_proxy(tmp_path, upstream.port)
    try:
        own_status, own_headers, own_body = get(port, "/app-502")
        upstream.stop()
        status, headers, body = get(port, "/?store=1&item=2&date=2017-08-16")
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    assert (own_status, own_body) == (502, "ok")  # the app's own error: not replaced
    assert status == 502 and headers["content-type"] == "text/html; charset=utf-8", (status, headers)
    assert body.startswith("<!doctype html>") and '<html lang="en">' in body, body
    assert "<h1>Shelfcast is not answering right now</h1>" in body and '<a href="/">Back to the form</a>' in body
    assert "answered 502 at 20" in body, body  # the status and the time, to quote
    for name, value in SECURITY_HEADERS.items():
        assert headers[name.lower()] == value, (name, headers)


def test_an_api_client_gets_the_apis_json_error_from_the_proxy_too(tmp_path):
    """Found by a probe: behind compose's nginx, an API client got nginx's HTML for a body over 1 MiB (413) and for
    the app down (502), where the OpenAPI document promises its JSON Error body (code, message, errors, request_id)
    and the app itself answers one. The proxy's own errors on the app's JSON paths are now that body, with codes
    from the app's list (body_too_large; upstream_unavailable); a person at "/" keeps the page."""
    import http.client
    import json
    import re

    from app.errors import ERROR_CODES, JSON_PREFIXES
    from app.openapi import openapi_document

    mapped = re.search(r"map \$uri \$shelfcast_error_kind \{(.*?)\}", CONF.read_text(encoding="utf-8"), re.S).group(1)
    assert sorted(re.findall(r"~\^(\S+)\s+json;", mapped)) == sorted(JSON_PREFIXES), mapped

    def send(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str, str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type"), response.read().decode()
        finally:
            connection.close()

    upstream = Upstream()
    proxy, port = start_proxy(tmp_path, upstream.port)
    try:
        too_large = send(port, "POST", "/api/v1/predict", b" " * (1024 * 1024 + 1))
        form_too_large = send(port, "POST", "/", b" " * (1024 * 1024 + 1))
        upstream.stop()
        down = {path: send(port, "GET", path) for path in ("/api/v1/model", "/healthz", "/readyz", "/")}
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    required = openapi_document(200, 1 << 20)["components"]["schemas"]["Error"]["required"]
    for (status, content_type, body), code in [(too_large, "body_too_large"),
                                              *((down[path], "upstream_unavailable") for path in JSON_PREFIXES
                                                if path != "/api/"),
                                              (down["/api/v1/model"], "upstream_unavailable")]:
        assert content_type == "application/json", (status, content_type, body)
        answer = json.loads(body)
        assert answer["code"] == code and code in ERROR_CODES and set(required) <= set(answer), answer
        assert status == (413 if code == "body_too_large" else 502), (status, answer)
    assert "502" in json.loads(down["/healthz"][2])["message"]
    assert down["/"][0] == 502 and down["/"][1].startswith("text/html") and "Shelfcast is not answering" in down["/"][2]
    assert form_too_large[0] == 413 and form_too_large[1].startswith("text/html"), form_too_large


def test_the_proxy_sets_the_forwarded_headers_a_client_cannot_forge(tmp_path):
    """Found by a probe: nginx passed a client's own `X-Forwarded-Proto: https` (and X-Real-IP) to the app
    unchanged, so a plain-HTTP client could claim https, or any address. The proxy now sets them from the
    connection: X-Forwarded-Proto from $scheme, X-Real-IP from the peer's address, X-Forwarded-For with the peer
    appended last, X-Forwarded-Host from the Host it serves, and a client's RFC 7239 `Forwarded` is dropped."""
    upstream = Upstream()
    proxy, port = start_proxy(tmp_path, upstream.port)
    try:
        status, _ = answer_headers(port, b"GET /app HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n"
                                         b"X-Forwarded-Proto: https\r\nX-Real-IP: 10.9.9.9\r\n"
                                         b"X-Forwarded-For: 10.8.8.8\r\nX-Forwarded-Host: evil.example\r\n"
                                         b"Forwarded: for=10.7.7.7;proto=https\r\n\r\n")
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        upstream.stop()
    assert status.split()[1] == "200"
    [received] = upstream.received
    names = [name for name, _ in received]
    for name in ("x-forwarded-proto", "x-real-ip", "x-forwarded-for", "x-forwarded-host"):
        assert names.count(name) == 1, (name, received)
    headers = dict(received)
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-for"] == "10.8.8.8, 127.0.0.1"  # the last address is the one nginx saw
    assert headers["x-forwarded-host"] == "shop.example" and headers["host"] == "shop.example"
    assert "forwarded" not in headers


def status_of(port: int, request: bytes) -> tuple[int, bytes]:
    """The status and the body of the answer to one raw request on a connection of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply.partition(b"\r\n\r\n")[2]


METRICS_RULE = "        location = /metrics {\n            deny all;\n"


@pytest.mark.slow  # ~10 s: a gunicorn server and nginx, twice
def test_metrics_are_refused_through_the_proxy_and_served_to_the_scraper_on_the_apps_port(app_bundles, tmp_path):
    """Found by a review of what the public proxy serves: /metrics (model versions, error and event counts) went to
    anyone who could reach compose's published port. The shipped config now refuses it (403) however the path is
    spelt, while the app's own port (app:5005 on the compose network, where Prometheus scrapes) serves it; the
    opening the config documents (an `allow` line above `deny all`) serves it through the proxy to that address."""
    assert CONF.read_text(encoding="utf-8").count(METRICS_RULE) == 1, "the shipped /metrics rule changed"
    nginx_binary()
    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(tmp_path / "p.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}, tmp_path / "gunicorn.log")
    spellings = [b"GET /metrics", b"GET /metrics?format=text", b"GET /%6detrics", b"GET //metrics",
                 b"GET /./metrics", b"GET /api/../metrics", b"HEAD /metrics", b"GET http://x/metrics"]
    closing = b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    try:
        direct = status_of(served.port, b"GET /metrics" + closing)
        (tmp_path / "shipped").mkdir()
        proxy, listen = start_proxy(tmp_path / "shipped", served.port)
        try:
            refused = {line: status_of(listen, line + closing) for line in spellings}
            others = status_of(listen, b"GET /healthz" + closing)
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)
        # as the config says to open it to a scraper that reaches only the proxy: its address above `deny all`
        (tmp_path / "opened").mkdir()
        proxy, listen = start_proxy(tmp_path / "opened", served.port,
                                    edit=lambda text: text.replace(METRICS_RULE, METRICS_RULE.replace(
                                        "deny all;", "allow 127.0.0.1;\n            deny all;")))
        try:
            allowed = status_of(listen, b"GET /metrics" + closing)
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)
    finally:
        served.stop()
    assert direct[0] == 200 and b"shelfcast_model_info" in direct[1], direct
    assert others[0] == 200, others
    for line, (status, body) in refused.items():
        assert status == 403 and b"shelfcast_" not in body, (line, status, body[:200])
    assert allowed[0] == 200 and b"shelfcast_model_info" in allowed[1], allowed[0]


def test_the_proxy_bounds_a_requests_head_in_all(tmp_path):
    """The shipped large_client_header_buffers (4 8k): a header line over 8 KiB, or headers over ~32 KiB in all, are
    nginx's 400 and never reach the app (as SHELFCAST_MAX_HEADER_BYTES bounds them at gunicorn); within, they pass."""
    def request(fields: int, size: int) -> bytes:
        return b"GET /app HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Field-%03d: %s\r\n" % (k, b"a" * (size - 14))
                                                             for k in range(fields)) + b"Connection: close\r\n\r\n"

    upstream = Upstream()
    proxy, port = start_proxy(tmp_path, upstream.port)
    try:
        statuses = {(fields, size): status_of(port, request(fields, size))[0]
                    for fields, size in [(3, 8000), (60, 500), (5, 8000), (40, 1000), (98, 8190), (1, 8300)]}
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        upstream.stop()
    assert statuses == {(3, 8000): 200, (60, 500): 200, (5, 8000): 400, (40, 1000): 400, (98, 8190): 400,
                        (1, 8300): 400}, statuses
    assert len(upstream.received) == 2  # the refused ones never reached the app
