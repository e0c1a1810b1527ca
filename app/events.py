"""Prediction events: what the app records about every forecast it serves.

`PredictionEventSink.emit()` only copies the event into plain JSON types and puts it on
a bounded in-memory queue; a background thread writes it on, so logging never slows or
fails a request. Where events go:

- `FLUENTD_HOST` set: Fluentd's forward protocol through fluent-logger, tag
  `shelfcast.prediction`. Events are written to a durable local spool first
  (app/spool.py) and a sender thread forwards the spool in order, each batch counted as
  sent only when Fluentd acknowledges it. While Fluentd is unreachable the spool grows;
  when it is back the backlog is sent. A full queue spills to the spool, never drops.
- otherwise (the embedded default): a local JSON-lines log, `logs/predictions.jsonl`.

Every event gets an `event_id` (unique; the key for de-duplicating downstream),
a `request_id` and an ISO-8601 `timestamp` when the caller did not give them.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np
from fluent.sender import EventTime, FluentSender

from app.spool import AppendOnlyLines, Spool

log = logging.getLogger(__name__)

TAG = "shelfcast.prediction"
ENV_FLUENTD_HOST = "FLUENTD_HOST"
ENV_FLUENTD_PORT = "FLUENTD_PORT"
ENV_FLUENTD_TIMEOUT = "FLUENTD_TIMEOUT"
ENV_PREDICTION_LOG = "SHELFCAST_PREDICTION_LOG"
ENV_EVENT_SPOOL = "SHELFCAST_EVENT_SPOOL"
MAX_NESTING = 32
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
WAKE_UP: dict[str, Any] = {}  # queued by close(); never delivered


# --- event content ---------------------------------------------------------------------


class EventContentError(ValueError):
    """An event value that cannot be logged; the message names the field path."""


def prediction_event(
    *,
    request_id: str,
    model_name: str,
    model_version: str,
    inputs: Any,
    features: Any,
    output: Any,
    latency_ms: float,
    **extra: Any,
) -> dict[str, Any]:
    """The fields every prediction event carries, under the names dashboards rely on."""
    return {
        "request_id": request_id,
        "model_name": model_name,
        "model_version": model_version,
        "inputs": inputs,
        "features": features,
        "output": output,
        "latency_ms": latency_ms,
        **extra,
    }


def prepare_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `event` in plain JSON types, with ids and time filled in.

    Copying at emit time means the caller may reuse or mutate its objects afterwards;
    converting numpy scalars and arrays here means the delivery thread never meets a
    value it cannot serialise.
    """
    if not isinstance(event, Mapping):
        raise EventContentError(f"event: expected a mapping, got {type(event).__name__}")
    content = to_plain(event, "event")
    record: dict[str, Any] = {}
    for key in ("event_id", "request_id"):
        value = content.pop(key, None)
        if value is None:
            value = uuid.uuid4().hex
        elif not isinstance(value, str) or not value:
            raise EventContentError(f"event.{key}: expected a non-empty string, got {value!r}")
        record[key] = value
    timestamp = content.pop("timestamp", None)
    record["timestamp"] = utc_now_iso() if timestamp is None else checked_timestamp(timestamp)
    record.update(content)
    return record


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def checked_timestamp(value: Any) -> str:
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return value
    raise EventContentError(
        f"event.timestamp: expected an ISO-8601 time with a UTC offset "
        f"(e.g. 2017-08-16T10:00:00+00:00) or an aware datetime, got {value!r}"
    )


def to_plain(value: Any, path: str, depth: int = 0) -> Any:
    """`value` as None/bool/int/float/str/list/dict (str keys), or EventContentError naming `path`."""
    if depth > MAX_NESTING:
        raise EventContentError(f"{path}: nested more than {MAX_NESTING} levels deep (a cycle?)")
    kind = type(value)
    if value is None or kind is bool or kind is float:
        return value
    if kind is int:
        return checked_int(value, path)
    if kind is str:
        return checked_str(value, path)
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventContentError(f"{path}: key {key!r} is a {type(key).__name__}; keys must be strings")
            plain[str(key)] = to_plain(item, f"{path}.{key}", depth + 1)
        return plain
    if isinstance(value, (list, tuple)):
        return [to_plain(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        return array_to_plain(value, path, depth)
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value))
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return to_plain(value.item(), path, depth)
    if isinstance(value, np.str_):
        return checked_str(str(value), path)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    for base in (int, float, str):
        if isinstance(value, base):  # a subclass such as IntEnum keeps its value
            return to_plain(base(value), path, depth)
    raise EventContentError(
        f"{path}: a {type(value).__name__} cannot be logged; "
        "pass numbers, strings, booleans, None, lists, dicts, dates or numpy values"
    )


