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
waiting, so under a queue some wait many turns — the latency tail (BENCHMARKS.md S1). A small response (at
most HELD_BODY_BYTES, to a connection with nothing left in its send queue, so its send() cannot block) is also
sent before the next request's turn begins: the turn ends when the server closes the body. Otherwise the
next forecast runs while this thread writes the response, and each waits for the other's GIL time slices
(S1's p99 fell by ~2 ms, ~10 %). A larger response, or one to a client that has not taken in the previous
ones, gives up the turn first, so a slow reader only ever holds its own connection thread. A buffering
proxy in front (nginx in docker-compose.yml) does the same for the whole connection.
"""

from __future__ import annotations

import collections
import fcntl
import io
import socket
import struct
import termios
import threading
from typing import Any, Callable, Iterable, Iterator

BODY_TOO_LARGE = "shelfcast.body_too_large"
BODY_TIMED_OUT = "shelfcast.body_timed_out"
CHUNK = 64 * 1024
TCP_CORK = getattr(socket, "TCP_CORK", 0)
# A response body up to this size is sent within its request's turn (module docstring). With the headers it
# stays under 4.5 KiB: into an empty send queue (16 KiB of send buffer by default) one send() that returns at
# once. Only if the kernel ran short of TCP memory and shrank the buffer to its floor (~4.5 KiB with overhead)
# while the client had stopped reading could it wait; that case is not handled (no timeout on the send).
HELD_BODY_BYTES = 3 * 1024
SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0)  # Linux: the bytes in a socket's send queue (sent but unacked, unsent)


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
        declared: list[str] = []

        def start_and_note_length(status, headers, exc_info=None):
            declared[:] = [v for k, v in headers if k.lower() == "content-length"]
            return start_response(status, headers, exc_info)

        turn = self._one_at_a_time
        turn.__enter__()
        try:
            response = self.app(environ, start_and_note_length if corked else start_response)
        except BaseException:
            turn.__exit__(None, None, None)
            if corked:
                _cork(client, False)
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(response, file_wrapper):
            turn.__exit__(None, None, None)
            if corked:
                _cork(client, False)  # the server sends files its own way
            return response
        if corked and _leaves_in_one_send(client, declared):
            return _SentInTurn(response, client, turn)
        turn.__exit__(None, None, None)
        if not corked:
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


class _ClosedBody:
    """A response body that does ``_after_close`` once the server has closed it (it always does, also after an
    error writing it)."""

    def __init__(self, body: Iterable[bytes]):
        self._body = body

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._after_close()

    def _after_close(self) -> None:
        raise NotImplementedError


class _SentInTurn(_ClosedBody):
    """A small response's body: the cork comes off and the request's turn ends when the server closes it."""

    def __init__(self, body: Iterable[bytes], client: socket.socket, turn: ArrivalOrder):
        super().__init__(body)
        self._client = client
        self._turn: ArrivalOrder | None = turn

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def _after_close(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            _cork(self._client, False)
            turn.__exit__(None, None, None)


def _leaves_in_one_send(client: socket.socket, declared: list[str]) -> bool:
    """Whether a response of the declared length goes out without blocking: small, and nothing the client has
    not yet taken in still queued on the connection (HELD_BODY_BYTES)."""
    if len(declared) != 1 or not declared[0].isdigit() or int(declared[0]) > HELD_BODY_BYTES or not SIOCOUTQ:
        return False
    try:
        queued = struct.unpack("i", fcntl.ioctl(client.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return False
    return queued == 0


class _CorkedUntilFirstChunk(_ClosedBody):
    """The app's response body; the cork comes off once the server has written the headers and the first
    chunk (when it asks for the next one, or closes the body), so they leave as one packet and a streamed
    body's later chunks are not held."""

    def __init__(self, body: Iterable[bytes], client: socket.socket):
        super().__init__(body)
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

    def _after_close(self) -> None:
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
