"""Request bodies through the server `make serve` runs (gunicorn, app/gunicorn_conf.py): a body that trickles
in gets its 408 within SHELFCAST_BODY_TIMEOUT_S for the whole body, and a malformed chunked body gets the app's
400. One worker, a 1 s body timeout; every socket on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from app import launch

BODY_TIMEOUT_S = 1.0
HEADERS = b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def one_worker(bundle, workdir, **settings):
    """The server `make serve` runs, one worker, the 1 s body timeout (and ``settings``), logging into ``workdir``."""
    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(bundle),
                           "SHELFCAST_PREDICTION_LOG": str(workdir / "p.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
                           "SHELFCAST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), **settings},
                          workdir / "gunicorn.log")
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def server(app_bundles, tmp_path_factory):
    yield from one_worker(app_bundles[0], tmp_path_factory.mktemp("gunicorn-bodies"))


def trickle(port: int, head: bytes, trickled: bytes, every_s: float) -> tuple[bytes, float]:
    """Send ``head``, then ``trickled`` a byte at a time, each within the timeout of the one before; returns
    the reply (what came before the server closed, or until all was sent and 10 s more) and the seconds from
    the first body byte to the reply's first bytes."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(head)
        started = time.monotonic()
        client.settimeout(every_s)
        reply = b""
        for byte in trickled:
            try:
                reply = client.recv(65536)
            except TimeoutError:
                pass
            if reply:
                break
            client.sendall(bytes([byte]))
        took = time.monotonic() - started
        client.settimeout(10)
        while chunk := client.recv(65536):
            reply += chunk
        return reply, took


def test_a_body_that_trickles_in_is_answered_408_within_the_timeout_for_the_whole_body(server):
    """10 bytes, one every 0.6 s: each recv() is well within the 1 s timeout, the body is not (6 s)."""
    body = json.dumps({"instances": []}).encode()
    head = HEADERS + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (len(body) + 10) + body
    reply, took = trickle(server.port, head, b" " * 10, every_s=0.6)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert took < BODY_TIMEOUT_S + 1.0, took


def test_a_chunked_body_whose_framing_trickles_in_is_answered_408(server):
    """The chunk-size line itself trickles: gunicorn reads it within one read of the body stream."""
    head = HEADERS + b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n2"
    reply, took = trickle(server.port, head, b";" + b"x" * 9, every_s=0.6)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert took < BODY_TIMEOUT_S + 1.0, took


@pytest.mark.parametrize("chunks", [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"-1\r\n\r\n"],
                         ids=["size zz", "no CRLF after the data", "size -1"])
def test_a_malformed_chunked_body_is_the_apps_400_and_the_connection_is_closed(server, chunks):
    before = server.log_path.read_text(encoding="utf-8")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(HEADERS + b"Transfer-Encoding: chunked\r\nX-Request-ID: malformed-1\r\n\r\n" + chunks)
        reply = b""
        while chunk := client.recv(65536):  # keep-alive asked for, yet the server closes: no request may follow
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 400 "), reply[:300]
    error = json.loads(body)
    assert error["code"] == "bad_request" and "malformed" in error["message"]
    assert error["request_id"] == headers["x-request-id"] == "malformed-1"
    assert headers["x-content-type-options"] == "nosniff" and headers["server"] == "shelfcast"
    assert headers["connection"] == "close"  # said keep-alive, then closed (the 413 of a chunked body the same)
    time.sleep(0.2)
    logged = server.log_path.read_text(encoding="utf-8")[len(before):]
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged
    assert logged.count("malformed request body") == 1, logged


