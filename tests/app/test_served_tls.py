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


@pytest.fixture(scope="module")
def tls_server(app_bundles, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gunicorn-tls")
    cert, key = self_signed(workdir)
    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_THREADS": "2",
                           "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(workdir / "p.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
                           "SHELFCAST_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                           "SHELFCAST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
                           "GUNICORN_CMD_ARGS": f"--certfile {cert} --keyfile {key}"},
                          workdir / "gunicorn.log", tls=ssl.create_default_context(cafile=str(cert)))
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
        reply = b""
        try:
            while chunk := client.recv(65536):
                reply += chunk
        except ssl.SSLEOFError:
            pass
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply[:300]
    assert "Shelfcast serves at https://127.0.0.1:" in tls_server.log_path.read_text(encoding="utf-8")
