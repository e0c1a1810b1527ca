"""Replays spool segments to Fluentd with fluent-logger's FluentSender (public API only).

fluent-logger 0.11 has no forward-protocol acknowledgements: `emit_with_time()` returns
True once the bytes are in the kernel's socket buffer, and False once it finds the
connection broken (it checks for a closed peer before and after every send). So a sent
segment is kept, still locked, until a later emit on a healthy connection succeeds at
least `confirm_after_s` after it: only then is it deleted. When no later event comes, a
heartbeat (tag `<tag>.heartbeat`, discarded by Fluentd) is that later emit. Any failure re-sends every
segment not yet confirmed. That is at-least-once delivery; the duplicates it makes
(at most the events of the unconfirmed segments) carry the same `event_id`, which
Fluentd's Elasticsearch output uses as the document id (monitoring/fluentd/fluent.conf),
so Elasticsearch holds each event once.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Mapping

from fluent.sender import EventTime, FluentSender

from eventlog.records import EVENT_TIME_END_S, EVENT_TIME_MIN_S, EVENT_TIME_RANGE, event_seconds
from eventlog.spool import Count, Segment, Spool

log = logging.getLogger(__name__)

ENV_FLUENTD_HOST = "FLUENTD_HOST"
ENV_FLUENTD_PORT = "FLUENTD_PORT"
ENV_FLUENTD_TIMEOUT = "FLUENTD_TIMEOUT"
MAX_HELD = 256  # sent-but-unconfirmed segments held open; beyond it the oldest are confirmed by age alone
CONFIRM_MARGIN_S = 0.25  # at close, time left for the last claimed segment's send and its confirming heartbeat
MAX_TIMEOUT_S = 600.0  # FLUENTD_TIMEOUT's upper bound: the socket takes no infinite timeout, and close() waits 2x it


@dataclass(frozen=True)
class FluentdAddress:
    """Where Fluentd listens: FLUENTD_HOST (unset: no Fluentd), FLUENTD_PORT, FLUENTD_TIMEOUT."""

    host: str
    port: int = 24224
    timeout_s: float = 3.0  # connect and send

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 1 <= self.port <= 65535):
            raise ValueError(f"{ENV_FLUENTD_PORT}: expected an integer 1..65535, got {self.port!r}")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise ValueError(f"{ENV_FLUENTD_TIMEOUT}: expected a number > 0 and <= {MAX_TIMEOUT_S:g} (seconds), "
                             f"got {self.timeout_s!r}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "FluentdAddress | None":
        env = os.environ if environ is None else environ
        host = env.get(ENV_FLUENTD_HOST, "").strip()
        if not host:
            return None
        port = _env_number(env, ENV_FLUENTD_PORT, int, 24224)
        return cls(host, port, _env_number(env, ENV_FLUENTD_TIMEOUT, float, 3.0))

    def sender(self, tag: str) -> FluentSender:
        return FluentSender(tag, host=self.host, port=self.port, timeout=self.timeout_s, nanosecond_precision=True)

    def __str__(self) -> str:
        return f"Fluentd at {self.host}:{self.port}"


def _env_number(env: Mapping[str, str], name: str, kind: type, default):
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        wanted = "an integer 1..65535" if kind is int else f"a number > 0 and <= {MAX_TIMEOUT_S:g} (seconds)"
        raise ValueError(f"{name}: expected {wanted}, got {text!r}") from None


def emit_record(sender: FluentSender, record: Mapping) -> bool:
    """One event in the forward protocol's Message mode, stamped with its own timestamp."""
    return sender.emit_with_time(None, event_time(record), record)


def event_time(record: Mapping) -> EventTime:
    """The record's timestamp as an EventTime; UnsendableTime if EventTime cannot carry it.

    emit() rejects such times, but a spool line written by an older version or edited by hand may
    hold one; EventTime's struct.pack would raise for it on every attempt to send its segment."""
    seconds = event_seconds(record)
    if not EVENT_TIME_MIN_S <= seconds < EVENT_TIME_END_S:  # NaN too
        raise UnsendableTime(f"timestamp {record.get('timestamp')!r}: outside what EventTime can carry, from "
                             f"{EVENT_TIME_RANGE[0]} up to (not including) {EVENT_TIME_RANGE[1]}")
    return EventTime(seconds)


class UnsendableTime(ValueError):
    """A spooled record whose timestamp the forward protocol's EventTime cannot carry."""


