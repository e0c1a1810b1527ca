"""gunicorn's gthread worker, its graceful close of a connection moved off the thread that accepts connections.

gunicorn (26.2, and 27.0 the same) closes a connection it ends (HTTP/1.0, ``Connection: close``, an error answer)
gracefully: it half-closes it and waits up to 2 s for the client to close too (RFC 9112 section 9.6: unread
request bytes would otherwise make the kernel reset the connection and cut the answer short). It waits on the
worker's main thread, the one that accepts and dispatches every connection, so a client that does not close
(urllib with its response left unread is one) held the whole worker for 2 s: one such client every 0.5 s made
others' forecasts take ~1.8 s, and the master timed the workers out. gunicorn has no setting for this; this
subclass hands those closes to threads of its own, and a test (tests/app/test_served_by_gunicorn.py) serves
forecasts beside a dozen such clients, so a gunicorn upgrade that changes the method it overrides is caught.

A client that does not take in its response within the socket timeout the app sets for it (app/request_buffer.py)
is disconnected by that timeout; gunicorn logs it as an error with a 15-line traceback, which `ClientTookTooLong`
turns into one warning line: it is the client's doing, not the server's.

gunicorn bounds only the wait for a connection's first bytes (5 s); a client that then stops mid-headers held its
connection thread until it hung up, and SHELFCAST_THREADS such clients made a worker answer nobody. gunicorn has
no setting for it, so this subclass bounds each request's headers by SHELFCAST_HEADER_TIMEOUT_S (app/config.py),
the first request's from when the connection is accepted (as nginx's client_header_timeout), a kept-alive
connection's next one from when its first bytes arrive: see `ThreadWorker.handle`.

gunicorn bounds each header field (limit_request_field_size, 8190 bytes) and their number (limit_request_fields,
100), so a request could carry 800 KB of headers: 29 ms of a worker's CPU to read (its parser copies and searches
what it holds at each 8 KiB read) against 0.6 ms for a plain request, and 16 clients sending such requests took a
worker from 178 to 300 MB. `HeaderBoundRequest` bounds them in all by SHELFCAST_MAX_HEADER_BYTES (32 KiB, as the
compose proxy's large_client_header_buffers): gunicorn's 431 past it.

Each request the worker answers itself, its app not called (the 408 above; gunicorn's 400, 403, 417, 431, 501 for
what its parser refuses, a 500 for an exception outside the app's error handling), is counted in /metrics,
shelfcast_refused_requests_total{reason} (app/metrics.py REFUSAL_REASONS): before, a flood of them showed only as
warning lines in the log. gunicorn answers all of its own through the worker's ``handle_error``, which
``ThreadWorker`` overrides to count them, and to write the answer itself (`own_answer`): gunicorn's had none of the
headers every answer of the app carries (app/__init__.py SECURITY_HEADERS, `Server`), and gunicorn has no setting
for them. With TLS in gunicorn (--certfile) nothing can be answered before a handshake completes: a handshake that
fails or stalls is counted once by what happened and closed (`ThreadWorker._handshake_ended`), plain HTTP on the
TLS port answered 400 in plain text; a ClientHello on a plain port is refused at once (`TLSOnPlainPort`).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import queue
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import NamedTuple

import gunicorn.http.wsgi
from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.http.errors import (
    ConfigurationProblem,
    ExpectationFailed,
    ForbiddenProxyRequest,
    InvalidH2CPreface,
    InvalidHeader,
    InvalidHeaderName,
    InvalidHTTPVersion,
    InvalidProxyHeader,
    InvalidProxyLine,
    InvalidRequestLine,
    InvalidRequestMethod,
    InvalidSchemeHeaders,
    LimitRequestHeaders,
    LimitRequestLine,
    ObsoleteFolding,
    ParseException,
    UnsupportedTransferCoding,
)
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import ThreadWorker as GthreadWorker

from app import SECURITY_HEADERS
from app.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, AppSettings, SettingsError
from app.request_buffer import READ_DEADLINES, DeclaredTooLarge, own_handle

CLOSING_THREADS = 4  # each close waits at most 2 s for its client: 2 closes a second at the worst
MOST_WAITING = 256  # closes queued beyond this happen at once, without the wait (a flood of such clients)
# A connection that waited for a thread past its header deadline still gets this long for headers it has sent.
LAST_CHANCE_S = 0.1
# In a graceful exit, a kept-alive connection idle this long is closed (not after `keepalive`), and a new one that has
# sent nothing this long after its connect: a client sending requests back to back, or one that has just connected,
# has its request in by then, and is answered `Connection: close`.
EXIT_IDLE_GRACE_S = 0.25
NOTHING_SENT_YET = object()  # handle()'s result for a new connection with no bytes in yet: it waits on the poller
# What a client whose headers ran out of time is sent, if its socket takes it at once (never waited for).
TIMED_OUT_BODY = b"the request's headers did not arrive in time\n"
READ_SIZE = 8192  # the most gunicorn's parser reads from a socket at once (its SocketUnreader's mxchunk)
RELOAD_MARKER = "reloading.json"  # in PROMETHEUS_MULTIPROC_DIR: the workers a SIGHUP replaces (app/gunicorn_conf.py)
# OpenSSL's reasons for a handshake whose first bytes were a plain HTTP request (GET, POST, HEAD, PUT; CONNECT).
PLAIN_HTTP_HANDSHAKES = {"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"}
PLAIN_HTTP_BODY = b"this port speaks TLS: send the request over https\n"
HEAD_REQUEST = b"HEAD "  # how a plain HTTP HEAD request opens: its 400 on the TLS port goes without a body
# What a TLS handshake read when its client went (or a header deadline shut the read side): a client that left.
TLS_CLIENT_LEFT = (ssl.SSLZeroReturnError, ssl.SSLEOFError)
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of a TLS ClientHello; no HTTP request (nor PROXY header) starts with it
# A worker whose accept() found no file left (EMFILE; ENFILE: the system's) stops accepting this long: the connection
# stays in the listen queue, and the poller, which would wake at once for it, does not spin meanwhile.
ACCEPT_PAUSE_S = 0.2
OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


# The signals that stop a worker (gunicorn's handle_exit, handle_quit): held from the master's fork of a worker until
# the worker's own handlers are in (`hold_stop_signals`).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


def hold_stop_signals() -> None:
    """Master, just before it forks a worker (app/gunicorn_conf.py pre_fork): the stop signals are held, not handled,
    until ``release_stop_signals``. The child inherits them held. Before, a SIGTERM gunicorn's master passed on to a
    worker between its fork and gunicorn's installing the worker's handlers (init_signals) ran the master's handler
    in the child's copy of the master, which only queued it: the worker served on, and the stop waited the whole 30 s
    graceful_timeout (5 of 17 stops sent 0.3-0.7 s after a start of 2 workers). Held, it is handled once the
    worker's handler is in (``ThreadWorker.init_signals``). The master releases them the instant its fork returns
    (os.register_at_fork, app/gunicorn_conf.py when_ready)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    """The stop signals ``hold_stop_signals`` held: one that came meanwhile is handled now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class TLSOnPlainPort(ParseException):
    """A connection to a plain-HTTP port that opened with a TLS handshake record: a client given https:// for it."""

    def __str__(self) -> str:
        return "a TLS handshake on a port that speaks plain HTTP (use http://)"


