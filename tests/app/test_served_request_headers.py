"""Request headers through the server `make serve` runs (gunicorn, app/gunicorn_conf.py): a client that stops
mid-headers, on a new connection or on a kept-alive one, holds a connection thread no longer than
SHELFCAST_HEADER_TIMEOUT_S (app/gunicorn_worker.py), so more such clients than threads leave the others served;
each request the worker refuses itself is counted, and answered with the app's headers.
One worker of 2 threads, a 1 s header timeout, a 3 s body timeout, the access log on; every socket on 127.0.0.1."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import selectors
import socket
import ssl
import threading
import time
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import pytest

from app import SECURITY_HEADERS, launch
from tests.app.test_served_tls import client_hello

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 3.0
THREADS = 2
SLACK_S = 1.0  # a stall queued for a thread ends ~0.1-0.2 s after it gets one (gunicorn_worker.LAST_CHANCE_S)
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # and then nothing: the blank line never comes
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
TIMEOUT_WARNING = "a request's headers did not arrive within SHELFCAST_HEADER_TIMEOUT_S"
# A body coding gunicorn does not implement: its 501.
UNSUPPORTED_CODING = b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br\r\n\r\n"
# gunicorn takes SCRIPT_NAME from a header of a peer in forwarded_allow_ips (127.0.0.1 by default) and answers a path
# outside it with the 500 of its ConfigurationProblem, before the app is called: a worker-level 500 a client can cause.
OUTSIDE_SCRIPT_NAME = b"GET /healthz HTTP/1.1\r\nHost: x\r\nSCRIPT_NAME: /elsewhere\r\n\r\n"


@pytest.fixture(scope="module")
def server(app_bundles, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gunicorn-headers")
    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_THREADS": str(THREADS),
                           "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(workdir / "p.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
                           "SHELFCAST_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                           "SHELFCAST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "SHELFCAST_ACCESS_LOG": "-"},
                          workdir / "gunicorn.log")
    try:
        yield served
    finally:
        served.stop()


def read_all(client: socket.socket, timeout_s: float) -> bytes:
    """What the server sends until it closes (TimeoutError if it has not within ``timeout_s`` a read)."""
    client.settimeout(timeout_s)
    reply = b""
    while chunk := client.recv(65536):
        reply += chunk
    return reply


def read_response(client: socket.socket) -> bytes:
    """The head of one response with a Content-Length, read off a connection that stays open."""
    client.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += client.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += client.recv(65536)
    return head


def get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        return read_all(client, 10).partition(b"\r\n\r\n")[2]


def healthz_meanwhile(port: int, stalled: list[tuple[socket.socket, float]]) -> tuple[list[float], list]:
    """/healthz from a normal client every ~0.2 s while the ``stalled`` clients (socket, when it stopped) wait;
    each must be answered within the header timeout plus slack (on the server before, the first was not answered
    at all). Returns those times, and each stalled client's (reply, seconds from its stall to the server closing
    its connection: watched on a thread of its own), or None for one still open after 3 timeouts and 5 s more."""
    ended: dict[int, tuple[bytes, float]] = {}
    deadline = time.monotonic() + 3 * HEADER_TIMEOUT_S + 5

    def watch_stalled() -> None:
        replies = [b""] * len(stalled)
        with selectors.DefaultSelector() as watched:
            for k, (hog, _) in enumerate(stalled):
                hog.setblocking(False)
                watched.register(hog, selectors.EVENT_READ, k)
            while len(ended) < len(stalled) and (left := deadline - time.monotonic()) > 0:
                for key, _ in watched.select(left):
                    hog, stopped = stalled[key.data]
                    chunk = hog.recv(65536)
                    replies[key.data] += chunk
                    if not chunk:
                        ended[key.data] = (replies[key.data], time.monotonic() - stopped)
                        watched.unregister(hog)

    watcher = threading.Thread(target=watch_stalled, daemon=True)
    watcher.start()
    took = []
    while watcher.is_alive():
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(HEALTHZ)
            reply = read_all(client, HEADER_TIMEOUT_S + SLACK_S)  # TimeoutError: not answered in time
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        took.append(time.monotonic() - started)
        watcher.join(0.2)
    return took, [ended.get(k) for k in range(len(stalled))]


def is_408(reply: bytes) -> bool:
    """A whole 408 answer and nothing more: its body as long as its Content-Length says."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"content-length:")]
    return head.startswith(b"HTTP/1.1 408 ") and lengths == [b"%d" % len(body)]


def check_stalled_clients_were_closed(server, before: str, took: list[float], ended: list, low_s: float) -> None:
    """Each stalled client got a 408 and was closed between ``low_s`` and the timeout plus slack after it stopped,
    /healthz was answered each time within the timeout plus slack, and each closing is one warning line."""
    assert None not in ended, [e and (e[0][:40], e[1]) for e in ended]
    assert all(is_408(reply) for reply, _ in ended), [(e[0][:40], e[1]) for e in ended]
    assert all(low_s <= seconds < HEADER_TIMEOUT_S + SLACK_S for _, seconds in ended), [e[1] for e in ended]
    assert max(took) < HEADER_TIMEOUT_S + SLACK_S, took
    time.sleep(0.2)
    logged = server.log_path.read_text(encoding="utf-8")[len(before):]
    assert logged.count(TIMEOUT_WARNING) == len(ended), logged
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged


def test_clients_stalled_mid_headers_free_their_threads_within_the_timeout(server):
    """6 clients on 2 threads send part of their headers and stop. Before, each held a thread until it hung up
    (8 on one worker of `make serve`: /healthz unanswered for 45 s). Now each is answered 408 and closed once its
    headers' time is up, counted from its arrival (not from when a thread got to it: 4 of them queue for one),
    logged as one warning line, and /healthz is answered throughout within the timeout plus slack."""
    before = server.log_path.read_text(encoding="utf-8")
    hogs = []
    try:
        for _ in range(3 * THREADS):
            hog = socket.create_connection(("127.0.0.1", server.port))
            hog.sendall(PARTIAL)
            hogs.append((hog, time.monotonic()))
        took, ended = healthz_meanwhile(server.port, hogs)
    finally:
        for hog, _ in hogs:
            hog.close()
    print(f"{len(hogs)} clients stalled mid-headers on {THREADS} threads, {HEADER_TIMEOUT_S:g} s header timeout: "
          f"/healthz answered {len(took)}/{len(took)}, slowest {max(took) * 1000:.0f} ms; the stalled ones closed "
          f"after {', '.join(f'{e[1]:.2f}' for e in ended if e)} s")
    check_stalled_clients_were_closed(server, before, took, ended, low_s=HEADER_TIMEOUT_S - 0.05)


def test_clients_that_connect_and_send_nothing_hold_no_thread(server):
    """As many clients as threads connect and send nothing. gunicorn waited up to 5 s on a thread for each one's first
    bytes (here until the 1 s header deadline): a request meanwhile waited ~0.8 s (3 such clients on 3 threads, the
    default 10 s timeout: 4.7 s). Now they wait on gunicorn's poller, a request is answered at once, and each is
    closed at the header timeout, with nothing sent (there is no request to answer)."""
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(THREADS)]
    try:
        time.sleep(0.2)  # each connection accepted and handed to a thread
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(HEALTHZ)
            reply = read_all(client, 10)
        took = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 200 ") and took < 0.5, (took, reply[:100])
        for client in silent:  # murder_pending runs about once a second
            assert read_all(client, HEADER_TIMEOUT_S + SLACK_S + 1) == b""
    finally:
        for client in silent:
            client.close()


def test_a_connection_silent_on_the_poller_then_stalled_is_closed_at_the_timeout_from_its_connect(server):
    """A client connects, sends nothing for 0.9 s (it waits on gunicorn's poller), then one byte, and stalls. Its
    headers' deadline counts from the connect (README "Slow clients"): before, the byte's arrival restarted it, and
    the connection was closed 1.9 s after its connect, a silent wait each time adding to what a thread is held."""
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        connected = time.monotonic()
        time.sleep(0.9 * HEADER_TIMEOUT_S)
        client.sendall(PARTIAL[:1])
        reply = read_all(client, 10)
        closed_s = time.monotonic() - connected
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
    assert closed_s < HEADER_TIMEOUT_S + 0.5, f"closed {closed_s:.2f} s after its connect"