class Forwarder:
    """Claims sealed segments oldest first (any process's), sends them, deletes them once confirmed.

    Called from one delivery thread only.
    """

    def __init__(self, spool: Spool, tag: str, address: FluentdAddress, count: Count, confirm_after_s: float = 1.0):
        self._spool = spool
        self._tag = tag
        self.address = address
        self._count = count
        self._confirm_after_s = confirm_after_s
        self._held: list[Segment] = []
        self._sender: FluentSender | None = None
        self._last_ok = 0.0  # monotonic time of the last successful emit
        self.down_since: float | None = None

    def pump(self, until: float) -> bool:
        """Send what is due until nothing is left or `until`; False if Fluentd failed (back off)."""
        for segment in list(self._held):
            if segment.sent_at is None and not self._send(segment):
                return False
        while time.monotonic() < until:
            segment = self._spool.claim_next({held.path for held in self._held})
            if segment is None:
                break
            self._held.append(segment)
            if not self._send(segment):
                return False
            if segment.lines == 0:  # nothing in it (a writer's torn-off tail): nothing to confirm
                self._held.remove(segment)
                segment.release(delete=True)
        return self._heartbeat_if_due()

    def finish(self, deadline: float) -> None:
        """At close: send what is left and confirm it before `deadline`; the rest stays spooled.

        No segment is claimed later than it could still be confirmed by `deadline`: one sent but not yet
        confirmed when this process leaves would be sent again by the next (duplicates), while one never
        claimed is simply sent by the next."""
        last_claim = deadline - self._confirm_after_s - CONFIRM_MARGIN_S
        while time.monotonic() < deadline:
            if self.pump(last_claim) and not self._held:
                break  # all sent and confirmed, and no unclaimed segment left
            time.sleep(0.05 if self.down_since is None else 0.2)
        self.release()

    def release(self) -> None:
        """Unconfirmed segments stay in the spool, to be re-sent by whichever process runs next."""
        self._confirm()
        for segment in self._held:
            segment.release(delete=False)
        self._held = []
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def _send(self, segment: Segment) -> bool:
        first_read = segment.lines == 0
        bad: list[str] = []
        records = segment.records(bad.append)
        stamped = []  # (EventTime, record): a line EventTime cannot carry is dropped like a torn one
        for number, record in enumerate(records, 1):
            try:
                stamped.append((event_time(record), record))
            except UnsendableTime as exc:
                bad.append(f"{segment.path.name} record {number}: {exc}")
        if bad and first_read:  # a re-send meets the same lines: they were counted and logged once
            self._count("dropped", len(bad))
            log.error("event spool: %d unreadable line(s) dropped, first: %s", len(bad), bad[0])
        sender = self._sender = self._sender or self.address.sender(self._tag)
        for timestamp, record in stamped:  # each send() hands the GIL to the request threads: no extra yields
            if not sender.emit_with_time(None, timestamp, record):
                self._failed(sender)
                return False
            self._last_ok = time.monotonic()
        segment.sent_at = time.monotonic()
        self._count("sent", len(stamped))
        if self.down_since is not None:
            log.warning("%s is back after %.1f s; sending the spooled events", self.address,
                        time.monotonic() - self.down_since)
            self.down_since = None
        return True

    def _failed(self, sender: FluentSender) -> None:
        error = sender.last_error
        sender.clear_last_error()
        sender.close()  # a fresh sender (and connection) next time
        self._sender = None
        self._count("send_failures", 1)
        for segment in self._held:
            segment.sent_at = None  # what the broken connection carried may not have arrived
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("%s: %s; keeping events in the spool %s until it is back", self.address, error,
                        self._spool.root)

    def _heartbeat_if_due(self) -> bool:
        """With sent segments waiting and no later event, one heartbeat checks the connection."""
        self._confirm()
        now = time.monotonic()
        due = [s for s in self._held if s.sent_at is not None and now - s.sent_at >= self._confirm_after_s]
        if due and self._last_ok < max(s.sent_at for s in due) + self._confirm_after_s:
            sender = self._sender = self._sender or self.address.sender(self._tag)
            if not sender.emit_with_time("heartbeat", EventTime(time.time()), {}):
                self._failed(sender)
                return False
            self._last_ok = time.monotonic()
            self._confirm()
        return True

    def _confirm(self) -> None:
        now, kept = time.monotonic(), []
        for index, segment in enumerate(self._held):
            sent = segment.sent_at
            overflow = len(self._held) - index > MAX_HELD
            if sent is not None and (self._last_ok - sent >= self._confirm_after_s
                                     or (overflow and now - sent >= self._confirm_after_s)):
                segment.release(delete=True)
            else:
                kept.append(segment)
        self._held = kept