# What gunicorn 26.2's ``handle_error`` (workers/base.py) answers each exception with, as app/metrics.py's
# REFUSAL_REASONS (the first that matches); any other exception is its 500, "server_error".
REFUSALS = (
    (LimitRequestHeaders, "headers_too_large"),  # 431
    (LimitRequestLine, "request_line_too_long"),  # 400
    (ExpectationFailed, "expectation_failed"),  # 417
    (UnsupportedTransferCoding, "unsupported_transfer_coding"),  # 501
    (ForbiddenProxyRequest, "forbidden"),  # 403
    (ssl.SSLError, "tls_error"),  # gunicorn's 403, which cannot reach a client whose TLS failed: no answer
    (TLSOnPlainPort, "tls_to_plain_port"),  # 400 (before, a 408 once SHELFCAST_HEADER_TIMEOUT_S was up)
    ((InvalidRequestLine, InvalidRequestMethod, InvalidHTTPVersion, InvalidHeader, InvalidHeaderName, ObsoleteFolding,
      InvalidProxyLine, InvalidProxyHeader, InvalidSchemeHeaders, InvalidH2CPreface), "bad_request"),  # 400
    # (InvalidProxyHeader, a malformed PROXY v2 header, is a 500 in gunicorn's own handle_error: a 400 here)
)

# The attribute HeaderBoundRequest.parse sets on an error it raises: the request's method, None before it was read.
REFUSED_METHOD = "shelfcast_request_method"


def own_answer(status: int, body: bytes, head_only: bool = False) -> bytes:
    """A whole response the worker writes itself, not its app (its 408, the refusals gunicorn's ``handle_error``
    answers): plain text, the connection closed after it, with the `Server` header and the security headers every
    response of the app carries (README "Serving"; before, gunicorn's had none of them, the 408 no Date). To a HEAD
    request (`head_only`), the head alone, as every HEAD answer: its text was read as the next answer's start."""
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Server: {gunicorn.http.wsgi.SERVER}",
            f"Date: {util.http_date()}", "Connection: close", "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in SECURITY_HEADERS.items())]
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + (b"" if head_only else body)


class KeptAliveClose(NamedTuple):
    """When ``murder_keepalived`` closes a kept-alive connection idle on gunicorn's poller."""

    due: float


class PendingClose(NamedTuple):
    """When ``murder_pending`` closes a connection that has sent nothing, and whether its header deadline had passed
    (a TLS one is then a `tls_handshake_timeout`): ``ThreadWorker._pending_close`` decides both."""

    due: float
    headers_timed_out: bool


class GracefulCloser:
    """Closes connections gracefully on daemon threads (a worker exits without waiting for its clients).
    ``holding``: the connections handed to it and not closed yet, each still an open file (up to 2 s each)."""

    def __init__(self, threads: int = CLOSING_THREADS, most_waiting: int = MOST_WAITING):
        self._queue: queue.Queue = queue.Queue(maxsize=most_waiting)
        self._threads = threads
        self._started = False
        self._lock = threading.Lock()
        self.holding = 0

    def close(self, close_connection) -> None:
        """``close_connection(graceful)`` (gunicorn's connection close) gracefully on a closing thread; at once
        when too many wait (a plain close: a reset only where the client left request bytes unread)."""
        with self._lock:
            if not self._started:
                for k in range(self._threads):
                    threading.Thread(target=self._run, name=f"shelfcast-close-{k}", daemon=True).start()
                self._started = True
            self.holding += 1
        try:
            self._queue.put_nowait(close_connection)
        except queue.Full:
            try:
                close_connection(False)
            finally:
                self._closed()

    def _run(self) -> None:
        while True:
            close_connection = self._queue.get()
            try:
                close_connection(True)
            except OSError:  # the client went away meanwhile: nothing left to close
                pass
            finally:
                self._closed()

    def _closed(self) -> None:
        with self._lock:
            self.holding -= 1


