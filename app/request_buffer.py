"""Read the whole request body first, within a size and a time limit; then run the app, one request at a time.

Why: gunicorn's gthread worker gives each connection a thread, and a client that sends
its headers and then stalls holds that thread while the app reads the body. Here the
body is read (into memory, at most SHELFCAST_MAX_BODY_BYTES, whether sent with a
Content-Length or chunked: over it -> 413) by the connection's thread before the app is
entered, within SHELFCAST_BODY_TIMEOUT_S for the whole body (a stalled or trickling body ->
408 and the thread is free again; `ReadDeadlines`, which bounds the headers too, app/gunicorn_worker.py). A
body the server cannot decode (a malformed chunked body) or one that ends before its Content-Length (an
incomplete message, RFC 9112 6.3) is marked `BODY_MALFORMED`: the app answers 400 whatever the path, and the
connection is not reused. The app itself then runs one request at a time per process, so the
extra threads that wait on slow clients never compete for the GIL with a forecast being made
(CPU-bound Python: one at a time per process is fastest), and in the order the requests
arrived (`ArrivalOrder`): a plain lock lets a newly arrived request overtake those already
waiting, so under a queue some wait many turns — the latency tail (BENCHMARKS.md S1). A small response (at
most HELD_BODY_BYTES, to a connection with nothing left in its send queue, so its send() cannot block) is also
sent before the next request's turn begins: the turn ends when the server closes the body. Otherwise the
next forecast runs while this thread writes the response, and each waits for the other's GIL time slices
(S1's p99 fell by ~2 ms, ~10 %). A larger response, or one to a client that has not taken in the previous
ones, gives up the turn first, so a slow reader only ever holds its own connection thread, and that for at most
SHELFCAST_BODY_TIMEOUT_S a write: the server writes such a response (headers, then the body) with that socket
timeout, so a client that has not taken it in by then is disconnected and the thread is free again (without it,
ten clients that pipelined requests and never read held a worker's every thread for good). Either way the
response leaves (uncorked) and the turn ends before the app's on-close callbacks run (a shadow
forecast, app/routes_api.py), so no user waits for those. A buffering proxy in front (nginx in
docker-compose.yml) does the same for the whole connection.

The health probes (GET or HEAD of `/healthz` and `/readyz`, ``probe_paths``) take no turn: they only read what the
worker holds, and queued behind its forecasts a readiness check timed out under load (16 clients sending 1,000-row
batches to 2 workers: /readyz answered in 1.9 s median, 3.0 s at most, past the 2 s the image's and compose's health
check allow), so they are answered beside the request whose turn it is.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import itertools
import logging
import os
import socket
import ssl
import struct
import termios
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import BadRequest

log = logging.getLogger(__name__)

BODY_TOO_LARGE = "shelfcast.body_too_large"
BODY_TIMED_OUT = "shelfcast.body_timed_out"
BODY_MALFORMED = "shelfcast.body_malformed"  # why the server could not decode the body (the app answers 400)
TRANSFER_CODINGS = "shelfcast.transfer_codings"  # the Transfer-Encoding a buffered body no longer has
ARRIVED = "shelfcast.arrived"  # time.perf_counter() once the request was read whole, before its wait for its turn
DEADLINE_CHECK_S = 0.1  # how often overrun body reads are looked for: a 408 comes at most this much late
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

    def __init__(self, app: Callable, max_body_bytes: int, body_timeout_s: float,
                 probe_paths: Iterable[str] = ()):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._one_at_a_time = ArrivalOrder()
        # GET/HEAD of these paths (the health probes, app/routes_health.py) run without waiting for the turn
        self.probe_paths = frozenset(probe_paths)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if _has_body(environ):
            body = self._read_body(environ)
            if BODY_MALFORMED in environ or BODY_TIMED_OUT in environ or BODY_TOO_LARGE in environ:
                _say_close(start_response)  # the rest of the body is unread or unframed: no request follows
            environ[TRANSFER_CODINGS] = environ.pop("HTTP_TRANSFER_ENCODING", "")
            if BODY_MALFORMED in environ:
                environ["wsgi.input"] = UndecodableBody(environ[BODY_MALFORMED])
                environ["wsgi.input_terminated"] = True  # read it: the read answers 400 (Werkzeug would skip it)
                environ.pop("CONTENT_LENGTH", None)
            else:
                environ["wsgi.input"] = io.BytesIO(body or b"")
                environ["CONTENT_LENGTH"] = str(len(body or b""))
        elif environ.get("HTTP_TRANSFER_ENCODING", "").strip():
            # a transfer coding, but not chunked, and no Content-Length: the body's length cannot be known (RFC 9112
            # 6.3). The app names the coding (415); no request may follow on this connection (gunicorn would read
            # the body as data until the client closes), so it closes once the answer is written.
            environ[TRANSFER_CODINGS] = environ.pop("HTTP_TRANSFER_ENCODING")
            environ["wsgi.input"] = io.BytesIO(b"")
            client = environ.get("gunicorn.socket")
            if isinstance(client, socket.socket):
                _read_no_more(client)
            _say_close(start_response)
        # the app times the request from here (its latency histogram, the events' latency_ms): the wait for the
        # turn below is part of what its client waits, the upload before it is the client's own
        environ[ARRIVED] = time.perf_counter()
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD") and environ.get("PATH_INFO") in self.probe_paths:
            return self.app(environ, start_response)  # a probe reads what the worker holds: beside the turn's request
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
        sends_a_file = isinstance(file_wrapper, type) and isinstance(response, file_wrapper)
        if not sends_a_file and corked and _leaves_in_one_send(client, declared):
            return _SentInTurn(response, client, turn)
        turn.__exit__(None, None, None)
        if isinstance(client, socket.socket):
            client.settimeout(self.body_timeout_s)  # each write of a response that may wait for its client
        if sends_a_file:
            if corked:
                _cork(client, False)  # the server sends files its own way
            return response
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
        watch = None
        if isinstance(client, socket.socket):
            client.settimeout(self.body_timeout_s)
            watch = READ_DEADLINES.watch(client, time.monotonic() + self.body_timeout_s)
        body, timed_out, failure = None, False, None
        try:
            body = self._read_within_limit(environ["wsgi.input"], wanted, declared.isdigit())
        except DeclaredTooLarge:
            body = None  # over the limit (below), as a Content-Length over it is
        except (TimeoutError, socket.timeout):
            timed_out = True  # one recv() waited the whole timeout
        except (OSError, ParseException, IncompleteBody) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # the connection failed (reset, ...): the server handles that
            # no errno: the server's decoder refused the body (gunicorn's InvalidChunkSize, a bad trailer's
            # InvalidHeader, ...), or the client sent less than it announced: it left mid-body (NoMoreData,
            # nobody reads that 400) or ended its side of the connection early (IncompleteBody)
            failure = exc
        finally:
            if watch is not None and READ_DEADLINES.release(watch):
                timed_out = True  # the whole body took too long (what was read of it, if anything, is cut short)
            if isinstance(client, socket.socket):
                client.settimeout(None)
        if timed_out:
            environ[BODY_TIMED_OUT] = True
            return None
        if failure is not None:
            environ[BODY_MALFORMED] = f"{type(failure).__name__}: {failure}"[:200]
            # %r for what the client sent: a decoded path may hold a newline (%0a) that would forge a log line
            log.log(logging.DEBUG if isinstance(failure, (NoMoreData, IncompleteBody)) else logging.WARNING,
                    "%r %r from %r: malformed request body (%r); answered 400", environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"), environ.get("REMOTE_ADDR", "?"), environ[BODY_MALFORMED])
            if isinstance(client, socket.socket):
                _read_no_more(client)  # the rest of the stream cannot be framed: no request may follow on it
            return None
        if body is None:
            environ[BODY_TOO_LARGE] = True
        return body

    def _read_within_limit(self, stream, wanted: int, declared: bool) -> bytes | None:
        """The body (``wanted`` bytes at most); None if over max_body_bytes. A ``declared`` length that the
        stream ends short of raises IncompleteBody; without one, the stream's end is the body's."""
        chunks, size = [], 0
        while size <= self.max_body_bytes:
            chunk = stream.read(min(CHUNK, wanted - size)) if size < wanted else b""
            if not chunk:
                if declared and size < wanted:
                    raise IncompleteBody(f"the body ended after {size} of the {wanted} bytes its Content-Length "
                                         "declares")
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        return None


class ReadDeadlines:
    """Ends the reads that run past their deadline (a request's body here, its headers in
    app/gunicorn_worker.py), by shutting the connection's read side: a blocked recv() then returns at once with
    nothing, and the server closes the connection after the 408.

    Why: a socket timeout bounds one recv(), and one read of the server's body stream makes as many recv()s
    as it needs (gunicorn: until the size asked for, or a chunk's end), so a client that sends a byte just
    within each timeout would otherwise hold the thread as long as it likes (gunicorn sets no timeout at all
    on its header reads). One thread per process (started with the first watched read: after gunicorn's fork)
    sleeps until the earliest deadline, at most ``check_every_s`` early or late; with nothing to watch, for the
    shortest timeout seen, so it costs an idle worker one wake-up per timeout and a request no wake-up at all.
    A TLS connection is held by a socket of its own on a copy of its descriptor (`own_handle`; a plain one needs
    no copy, which costs a few microseconds): gunicorn wraps it after its header deadline is set, which detaches
    the socket the deadline was set on (before, such a deadline shut nothing: a TLS client that stopped
    mid-headers held its thread for good), and an SSLSocket's own shutdown() would drop its TLS layer."""

    def __init__(self, check_every_s: float = DEADLINE_CHECK_S):
        self.check_every_s = check_every_s
        self._wake = threading.Condition()
        self._due: dict[int, tuple[float, socket.socket, bool]] = {}  # deadline, what to shut, a copy?
        self._tokens = itertools.count()
        self._watcher: threading.Thread | None = None
        self._idle_s = float("inf")  # the shortest timeout seen: how long the watcher sleeps with nothing due
        self._wake_at = float("inf")

    def watch(self, client: socket.socket, deadline: float, tls: bool = False) -> int:
        """Start watching a read on ``client`` (time.monotonic() ``deadline``); the token for ``release``. ``tls``:
        the connection is to be wrapped in TLS (an SSLSocket is known as one)."""
        token = next(self._tokens)
        held = own_handle(client) if tls or isinstance(client, ssl.SSLSocket) else None
        with self._wake:
            self._due[token] = (deadline, client if held is None else held, held is not None)
            self._idle_s = min(self._idle_s, max(deadline - time.monotonic(), self.check_every_s))
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._run, name="body-deadlines", daemon=True)
                self._watcher.start()
            elif deadline < self._wake_at:  # sooner than the watcher will look (a shorter timeout)
                self._wake.notify()
        return token

    def release(self, token: int) -> bool:
        """Stop watching; True if the deadline passed first (the connection's read side is shut)."""
        with self._wake:
            due = self._due.pop(token, None)
        if due is None:
            return True  # the watcher took it: the deadline passed
        _, handle, copied = due
        if copied:
            handle.close()  # the copy only: the connection stays open
        return False

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for token in [t for t, (deadline, _, _) in self._due.items() if deadline <= now]:
                    _, handle, copied = self._due.pop(token)
                    _read_no_more(handle)
                    if copied:
                        handle.close()
                earliest = min((deadline for deadline, _, _ in self._due.values()), default=now + self._idle_s)
                self._wake_at = max(earliest, now + self.check_every_s)
                self._wake.wait(self._wake_at - now)


READ_DEADLINES = ReadDeadlines()


class IncompleteBody(Exception):
    """The client ended the body before the length its Content-Length declares (RFC 9112 6.3)."""


class DeclaredTooLarge(Exception):
    """A chunked body's chunk sizes declare more than SHELFCAST_MAX_BODY_BYTES (raised by the server's reader,
    app/gunicorn_worker.py `BoundedChunkedReader`, as it reads the size): 413 at once, as for a Content-Length over it,
    not after the client has sent the limit's worth, or a 408 after the body timeout if it never does."""


def malformed_body(reason: str) -> BadRequest:
    """The 400 for a body marked BODY_MALFORMED: the app raises it before routing (app/__init__.py)."""
    return BadRequest(f"the request body is malformed ({reason})")


class UndecodableBody(io.RawIOBase):
    """What the app reads in place of a body the server could not decode: any read raises BadRequest (400),
    which the app answers with its own error shape and headers (for an app that does not look at BODY_MALFORMED
    first)."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise malformed_body(self.reason)


def own_handle(client: socket.socket) -> socket.socket:
    """A plain socket on a copy of ``client``'s descriptor: the same connection whatever becomes of ``client``
    (detached by a TLS wrap, closed), until this copy is closed."""
    return socket.socket(fileno=os.dup(client.fileno()))


def _read_no_more(client: socket.socket) -> None:
    """Shut the connection's read side: a blocked recv() returns at once with nothing, and the server, which
    then reads no further request on it, closes the connection once the response is written. Never by an
    SSLSocket's own shutdown(), which drops its TLS layer: the answer written after it went out as plain text into
    the TLS stream, which the client could not read."""
    try:
        with own_handle(client) if isinstance(client, ssl.SSLSocket) else contextlib.nullcontext(client) as plain:
            plain.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # already closed by the client


def _say_close(start_response: Callable) -> None:
    """Make the response say `Connection: close` where the server closes after it anyway (no request can be read
    after this one's body): an app's own `Connection` header is hop-by-hop, and gunicorn drops it, so its response
    said keep-alive and a client that trusted it sent its next request into a closing connection. gunicorn's
    start_response is its Response's method; ``force_close()`` is how gunicorn itself ends a connection after a
    response (other servers: nothing to do)."""
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()


class _ClosedBody:
    """A response body that does ``_release`` once the server has written it and closes it (the server always
    closes it, also after an error writing it), before the app's body is closed: closing that runs the app's
    on-close callbacks (a shadow forecast), which must never hold the response back nor keep the turn."""

    def __init__(self, body: Iterable[bytes]):
        self._body = body

    def close(self) -> None:
        try:
            self._release()
        finally:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()

    def _release(self) -> None:
        raise NotImplementedError


class _SentInTurn(_ClosedBody):
    """A small response's body: the cork comes off and the request's turn ends when the server closes it."""

    def __init__(self, body: Iterable[bytes], client: socket.socket, turn: ArrivalOrder):
        super().__init__(body)
        self._client = client
        self._turn: ArrivalOrder | None = turn

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def _release(self) -> None:
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

    def _release(self) -> None:
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
