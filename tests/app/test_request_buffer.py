"""app/request_buffer.py on its own: sized and chunked bodies limited alike, never a read past a declared length,
requests let into the app in the order they arrived."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest

from app.request_buffer import BODY_MALFORMED, BODY_TOO_LARGE, HELD_BODY_BYTES, ArrivalOrder, BufferedRequests


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


def test_a_body_shorter_than_its_declared_length_is_malformed_not_served():
    """The client ended its side after 4 of the 20 bytes it announced: an incomplete message (RFC 9112 6.3)."""
    seen = {}

    def app(environ, start_response):
        seen["malformed"] = environ.get(BODY_MALFORMED)
        start_response("200 OK", [])
        return [b""]

    BufferedRequests(app, max_body_bytes=100, body_timeout_s=1.0)(
        {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "20", "wsgi.input": io.BytesIO(b"{}  ")}, lambda *a: None)
    assert seen["malformed"] == "IncompleteBody: the body ended after 4 of the 20 bytes its Content-Length declares"


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
def both_ends():
    """(the server's end, the client's end) of a loopback TCP connection; the server's end is what gunicorn
    hands over in environ["gunicorn.socket"]."""
    if not hasattr(socket, "TCP_CORK"):
        pytest.skip("TCP_CORK is Linux's")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        yield server, client


@pytest.fixture
def connection(both_ends):
    """The server's end of a loopback TCP connection."""
    return both_ends[0]


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


def answering(size: int):
    """A WSGI app: a body of ``size`` bytes with its Content-Length, and on /second a note that it was let in."""
    entered = threading.Event()

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/second":
            entered.set()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b""]
        body = b"x" * size
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return BufferedRequests(app, max_body_bytes=100, body_timeout_s=1.0), entered


def second_request_waits(app: BufferedRequests, entered: threading.Event) -> tuple[bool, threading.Thread]:
    """(whether a request started now has to wait for its turn, its thread: it is let in and finishes later)."""
    thread = threading.Thread(target=lambda: b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/second"},
                                                         lambda *a: None)))
    thread.start()
    return not entered.wait(0.3), thread


def test_a_small_response_is_sent_within_its_turn_a_large_one_after_it(connection):
    """S1's latency tail: the next forecast starts once a small response has left (the server closes its body),
    so the two never trade GIL slices; a response that could block its send() gives the turn up first."""
    small, entered = answering(HELD_BODY_BYTES)
    body = small({"REQUEST_METHOD": "GET", "gunicorn.socket": connection}, lambda *a: None)
    waited, thread = second_request_waits(small, entered)
    assert waited and corked(connection)  # the next request waits while this one is written
    assert b"".join(body) == b"x" * HELD_BODY_BYTES
    body.close()
    thread.join(5)
    assert entered.is_set() and not corked(connection)
    body.close()  # a second close (the server's, after an error) does not end another request's turn

    large, entered = answering(HELD_BODY_BYTES + 1)
    body = large({"REQUEST_METHOD": "GET", "gunicorn.socket": connection}, lambda *a: None)
    waited, thread = second_request_waits(large, entered)
    thread.join(5)
    assert not waited and entered.is_set()  # the turn was given up before the body is written
    body.close()
    assert not corked(connection)


def test_a_client_that_has_not_taken_in_earlier_responses_never_holds_the_turn(connection):
    """A slow reader: the connection's send queue is not empty, so even a small response could block; it is
    written after the turn is given up (a slow reader only ever holds its own connection thread)."""
    connection.setblocking(False)
    try:
        while True:
            connection.send(b"y" * 65536)  # the client reads nothing: its receive buffer, then our queue, fill up
    except BlockingIOError:
        pass
    connection.setblocking(True)
    small, entered = answering(10)
    body = small({"REQUEST_METHOD": "GET", "gunicorn.socket": connection}, lambda *a: None)
    waited, thread = second_request_waits(small, entered)
    thread.join(5)
    assert not waited and entered.is_set()
    body.close()


def test_the_turn_ends_when_the_app_raises(connection):
    entered = threading.Event()

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/second":
            entered.set()
            start_response("200 OK", [])
            return [b""]
        raise RuntimeError("boom")

    buffered = BufferedRequests(app, max_body_bytes=100, body_timeout_s=1.0)
    with pytest.raises(RuntimeError):
        buffered({"REQUEST_METHOD": "GET", "gunicorn.socket": connection}, lambda *a: None)
    waited, thread = second_request_waits(buffered, entered)
    thread.join(5)
    assert not waited and entered.is_set()


def received_within(client: socket.socket, size: int, seconds: float) -> bytes:
    """What the client has received of ``size`` bytes after at most ``seconds``."""
    data, deadline = b"", time.monotonic() + seconds
    while len(data) < size and (left := deadline - time.monotonic()) > 0:
        client.settimeout(left)
        try:
            data += client.recv(size - len(data))
        except TimeoutError:
            break
    return data


def test_the_response_leaves_and_the_turn_ends_before_on_close_callbacks_run(both_ends):
    """A shadow forecast runs in the response's close (Flask's call_on_close, app/routes_api.py); the user has
    the whole response by then, and the next request is let in. Checked within 100 ms, under the kernel's
    200 ms ceiling on a TCP_CORK, so a response still corked would not have arrived."""
    from werkzeug.wsgi import ClosingIterator

    server_end, client_end = both_ends
    response_bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    seen_in_shadow: dict = {}
    entered = threading.Event()

    def shadow() -> None:
        seen_in_shadow["received"] = received_within(client_end, len(response_bytes), 0.1)
        seen_in_shadow["corked"] = corked(server_end)
        seen_in_shadow["next request entered"] = entered.wait(1.0)
        time.sleep(0.2)  # the shadow's forecast

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/second":
            entered.set()
            start_response("200 OK", [])
            return [b""]
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return ClosingIterator([b"hello"], [shadow])

    buffered = BufferedRequests(app, max_body_bytes=100, body_timeout_s=1.0)
    body = buffered({"REQUEST_METHOD": "GET", "gunicorn.socket": server_end}, lambda *a: None)
    waited, second = second_request_waits(buffered, entered)
    assert waited  # a small response: written within its turn
    server_end.sendall(response_bytes[:-5])  # as gunicorn writes it: headers, then the body, then close()
    for chunk in body:
        server_end.sendall(chunk)
    body.close()
    second.join(5)
    assert seen_in_shadow == {"received": response_bytes, "corked": False, "next request entered": True}


@pytest.mark.parametrize("error", [OSError("Invalid chunk size: b'zz'"), "InvalidHeader", "NoMoreData"])
def test_a_body_the_server_cannot_decode_is_a_400_when_read(error):
    """gunicorn raises IOErrors without an errno (InvalidChunkSize, ChunkMissingTerminator, NoMoreData when the
    client leaves mid-body, ...) and, for a bad trailer, its ParseException InvalidHeader; the app is handed a
    body whose read raises BadRequest, so it answers 400 its own way."""
    from gunicorn.http import errors
    from werkzeug.exceptions import BadRequest

    if isinstance(error, str):
        error = getattr(errors, error)("X-Trailer") if error == "InvalidHeader" else getattr(errors, error)(b"")

    class MalformedChunks(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            raise error

    read = []

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except BadRequest as exc:
            read.append(exc.description)
        start_response("200 OK", [])
        return [b""]

    buffered = BufferedRequests(app, max_body_bytes=100, body_timeout_s=1.0)
    buffered({"REQUEST_METHOD": "POST", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True,
              "wsgi.input": MalformedChunks()}, lambda *a: None)
    assert read == [f"the request body is malformed ({type(error).__name__}: {error})"]