def exchange(port: int, request: bytes, half_close: bool = False) -> tuple[str, dict, bytes]:
    """Send ``request`` (then end our side, if ``half_close``); the status line, headers and body of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


def test_a_malformed_body_is_400_on_any_path_and_its_warning_cannot_forge_a_log_line(server):
    """%0a in the path is a newline in PATH_INFO: logged with %r it stays escaped, on the warning's own line. The
    message cannot be framed, so it is 400 before routing, as 413 and 408 are (not the 404 of its path)."""
    forged = "2026-12-03 14:00:00,000 ERROR app.predictor: FORGED LINE"
    path = b"/api/v1/predict%0a" + forged.replace(" ", "%20").encode()
    before = server.log_path.read_text(encoding="utf-8")
    status, headers, body = exchange(server.port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"zz\r\n{}\r\n0\r\n\r\n")
    assert status.startswith("HTTP/1.1 400 "), (status, body)
    assert "malformed" in json.loads(body)["message"]
    time.sleep(0.2)
    logged = server.log_path.read_text(encoding="utf-8")[len(before):]
    [warning] = [line for line in logged.splitlines() if "malformed request body" in line]
    assert "'/api/v1/predict\\n2026-12-03 14:00:00,000 ERROR" in warning, warning
    assert not any(line.startswith(forged) for line in logged.splitlines()), logged


def test_a_body_shorter_than_its_content_length_is_400_naming_the_mismatch(server):
    """A client that ends its side of the connection 10 bytes short of its Content-Length sent an incomplete
    message (RFC 9112 6.3): not served, even though what arrived is a valid request."""
    document = json.loads(exchange(server.port, b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n"
                                                b"Connection: close\r\n\r\n")[2])
    example = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    body = json.dumps(example).encode()
    status, _, reply = exchange(server.port, HEADERS + b"Content-Length: %d\r\n\r\n" % (len(body) + 10) + body,
                                half_close=True)
    assert status.startswith("HTTP/1.1 400 "), (status, reply)
    assert f"ended after {len(body)} of the {len(body) + 10} bytes its Content-Length declares" in \
        json.loads(reply)["message"]
    status, _, reply = exchange(server.port, HEADERS + b"Content-Length: %d\r\n\r\n" % len(body) + body,
                                half_close=True)
    assert status.startswith("HTTP/1.1 200 "), (status, reply)  # the same body, whole: served


@pytest.mark.parametrize("framing", [b"1" * (48 << 10), b"2;ext=" + b"x" * (48 << 10),
                                     b"2\r\n{}\r\n0\r\nX-Trailer: " + b"a" * (48 << 10)],
                         ids=["chunk-size line", "chunk extension", "trailer field"])
def test_chunked_framing_past_the_header_bound_is_400_at_once(server, framing):
    """Found by a probe: gunicorn reads a chunk-size line (its extensions included) and the trailer section until
    their end with no bound, searching all it holds at each read, and none of it counts toward the body limit: one
    client streaming an endless chunk-size line at a default server held its worker's core (5.7 s of CPU) for the
    whole 10 s body timeout, buffering 13 MiB, then got a 408. Past SHELFCAST_MAX_HEADER_BYTES and one read
    (32 KiB + 8 KiB by default) it is a malformed body now: 400 at once, long before the 1 s timeout."""
    started = time.monotonic()
    status, headers, body = exchange(server.port, HEADERS + b"Transfer-Encoding: chunked\r\n\r\n" + framing)
    took = time.monotonic() - started
    assert status.startswith("HTTP/1.1 400 "), (status, body[:300])
    assert "ran past 40960 bytes without their end (SHELFCAST_MAX_HEADER_BYTES 32768" in json.loads(body)["message"]
    assert headers["connection"] == "close" and took < BODY_TIMEOUT_S / 2, took


@pytest.mark.parametrize("chunks", [b"200000\r\n", b"ffffffffffffffffffff\r\n" + b"{" * 100,
                                    b"80000\r\n" + b" " * 0x80000 + b"\r\n80001\r\n"],
                         ids=["one chunk of 2 MiB", "one chunk of 2**80 bytes", "two chunks of 512 KiB + 1 in all"])
def test_chunk_sizes_declaring_more_than_the_body_limit_are_413_at_once(server, chunks):
    """Found by a probe: a Content-Length over SHELFCAST_MAX_BODY_BYTES is 413 at once, unread; a chunk announcing
    more was read until the limit's worth had arrived, so a client that announced 2 MiB (or 2**80 bytes) and sent
    no more held its thread for the whole body timeout and got a 408. The sizes declared are counted as they are
    read now: 413 at once, the connection closed, whatever the chunk's data."""
    started = time.monotonic()
    status, headers, body = exchange(server.port, HEADERS + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    took = time.monotonic() - started
    assert status.startswith("HTTP/1.1 413 "), (status, body[:300])
    assert json.loads(body)["code"] == "body_too_large" and headers["connection"] == "close"
    assert took < BODY_TIMEOUT_S / 2, took


def test_chunked_framing_within_the_header_bound_is_served(server):
    """Trailer fields of 28 KiB in all and a 4 KiB chunk extension, within the bound: read and served as before."""
    document = json.loads(exchange(server.port, b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n"
                                                b"Connection: close\r\n\r\n")[2])
    example = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    body = json.dumps(example).encode()
    chunks = b"%x;ext=%s\r\n%s\r\n0\r\n" % (len(body), b"x" * 4096, body) + \
        b"".join(b"X-T%d: %s\r\n" % (k, b"t" * 7000) for k in range(4)) + b"\r\n"
    status, _, reply = exchange(server.port, HEADERS + b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                                + chunks)
    assert status.startswith("HTTP/1.1 200 "), (status, reply[:300])



@pytest.fixture(scope="module")
def two_thread_server(app_bundles, tmp_path_factory):
    yield from one_worker(app_bundles[0], tmp_path_factory.mktemp("gunicorn-readers"), SHELFCAST_THREADS="2")


def kernel_send_buffer_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024  # Linux's default


@pytest.mark.parametrize("path", ["/api/v1/openapi.json", "/static/style.css"], ids=["app response", "file"])
def test_clients_that_never_read_their_responses_free_their_threads_within_the_timeout(two_thread_server, path):
    """Found by a probe: clients that pipelined requests and never read an answer, one more than the worker's
    threads, blocked each thread writing into a full socket, for good: /healthz went unanswered (10 clients on
    `make serve`'s 8 threads a worker, the same). Each write of such a response now has the body timeout (1 s
    here): the client is disconnected, and that is logged as one warning line. The clients pipeline enough to
    fill the kernel's largest send buffer; /healthz is asked every 0.3 s until each has been disconnected."""
    server = two_thread_server
    before = server.log_path.read_text(encoding="utf-8")
    answer = len(exchange(server.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                          % path.encode())[2])
    requests = (kernel_send_buffer_max() + 2 * 1024 * 1024) // answer
    hogs, took, disconnected = [], [], 0
    try:
        for _ in range(3):
            hog = socket.socket()
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hog.connect(("127.0.0.1", server.port))
            hog.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode() * requests)
            hogs.append(hog)
        deadline = time.monotonic() + 60
        while disconnected < len(hogs) and time.monotonic() < deadline:
            started = time.monotonic()
            status, _, _ = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status.startswith("HTTP/1.1 200 "), status
            took.append(time.monotonic() - started)
            logged = server.log_path.read_text(encoding="utf-8")[len(before):]
            disconnected = logged.count("did not take in its response within SHELFCAST_BODY_TIMEOUT_S")
            time.sleep(0.3)
    finally:
        for hog in hogs:
            hog.close()
    print(f"never-reading clients: 3 of {requests:,} pipelined {path} on 2 threads: /healthz answered "
          f"{len(took)}/{len(took)}, slowest {max(took) * 1000:.0f} ms; {disconnected} disconnected")
    assert disconnected == len(hogs), logged
    assert max(took) < 2 * BODY_TIMEOUT_S + 2, took
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged
