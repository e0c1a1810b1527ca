"""Read the whole request body first, within a size and a time limit; then run the app, one request at a time.

Why: gunicorn's gthread worker gives each connection a thread, and a client that sends
its headers and then stalls holds that thread while the app reads the body. Here the
body is read (into memory, at most SHELFCAST_MAX_BODY_BYTES, whether sent with a
Content-Length or chunked: over it -> 413) by the connection's thread before the app is
entered, with a socket timeout (SHELFCAST_BODY_TIMEOUT_S: a stalled body -> 408 and the
thread is free again). The app itself then runs one request at a time per process, so the
extra threads that wait on slow clients never compete for the GIL with a forecast being made
(CPU-bound Python: one at a time per process is fastest), and in the order the requests
arrived (`ArrivalOrder`): a plain lock lets a newly arrived request overtake those already
waiting, so under a queue some wait many turns — the latency tail (BENCHMARKS.md S1). A buffering proxy in front
(nginx in docker-compose.yml) does the same for the whole connection.
"""

from __future__ import annotations

import collections
import io
import socket
import threading
from typing import Any, Callable, Iterable, Iterator

BODY_TOO_LARGE = "shelfcast.body_too_large"
BODY_TIMED_OUT = "shelfcast.body_timed_out"
CHUNK = 64 * 1024
TCP_CORK = getattr(socket, "TCP_CORK", 0)


class ArrivalOrder:
    """A lock that lets waiting threads in first come, first served: the holder hands it to the
    longest waiter, so it is never free for a newcomer while others wait."""

    def __init__(self) -> None:
        self._state = threading.Lock()
        self._held = False
        self._waiting: collections.deque[threading.Lock] = collections.deque()

    def __enter__(self) -> "ArrivalOrder":
        with self._state:
            if not self._held:
                self._held = True
                return self
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()  # released by the previous holder's __exit__: the gate is ours now
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._state:
            if self._waiting:
                self._waiting.popleft().release()  # handed over: stays held
            else:
                self._held = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)


class BufferedRequests:
    """WSGI middleware; the app reads `environ[BODY_TOO_LARGE]` / `[BODY_TIMED_OUT]` and answers 413 / 408."""

    def __init__(self, app: Callable, max_body_bytes: int, body_timeout_s: float):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._one_at_a_time = ArrivalOrder()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if _has_body(environ):
            body = self._read_body(environ)
            environ["wsgi.input"] = io.BytesIO(body or b"")
            environ["CONTENT_LENGTH"] = str(len(body or b""))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        client = environ.get("gunicorn.socket")
        corked = isinstance(client, socket.socket) and _cork(client, True)
        try:
            with self._one_at_a_time:
                response = self.app(environ, start_response)
        except BaseException:
            if corked:
                _cork(client, False)
            raise
        if not corked:
            return response
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(response, file_wrapper):
            _cork(client, False)  # the server sends files its own way
            return response
        return _CorkedUntilFirstChunk(response, client)

    def _read_body(self, environ: dict[str, Any]) -> bytes | None:
        declared = environ.get("CONTENT_LENGTH", "").strip()
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            environ[BODY_TOO_LARGE] = True
            return None
        if not declared.isdigit() and not environ.get("wsgi.input_terminated"):
            return b""  # a stream without a length that the server does not end: unsafe to read (as Werkzeug)
        # Never read past a declared length: some servers hand over the raw connection.
        wanted = int(declared) if declared.isdigit() else self.max_body_bytes + 1
        client = environ.get("gunicorn.socket")  # gunicorn's connection; absent under other servers and tests
        if isinstance(client, socket.socket):
            client.settimeout(self.body_timeout_s)
        stream, chunks, size = environ["wsgi.input"], [], 0
        try:
            while size <= self.max_body_bytes:
                chunk = stream.read(min(CHUNK, wanted - size)) if size < wanted else b""
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
            environ[BODY_TOO_LARGE] = True
            return None
        except (TimeoutError, socket.timeout):
            environ[BODY_TIMED_OUT] = True
            return None
        finally:
            if isinstance(client, socket.socket):
                client.settimeout(None)


class _CorkedUntilFirstChunk:
    """The app's response body; the cork comes off once the server has written the headers and the first
    chunk (when it asks for the next one, or closes the body), so they leave as one packet and a streamed
    body's later chunks are not held."""

    def __init__(self, body: Iterable[bytes], client: socket.socket):
        self._body = body
        self._client = client
        self._corked = True

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._body)
        for chunk in chunks:
            yield chunk
            self._uncork()
            yield from chunks
            return
        self._uncork()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._uncork()

    def _uncork(self) -> None:
        if self._corked:
            self._corked = False
            _cork(self._client, False)


def _cork(client: socket.socket, on: bool) -> bool:
    """TCP_CORK on the connection: the server writes a response's headers and its body with two send()s,
    and with TCP_NODELAY each would go out as a packet of its own (the client woken twice). Corked, they
    leave as one when the response is closed (or after 200 ms at most, by the kernel). False where
    there is no TCP_CORK (not Linux, not TCP)."""
    if not TCP_CORK:
        return False
    try:
        client.setsockopt(socket.IPPROTO_TCP, TCP_CORK, int(on))
    except OSError:
        return False
    return True


def _has_body(environ: dict[str, Any]) -> bool:
    declared = environ.get("CONTENT_LENGTH", "").strip()
    return (declared not in ("", "0")) or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