class ClientTookTooLong(logging.Filter):
    """Rewrites gunicorn's error record for a response write that timed out as one warning line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TimeoutError):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg = ("a client did not take in its response within SHELFCAST_BODY_TIMEOUT_S: "
                          "connection closed, its thread free again")
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


CLIENT_TOOK_TOO_LONG = ClientTookTooLong()


class HeaderBoundRequest(Request):
    """gunicorn's request (26.2, pinned), its header fields bounded in all by ``max_header_bytes`` (the request line
    aside, bounded by limit_request_line): a header block over it is gunicorn's LimitRequestHeaders, a 431 as for a
    field over limit_request_field_size. gunicorn stops reading a head once it holds ``max_buffer_headers`` bytes
    without the blank line that ends it (its own: limit_request_fields x (limit_request_field_size + 2) + 4, 800 KB);
    that is capped here to the bound and one read more (a body's first bytes may arrive with the blank line, so a head
    within the bound is never refused for them), and the head itself is measured exactly once the blank line is in.
    ``ThreadWorker.init_process`` makes it the class gunicorn's parser builds requests with."""

    max_header_bytes = DEFAULT_MAX_HEADER_BYTES  # the worker's SHELFCAST_MAX_HEADER_BYTES (init_process)
    max_body_bytes = DEFAULT_MAX_BODY_BYTES  # the worker's SHELFCAST_MAX_BODY_BYTES (init_process)

    @property
    def max_buffer_headers(self) -> int:
        return self._max_buffer_headers

    @max_buffer_headers.setter
    def max_buffer_headers(self, gunicorns: int) -> None:  # set by gunicorn's Message.__init__, read by its parser
        self._max_buffer_headers = min(gunicorns, self.max_header_bytes + READ_SIZE)

    def parse(self, unreader):
        """gunicorn's, an error it raises once the request line is read tagged with its method (`REFUSED_METHOD`):
        its parser errors carry no request, and a HEAD request's refusal must be answered without a body. A plain
        connection's first request that opens with a TLS record is refused at once (`TLSOnPlainPort`): gunicorn
        waited for its request line's end, which a ClientHello never sends, and answered 408 once
        SHELFCAST_HEADER_TIMEOUT_S was up."""
        try:
            if self.req_number == 1 and not self.cfg.is_ssl:
                first = unreader.read()
                unreader.unread(first)
                if first[:1] == bytes([TLS_HANDSHAKE_RECORD]):
                    raise TLSOnPlainPort()
            return super().parse(unreader)
        except Exception as exc:
            setattr(exc, REFUSED_METHOD, self.method)
            raise

    def parse_headers(self, data, from_trailer=False):
        if not from_trailer and len(data) > self.max_header_bytes:
            raise LimitRequestHeaders(f"the header fields are {len(data)} bytes, over SHELFCAST_MAX_HEADER_BYTES "
                                      f"({self.max_header_bytes})")
        return super().parse_headers(data, from_trailer)

    def set_body_reader(self):
        """gunicorn's, a chunked body read by `BoundedChunkedReader`."""
        super().set_body_reader()
        if isinstance(self.body.reader, ChunkedReader):
            self.body = Body(BoundedChunkedReader(self, self.unreader, self.max_header_bytes, self.max_body_bytes))


class ChunkFramingTooLong(ParseException):
    """A chunked body's chunk-size line or trailer section ran past its bound (no errno: app/request_buffer.py
    answers it 400 as a malformed body)."""


class BoundedChunkedReader(ChunkedReader):
    """gunicorn's reader of a chunked body (26.2, pinned), each chunk-size line (with its extensions) and the trailer
    section bounded by SHELFCAST_MAX_HEADER_BYTES and one read more, as a head is (`HeaderBoundRequest`). gunicorn
    reads each until its CRLF (the trailers: a blank line) with no bound, and searches all it holds at each read of
    at most 8 KiB: none of those bytes is the body's, so SHELFCAST_MAX_BODY_BYTES never counted them, and a client
    streaming one endless chunk-size line held a worker's core for all of SHELFCAST_BODY_TIMEOUT_S, buffering tens of
    MB. ``get_data`` is the one read of both loops (`parse_chunk_size`, `parse_trailers`). The chunk sizes read so far
    declaring more than SHELFCAST_MAX_BODY_BYTES in all is `DeclaredTooLarge`, the app's 413 at once, as a
    Content-Length over it gets (before, the 413 came once the limit's worth had arrived, or a 408 after the body
    timeout from a client that announced 2 MiB and waited)."""

    def __init__(self, req, unreader, max_header_bytes: int, max_body_bytes: int):
        super().__init__(req, unreader)
        self.max_framing_bytes = max_header_bytes + READ_SIZE  # a line's end may arrive with the next chunk's data
        self.max_body_bytes, self.declared = max_body_bytes, 0

    def parse_chunk_size(self, unreader, data=None):
        size, rest = super().parse_chunk_size(unreader, data)
        self.declared += size
        if self.declared > self.max_body_bytes:
            raise DeclaredTooLarge(f"chunk sizes declare {self.declared} bytes, over {self.max_body_bytes}")
        return size, rest

    def get_data(self, unreader, buf):
        super().get_data(unreader, buf)
        if buf.tell() > self.max_framing_bytes:
            raise ChunkFramingTooLong(f"a chunk-size line or the trailer fields ran past {self.max_framing_bytes} "
                                      f"bytes without their end (SHELFCAST_MAX_HEADER_BYTES "
                                      f"{self.max_framing_bytes - READ_SIZE} and one read)")