def array_to_plain(array: np.ndarray, path: str, depth: int) -> Any:
    kind = array.dtype.kind
    if kind in "biuf":
        return array.tolist()
    if kind == "M":
        return np.datetime_as_string(array).tolist()
    if kind in "UO":
        return to_plain(array.tolist(), path, depth)
    raise EventContentError(f"{path}: a numpy array of dtype {array.dtype} cannot be logged")


def checked_int(value: int, path: str) -> int:
    if not INT64_MIN <= value <= UINT64_MAX:
        raise EventContentError(f"{path}: integer {value} does not fit in 64 bits")
    return value


def checked_str(value: str, path: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EventContentError(f"{path}: not valid UTF-8 text ({exc.reason} at {exc.start})") from None
    return value


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One JSON line; NaN and infinities are written as JSON's common NaN/Infinity tokens."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def event_seconds(record: Mapping[str, Any]) -> float:
    try:
        return dt.datetime.fromisoformat(record["timestamp"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()  # only a hand-edited spool line can get here


# --- Fluentd transport -------------------------------------------------------------------


class FluentDeliveryError(ConnectionError):
    """Fluentd did not acknowledge a batch; it must be kept and sent again."""


class AcknowledgedFluentSender(FluentSender):
    """fluent-logger's sender plus the forward protocol's `chunk` acknowledgement.

    fluent-logger 0.11 has no acknowledgement support (fluent/fluent-logger-python#120;
    its FluentSender silently swallows an unknown `require_ack_response=True` through
    **kwargs), and its emit() reports success once bytes reach the local kernel, which
    loses whatever is in flight when Fluentd dies. Here a batch counts as sent only when
    the server answers `{"ack": chunk}`. Connection handling, timeouts, unix:// hosts and
    EventTime are fluent-logger's own.
    """

    def send_batch(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Send `records` as one Forward-mode message and wait for its acknowledgement."""
        chunk = base64.b64encode(uuid.uuid4().bytes).decode("ascii")
        entries = [[EventTime(event_seconds(record)), record] for record in records]
        options = {"size": len(entries), "chunk": chunk}
        payload = msgpack.packb([self.tag, entries, options], **self.msgpack_kwargs)
        with self.lock:
            if self._closed:
                raise FluentDeliveryError(f"{self.host}:{self.port}: sender is closed")
            try:
                self._drop_connection_if_peer_closed()
                self._reconnect()
                self.socket.sendall(payload)
                self._wait_for_ack(chunk)
            except (OSError, FluentDeliveryError) as exc:
                self._close()
                raise FluentDeliveryError(f"Fluentd at {self.host}:{self.port}: {exc}") from exc

    def _drop_connection_if_peer_closed(self) -> None:
        """Reconnect instead of writing a batch into a connection the server already closed."""
        if self.socket is None:
            return
        self.socket.settimeout(0.0)  # with a timeout set, recv() would first wait for data
        try:
            still_open = self.socket.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            still_open = True  # nothing to read: the usual idle state
        except OSError:
            still_open = False
        if still_open:
            self.socket.settimeout(self.timeout)
        else:
            self._close()

    def _wait_for_ack(self, chunk: str) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = self.socket.recv(4096)  # bounded by the socket timeout (FLUENTD_TIMEOUT)
            if not data:
                raise FluentDeliveryError("connection closed before the acknowledgement")
            unpacker.feed(data)
            for response in unpacker:
                if isinstance(response, dict) and response.get("ack") == chunk:
                    return
                raise FluentDeliveryError(
                    f"expected the acknowledgement of chunk {chunk}, got {response!r} "
                    "(a server that asks for a shared-key handshake is not supported)"
                )


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkSettings:
    """Where events go and how hard the sink tries; defaults suit a laptop."""

    fluentd_host: str | None = None  # None: the local JSON-lines log
    fluentd_port: int = 24224
    fluentd_timeout_s: float = 3.0  # connect, send and wait for an acknowledgement
    log_path: Path = Path("logs/predictions.jsonl")
    spool_root: Path = Path("logs/spool")
    spool_segment_max_bytes: int = 16 * 1024 * 1024
    queue_size: int = 10_000  # events held in memory before spilling to the spool
    batch_size: int = 500  # events per Fluentd message / per write
    retry_initial_s: float = 0.2  # first wait after Fluentd fails; doubles up to retry_max_s
    retry_max_s: float = 5.0
    send_slice_s: float = 0.5  # the sender re-checks for close() at least this often
    sync_interval_s: float = 0.2  # how late an overflow spill may be fsync'd
    close_timeout_s: float = 10.0  # how long close() keeps trying Fluentd before leaving events spooled

    def __post_init__(self) -> None:
        for name in ("fluentd_timeout_s", "retry_initial_s", "retry_max_s", "send_slice_s", "sync_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if self.close_timeout_s < 0:
            raise ValueError(f"close_timeout_s: must be >= 0, got {self.close_timeout_s!r}")
        for name in ("queue_size", "batch_size", "spool_segment_max_bytes"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if not (isinstance(self.fluentd_port, int) and 1 <= self.fluentd_port <= 65535):
            raise ValueError(f"fluentd_port: must be an integer 1..65535, got {self.fluentd_port!r}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "SinkSettings":
        """FLUENTD_HOST / FLUENTD_PORT / FLUENTD_TIMEOUT / SHELFCAST_PREDICTION_LOG / SHELFCAST_EVENT_SPOOL."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"fluentd_host": env.get(ENV_FLUENTD_HOST, "").strip() or None}
        if env.get(ENV_FLUENTD_PORT, "").strip():
            values["fluentd_port"] = env_number(env, ENV_FLUENTD_PORT, int)
        if env.get(ENV_FLUENTD_TIMEOUT, "").strip():
            values["fluentd_timeout_s"] = env_number(env, ENV_FLUENTD_TIMEOUT, float)
        if env.get(ENV_PREDICTION_LOG, "").strip():
            values["log_path"] = Path(env[ENV_PREDICTION_LOG].strip())
        if env.get(ENV_EVENT_SPOOL, "").strip():
            values["spool_root"] = Path(env[ENV_EVENT_SPOOL].strip())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"{unknown[0]}: unknown sink setting (known: {', '.join(sorted(known))})")
        settings = cls(**values)
        try:
            return replace(settings, **overrides)
        except ValueError as exc:
            raise ValueError(f"prediction event sink: {exc}") from None


def env_number(env: Mapping[str, str], name: str, kind: type) -> Any:
    """A positive number from the environment; the error names the variable."""
    text = env[name].strip()
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or (name == ENV_FLUENTD_PORT and value > 65535):
        wanted = "an integer 1..65535" if name == ENV_FLUENTD_PORT else "a number > 0"
        raise ValueError(f"{name}: expected {wanted}, got {text!r}")
    return value


# --- delivery routes -------------------------------------------------------------------------


class SinkStats:
    """Counters for monitoring and benchmarks (S1: events received = requests served)."""

    NAMES = ("emitted", "rejected", "overflowed", "spooled", "delivered", "send_failures", "lost")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._counts[name] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class LocalLogRoute:
    """The embedded default: one JSON line per event in a local file, fsync'd per batch."""

    def __init__(self, settings: SinkSettings, stats: SinkStats):
        self.description = f"the local log {settings.log_path}"
        self._stats = stats
        self._lock = threading.Lock()
        self._log = AppendOnlyLines(Path(settings.log_path))
        self._closed = False

    def deliver(self, records: list[dict[str, Any]]) -> None:
        self._write([encode_line(r) for r in records], sync=True)
        self._stats.add("delivered", len(records))

    def spill(self, record: dict[str, Any]) -> None:
        """From a request thread when the queue is full: write now, fsync on the next tick."""
        self._write([encode_line(record)], sync=False)
        self._stats.add("delivered")

    def tick(self) -> None:
        self._fsync()

    def close(self, deadline: float) -> None:
        with self._lock:
            self._closed = True
            self._log.close()

    def _write(self, lines: list[bytes], sync: bool) -> None:
        with self._lock:
            if self._closed:
                raise OSError(f"{self._log.path}: log is closed")
            self._log.append(b"".join(lines))
        if sync:
            self._fsync()

    def _fsync(self) -> None:
        """Outside the lock, so a spilling request thread never waits for the disk."""
        with self._lock:
            descriptor = None if self._closed else self._log.take_unsynced()
        if descriptor is not None:
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def send_next_batch(spool: Spool, sender: AcknowledgedFluentSender, batch_size: int) -> tuple[int, int]:
    """Send the oldest spooled batch; commit it only once acknowledged. (sent, lines skipped).

    Raises FluentDeliveryError with nothing committed, so the batch is read again next time.
    """
    batch = spool.read(batch_size)
    if batch.records:
        sender.send_batch(batch.records)
    spool.commit(batch.end)
    return len(batch.records), batch.skipped


class FluentRoute:
    """Spool first, Fluentd second.

    The sink's writer thread only appends each batch to the spool (fsync'd per batch); a
    sender thread sends the spool to Fluentd in order and commits what was acknowledged.
    A slow, hung or absent Fluentd therefore never holds up the in-memory queue, and
    every event takes one path: durable before it is sent, sent in order, committed once
    acknowledged, replayed by the next process if this one dies.
    """

    def __init__(self, settings: SinkSettings, stats: SinkStats):
        self._settings = settings
        self._stats = stats
        self._spool = Spool.claim(settings.spool_root, settings.spool_segment_max_bytes)
        self._sender = AcknowledgedFluentSender(
            TAG, host=settings.fluentd_host, port=settings.fluentd_port, timeout=settings.fluentd_timeout_s
        )
        self.description = f"Fluentd at {settings.fluentd_host}:{settings.fluentd_port} (spool {self._spool.directory})"
        self._retry_at = 0.0
        self._backoff = settings.retry_initial_s
        self._down_since: float | None = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._close_deadline = 0.0
        if self._spool.has_pending():
            log.info("%s: %d bytes of prediction events to replay", self._spool.directory, self._spool.pending_bytes())
        self._thread = threading.Thread(target=self._send_until_closed, name="prediction-events-sender", daemon=True)
        self._thread.start()

    def deliver(self, records: list[dict[str, Any]]) -> None:
        self._spool.append([encode_line(r) for r in records])
        self._spool.sync()
        self._stats.add("spooled", len(records))
        self._wake.set()

    def spill(self, record: dict[str, Any]) -> None:
        """From a request thread when the queue is full: append now, fsync on the next tick."""
        self._spool.append([encode_line(record)])
        self._stats.add("spooled")
        self._wake.set()

    def tick(self) -> None:
        self._spool.sync()

    def close(self, deadline: float) -> None:
        """Let the sender try Fluentd until `deadline`; what is left stays spooled."""
        self._close_deadline = deadline
        self._closing.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 2 * self._settings.fluentd_timeout_s + 1)
        if self._thread.is_alive():
            log.error("%s: sender still busy at close; unsent events stay in %s", self.description, self._spool.directory)
            return  # closing the spool under a running sender would turn a delay into errors
        self._spool.close()
        self._sender.close()

    def _send_until_closed(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self._settings.sync_interval_s)
            self._wake.clear()
            if time.monotonic() >= self._retry_at:
                self._send_backlog(until=time.monotonic() + self._settings.send_slice_s)
        if time.monotonic() < self._close_deadline:
            self._send_backlog(until=self._close_deadline)  # one last attempt, even before a retry is due

    def _send_backlog(self, until: float) -> None:
        while self._spool.has_pending():
            try:
                sent, skipped = send_next_batch(self._spool, self._sender, self._settings.batch_size)
            except FluentDeliveryError as exc:
                self._failed(exc)
                return
            except Exception:  # a disk error or a bug: keep the thread, retry later
                log.exception("prediction events: sending the spool %s failed", self._spool.directory)
                self._retry_at = time.monotonic() + self._settings.retry_max_s
                return
            if sent:
                self._succeeded()
                self._stats.add("delivered", sent)
            if skipped:
                self._stats.add("lost", skipped)
            if time.monotonic() >= until:
                return

    def _failed(self, exc: FluentDeliveryError) -> None:
        self._stats.add("send_failures")
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning("%s; keeping prediction events in %s until it is back", exc, self._spool.directory)
        else:
            log.debug("still unreachable: %s", exc)
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self._settings.retry_max_s)

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.warning(
                "Fluentd at %s:%s is back after %.1f s; sending the spooled events",
                self._settings.fluentd_host,
                self._settings.fluentd_port,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        self._retry_at = 0.0
        self._backoff = self._settings.retry_initial_s


# --- the sink ----------------------------------------------------------------------------------


class PredictionEventSink:
    """Accepts prediction events from request threads; a writer thread hands them on in batches.

    Create one per process, after any fork (a WSGI server's worker), and close it at exit
    (also registered with atexit). Thread-safe.
    """

    def __init__(self, settings: SinkSettings):
        self.settings = settings
        self.stats = SinkStats()
        self._route: LocalLogRoute | FluentRoute = (
            FluentRoute(settings, self.stats) if settings.fluentd_host else LocalLogRoute(settings, self.stats)
        )
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=settings.queue_size)
        self._stopping = threading.Event()
        self._closed = False
        self._closing_lock = threading.Lock()  # no event slips into the queue after the last drain
        self._thread = threading.Thread(target=self._write_until_closed, name="prediction-events", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        log.info("prediction events go to %s", self._route.description)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "PredictionEventSink":
        """The sink the environment asks for (see SinkSettings.from_environment)."""
        return cls(SinkSettings.from_environment(environ, **overrides))

    @property
    def destination(self) -> str:
        return self._route.description

    def emit(self, event: Mapping[str, Any]) -> str | None:
        """Record one event without waiting for any I/O; returns its event_id.

        Never raises: an event that cannot be logged (the error names the field) or one
        emitted after close() is reported through `logging` and counted as rejected,
        and None is returned.
        """
        try:
            record = prepare_event(event)
        except EventContentError as exc:
            self.stats.add("rejected")
            log.error("prediction event not logged: %s", exc)
            return None
        with self._closing_lock:
            if self._closed:
                self.stats.add("rejected")
                log.error("prediction event %s not logged: the event sink is closed", record["event_id"])
                return None
            self.stats.add("emitted")
            try:
                self._queue.put_nowait(record)
                return record["event_id"]
            except queue.Full:
                pass
        self.stats.add("overflowed")  # the writer thread is behind: straight to disk instead
        try:
            self._route.spill(record)
        except OSError as exc:
            self.stats.add("lost")
            log.error("prediction event %s lost: the queue is full and spilling failed: %s", record["event_id"], exc)
        return record["event_id"]

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, let Fluentd take it for up to close_timeout_s, and stop."""
        with self._closing_lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._stopping.set()
        try:
            self._queue.put_nowait(WAKE_UP)  # end the writer's wait now, not at its next timeout
        except queue.Full:
            pass  # a full queue means the writer is not waiting
        wait = self.settings.close_timeout_s + 2 * self.settings.fluentd_timeout_s + 2 if timeout is None else timeout
        self._thread.join(wait)
        if self._thread.is_alive():
            log.error("prediction event sink: still closing after %.1f s; %d events queued", wait, self._queue.qsize())

    def __enter__(self) -> "PredictionEventSink":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_until_closed(self) -> None:
        while True:
            stopping = self._stopping.is_set()
            batch = self._take_batch(0 if stopping else self.settings.sync_interval_s)
            if batch:
                self._guarded(self._route.deliver, batch)
            elif stopping:
                break
            self._guarded(self._route.tick)
        self._guarded(self._route.close, time.monotonic() + self.settings.close_timeout_s)

    def _take_batch(self, timeout: float) -> list[dict[str, Any]]:
        try:
            batch = [self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()]
        except queue.Empty:
            return []
        while len(batch) < self.settings.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [record for record in batch if record is not WAKE_UP]

    def _guarded(self, step: Any, *arguments: Any) -> None:
        """Keep the writer thread alive through disk errors and bugs; say what was lost."""
        lost = len(arguments[0]) if arguments and isinstance(arguments[0], list) else 0
        try:
            step(*arguments)
        except OSError as exc:
            self.stats.add("lost", lost)
            log.error("prediction events: %s failed (%d events lost): %s", step.__name__, lost, exc)
        except Exception:  # a bug must not stop all later events from being logged
            self.stats.add("lost", lost)
            log.exception("prediction events: %s failed (%d events lost)", step.__name__, lost)