def test_a_kept_alive_connection_that_stalls_in_its_next_requests_headers_is_closed_within_the_timeout(server):
    """The headers of a kept-alive connection's next request are bounded too: 4 clients on 2 threads each get
    one answer, then send part of their next request on the same connection and stop."""
    before = server.log_path.read_text(encoding="utf-8")
    hogs = []
    try:
        for _ in range(2 * THREADS):
            hog = socket.create_connection(("127.0.0.1", server.port))
            hog.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(hog).startswith(b"HTTP/1.1 200 ")
            hogs.append((hog, 0.0))
        time.sleep(0.05)  # each back in gunicorn's keep-alive poller
        for k, (hog, _) in enumerate(hogs):
            hog.sendall(PARTIAL)
            hogs[k] = (hog, time.monotonic())
        took, ended = healthz_meanwhile(server.port, hogs)
    finally:
        for hog, _ in hogs:
            hog.close()
    check_stalled_clients_were_closed(server, before, took, ended, low_s=HEADER_TIMEOUT_S - 0.05)


def test_headers_that_trickle_in_are_bounded_as_a_whole(server):
    """A header byte every 0.3 s: no single read waits long, yet the headers as a whole are cut at the timeout."""
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(PARTIAL)
        started = time.monotonic()
        client.settimeout(0.3)
        reply = b""
        for byte in b"X-Slow: " + b"x" * 20:
            try:
                reply = client.recv(65536)
            except TimeoutError:
                client.sendall(bytes([byte]))
                continue
            break
        took = time.monotonic() - started
        reply += read_all(client, 10)
    assert is_408(reply), reply[:200]
    assert HEADER_TIMEOUT_S - 0.05 <= took < HEADER_TIMEOUT_S + SLACK_S, took
    # as every response the app writes (README); before, this 408 had none of them and no Server header
    head = reply.partition(b"\r\n\r\n")[0].decode("ascii").split("\r\n")[1:]
    headers = dict(line.split(": ", 1) for line in head)
    assert headers["Server"] == "shelfcast"
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (name, head)