class ThreadWorker(GthreadWorker):
    """gthread, with each connection its main thread finishes closed by a GracefulCloser, and each request's
    headers read within SHELFCAST_HEADER_TIMEOUT_S and SHELFCAST_MAX_HEADER_BYTES. gunicorn (26.2, pinned) has a
    setting for none of these, so this overrides fourteen methods of its ThreadWorker: ``finish_request`` (the closes,
    and a pipelined request already read handed on), ``enqueue_req``, ``handle`` and ``handle_request`` (the header
    deadline; a new connection with no bytes yet sent to the poller at once, not waited for on a thread),
    ``murder_pending`` (a connection that sends nothing held to the same deadline, a TLS one counted),
    ``murder_keepalived`` and ``wait_for_and_dispatch_events`` (a graceful exit closes idle kept-alive connections at
    once, and ends with the last request in flight, not after graceful_timeout), ``init_process``
    (the header bound: its parser's request class), ``set_accept_enabled`` (a graceful exit stops listening; with
    ``finish_request``'s kept-alive connections, no request fails at a SIGHUP),
    ``handle_exit`` (a SIGHUP's old workers serve until the new ones listen), ``init_signals`` (a stop sent while the
    worker booted is not lost: `hold_stop_signals`), ``handle_error`` (each request gunicorn refuses counted in
    /metrics, as ``handle`` counts its 408s, and answered with the app's headers), ``run`` (the connections taken at
    once, those closing counted, bounded by the open-file limit: app/open_files.py, ``worker_connections``) and
    ``accept`` (no file left for one: it waits queued, the worker lives).
    tests/app/test_served_by_gunicorn.py, tests/app/test_served_request_headers.py, tests/app/test_served_tls.py and
    tests/app/test_served_lifecycle.py fail if an upgrade changes how gunicorn calls them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.closer = GracefulCloser()
        self.handshakes = threading.local()  # failed: the TLS handshake error handle_error met on this thread
        logging.getLogger("gunicorn.error").addFilter(CLIENT_TOOK_TOO_LONG)  # once: the same filter object
        try:
            settings = AppSettings.from_environment()
        except SettingsError:  # never used: the app refuses to start with a bad setting, naming it (app/wsgi.py)
            settings = AppSettings()
        self.header_timeout_s, self.max_body_bytes = settings.header_timeout_s, settings.max_body_bytes
        self.max_header_bytes = settings.max_header_bytes

    def init_process(self):
        """In the worker (after the fork; the master parses no request): gunicorn's HTTP/1 parser builds
        ``HeaderBoundRequest``s, bounded by this worker's SHELFCAST_MAX_HEADER_BYTES; and the counter of requests it
        refuses (app/metrics.py, imported here: the master imports this module, and must import none of the app),
        each reason's series made now, at 0, so an alert on one has a series before its first refusal."""
        from app.metrics import REFUSAL_REASONS, REFUSED, labelled

        self.refused = {reason: labelled(REFUSED, reason) for reason in REFUSAL_REASONS}
        self.refusal_status = REFUSAL_REASONS
        HeaderBoundRequest.max_header_bytes = self.max_header_bytes
        HeaderBoundRequest.max_body_bytes = self.max_body_bytes
        RequestParser.mesg_class = HeaderBoundRequest
        super().init_process()

    @property
    def worker_connections(self) -> int:
        """What gunicorn's run loop compares its open connections with (``nr_conns``, which counts no connection
        once its close is handed to the closer): the bound ``run`` sets, less the connections still closing, so
        those it holds open count against the open-file limit too."""
        return self.connection_bound - (self.closer.holding if hasattr(self, "closer") else 0)

    @worker_connections.setter
    def worker_connections(self, bound: int) -> None:  # gunicorn's __init__ sets it (to its worker_connections)
        self.connection_bound = bound

    def run(self):
        """Overrides gunicorn's ``run()``, which it calls once the app is loaded (and post_worker_init has opened this
        worker's socket): first, the connections it takes at once bounded by its open-file limit
        (app/open_files.py); where that leaves none, one line and gunicorn's boot-error exit, which stops the server
        rather than restarting a worker that would fail the same way."""
        from app.open_files import TooFewOpenFiles, connections_within_limit  # in the worker: none of it in the master

        self.accept_paused_until = 0.0
        self.out_of_files_said = False
        if not self.alive:  # told to stop while it booted: it ends now, whatever its limit
            return super().run()
        try:
            bound, lowered = connections_within_limit(self.cfg.worker_connections, self.cfg.threads)
        except TooFewOpenFiles as exc:
            self.log.error("cannot start: %s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if lowered:
            self.log.warning("worker %s %s", os.getpid(), lowered)
        self.worker_connections = bound
        self.max_keepalived = bound - self.cfg.threads  # as gunicorn sets it from worker_connections; <= 0: none
        return super().run()

    def accept(self, listener):
        """Overrides gunicorn's ``accept(listener)``, which raised EMFILE (this process's open-file limit) or ENFILE
        (the system's) out of the worker's loop: the worker died, resetting every connection it held. Now the
        connection stays queued and the worker accepts again ACCEPT_PAUSE_S later, said once."""
        try:
            super().accept(listener)
        except OSError as exc:
            if exc.errno not in OUT_OF_FILES:
                raise
            if not self.out_of_files_said:
                self.out_of_files_said = True
                self.log.warning("worker %s: no file left to accept a connection with (%s) while it holds %d: "
                                 "new ones wait; raise the open-file limit (`ulimit -n`) to take more at once",
                                 os.getpid(), exc.strerror, self.nr_conns)
            self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
            if self._accepting:  # gunicorn's own: this class's also drains the queue at a graceful exit
                GthreadWorker.set_accept_enabled(self, False)

    def init_signals(self):
        """Overrides gunicorn's ``init_signals()``: its handlers installed, the stop signals held since the fork
        (`hold_stop_signals`) are released, so a SIGTERM that came meanwhile stops this worker now."""
        super().init_signals()
        release_stop_signals()

    def handle_error(self, req, client, addr, exc):
        """Overrides gunicorn's ``handle_error(req, client, addr, exc)``: where its worker answers each request it
        refuses itself (called from ``handle`` on a connection thread: a parser error is 400, 403, 417, 431 or 501;
        any other exception 500). Counted here by the answer it gets (REFUSALS), logged and written to the access
        log as gunicorn does (a warning line, or the traceback of a 500 other than its ConfigurationProblem), and
        answered by `own_answer`: the status gunicorn sends (its 500 said "Bad Request"), a body saying what was
        wrong with the request (nothing about the server's own error, nor the client's address), and the app's
        headers. A TLS error is not answered (gunicorn's 403 never reached the client); one in a handshake is left to
        ``handle``, which knows whether the header deadline ended it."""
        if isinstance(exc, ssl.SSLError) and not _tls_established(client):
            self.handshakes.failed = exc  # `handle` tells why, knowing whether the header deadline had passed
            return
        reason = refusal_reason(exc)
        self.refused[reason].inc()
        status = self.refusal_status[reason]
        addr = addr or ("", -1)  # a unix socket's client
        if status is None:
            self.log.warning("%s: %s: connection closed without an answer", _address(addr), exc)
            return
        if reason != "server_error" or isinstance(exc, ConfigurationProblem):
            self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
        else:
            self.log.exception("Error handling request %s %s", getattr(req, "method", ""),
                               getattr(req, "uri", "(no URI read)"))
        said = f": {exc}" if reason not in ("server_error", "forbidden") else ""
        body = f"{HTTPStatus(status).phrase}{said}\n".encode("utf-8", "replace")
        req = req if req is not None else getattr(exc, "req", None)  # gunicorn's header errors carry theirs
        if req is not None:
            environ = gunicorn.http.wsgi.default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
            response = gunicorn.http.wsgi.Response(req, client, self.cfg)
            response.status, response.response_length = f"{status} {HTTPStatus(status).phrase}", len(body)
            self.log.access(response, req, environ, timedelta(0))
        try:
            method = getattr(req, "method", None) or getattr(exc, REFUSED_METHOD, None)
            util.write_nonblock(client, own_answer(status, body, head_only=method == "HEAD"))
        except OSError:  # the client has gone, or does not read (its send buffer full): nothing more to do
            self.log.debug("Failed to send error message.")

    def handle_quit(self, sig, frame):
        """Overrides gunicorn's SIGINT/SIGQUIT handler, which is not reentrant: it shuts the thread pool down under the
        pool's lock (a plain Lock), and Ctrl-C sends two stops, SIGINT to the whole process group and then the
        master's SIGQUIT. One handled while the other held that lock deadlocked the worker until the master's SIGKILL
        at graceful_timeout: `make serve` took 30 s to stop ("Worker ... was sent SIGKILL! Perhaps out of memory?"),
        its events' close never ran (after two hot reloads, 1 stop in 1 here). The first stop goes on; the others are
        no-ops."""
        if getattr(self, "quitting", False):
            return
        self.quitting = True
        super().handle_quit(sig, frame)

    def handle_exit(self, sig, frame):
        """Overrides gunicorn's SIGTERM handler. A worker a SIGHUP replaces (app/gunicorn_conf.py on_reload names it)
        keeps serving until the new workers listen (each opens its socket once its app has loaded), at most the
        worker timeout, then exits gracefully. gunicorn stops the old workers right after forking the new ones, so
        every new connection waited for a new worker's load: requests held 4.8-6.1 s at each SIGHUP of a tiny
        model (README "Serving"). A second SIGTERM (a stop meanwhile) exits at once."""
        if self.alive and not getattr(self, "handing_over", False) and self.cfg.reuse_port:
            replaced = replaced_by_reload(os.getpid())
            if replaced is not None:
                self.handing_over = True
                threading.Thread(target=self.exit_once_replaced, args=(replaced,), name="reload-handover",
                                 daemon=True).start()
                return
        super().handle_exit(sig, frame)

    def exit_once_replaced(self, workers: int) -> None:
        from app.launch import LISTEN, socket_inodes  # the worker only: the master imports this module

        ports = {listener.getsockname()[1] for listener in self.sockets}
        ours = {port: socket_inodes(port, LISTEN) or set() for port in ports}  # the new workers' are not open yet
        deadline = time.monotonic() + self.cfg.timeout
        while self.alive and time.monotonic() < deadline and self.is_parent_alive():
            listening = {port: socket_inodes(port, LISTEN) for port in ports}
            if all(now is None or len(now - ours[port]) >= workers for port, now in listening.items()):
                break
            time.sleep(0.05)
        super().handle_exit(None, None)

    def finish_request(self, conn, fs):
        if "close" not in vars(conn):  # once per connection (a kept-alive one comes back here per request)
            close = conn.close

            def close_elsewhere(graceful=False):
                if graceful:
                    self.closer.close(close)
                else:
                    close()

            conn.close = close_elsewhere
        if not fs.cancelled() and fs.exception() is None and fs.result() is NOTHING_SENT_YET:
            self._wait_on_the_poller(conn)
            return
        kept_alive = not fs.cancelled() and fs.exception() is None and fs.result() is True
        if kept_alive and _read_ahead(conn):
            # A pipelining client's next request, read with this one: the socket will not turn readable for it, and
            # gunicorn's poller waited for that until the keep-alive ran out (1 of 3 pipelined requests answered).
            self.enqueue_req(conn)
            return
        if not self.alive and kept_alive:
            # Its answer promised keep-alive before the worker began to exit: gunicorn closed it anyway, and the
            # client's next request, often already sent, failed (RemoteDisconnected). Kept open, that request is
            # served (with `Connection: close`) in the graceful exit; one left idle is closed after
            # EXIT_IDLE_GRACE_S (``murder_keepalived``).
            conn.sock.setblocking(False)
            conn.set_timeout()
            self.keepalived_conns.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self.on_client_socket_readable,
                                                                                    conn))
            return
        super().finish_request(conn, fs)

    def _wait_on_the_poller(self, conn):
        """A new connection ``handle`` found with no bytes yet waits for them on gunicorn's poller (main thread),
        holding no thread, until ``murder_pending`` closes it (``_pending_close``), in a graceful exit too: one
        accepted there (``set_accept_enabled`` takes those queued) was closed at once, its request, sent an instant
        after its connect, unanswered."""
        conn.sock.setblocking(False)
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self.on_pending_socket_readable,
                                                                                conn))

    def enqueue_req(self, conn):
        """Overrides gunicorn's ``enqueue_req(conn)``, which hands a connection to the thread pool (main thread)
        once it is accepted, or once a kept-alive or idle one is readable again: the header deadline counts from
        then, not from when a thread is free, so clients stalled mid-headers that queued for a thread behind
        others hold it only briefly (``handle``). A connection's first request (a TLS one's handshake) counts from
        its acceptance however often it comes back: one that sent nothing for 0.9 of the timeout (on the poller,
        ``_wait_on_the_poller``) and then a byte got a whole timeout more, as a TLS one did after half a ClientHello."""
        if not (hasattr(conn, "arrived") and not conn.initialized):  # initialized: its first request was read
            conn.arrived = time.monotonic()
        super().enqueue_req(conn)

    def murder_pending(self):
        """Overrides gunicorn's ``murder_pending()`` (main thread, about once a second), which closes the new
        connections that sent nothing within gunicorn's 5 s wait and then nothing within `keepalive` (5 s) on its
        poller, where they hold no thread (``handle`` puts them there at once). Each is closed when
        ``_pending_close`` says (SHELFCAST_HEADER_TIMEOUT_S from its acceptance; in a graceful exit, EXIT_IDLE_GRACE_S),
        a TLS one whose header deadline had passed counted and logged as a `tls_handshake_timeout`
        (``_handshake_timed_out``): before, it went after 10 s whatever the timeout, neither counted nor logged, while
        half a ClientHello was both. Pending connections are queued by when their thread's wait began, not by when
        they arrived: ``_close_due`` looks at each."""
        self._close_due(self.pending_conns, self._pending_close, closing=self._count_a_handshake_not_begun)

    def _count_a_handshake_not_begun(self, conn, close: PendingClose) -> None:
        """A pending connection ``murder_pending`` closes: counted and logged if it is TLS and ``_pending_close``
        found its header deadline passed (not one a graceful exit closes sooner)."""
        if close.headers_timed_out and self._before_handshake(conn):
            self._handshake_timed_out(conn.client)

    def murder_keepalived(self):
        """Overrides gunicorn's ``murder_keepalived()`` (main thread, after each wake-up of its loop), which closes
        the kept-alive connections idle for `keepalive` (5 s). In a graceful exit one idle for EXIT_IDLE_GRACE_S is
        closed (``_kept_alive_close``): there is no more to wait for from a browser tab or nginx's upstream pool, and
        each such connection held the exit for `keepalive`, or (``wait_for_and_dispatch_events``) the whole 30 s
        graceful_timeout. A request that arrived before the close is served first: the wake-up that this follows
        hands each readable connection to a thread."""
        self._close_due(self.keepalived_conns, self._kept_alive_close)

    def _close_due(self, conns, decide, closing=None) -> None:
        """Close each connection of ``conns`` (one of gunicorn's queues of connections idle on its poller) whose
        close ``decide(conn, now)`` says is due, as gunicorn's murder_* methods do: out of the queue and the poller,
        uncounted, closed, ``closing(conn, close)`` just before, told what ``decide`` decided. Every one due, not
        only those up to the first one that is not (gunicorn's order is when each was queued, not when each is
        due)."""
        now = time.monotonic()
        for conn, close in [(conn, decide(conn, now)) for conn in conns]:
            if close.due > now:
                continue
            conns.remove(conn)
            try:
                self.poller.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass  # already unregistered
            self.nr_conns -= 1
            if closing is not None:
                closing(conn, close)
            conn.close()

    def _kept_alive_close(self, conn, now: float) -> KeptAliveClose:
        """When a kept-alive connection idle on gunicorn's poller is closed (``murder_keepalived``); ``now`` unused,
        as ``_close_due`` asks every decision."""
        if self.alive:
            return KeptAliveClose(conn.timeout)
        idle_since = conn.timeout - self.cfg.keepalive  # gunicorn's set_timeout, as the connection went idle
        return KeptAliveClose(min(conn.timeout, idle_since + EXIT_IDLE_GRACE_S))

    def wait_for_and_dispatch_events(self, timeout):
        """Overrides gunicorn's ``wait_for_and_dispatch_events(timeout)``. Its graceful exit waits for an event for
        all that is left of graceful_timeout, and closes the connections whose time is up only after it: an idle
        kept-alive connection (which sends no event) held every SIGTERM stop for the whole 30 s (`docker stop` with
        a browser tab open; 0.5 s without it). In the exit the wait ends when the next idle connection is due."""
        if not self.alive:
            now = time.monotonic()
            due = [self._kept_alive_close(conn, now).due for conn in self.keepalived_conns]
            due += [self._pending_close(conn, now).due for conn in self.pending_conns]
            if due:
                timeout = min(timeout, max(min(due) - now, 0))
        super().wait_for_and_dispatch_events(timeout)

    def _before_handshake(self, conn) -> bool:
        """Whether ``conn`` is a TLS connection gunicorn has not begun to wrap (it does so once bytes arrive)."""
        return self.cfg.is_ssl and not conn.initialized

    def _pending_close(self, conn, now: float) -> PendingClose:
        """When a connection waiting for its first bytes on gunicorn's poller is closed (``murder_pending``):
        SHELFCAST_HEADER_TIMEOUT_S after it connected, as its headers would be; in a graceful exit EXIT_IDLE_GRACE_S
        after it (a silent connection held every stop for the whole header timeout, 10 s). And whether its header
        deadline has passed by ``now``: one closed then timed out, one a graceful exit closes sooner did not."""
        headers_due = conn.arrived + self.header_timeout_s
        due = headers_due if self.alive else min(headers_due, conn.arrived + EXIT_IDLE_GRACE_S)
        return PendingClose(due, headers_timed_out=headers_due <= now)

    def handle(self, conn):
        """Overrides gunicorn's ``handle(conn)``: one request on a connection, on a connection thread, from the
        read of its headers (the socket in blocking mode, no timeout) to its response. The headers get a
        deadline here, SHELFCAST_HEADER_TIMEOUT_S after the connection was handed to the pool (or, for one that
        waited longer than that for a thread, LAST_CHANCE_S from now: enough for headers already received), which
        ``handle_request`` (entered once they are parsed) takes off again. If it passes first, the connection's
        read side is shut (READ_DEADLINES, as for a body that takes too long): the blocked read returns at once
        with nothing, gunicorn ends the request as a client that left (no log line), and here the client is sent
        a 408 if its socket takes it at once, the timeout is logged as one warning line and the connection is
        closed: its thread is free again. A new connection whose first bytes are not in yet goes back to gunicorn's
        poller at once (``murder_pending`` closes it at the same deadline if none come): gunicorn waited up to 5 s
        for them on this thread, and 3 clients that connect and send nothing held a worker's 3 threads, a request
        meanwhile answered after 4.7 s, not 5 ms. A TLS connection whose handshake had not
        completed by then is closed with nothing sent, counted once as a `tls_handshake_timeout`
        (``_handshake_ended``, which also takes the handshakes that failed)."""
        if not conn.initialized and not conn.data_ready and not conn.wait_for_data(0):
            return NOTHING_SENT_YET  # gunicorn's wait (5 s) held this thread: see the docstring
        now = time.monotonic()
        deadline = max(getattr(conn, "arrived", now) + self.header_timeout_s, now + LAST_CHANCE_S)
        conn.headers_due = READ_DEADLINES.watch(conn.sock, deadline, tls=self.cfg.is_ssl)
        self.handshakes.failed = None
        if self._before_handshake(conn) and "init" not in vars(conn):
            conn.init = functools.partial(_init_after_peek, conn, conn.init)
        try:
            keep_alive = super().handle(conn)
        finally:
            in_time = self._headers_arrived(conn)
        failed, self.handshakes.failed = self.handshakes.failed, None
        if self.cfg.is_ssl and (failed is not None or not in_time) and not _tls_established(conn.sock):
            self._handshake_ended(conn, failed, in_time)
            return False
        if in_time:
            return keep_alive
        try:
            # the read side is shut, the write side is not: sent if the socket takes it at once, as TLS records
            # over TLS (before, with socket.MSG_DONTWAIT, a flag an SSLSocket refuses)
            util.write_nonblock(conn.sock, own_answer(408, TIMED_OUT_BODY))
            answered = "answered 408"
        except OSError:  # its send buffer is full (it does not read), or it has gone: closed without a word
            answered = "its 408 not sent (the client does not read, or has gone)"
        self.refused["header_timeout"].inc()
        self.log.warning("%s: a request's headers did not arrive within SHELFCAST_HEADER_TIMEOUT_S (%g s): "
                         "%s, connection closed, its thread free again",
                         _address(conn.client), self.header_timeout_s, answered)
        return False

    def _handshake_ended(self, conn, failed: ssl.SSLError | None, in_time: bool) -> None:
        """A TLS connection whose handshake did not complete (``failed``: the error gunicorn met in it; None where
        gunicorn ended it quietly), counted once by what happened. Before, a client stalled mid-handshake counted
        twice, as gunicorn's 403 (`forbidden`) and as a 408 logged "answered 408", and a client that left
        mid-handshake (a load balancer's TCP probe) as a 403: nothing is sent before a handshake completes. Plain
        HTTP is answered 400 in plain text, as nginx does: the client reads it."""
        address = _address(conn.client)
        if failed is None or isinstance(failed, TLS_CLIENT_LEFT):
            if in_time:  # as gunicorn takes a plain client that left before its request: no refusal
                self.log.debug("%s: the client left during its TLS handshake", address)
                return
            self._handshake_timed_out(conn.client)
            return
        if failed.reason not in PLAIN_HTTP_HANDSHAKES:
            self.refused["tls_error"].inc()
            self.log.warning("%s: TLS handshake refused: %s: connection closed without an answer", address, failed)
            return
        head_only = getattr(conn, "opening", b"") == HEAD_REQUEST  # its text was read as the next answer's start
        try:  # OpenSSL sent nothing (no alert for these); the client, which speaks plain HTTP, reads plain text
            with own_handle(conn.sock) as plain:
                plain.send(own_answer(400, PLAIN_HTTP_BODY, head_only), socket.MSG_DONTWAIT)
            answered = "answered 400"
        except OSError:
            answered = "its 400 not sent (the client has gone)"
        self.refused["plain_http_to_tls_port"].inc()
        self.log.warning("%s: a plain HTTP request on a port that speaks TLS: %s, connection closed", address,
                         answered)

    def _handshake_timed_out(self, client) -> None:
        """Count and log a TLS connection closed because its handshake had not completed within
        SHELFCAST_HEADER_TIMEOUT_S: mid-handshake (``handle``) or before its first byte (``murder_pending``)."""
        self.refused["tls_handshake_timeout"].inc()
        self.log.warning("%s: a TLS handshake did not complete within SHELFCAST_HEADER_TIMEOUT_S (%g s): "
                         "connection closed, nothing sent (nothing can be before it completes)", _address(client),
                         self.header_timeout_s)

    def set_accept_enabled(self, enabled):
        """Overrides gunicorn's ``set_accept_enabled(enabled)``. At a graceful exit (SIGTERM: `kill -HUP` replaces
        every worker, a scale-down) gunicorn only stops polling a worker's listening socket; with a socket of its
        own (SO_REUSEPORT) that socket listened until the worker exited, so the kernel still queued new
        connections there, and reset them at the exit: each client whose kept-alive connection the old worker
        closed after its last answer reconnected, often to that socket, and failed (4 of 4 clients at every
        SIGHUP). Now it takes what is queued (served before it exits, as gunicorn serves its open connections)
        and closes the socket, so new connections go to the workers that go on."""
        if enabled and time.monotonic() < getattr(self, "accept_paused_until", 0.0):
            return  # out of files a moment ago (``accept``): the run loop asks again at its next turn
        super().set_accept_enabled(enabled)
        if enabled or self.alive or not self.cfg.reuse_port:
            return
        for listener in self.sockets:
            while True:
                accepted = self.nr_conns
                self.accept(listener)  # non-blocking; nothing more queued: no change
                if self.nr_conns == accepted:
                    break
            listener.close()

    def handle_request(self, req, conn):
        """Overrides gunicorn's ``handle_request(req, conn)``, which it calls once ``req``'s headers are parsed,
        before the app runs and reads the body (under its own limit, app/request_buffer.py): the header deadline
        ``handle`` set ends here. (Should it have passed in the instant before, the request is still served; its
        connection is closed after it, its read side being shut.) A request announcing a body over the limit gets no
        `100 Continue`: gunicorn sends one for every `Expect: 100-continue` before the app runs, and the app then
        answered 413, the client invited to upload it all first. (That 413 says `Connection: close`, as every answer
        that leaves a body unread does: app/request_buffer.py ``_say_close``.)"""
        self._headers_arrived(conn)
        declared = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            req._expected_100_continue = False  # gunicorn 26.2's flag (pinned; tests/app/test_served_by_gunicorn.py)
        return super().handle_request(req, conn)

    @staticmethod
    def _headers_arrived(conn) -> bool:
        """The header deadline off; False if it had passed (the connection's read side is shut by now)."""
        watch, conn.headers_due = conn.headers_due, None
        return watch is None or not READ_DEADLINES.release(watch)


