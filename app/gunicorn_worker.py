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
"""

from __future__ import annotations

import logging
import queue
import threading

from gunicorn.workers.gthread import ThreadWorker as GthreadWorker

CLOSING_THREADS = 4  # each close waits at most 2 s for its client: 2 closes a second at the worst
MOST_WAITING = 256  # closes queued beyond this happen at once, without the wait (a flood of such clients)


class GracefulCloser:
    """Closes connections gracefully on daemon threads (a worker exits without waiting for its clients)."""

    def __init__(self, threads: int = CLOSING_THREADS, most_waiting: int = MOST_WAITING):
        self._queue: queue.Queue = queue.Queue(maxsize=most_waiting)
        self._threads = threads
        self._started = False
        self._lock = threading.Lock()

    def close(self, close_connection) -> None:
        """``close_connection(graceful)`` (gunicorn's connection close) gracefully on a closing thread; at once
        when too many wait (a plain close: a reset only where the client left request bytes unread)."""
        with self._lock:
            if not self._started:
                for k in range(self._threads):
                    threading.Thread(target=self._run, name=f"shelfcast-close-{k}", daemon=True).start()
                self._started = True
        try:
            self._queue.put_nowait(close_connection)
        except queue.Full:
            close_connection(False)

    def _run(self) -> None:
        while True:
            close_connection = self._queue.get()
            try:
                close_connection(True)
            except OSError:  # the client went away meanwhile: nothing left to close
                pass


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


class ThreadWorker(GthreadWorker):
    """gthread, with each connection its main thread finishes closed by a GracefulCloser."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.closer = GracefulCloser()
        logging.getLogger("gunicorn.error").addFilter(CLIENT_TOOK_TOO_LONG)  # once: the same filter object

    def finish_request(self, conn, fs):
        if "close" not in vars(conn):  # once per connection (a kept-alive one comes back here per request)
            close = conn.close

            def close_elsewhere(graceful=False):
                if graceful:
                    self.closer.close(close)
                else:
                    close()

            conn.close = close_elsewhere
        super().finish_request(conn, fs)
