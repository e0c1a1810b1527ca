"""app/request_buffer.py on its own: sized and chunked bodies limited alike, never a read past a declared length,
requests let into the app in the order they arrived."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest

from app.request_buffer import BODY_TOO_LARGE, ArrivalOrder, BufferedRequests


def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{len(body)} {environ.get('CONTENT_LENGTH')} {bool(environ.get(BODY_TOO_LARGE))}".encode()]


def call(environ: dict) -> str:
    app = BufferedRequests(echo, max_body_bytes=100, body_timeout_s=1.0)
    return b"".join(app({"REQUEST_METHOD": "POST", **environ}, lambda *a: None)).decode()


def test_a_declared_length_over_the_limit_is_refused_unread():
    assert call({"CONTENT_LENGTH": "101", "wsgi.input": io.BytesIO(b"x" * 101)}) == "0 0 True"


def test_a_chunked_body_over_the_limit_is_refused_like_a_sized_one():
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    assert call({**chunked, "wsgi.input": io.BytesIO(b"x" * 101)}) == "0 0 True"
    assert call({**chunked, "wsgi.input": io.BytesIO(b"x" * 100)}) == "100 100 False"


def test_never_reads_past_the_declared_length():
    raw_connection = io.BytesIO(b"x" * 10 + b"NEXT REQUEST")  # servers may pass the connection itself
    assert call({"CONTENT_LENGTH": "10", "wsgi.input": raw_connection}) == "10 10 False"
    assert raw_connection.read() == b"NEXT REQUEST"


def test_an_unterminated_stream_without_a_length_is_not_read():
    assert call({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(b"x" * 10)}) == "0 0 False"


def test_waiting_requests_enter_in_arrival_order_and_a_newcomer_queues_behind_them():
    gate, entered = ArrivalOrder(), []

    def request(name: str) -> None:
        with gate:
            entered.append(name)

    gate.__enter__()  # a request being answered
    waiting = []
    for k in range(5):
        waiting.append(threading.Thread(target=request, args=(f"waiting-{k}",)))
        waiting[-1].start()
        deadline = time.monotonic() + 10
        while gate.waiting < k + 1:  # each queues before the next arrives
            assert time.monotonic() < deadline, "a request never started waiting"
            time.sleep(0.001)
    gate.__exit__(None, None, None)  # handed to waiting-0: never free in between
    newcomer = threading.Thread(target=request, args=("newcomer",))
    newcomer.start()
    for thread in [*waiting, newcomer]:
        thread.join(10)
    assert entered == [f"waiting-{k}" for k in range(5)] + ["newcomer"]
    with gate:  # free again once nobody waits
        assert gate.waiting == 0


@pytest.fixture
def connection():
    """The server's end of a loopback TCP connection, as gunicorn hands it over in environ["gunicorn.socket"]."""
    if not hasattr(socket, "TCP_CORK"):
        pytest.skip("TCP_CORK is Linux's")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        yield server


def corked(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))


def test_headers_and_first_chunk_leave_together_then_the_cork_comes_off(connection):
    seen = []

    def streamed(environ, start_response):
        seen.append(corked(connection))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"first", b"second"])

    app = BufferedRequests(streamed, max_body_bytes=100, body_timeout_s=1.0)
    body = app({"REQUEST_METHOD": "GET", "gunicorn.socket": connection}, lambda *a: None)
    chunks = iter(body)
    assert seen == [True] and next(chunks) == b"first" and corked(connection)  # the server writes headers + chunk
    assert next(chunks) == b"second" and not corked(connection)  # a streamed body is not held
    body.close()
    assert not corked(connection)

    unread = app({"REQUEST_METHOD": "GET", "gunicorn.socket": connection}, lambda *a: None)
    assert corked(connection)
    unread.close()  # the server always closes the body, also after an error writing it
    assert not corked(connection)


def test_the_cork_comes_off_when_the_app_raises(connection):
    def broken(environ, start_response):
        raise RuntimeError("boom")

    app = BufferedRequests(broken, max_body_bytes=100, body_timeout_s=1.0)
    with pytest.raises(RuntimeError):
        app({"REQUEST_METHOD": "GET", "gunicorn.socket": connection}, lambda *a: None)
    assert not corked(connection)