def refusal_reason(exc: BaseException) -> str:
    """Why gunicorn refuses a request it fails with ``exc`` (app/metrics.py REFUSAL_REASONS): "server_error" for
    an exception it answers 500."""
    return next((reason for kinds, reason in REFUSALS if isinstance(exc, kinds)), "server_error")


def _init_after_peek(conn, init) -> None:
    """gunicorn's ``conn.init()`` (it wraps the socket in TLS and reads the handshake), the connection's opening
    bytes first noted unread (``conn.opening``): OpenSSL consumes them, and a plain HTTP request's 400 must know
    whether it was a HEAD. gunicorn calls it on a connection thread once bytes have arrived; the peek waits for
    five (a TLS record's header is five: a real ClientHello never waits), so a request line sent a byte at a time
    is still told, and the header deadline, which shuts the read side, ends that wait as it ends a handshake's."""
    if not conn.initialized:
        try:
            conn.opening = conn.sock.recv(len(HEAD_REQUEST), socket.MSG_PEEK | socket.MSG_WAITALL)
        except OSError:
            conn.opening = b""
    init()


def _tls_established(client) -> bool:
    """Whether ``client`` is a TLS connection whose handshake completed (an SSLSocket's version: None before)."""
    return isinstance(client, ssl.SSLSocket) and client.version() is not None


def _read_ahead(conn) -> bool:
    """Whether gunicorn's parser holds bytes of the connection's next request already (pipelined)."""
    buffered = getattr(getattr(getattr(conn, "parser", None), "unreader", None), "buf", None)
    if buffered is None:
        return False
    with buffered.getbuffer() as view:  # released at once: the parser writes into it again
        return view.nbytes > 0


def replaced_by_reload(pid: int) -> int | None:
    """How many new workers replace worker ``pid`` in the SIGHUP in progress; None if it is not being replaced."""
    try:
        marker = json.loads((Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) / RELOAD_MARKER).read_text("utf-8"))
        return int(marker["workers"]) if pid in marker["replaced"] else None
    except (KeyError, OSError, ValueError, TypeError):
        return None


def _address(client) -> str:
    """A client's address for a log line: host:port."""
    if isinstance(client, (tuple, list)) and len(client) >= 2:
        return f"{client[0]}:{client[1]}"
    return repr(client)
