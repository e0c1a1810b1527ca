"""Prediction events: what the app records about every forecast it serves.

`PredictionEventSink.emit()` copies the event into plain JSON types and writes it as one
JSON line with a single write(), before the request is answered. Where it goes:

- `FLUENTD_HOST` set: the bounded spool (eventlog/spool.py, directory
  `SHELFCAST_EVENT_SPOOL`, at most `SHELFCAST_EVENT_SPOOL_MAX_BYTES`), which a delivery
  thread in every process sends on to Fluentd (eventlog/forward.py), tag
  `shelfcast.prediction`.
- otherwise (the embedded default): the local JSON-lines log `logs/predictions.jsonl`
  (`SHELFCAST_PREDICTION_LOG`).

A thread of its own fsyncs every `sync_interval_s`. The written contract (bound, drop
policy, crash-loss window, duplicates) is README.md's "Prediction logging".
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from app.config import SettingsError
from eventlog.forward import MAX_MESSAGE_BYTES, FluentdAddress, Forwarder, oversized
from eventlog.local_log import JsonLinesLog
from eventlog.records import EventContentError, encode_line, prepare_event
from eventlog.spool import SUFFIX as SPOOL_SUFFIX, Spool
from pipeline.event_sources import DEFAULT_PREDICTION_LOG, ENV_PREDICTION_LOG, prediction_log

log = logging.getLogger(__name__)

TAG = "shelfcast.prediction"
ENV_EVENT_SPOOL = "SHELFCAST_EVENT_SPOOL"
ENV_EVENT_SPOOL_MAX_BYTES = "SHELFCAST_EVENT_SPOOL_MAX_BYTES"
LIMIT_CHECK_INTERVAL_S = 1.0  # the spool's limit (and room after a failed write) is checked this often
DROP_LOG_INTERVAL_S = 10.0  # the local log's drops are logged at most this often (the spool's: eventlog/spool.py)
FAILURE_LOG_INTERVAL_S = 60.0  # a background step that keeps failing alike logs its traceback this often
# not_events: lines found in the spool that are no event (junk, other JSON), removed with their segment: no event lost
COUNTS = ("emitted", "rejected", "spooled", "sent", "dropped", "not_events", "send_failures")


def prediction_event(*, request_id: str, model_name: str, model_version: str, inputs: Any, features: Any,
                     output: Any, latency_ms: float, **extra: Any) -> dict[str, Any]:
    """The fields every prediction event carries, under the names dashboards rely on."""
    return {"request_id": request_id, "model_name": model_name, "model_version": model_version, "inputs": inputs,
            "features": features, "output": output, "latency_ms": latency_ms, **extra}


@dataclass(frozen=True)
class SinkSettings:
    """Where events go and the spool's bounds; defaults suit a laptop."""

    fluentd: FluentdAddress | None = None  # None: the local JSON-lines log
    log_path: Path = DEFAULT_PREDICTION_LOG
    spool_root: Path = Path("logs/spool")
    spool_max_bytes: int = 1024**3  # over it the oldest events are dropped, counted
    segment_max_bytes: int = 4 * 1024 * 1024
    sync_interval_s: float = 0.05  # fsync (the power-cut window) and, while Fluentd is up, hand segments on
    outage_segment_s: float = 10.0  # while Fluentd is down a segment stays open this long (fewer files)
    confirm_after_s: float = 1.0  # see eventlog/forward.py
    retry_max_s: float = 5.0  # back-off cap while Fluentd is down
    close_timeout_s: float = 10.0  # how long close() keeps sending before leaving events spooled

    def __post_init__(self) -> None:
        for name in ("sync_interval_s", "outage_segment_s", "confirm_after_s", "retry_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if not self.close_timeout_s >= 0:
            raise ValueError(f"close_timeout_s: must be >= 0, got {self.close_timeout_s!r}")
        for name in ("spool_max_bytes", "segment_max_bytes"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "SinkSettings":
        """FLUENTD_HOST/PORT/TIMEOUT, SHELFCAST_PREDICTION_LOG, SHELFCAST_EVENT_SPOOL[_MAX_BYTES]."""
        env = os.environ if environ is None else environ
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"{unknown[0]}: unknown sink setting")
        try:
            values: dict[str, Any] = {"fluentd": FluentdAddress.from_environment(env), "log_path": prediction_log(env)}
            if env.get(ENV_EVENT_SPOOL, "").strip():
                values["spool_root"] = Path(env[ENV_EVENT_SPOOL].strip())
            text = env.get(ENV_EVENT_SPOOL_MAX_BYTES, "").strip()
            if text:
                if not (text.isascii() and text.isdigit() and int(text) >= 1):  # isdigit() alone takes '²'
                    raise ValueError(f"{ENV_EVENT_SPOOL_MAX_BYTES}: expected an integer >= 1, got {text!r}")
                values["spool_max_bytes"] = int(text)
            return replace(cls(**values), **overrides)
        except ValueError as exc:  # what the operator set: the app says so in one line and does not start
            raise SettingsError(f"prediction event sink: {exc}") from None


class FailureLog:
    """Whether a background step's failure is to be logged (with its traceback): a new error at once, the same one
    again only once FAILURE_LOG_INTERVAL_S has passed (the fsync loop runs 20 times a second and the limit check
    every second: a lasting fault, a spool folder replaced by a file, must not flood the log)."""

    def __init__(self) -> None:
        self._last = ("", 0.0)  # the last error logged, and when

    def due(self, exc: BaseException) -> bool:
        now = time.monotonic()
        if repr(exc) == self._last[0] and now - self._last[1] < FAILURE_LOG_INTERVAL_S:
            return False
        self._last = (repr(exc), now)
        return True


class DropLog:
    """The local log's drops, logged at most once per DROP_LOG_INTERVAL_S (a full disk must not flood the log with a
    line per request); each line adds the drops held back since the one before, and ``report(force=True)`` at
    close logs any still held back, so the logged numbers add up to the dropped count (as the spool's do)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged_at = -DROP_LOG_INTERVAL_S
        self._held_back = 0

    def report(self, message: str = "", force: bool = False) -> None:
        """Log ``message`` (one event dropped) if due; with none, only drops held back (if due, or ``force``)."""
        with self._lock:
            now = time.monotonic()
            if (now - self._logged_at < DROP_LOG_INTERVAL_S and not force) or not (message or self._held_back):
                self._held_back += bool(message)
                return
            held_back, self._held_back, self._logged_at = self._held_back, 0, now
        if held_back:
            message = f"{message}; " if message else "prediction events: "
            message += f"{held_back} more events dropped since the last message"
        log.error(message)


class SinkStats:
    """This process's counts (COUNTS: emitted, rejected, spooled, sent, dropped, not_events, send_failures)."""

    def __init__(self, also: Callable[[str, int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTS, 0)
        self._also = also  # e.g. app.metrics: the same counts as Prometheus counters
        if also is not None:
            for name in COUNTS:  # every outcome shows from the start, 0 until it happens: an alert on
                also(name, 0)  # `dropped` otherwise saw no series at all, not 0

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._counts[name] += count
        if self._also is not None:
            self._also(name, count)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def cannot_write(exc: OSError, what: str, path: Path, fix: str) -> OSError:
    """``exc``, met making the event sink's ``what`` at ``path`` (a read-only checkout's logs/, another user's
    folder), as the one line the app's start prints: what, where, why, and the setting that moves it. Before, a
    `make serve` of a read-only checkout said `PermissionError: [Errno 13] Permission denied: 'logs'`, no setting."""
    reason = exc.strerror or str(exc)
    if exc.filename is None and reason.startswith(f"{what} "):  # the spool's own check already names it
        return type(exc)(exc.errno, f"{reason}; {fix}")
    why = f"{reason}: {exc.filename}" if exc.filename is not None else reason
    return type(exc)(exc.errno, f"{what} {path}: cannot write there ({why}); {fix}")


class PredictionEventSink:
    """Writes each event before the request is answered; one delivery thread per process.

    Create one per process, after any fork (a gunicorn worker), and close it at exit (also
    registered with atexit). Thread-safe.
    """

    def __init__(self, settings: SinkSettings, count: Callable[[str, int], None] | None = None):
        self.settings = settings
        self.stats = SinkStats(count)
        self._closed = False
        self._stopping = threading.Event()
        self._drops = DropLog()  # the local log's (the spool logs its own)
        if settings.fluentd is not None:
            try:
                self._spool = Spool(settings.spool_root, settings.spool_max_bytes, settings.segment_max_bytes,
                                    self.stats.add)
            except OSError as exc:
                raise cannot_write(exc, "event spool", settings.spool_root,
                                   f"set {ENV_EVENT_SPOOL} to a folder this user can write") from None
            self._spool.hold_destination(str(settings.fluentd))
            self._forwarder: Forwarder | None = Forwarder(self._spool, TAG, settings.fluentd, self.stats.add,
                                                          settings.confirm_after_s)
            self.destination = f"{settings.fluentd} (spool {settings.spool_root})"
        else:
            try:
                self._log = JsonLinesLog(settings.log_path)
            except OSError as exc:
                raise cannot_write(exc, "prediction log", settings.log_path,
                                   f"set {ENV_PREDICTION_LOG} to a file in a folder this user can write, or "
                                   "FLUENTD_HOST to send the events to Fluentd") from None
            self._forwarder = None
            self.destination = f"the local log {settings.log_path}"
        # Threads of their own: fsync (the crash-loss window) and the spool's limit never wait behind a slow send
        # to Fluentd (one 4 MiB segment to a Fluentd reading 50 KB/s takes 80 s), nor the limit behind an fsync.
        self._syncer = threading.Thread(target=self._sync_until_closed, name="prediction-events-sync", daemon=True)
        self._syncer.start()
        self._limiter = None if self._forwarder is None else threading.Thread(
            target=self._limit_until_closed, name="prediction-events-limit", daemon=True)
        if self._limiter is not None:
            self._limiter.start()
        self._thread = threading.Thread(target=self._deliver_until_closed, name="prediction-events", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        log.info("prediction events go to %s", self.destination)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         count: Callable[[str, int], None] | None = None, **overrides: Any) -> "PredictionEventSink":
        return cls(SinkSettings.from_environment(environ, **overrides), count)

    def emit(self, event: Mapping[str, Any]) -> str | None:
        """Write one event now (one write(), no fsync); its event_id, or None if rejected or dropped.

        Never raises: an event that cannot be logged (the error names the field), one Fluentd
        would discard for its size (eventlog.forward.MAX_MESSAGE_BYTES) or one emitted after
        close() is logged and counted as rejected; one the disk refused is counted as dropped.
        """
        try:
            record = prepare_event(event)
            line = encode_line(record)
        except EventContentError as exc:
            self.stats.add("rejected")
            log.error("prediction event not logged: %s", exc)
            return None
        if self._closed:
            self.stats.add("rejected")
            log.error("prediction event %s not logged: the event sink is closed", record["event_id"])
            return None
        if self._forwarder is not None:
            size = oversized(record, len(line))
            if size is not None:  # Fluentd would discard it after taking it: counted as sent, never stored
                self.stats.add("rejected")
                log.error("prediction event %s not logged: %d bytes in the forward protocol, over the %d a Fluentd "
                          "buffer chunk takes (chunk_limit_size 8MB, less what Fluentd adds)", record["event_id"],
                          size, MAX_MESSAGE_BYTES)
                return None
            self.stats.add("emitted")
            return record["event_id"] if self._spool.append(line, record) else None
        self.stats.add("emitted")
        try:
            self._log.append(line)
        except OSError as exc:
            self.stats.add("dropped")
            self._drops.report(f"prediction event {record['event_id']} dropped: {exc}")
            return None
        self.stats.add("sent")
        return record["event_id"]

    def close(self, timeout: float | None = None) -> None:
        """Seal and fsync, send what Fluentd takes within close_timeout_s; the rest stays spooled."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stopping.set()
        wait = self.settings.close_timeout_s + 2 * (self.settings.fluentd.timeout_s if self.settings.fluentd else 0) + 2
        self._thread.join(wait if timeout is None else timeout)
        if self._thread.is_alive():
            log.error("prediction event sink: still closing after %.1f s", wait)

    def __enter__(self) -> "PredictionEventSink":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _sync_until_closed(self) -> None:
        """Every sync_interval_s: fsync what was written; hand the open segment on while Fluentd is up."""
        failed = FailureLog()
        while not self._stopping.wait(self.settings.sync_interval_s):
            try:
                if self._forwarder is None:
                    self._log.sync()
                    lost = self._log.follow_path()  # removed or renamed under us: write where readers look
                    if lost:
                        self.stats.add("dropped", lost)
                    self._drops.report()  # drops held back, once due, though no event comes
                else:
                    up = self._forwarder.down_since is None
                    self._spool.sync(self.settings.sync_interval_s if up else self.settings.outage_segment_s)
            except Exception as exc:  # a disk error or a bug must not stop syncing for good
                if failed.due(exc):
                    log.exception("prediction events: fsync failed; retrying")

    def _limit_until_closed(self) -> None:
        """Every second: drop the oldest events while the spool is over its limit or a write failed."""
        failed = FailureLog()
        while True:
            try:
                self._spool.enforce_limit()
            except Exception as exc:  # a disk error or a bug must not stop the limit for good
                if failed.due(exc):
                    log.exception("prediction events: spool limit check failed; retrying every second")
            if self._stopping.wait(LIMIT_CHECK_INTERVAL_S):
                return

    def _report_left_unsent(self) -> None:
        """Say where unsent events wait at exit: only a process given this same folder sends them, so a server
        restarted with another SHELFCAST_EVENT_SPOOL left them unsent and uncounted, with no line in any log.
        Said by the last process to leave the spool only (Spool.last_to_leave): one line, not one per worker."""
        segments, size = self._spool.waiting()
        if segments:
            log.warning("prediction events: %d segment(s) (%d bytes) left unsent in the event spool %s, held by no "
                        "process; the next process given %s=%s sends them (a server given another folder does not: "
                        "move the *%s files into its spool)", segments, size, self.settings.spool_root.resolve(),
                        ENV_EVENT_SPOOL, self.settings.spool_root, SPOOL_SUFFIX)

    def _deliver_until_closed(self) -> None:
        retry_at, backoff = 0.0, self.settings.sync_interval_s
        failed = FailureLog()
        while self._forwarder is not None and not self._stopping.wait(self.settings.sync_interval_s):
            now = time.monotonic()
            if now >= retry_at:
                try:
                    if self._forwarder.pump(until=now + 0.5):
                        backoff = self.settings.sync_interval_s
                    else:
                        retry_at, backoff = now + backoff, min(backoff * 2, self.settings.retry_max_s)
                except Exception as exc:  # a disk error or a bug must not stop delivery for good
                    if failed.due(exc):  # not 5 tracebacks a second
                        log.exception("prediction events: delivery step failed; retrying")
        self._stopping.wait()
        self._syncer.join()
        if self._limiter is not None:
            self._limiter.join()
        try:
            if self._forwarder is None:
                self._drops.report(force=True)  # this process will not say them later
                self._log.close()
            else:
                self._spool.close()
                self._forwarder.finish(time.monotonic() + self.settings.close_timeout_s)
                if self._spool.last_to_leave():  # the others still running send what is left, or report it
                    self._report_left_unsent()
        except Exception:
            log.exception("prediction events: closing failed; unsent events stay in %s", self.settings.spool_root)
        finally:
            if self._forwarder is not None:
                self._spool.release_destination()