def test_a_request_whose_body_takes_longer_than_the_header_timeout_is_served(server):
    """The header deadline ends with the headers: a body sent over 1.5 s (within its own 3 s limit, beyond the
    1 s for headers) is forecast, and the next request on the same connection is answered too."""
    document = json.loads(get(server.port, "/api/v1/openapi.json"))
    example = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    body = json.dumps(example).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body))
        for k in range(3):
            time.sleep(0.5)
            client.sendall(body[k * len(body) // 3:(k + 1) * len(body) // 3])
        assert read_response(client).startswith(b"HTTP/1.1 200 ")
        client.sendall(HEALTHZ)
        assert read_all(client, 10).startswith(b"HTTP/1.1 200 ")


def head_of(size: int, first: list[bytes]) -> bytes:
    """The header block ``first`` and padding fields of at most 8,000 bytes each, ``size`` bytes in all as gunicorn
    measures it (the fields and the line breaks between them; not the request line, nor the blank line)."""
    fields = list(first)

    def taken() -> int:
        return sum(map(len, fields)) + 2 * (len(fields) - 1)

    while taken() < size:
        room = size - taken() - 2  # the line break before a new field
        fields.append(b"X-Pad-%03d: " % len(fields) + b"a" * max(1, min(8000, room - 11)))
    assert taken() == size, (taken(), size)
    return b"\r\n".join(fields)


def answer_to(port: int, request: bytes) -> bytes:
    """All the server answers ``request`` on a connection of its own, until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        try:
            client.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # refused before all was sent: its answer is read
            pass
        return read_all(client, 10)


def worker_cpu_s(master: int) -> float:
    """The CPU time (user and system) the server's worker has used so far (one worker: the master's one child)."""
    [worker] = open(f"/proc/{master}/task/{master}/children").read().split()
    fields = open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_requests_header_fields_are_bounded_in_all(server):
    """Found by a review of what the served app takes from whoever reaches it: gunicorn bounds each header field
    (8190 bytes) and their number (100), not their sum, so a request carried 800 KB of headers and was served: 29 ms
    of a worker's CPU each (a plain request: 0.6 ms; its parser copies and searches all it holds at every 8 KiB read)
    and 16 clients sending them took the worker from 178 to 300 MB. SHELFCAST_MAX_HEADER_BYTES (32 KiB, as the compose
    proxy's large_client_header_buffers) bounds them in all: past it, gunicorn's 431, read no further than one read
    past the bound. A head of exactly the bound is served, also when a body's first bytes come in the same read."""
    from app.config import DEFAULT_MAX_HEADER_BYTES

    answer = functools.partial(answer_to, server.port)

    huge = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-Field-%02d: %s\r\n" % (k, b"a" * 8176) for k in range(98)) + \
        b"Host: x\r\nConnection: close\r\n\r\n"
    assert len(huge) > 800_000
    spent = worker_cpu_s(server.pid)
    refused = [answer(huge) for _ in range(20)]
    spent = worker_cpu_s(server.pid) - spent
    assert all(reply.startswith(b"HTTP/1.1 431 ") for reply in refused), refused[0][:300]
    assert spent < 0.2, f"20 requests with 800 KB of headers took {spent:.2f} s of the worker's CPU"  # before: 0.58

    body = b'{"instances": []}' + b" " * 6000  # its first bytes come in the read that ends the head
    post = [b"Host: x", b"Content-Type: application/json", b"Content-Length: %d" % len(body), b"Connection: close"]
    at_bound = b"POST /api/v1/predict HTTP/1.1\r\n" + head_of(DEFAULT_MAX_HEADER_BYTES, post) + b"\r\n\r\n" + body
    served = answer(at_bound)  # the app's own answer to an empty batch: the head passed, the body was read
    assert served.startswith(b"HTTP/1.1 400 ") and b"at least one instance" in served, served[:300]
    plain = [b"Host: x", b"Connection: close"]
    assert answer(b"GET /healthz HTTP/1.1\r\n" + head_of(DEFAULT_MAX_HEADER_BYTES, plain) + b"\r\n\r\n"
                  ).startswith(b"HTTP/1.1 200 ")
    over = answer(b"GET /healthz HTTP/1.1\r\n" + head_of(DEFAULT_MAX_HEADER_BYTES + 1, plain) + b"\r\n\r\n")
    assert over.startswith(b"HTTP/1.1 431 ") and b"SHELFCAST_MAX_HEADER_BYTES" in over, over[:300]
    assert json.loads(get(server.port, "/healthz")) == {"status": "ok"}  # the worker serves on


def refusal_counts(port: int) -> dict[str, float]:
    """shelfcast_refused_requests_total per reason, as /metrics shows it (a reason without a series: absent)."""
    text = get(port, "/metrics").decode()
    return {reason: float(value) for reason, value in
            re.findall(r'^shelfcast_refused_requests_total\{reason="(\w+)"\} (\S+)$', text, re.MULTILINE)}


def test_requests_the_worker_refuses_itself_are_counted_in_metrics_also_after_it_is_replaced(server):
    """Found by a review of what an operator sees: the requests the worker answers itself, its app never called
    (its own 408 and 431, gunicorn's 400 and 431, ...), were in no /metrics series, only in the log's warning lines,
    so a client flood of them went unseen on the dashboards. Each is now counted by reason, with the status it got
    (app/metrics.py REFUSAL_REASONS); every reason has its series, at 0 until the first, and the counts outlive the
    worker (folded into retired.json when it exits, as every counter's)."""
    from app.config import DEFAULT_MAX_HEADER_BYTES
    from app.metrics import REFUSAL_REASONS

    before = refusal_counts(server.port)
    assert set(before) == set(REFUSAL_REASONS), before  # each from the worker's start
    plain = [b"Host: x", b"Connection: close"]
    sent = {
        "headers_too_large": [  # over SHELFCAST_MAX_HEADER_BYTES; more fields than gunicorn's limit_request_fields
            b"GET /healthz HTTP/1.1\r\n" + head_of(DEFAULT_MAX_HEADER_BYTES + 1, plain) + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-F%d: y\r\n" % k for k in range(101)) + b"\r\n"],
        "bad_request": [b"\x01\x03\x01 no request line\r\n\r\n", b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n"],
        "tls_to_plain_port": [client_hello()],  # a client given https:// for this plain port
        "request_line_too_long": [b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"],
        "expectation_failed": [b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n"],
        "unsupported_transfer_coding": [UNSUPPORTED_CODING],
        "server_error": [OUTSIDE_SCRIPT_NAME],
        "header_timeout": [PARTIAL],  # and then nothing: answered once SHELFCAST_HEADER_TIMEOUT_S is up
    }
    for reason, requests in sent.items():
        for request in requests:
            reply = answer_to(server.port, request)
            assert reply.startswith(b"HTTP/1.1 %d " % REFUSAL_REASONS[reason]), (reason, request[:60], reply[:200])
    time.sleep(0.1)  # a 408's count follows its answer
    counted = refusal_counts(server.port)
    expected = {reason: before[reason] + len(sent.get(reason, ())) for reason in REFUSAL_REASONS}
    # a PROXY line refused: the test after this one; a TLS port's refusals: tests/app/test_served_tls.py
    assert set(REFUSAL_REASONS) - set(sent) == {"forbidden", "tls_handshake_timeout", "tls_error",
                                                "plain_http_to_tls_port"}
    assert counted == expected, counted

    [worker] = open(f"/proc/{server.pid}/task/{server.pid}/children").read().split()
    os.kill(int(worker), signal.SIGTERM)  # gunicorn's master starts another in its place
    deadline = time.monotonic() + 60
    while (replaced := open(f"/proc/{server.pid}/task/{server.pid}/children").read().split()) in ([], [worker]):
        assert time.monotonic() < deadline, f"no worker in place of {worker} after 60 s:\n{server.log_tail()}"
        time.sleep(0.1)
    deadline = time.monotonic() + 60
    while True:
        try:
            assert json.loads(get(server.port, "/healthz")) == {"status": "ok"}
            break
        except OSError:  # the new worker not listening yet
            assert time.monotonic() < deadline, f"worker {replaced} not serving after 60 s:\n{server.log_tail()}"
            time.sleep(0.2)
    assert refusal_counts(server.port) == expected  # the old worker's counts, retired, and the new one's zeros


def answer_parts(reply: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers by name, body) of one whole answer; AssertionError for a header sent twice."""
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    fields = [line.split(": ", 1) for line in lines]
    headers = dict(fields)
    assert len(headers) == len(fields), f"a header sent twice: {lines}"
    return status, headers, body


def test_answers_the_worker_writes_itself_carry_the_apps_headers(server):
    """Found by a review of what error answers carry: every answer of the app has its Content-Security-Policy,
    X-Content-Type-Options, X-Frame-Options, Referrer-Policy and `Server: shelfcast` (app/__init__.py), but gunicorn
    answers some requests itself, its app never called (400, 417, 431, 501, and its 500 said "500 Bad Request"), and
    those had none of them, nor a Date, an HTML page echoing the request. The worker's handle_error now writes them:
    the app's headers, plain text, and nothing else (no X-Request-ID: the app never saw the request)."""
    from app.config import DEFAULT_MAX_HEADER_BYTES

    app_status, app_headers, _ = answer_parts(answer_to(server.port, b"GET /no-such-page HTTP/1.1\r\nHost: x\r\n"
                                                                     b"Connection: close\r\n\r\n"))
    assert app_status.startswith("HTTP/1.1 404 "), app_status
    before = server.log_path.read_text(encoding="utf-8")
    plain = [b"Host: x", b"Connection: close"]
    refused = {
        400: b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        417: b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n",
        431: b"GET /healthz HTTP/1.1\r\n" + head_of(DEFAULT_MAX_HEADER_BYTES + 1, plain) + b"\r\n\r\n",
        501: UNSUPPORTED_CODING,
        500: OUTSIDE_SCRIPT_NAME,
    }
    for status, request in refused.items():
        line, headers, body = answer_parts(answer_to(server.port, request))
        assert line == f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", (line, request[:60])
        assert set(headers) == {"Server", "Date", "Connection", "Content-Type", "Content-Length", *SECURITY_HEADERS}, \
            (status, headers)
        for name in ("Server", *SECURITY_HEADERS):
            assert headers[name] == app_headers[name], (status, name, headers[name])
        assert headers["Connection"] == "close" and headers["Content-Type"] == "text/plain; charset=utf-8"
        assert int(headers["Content-Length"]) == len(body) and body.startswith(HTTPStatus(status).phrase.encode())
        assert abs(time.time() - parsedate_to_datetime(headers["Date"]).timestamp()) < 60, headers["Date"]
    assert b"SHELFCAST_MAX_HEADER_BYTES" in answer_to(server.port, refused[431])  # what was wrong, to the client
    assert answer_parts(answer_to(server.port, OUTSIDE_SCRIPT_NAME))[2] == b"Internal Server Error\n"  # no more
    time.sleep(0.1)
    logged = server.log_path.read_text(encoding="utf-8")[len(before):]
    assert logged.count("Invalid request from ip=127.0.0.1") == len(refused) + 2, logged  # as gunicorn logs them
    assert '"GET /healthz HTTP/1.1" 500 ' in logged, logged  # its access line, as gunicorn writes it
    assert "Traceback" not in logged, logged


def test_a_head_request_the_worker_refuses_is_answered_without_a_body(server):
    """Found in review: the answers handle_error writes (own_answer) carried their text also to a HEAD request,
    which an answer must not (RFC 9110 9.3.2): a client that keeps the connection reads it as the start of the next
    answer. Now the head alone, its Content-Length that of the GET's answer, as the app's HEAD answers are."""
    for request in (OUTSIDE_SCRIPT_NAME, b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n"):
        status, headers, body = answer_parts(answer_to(server.port, request))
        head_status, head_headers, head_body = answer_parts(answer_to(server.port, b"HEAD" + request[3:]))
        assert head_status == status and head_body == b"", (head_status, head_body)
        assert head_headers["Content-Length"] == headers["Content-Length"] == str(len(body)), (head_headers, body)


def test_a_tls_client_on_the_plain_port_is_refused_at_once(server):
    """A client given https:// for the plain port sends a ClientHello, which has no request line's end: gunicorn
    waited for one, and the client waited with it until SHELFCAST_HEADER_TIMEOUT_S (10 s by default), counted as a
    `header_timeout` (a stalled client, to an operator). Now its first byte (a TLS record's) is refused at once:
    `tls_to_plain_port`, a 400 in plain text, which the TLS client takes for a wrong protocol version."""
    before_log, before = server.log_path.read_text(encoding="utf-8"), refusal_counts(server.port)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER|wrong version number|record layer failure"):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    took = time.monotonic() - started
    assert took < HEADER_TIMEOUT_S / 2, took
    status, headers, body = answer_parts(answer_to(server.port, client_hello()))
    assert status == "HTTP/1.1 400 Bad Request" and headers["Server"] == "shelfcast", (status, headers)
    assert body == b"Bad Request: a TLS handshake on a port that speaks plain HTTP (use http://)\n", body
    time.sleep(0.1)
    assert refusal_counts(server.port) == {**before, "tls_to_plain_port": before["tls_to_plain_port"] + 2}
    logged = server.log_path.read_text(encoding="utf-8")[len(before_log):]
    assert logged.count("a TLS handshake on a port that speaks plain HTTP") == 2, logged
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged


def test_a_proxy_line_refused_is_counted_and_answered_with_the_apps_headers(app_bundles, tmp_path):
    """`forbidden` (403): gunicorn refuses a PROXY protocol line from a peer not in proxy_allow_ips. `make serve`
    does not turn the PROXY protocol on; an operator can (GUNICORN_CMD_ARGS="--proxy-protocol", behind HAProxy),
    and then each refusal is counted and answered as the others are."""
    from app.metrics import REFUSAL_REASONS

    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_THREADS": "2",
                           "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(tmp_path / "p.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
                           "GUNICORN_CMD_ARGS": "--proxy-protocol v1 --proxy-allow-from 192.0.2.1"},
                          tmp_path / "gunicorn.log")
    try:
        before = refusal_counts(served.port)
        reply = answer_to(served.port, b"PROXY TCP4 198.51.100.7 192.0.2.9 40000 80\r\n"
                                       b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert json.loads(get(served.port, "/healthz")) == {"status": "ok"}  # no PROXY line: served as before
        after = refusal_counts(served.port)
    finally:
        served.stop()
    line, headers, body = answer_parts(reply)
    assert line == f"HTTP/1.1 {REFUSAL_REASONS['forbidden']} Forbidden" and body == b"Forbidden\n", reply
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value, (name, headers)
    assert headers["Server"] == "shelfcast"
    assert after == {**before, "forbidden": before["forbidden"] + 1}, (before, after)


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(version_command: int, family_protocol: int, addresses: bytes) -> bytes:
    """A PROXY protocol v2 header: its signature, version and command, family and transport, the addresses' length
    and the addresses."""
    return PROXY_V2_SIGNATURE + bytes([version_command, family_protocol]) + len(addresses).to_bytes(2, "big") + \
        addresses


def test_a_malformed_proxy_v2_header_is_a_counted_400(app_bundles, tmp_path):
    """Found in review: gunicorn's InvalidProxyHeader (a v2 header it cannot take) was in none of the refusals, so
    it was answered 500 and counted as server_error, its traceback logged: a client's malformed bytes, not the
    server's fault. Now 400 bad_request, as a malformed v1 line; real bytes on a raw socket, from an allowed peer."""
    from app.metrics import REFUSAL_REASONS

    tcp4 = bytes([127, 0, 0, 1, 127, 0, 0, 1]) + (40000).to_bytes(2, "big") + (80).to_bytes(2, "big")
    malformed = {
        "version 1": proxy_v2(0x11, 0x11, tcp4),
        "command 15": proxy_v2(0x2F, 0x11, tcp4),
        "UDP": proxy_v2(0x21, 0x12, tcp4),
        "IPv4 addresses cut short": proxy_v2(0x21, 0x11, tcp4[:4]),
        "family 7": proxy_v2(0x21, 0x71, tcp4),
    }
    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_THREADS": "2",
                           "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(tmp_path / "p.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
                           "GUNICORN_CMD_ARGS": "--proxy-protocol auto --proxy-allow-from 127.0.0.1"},
                          tmp_path / "gunicorn.log")
    try:
        before = refusal_counts(served.port)
        replies = {case: answer_to(served.port, header + HEALTHZ) for case, header in malformed.items()}
        well_formed = answer_to(served.port, proxy_v2(0x21, 0x11, tcp4) + HEALTHZ)
        after = refusal_counts(served.port)
    finally:
        served.stop()
    for case, reply in replies.items():
        line, headers, body = answer_parts(reply)
        assert line == f"HTTP/1.1 {REFUSAL_REASONS['bad_request']} Bad Request", (case, reply[:300])
        assert body.startswith(b"Bad Request: Invalid PROXY header: "), (case, body)
        for name, value in SECURITY_HEADERS.items():
            assert headers[name] == value, (case, name, headers)
    assert well_formed.startswith(b"HTTP/1.1 200 "), well_formed[:300]
    assert after == {**before, "bad_request": before["bad_request"] + len(malformed)}, (before, after)
    logged = served.log_path.read_text(encoding="utf-8")
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged


def test_every_request_gunicorn_cannot_parse_is_a_refusal_of_the_clients_not_a_server_error():
    """Each of gunicorn's parse errors (http/errors.py) is the client's doing and has its reason (REFUSALS), save its
    ConfigurationProblem (a path outside a proxy's SCRIPT_NAME: its 500). A new one in a gunicorn upgrade fails here
    rather than answering 500 with a traceback, as InvalidProxyHeader did."""
    import inspect

    import gunicorn.http.errors as errors

    from app.gunicorn_worker import refusal_reason

    parse_errors = [kind for _, kind in inspect.getmembers(errors, inspect.isclass)
                    if issubclass(kind, errors.ParseException) and kind not in (errors.ParseException,
                                                                                errors.ConfigurationProblem)]
    assert errors.InvalidProxyHeader in parse_errors
    unmapped = [kind.__name__ for kind in parse_errors if refusal_reason(kind.__new__(kind)) == "server_error"]
    assert unmapped == [], unmapped
