"""app/request_buffer.py on its own: sized and chunked bodies limited alike, never a read past a declared length."""

from __future__ import annotations

import io

from app.request_buffer import BODY_TOO_LARGE, BufferedRequests


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
