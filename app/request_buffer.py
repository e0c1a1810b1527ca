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
from typing import Any, Callable, Iterable

BODY_TOO_LARGE = "shelfcast.body_too_large"
BODY_TIMED_OUT = "shelfcast.body_timed_out"
CHUNK = 64 * 1024


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
        with self._one_at_a_time:
            return self.app(environ, start_response)

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


def _has_body(environ: dict[str, Any]) -> bool:
    declared = environ.get("CONTENT_LENGTH", "").strip()
    return (declared not in ("", "0")) or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
