"""The server `make serve` runs, given a certificate (GUNICORN_CMD_ARGS="--certfile ... --keyfile ...": gunicorn
speaks TLS itself, no proxy in front): a client that stalls mid-headers, or mid-body, is dealt with as over plain
HTTP (app/gunicorn_worker.py, app/request_buffer.py), without a traceback in the log. One worker of 2 threads, a
1 s header timeout, a 2 s body timeout; a self-signed certificate made here; every socket on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app import launch

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # and then nothing: the blank line never comes
TIMEOUT_WARNING = "a request's headers did not arrive within SHELFCAST_HEADER_TIMEOUT_S"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, PEM files in ``folder``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def start_tls(app_bundles, workdir: Path, threads: int, header_timeout_s: float, **settings: str):
    """One gunicorn worker of ``threads`` threads serving over its own TLS (a self-signed certificate in
    ``workdir``), with ``settings`` added to its environment."""
    cert, key = self_signed(workdir)
    return launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_THREADS": str(threads),
                         "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                         "SHELFCAST_PREDICTION_LOG": str(workdir / "p.jsonl"),
                         "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
                         "SHELFCAST_HEADER_TIMEOUT_S": str(header_timeout_s),
                         "GUNICORN_CMD_ARGS": f"--certfile {cert} --keyfile {key}", **settings},
                        workdir / "gunicorn.log", tls=ssl.create_default_context(cafile=str(cert)))


@pytest.fixture(scope="module")
def tls_server(app_bundles, tmp_path_factory):
    served = start_tls(app_bundles, tmp_path_factory.mktemp("gunicorn-tls"), threads=2,
                       header_timeout_s=HEADER_TIMEOUT_S, SHELFCAST_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))
    try:
        yield served
    finally:
        served.stop()


def tls_connection(served) -> ssl.SSLSocket:
    return served.tls.wrap_socket(socket.create_connection(("127.0.0.1", served.port), timeout=10),
                                  server_hostname="127.0.0.1")


def exchange(served, request: bytes, wait_s: float = 10) -> tuple[bytes, str]:
    """What the server sends for ``request`` until it closes the connection, and how it ended: "closed" (after a
    close_notify, or a bare close: TLS' unexpected EOF, taken as an end here) or the TLS error the client met (the
    server wrote bytes that are no TLS record, or a fatal alert)."""
    with tls_connection(served) as client:
        client.sendall(request)
        client.settimeout(wait_s)
        return read_to_close(client)


def read_to_close(client: ssl.SSLSocket) -> tuple[bytes, str]:
    """What the server sends until it closes the connection, and how it ended (see `exchange`)."""
    reply = b""
    try:
        while chunk := client.recv(65536):
            reply += chunk
    except ssl.SSLEOFError:
        pass
    except ssl.SSLError as exc:
        return reply, f"TLS error: {exc}"
    return reply, "closed"


def header_timeouts(served) -> float:
    reply, _ = exchange(served, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return float(re.search(rb'^shelfcast_refused_requests_total\{reason="header_timeout"\} (\S+)$', reply,
                           re.MULTILINE).group(1))


def test_a_tls_client_that_stalls_mid_headers_is_answered_408_without_a_traceback(tls_server):
    """Before, the 408 was sent with socket.MSG_DONTWAIT, which an SSLSocket refuses (ValueError), and the read side
    was shut through the SSLSocket, which drops its TLS layer: the answer went out as plain text into the TLS stream
    (the client met a TLS error, not an answer) or not at all, with a traceback in the log."""
    before_log, before = tls_server.log_path.read_text(encoding="utf-8"), header_timeouts(tls_server)
    started = time.monotonic()
    reply, ended = exchange(tls_server, PARTIAL)
    took = time.monotonic() - started
    assert ended == "closed", (ended, reply[:200])
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and reply.endswith(
        b"the request's headers did not arrive in time\n"), reply[:300]
    assert HEADER_TIMEOUT_S - 0.05 <= took < HEADER_TIMEOUT_S + 1.0, took
    assert header_timeouts(tls_server) == before + 1
    healthz, _ = exchange(tls_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert healthz.startswith(b"HTTP/1.1 200 "), healthz[:200]  # the worker serves on
    time.sleep(0.2)
    logged = tls_server.log_path.read_text(encoding="utf-8")[len(before_log):]
    assert logged.count(TIMEOUT_WARNING) == 1, logged
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged


def test_a_tls_client_whose_body_stalls_is_answered_408_without_a_traceback(tls_server):
    """The body's deadline shuts the read side as the headers' does (app/request_buffer.py): over TLS, the app's
    408 must still reach the client as a TLS record."""
    before_log = tls_server.log_path.read_text(encoding="utf-8")
    reply, ended = exchange(tls_server, b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                        b"\r\nContent-Length: 100\r\n\r\n{\"instances\": [")
    assert ended == "closed", (ended, reply[:200])
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:300]
    time.sleep(0.2)
    logged = tls_server.log_path.read_text(encoding="utf-8")[len(before_log):]
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged


def test_a_kept_alive_tls_connection_that_stalls_in_its_next_requests_headers_is_answered_408(tls_server):
    """The case the worker met first: a connection served once, then stalled mid-headers. Before, its 408 was sent
    with socket.MSG_DONTWAIT after the SSLSocket's own shutdown() had dropped the TLS layer: plain text into the TLS
    stream, which the client could not read."""
    with tls_connection(tls_server) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not (first.endswith(b"}\n") or first.endswith(b"}")):
            first += client.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ") and b"keep-alive" in first.lower(), first[:300]
        client.sendall(PARTIAL)
        reply, ended = read_to_close(client)
    assert ended == "closed" and reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), (ended, reply[:300])
    assert "Shelfcast serves at https://127.0.0.1:" in tls_server.log_path.read_text(encoding="utf-8")


def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's default context): a ClientHello, as records on the wire."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    return outgoing.read()


def refusals(served) -> dict[str, float]:
    """shelfcast_refused_requests_total per reason, as /metrics shows it over TLS."""
    reply, _ = exchange(served, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return {reason.decode(): float(value) for reason, value in
            re.findall(rb'^shelfcast_refused_requests_total\{reason="(\w+)"\} (\S+)$', reply, re.MULTILINE)}


def raw_exchange(served, sent: bytes, wait_s: float = 10, close_after_s: float | None = None) -> tuple[bytes, float]:
    """What the server sends back on a plain TCP connection to the TLS port for ``sent``, until it closes the
    connection, and when it closed; with ``close_after_s`` this client closes first, that long after sending."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.port), timeout=wait_s) as client:
        client.sendall(sent)
        if close_after_s is not None:
            time.sleep(close_after_s)
            return b"", time.monotonic() - started
        reply = b""
        try:
            while chunk := client.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
        return reply, time.monotonic() - started


def logged_since(served, before: str) -> str:
    time.sleep(0.2)  # a count and its line follow the close
    return served.log_path.read_text(encoding="utf-8")[len(before):]


def test_a_tls_client_that_stalls_mid_handshake_is_closed_and_counted_once(tls_server):
    """Before, a client that sent half a ClientHello and stopped was closed at the header deadline but counted twice,
    as gunicorn's 403 (`forbidden`, its handshake error) and as a `header_timeout` logged "answered 408", with
    nothing sent: no answer can be before the handshake completes. Now one `tls_handshake_timeout`, one line."""
    before_log, before = tls_server.log_path.read_text(encoding="utf-8"), refusals(tls_server)
    hello = client_hello()
    reply, took = raw_exchange(tls_server, hello[:len(hello) // 2])
    assert reply == b"", reply[:200]
    assert HEADER_TIMEOUT_S - 0.2 <= took < HEADER_TIMEOUT_S + 1.0, took
    logged = logged_since(tls_server, before_log)
    assert refusals(tls_server) == {**before, "tls_handshake_timeout": before["tls_handshake_timeout"] + 1}
    assert logged.count("a TLS handshake did not complete within SHELFCAST_HEADER_TIMEOUT_S (1 s): connection "
                        "closed, nothing sent") == 1, logged
    assert "408" not in logged and "Invalid request" not in logged, logged
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged


def test_a_client_that_leaves_mid_handshake_is_no_refusal(tls_server):
    """A client gone before its handshake completed (a load balancer's TCP probe; a client that gave up) was counted
    as gunicorn's 403, `forbidden`, with a warning line: over plain HTTP a client gone before its request is no
    refusal (gunicorn's debug line), and now over TLS neither."""
    before_log, before = tls_server.log_path.read_text(encoding="utf-8"), refusals(tls_server)
    hello = client_hello()
    raw_exchange(tls_server, hello[:len(hello) // 2], close_after_s=0.2)
    raw_exchange(tls_server, b"", close_after_s=0.2)
    logged = logged_since(tls_server, before_log)
    assert refusals(tls_server) == before
    assert "WARNING" not in logged and "ERROR" not in logged, logged


def test_plain_http_on_the_tls_port_is_a_counted_400_and_bytes_that_are_no_tls_a_counted_close(tls_server):
    """Before, each was gunicorn's 403, `forbidden`, that never reached the client (written into a TLS layer whose
    handshake had failed): a bare close, a plain-HTTP client told nothing. Plain HTTP is now answered 400 in plain
    text, which such a client reads (nginx's way); any other handshake the server refuses, `tls_error`, is closed
    without an answer (nothing the client could read), one warning line each."""
    before_log, before = tls_server.log_path.read_text(encoding="utf-8"), refusals(tls_server)
    for method in (b"GET", b"POST", b"HEAD"):
        reply, took = raw_exchange(tls_server, method + b" /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply[:300]
        # an answer to HEAD has no body (RFC 9110 9.3.2): a client would read it as its next answer's start
        assert body == (b"" if method == b"HEAD" else b"this port speaks TLS: send the request over https\n"), reply
        assert b"\r\nServer: shelfcast\r\n" in reply and b"\r\nConnection: close\r\n" in reply, reply[:300]
        assert took < HEADER_TIMEOUT_S, took
    reply, took = raw_exchange(tls_server, b"\x16\x03\x01\x00\x04 not a ClientHello")
    assert b"HTTP" not in reply and took < HEADER_TIMEOUT_S, (reply, took)  # at most OpenSSL's alert
    logged = logged_since(tls_server, before_log)
    assert refusals(tls_server) == {**before, "plain_http_to_tls_port": before["plain_http_to_tls_port"] + 3,
                                    "tls_error": before["tls_error"] + 1}
    assert logged.count("a plain HTTP request on a port that speaks TLS: answered 400") == 3, logged
    assert logged.count("TLS handshake refused: ") == 1, logged
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged



def test_a_plain_head_request_sent_a_byte_at_a_time_to_the_tls_port_gets_no_body(tls_server):
    """OpenSSL reads the request's first bytes as a TLS record header, so whether it was a HEAD is noted before the
    handshake, from the bytes left unread: a request line that arrives in pieces is told too."""
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as client:
        for piece in (b"H", b"EA", b"D /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
            client.sendall(piece)
            time.sleep(0.1)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n") and reply.endswith(b"\r\n\r\n"), reply

SLOW_HANDSHAKE_TIMEOUT_S = 7.0  # over gunicorn's 5 s wait for a new connection's first bytes


def test_a_tls_client_that_sends_nothing_is_closed_at_the_header_timeout_and_counted(app_bundles, tmp_path):
    """A TLS connection that sends nothing waits on gunicorn's poller (after gunicorn's 5 s wait on a thread, before
    the worker sent it there at once). Before, gunicorn closed it there 5 s later whatever SHELFCAST_HEADER_TIMEOUT_S
    (10 s after it connected: 20 s set, 10 s), with no count and no line, while half a ClientHello was closed at the
    timeout and counted; and one that sent nothing for those 5 s and then half a ClientHello got a whole timeout more
    (13 s, not 7). Both now go at the timeout from their connect, `tls_handshake_timeout` each; meanwhile they hold
    no thread: with 3 threads and 3 such clients, a request is answered at once. A stop closes one sooner, uncounted:
    its handshake's time was not up."""
    served = start_tls(app_bundles, tmp_path, threads=3, header_timeout_s=SLOW_HANDSHAKE_TIMEOUT_S)
    try:
        before_log, before = served.log_path.read_text(encoding="utf-8"), refusals(served)
        hello = client_hello()
        closed_after: dict[str, float] = {}

        def client(name: str, send_after_s: float | None) -> None:
            with socket.create_connection(("127.0.0.1", served.port), timeout=30) as raw:
                connected = time.monotonic()
                if send_after_s is not None:
                    time.sleep(send_after_s)
                    raw.sendall(hello[:len(hello) // 2])
                try:
                    assert raw.recv(65536) == b""
                except ConnectionResetError:
                    pass
                closed_after[name] = time.monotonic() - connected

        clients = [threading.Thread(target=client, args=("silent 1", None)),
                   threading.Thread(target=client, args=("silent 2", None)),
                   threading.Thread(target=client, args=("half a hello at 6 s", SLOW_HANDSHAKE_TIMEOUT_S - 1))]
        for thread in clients:
            thread.start()
        time.sleep(SLOW_HANDSHAKE_TIMEOUT_S - 1)
        asked = time.monotonic()
        healthz, _ = exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answered_after = time.monotonic() - asked
        for thread in clients:
            thread.join(timeout=30)
        assert healthz.startswith(b"HTTP/1.1 200 ") and answered_after < 0.5, (answered_after, healthz[:200])
        assert len(closed_after) == 3 and all(
            SLOW_HANDSHAKE_TIMEOUT_S - 0.2 <= took < SLOW_HANDSHAKE_TIMEOUT_S + 1.2 for took in closed_after.values()
        ), closed_after
        logged = logged_since(served, before_log)
        assert refusals(served) == {**before, "tls_handshake_timeout": before["tls_handshake_timeout"] + 3}
        assert logged.count("a TLS handshake did not complete within SHELFCAST_HEADER_TIMEOUT_S (7 s): connection "
                            "closed, nothing sent") == 3, logged
        assert "Traceback" not in logged and "[ERROR]" not in logged, logged
        # A stop closes one more that sends nothing within EXIT_IDLE_GRACE_S: no handshake timed out, none counted
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw:
            time.sleep(0.2)  # on the poller
            before_log, stopping = served.log_path.read_text(encoding="utf-8"), time.monotonic()
            served.process.terminate()
            served.process.wait(timeout=60)
            stopped_s = time.monotonic() - stopping
            assert raw.recv(1) == b"", "the silent connection was not closed"
        logged = served.log_path.read_text(encoding="utf-8")[len(before_log):]
        assert "TLS handshake" not in logged and stopped_s < 3, (stopped_s, logged)
    finally:
        served.stop()
