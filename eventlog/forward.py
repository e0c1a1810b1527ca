"""Replays spool segments to Fluentd with fluent-logger's FluentSender (public API only).

fluent-logger 0.11 has no forward-protocol acknowledgements: `emit_with_time()` returns
True once the bytes are in the kernel's socket buffer, and False once it finds the
connection broken (it checks for a closed peer before and after every send). So a sent
segment is kept, still locked, until Fluentd's kernel has acknowledged all its bytes (TCP
counts them: TCP_INFO's bytes_acked) and a later emit on a healthy connection succeeded at
least `confirm_after_s` after it: only then is it deleted. When no later event comes, a
heartbeat (tag `<tag>.heartbeat`, discarded by Fluentd) is that later emit, repeated every `confirm_after_s`
while a sent segment waits (a connection that died quietly is found by the next send). Any failure re-sends
every segment not yet confirmed. A link that breaks more often than that (a proxy capping each connection's age,
or its bytes above PROOF_BYTES) would confirm nothing and re-send the same segments forever, so a segment that
ACKED_CONNECTIONS different connections *read* is confirmed by that alone: at most that many copies, and progress
(a link capping each connection below PROOF_BYTES never proves a read: see stalled, below). A connection
read a segment when its peer's kernel acknowledged PROOF_BYTES beyond it (a peer that does not read cannot
acknowledge more than its receive buffer); after a broken link, padded heartbeats carry that proof past the
last segment. Counting acknowledgements alone, a peer that accepted connections and closed them unread made
three connections "acknowledge" a segment it never read, and the segment was deleted. That is at-least-once
delivery; the duplicates it makes
(at most the events of the unconfirmed segments) carry the same `event_id`, which
Fluentd's Elasticsearch output uses as the document id (monitoring/fluentd/fluent.conf),
so Elasticsearch holds each event once.

What is lost when Fluentd dies is what its kernel acknowledged and it had not read: its receive
buffer. A Fluentd that stops reading makes a send time out; from then on nothing is confirmed and
no new segment is claimed or sent again (each new connection would have a fresh receive buffer to
fill) until a connection proves that Fluentd reads again: its kernel acknowledges PROOF_BYTES of
heartbeats, more than a new connection's receive buffer holds unread. A segment that UNREAD_CARRIES connections
took (whole or in part) and broke before they read or confirmed it counts as such a stall too: a link capping
each connection's bytes below PROOF_BYTES re-sent every held segment on every new connection, as long as it stayed
so (14 copies of one event in 4 s), and each copy is a receive buffer that a peer closing unread could discard.
Sending less per connection (a window that fits the cap) instead would not do: what gets through such a cap fits
an unread peer's receive buffer too, and the 1 s rule confirmed it there, lost (connections closed unread after
2 s: 115-209 events of 1,000 lost that way, against 5-68 without windows). What a connection loses when
its reader dies is its receive buffer as Linux grew it while the reader kept up: 128 KiB on a fresh
connection, MiBs on one that carried a burst (up to net.ipv4.tcp_rmem's maximum).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import termios
import time
from dataclasses import dataclass
from typing import Mapping

import msgpack
from fluent.sender import EventTime, FluentSender

from eventlog.records import EVENT_TIME_END_S, EVENT_TIME_MIN_S, EVENT_TIME_RANGE, event_seconds
from eventlog.spool import Count, Segment, Spool

log = logging.getLogger(__name__)

ENV_FLUENTD_HOST = "FLUENTD_HOST"
ENV_FLUENTD_PORT = "FLUENTD_PORT"
ENV_FLUENTD_TIMEOUT = "FLUENTD_TIMEOUT"
MAX_HELD = 256  # sent-but-unconfirmed segments held open; no more is claimed until some are confirmed
CONFIRM_MARGIN_S = 0.25  # at close, time left for the last claimed segment's send and its confirming heartbeat
MAX_TIMEOUT_S = 600.0  # FLUENTD_TIMEOUT's upper bound: the socket takes no infinite timeout, and close() waits 2x it
# Proof that a Fluentd that stalled reads again: this many bytes acknowledged on a new connection beyond the
# segments re-sent on it. A new connection's receive buffer starts at net.ipv4.tcp_rmem's default (128 KiB on
# Linux) and grows only as its reader reads, so a reader that does not read cannot acknowledge this much.
PROOF_BYTES = 2 * 1024 * 1024
PADDING = {"padding": "0" * 65536}  # a heartbeat's body while proving: 32 proof heartbeats at most
TCP_INFO_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in Linux's struct tcp_info (since 4.1)
ACKED_CONNECTIONS = 3  # a segment read on this many connections is confirmed however short they lived
# An event's forward-protocol message may be at most this large: Fluentd discards a record larger than its buffer's
# chunk_limit_size (8MB in monitoring/fluentd/fluent.conf) after its kernel took it, so it was counted as sent and
# never stored; half of it leaves room for what Fluentd's outputs add (@timestamp, the tag).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
BROKEN_LINK_PROOF_S = 60.0  # this long after a connection broke with segments held, an idle spool proves them read
# A segment that this many connections took (whole or in part) and broke before they read or confirmed it makes the
# link count as stalled (see the docstring): its next copy waits for a connection that proves its peer reads
UNREAD_CARRIES = 3


@dataclass(frozen=True)
class FluentdAddress:
    """Where Fluentd listens: FLUENTD_HOST (unset: no Fluentd), FLUENTD_PORT, FLUENTD_TIMEOUT."""

    host: str
    port: int = 24224
    timeout_s: float = 3.0  # connect and send

    def __post_init__(self) -> None:
        # fluent-logger connects over IPv4 (AF_INET) to `host`, or to a Unix socket given as unix://PATH: a host with
        # a port or an IPv6 address in it cannot be reached at all, and was only ever logged as "Name or service not
        # known" or "Address family for hostname not supported" while every event waited in the spool
        if not self.host.startswith("unix://") and (":" in self.host or not self.host.isprintable()
                                                      or any(c.isspace() for c in self.host)):
            raise ValueError(f"{ENV_FLUENTD_HOST}: expected a host name or IPv4 address (the port goes in "
                             f"{ENV_FLUENTD_PORT}; fluent-logger has no IPv6) or unix://PATH, got {self.host!r}")
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
        # forward_packet_error=False: a record msgpack cannot pack raises, instead of being replaced by an error
        # record under our tag (which Elasticsearch would store as an event without an event_id)
        return FluentSender(tag, host=self.host, port=self.port, timeout=self.timeout_s, nanosecond_precision=True,
                            forward_packet_error=False)

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


def oversized(record: Mapping, line_bytes: int) -> int | None:
    """The record's size in the forward protocol (msgpack) if over MAX_MESSAGE_BYTES, else None. `line_bytes`, the
    length of its JSON line, spares packing an ordinary event: msgpack takes at most 9/4 of it (a float is 9 bytes
    in msgpack, as few as 4 in JSON: `0.0,`), so a line under 4/9 of the limit cannot be over it."""
    if line_bytes * 9 // 4 <= MAX_MESSAGE_BYTES:
        return None
    size = len(msgpack.packb(record))
    return size if size > MAX_MESSAGE_BYTES else None


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


def connection_bytes(sender: FluentSender) -> tuple[int, int] | None:
    """(bytes written to the sender's connection, bytes its peer's kernel acknowledged), counted alike;
    None when there is no connection or it is not TCP on Linux (then writes alone confirm, as before)."""
    sock = sender.socket
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        unacknowledged = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return None
    if len(info) < TCP_INFO_BYTES_ACKED + 8:
        return None
    acknowledged = struct.unpack_from("Q", info, TCP_INFO_BYTES_ACKED)[0]
    return acknowledged + unacknowledged, acknowledged


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
        self.stalled_since: float | None = None  # a send timed out: Fluentd may not be reading (see the docstring)
        self._proof_target: int | None = None  # while stalled: bytes acknowledged on this connection that prove it
        self._connection = 0  # numbers the senders (connections) made: Segment.acknowledged_on holds these
        self._link_broke_at: float | None = None  # monotonic time a connection last broke with segments held
        self._proved_on = 0  # the connection that carried its one proof (see _prove_held)
        self._refused_deletion = False  # a confirmed segment's deletion was refused (logged once until one succeeds)

    def pump(self, until: float) -> bool:
        """Send what is due until nothing is left or `until`; False if Fluentd failed (back off)."""
        # stalled: prove Fluentd reads before sending anything again (re-sent on every retry, the held segments
        # would be duplicated once per retry, and would eat a slow reader's pace before the proof could pass)
        if self.stalled_since is not None and not self._proves_reading(until):
            return self._sender is not None  # False: a send failed (back off); True: time is up, go on next time
        self._confirm()  # segments acknowledged on ACKED_CONNECTIONS connections are not sent again
        for segment in list(self._held):
            if segment.sent_at is None and not self._send(segment):
                return False
        idle = False
        while time.monotonic() < until and len(self._held) < MAX_HELD:
            segment = self._spool.claim_next({held.path for held in self._held})
            if segment is None:
                idle = True
                break
            self._held.append(segment)
            if not self._send(segment):
                return False
            if segment.lines == 0:  # nothing in it (a writer's torn-off tail): nothing to confirm
                segment.delivered = True  # kept held (not claimed again) only if the folder refuses its deletion
                refused = segment.delete()
                self._account(segment)
                if refused is None:
                    self._held.remove(segment)
                    segment.release(delete=False)
        if (idle and self._link_broke_at is not None and self._proved_on != self._connection
                and time.monotonic() - self._link_broke_at < BROKEN_LINK_PROOF_S):
            if not self._prove_held(until):
                return False
        return self._heartbeat_if_due()

    def finish(self, deadline: float) -> None:
        """At close: send what is left and confirm it before `deadline`; the rest stays spooled.

        No segment is claimed later than it could still be confirmed by `deadline`: one sent but not yet
        confirmed when this process leaves would be sent again by the next (duplicates), while one never
        claimed is simply sent by the next."""
        last_claim = deadline - self._confirm_after_s - CONFIRM_MARGIN_S
        while time.monotonic() < deadline:
            if self.pump(last_claim) and all(segment.delivered for segment in self._held):
                break  # all sent and confirmed (and deleted, unless the folder refuses), no unclaimed segment left
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

    def _proves_reading(self, until: float) -> bool:
        """While stalled: heartbeats on a connection that carries nothing else until Fluentd's kernel has
        acknowledged PROOF_BYTES (True, stalled no more), a send fails, or `until` (False either way)."""
        sender = self._connected()
        while True:
            progress = connection_bytes(sender)
            if progress is None and sender.socket is not None:
                self._proof_target = 0  # not TCP on Linux: no way to tell, writes alone confirm
            elif progress is not None and self._proof_target is None:  # this connection's: reset by _failed
                self._proof_target = progress[0] + PROOF_BYTES
            if self._proof_target is not None and (progress is None or progress[1] >= self._proof_target):
                log.warning("%s reads again after %.1f s; sending the spooled events", self.address,
                            time.monotonic() - self.stalled_since)
                self.stalled_since = self.down_since = None
                return True
            if time.monotonic() >= until:
                return False
            if not sender.emit_with_time("heartbeat", EventTime(time.time()), PADDING):
                self._failed(sender)
                return False
            self._last_ok = time.monotonic()

    def _prove_held(self, until: float) -> bool:
        """After a broken link, with nothing new to send: padded heartbeats until the peer's kernel acknowledged
        PROOF_BYTES beyond the held segments on this connection (it read them: _note_acknowledged counts it), a
        send fails (False), or `until`. Without it the last segments of a backlog, with nothing sent after
        them, could not be proven read on a link whose connections break before the usual confirmation. Once a
        connection: on a link healthy again the usual confirmation follows, and a proof after every segment sent
        cost 116 MB of heartbeats in the 5 s after one Fluentd restart at 500 events/s."""
        ends = [s.sent_bytes for s in self._held
                if s.sent_at is not None and s.sent_bytes is not None and not s.delivered]
        if not ends or self.stalled_since is not None:
            return True
        sender = self._connected()
        target = max(ends) + PROOF_BYTES
        while time.monotonic() < until:
            progress = connection_bytes(sender)
            if progress is None:
                return True
            if progress[1] >= target:
                self._proved_on = self._connection
                self._confirm()
                return True
            if progress[0] < target:
                if not sender.emit_with_time("heartbeat", EventTime(time.time()), PADDING):
                    self._failed(sender)
                    return False
                self._last_ok = time.monotonic()
            else:
                time.sleep(0.002)
        return True

    def _send(self, segment: Segment) -> bool:
        first_read = segment.lines == 0
        bad: list[str] = []
        records = segment.records(bad.append)
        stamped = []  # (EventTime, record): an event EventTime cannot carry is dropped like a torn one
        for number, record in enumerate(records, 1):
            try:
                stamped.append((event_time(record), record))
            except UnsendableTime as exc:
                bad.append(f"{segment.path.name} record {number}: {exc}")
        segment.unstamped = len(bad) - segment.torn_events - segment.not_events  # counted by _account, as it leaves
        if bad and first_read:  # a re-send meets the same lines: logged once
            kinds = [f"{len(bad) - segment.not_events} event(s) dropped"] if len(bad) > segment.not_events else []
            kinds += [f"{segment.not_events} no event (counted as not_events)"] if segment.not_events else []
            log.error("event spool: %d unreadable line(s), %s; first: %s", len(bad), ", ".join(kinds), bad[0])
        sender = self._connected()
        sent = 0
        for number, (timestamp, record) in enumerate(stamped):  # each send() hands the GIL to request threads
            try:
                ok = sender.emit_with_time(None, timestamp, record)
            except Exception as exc:  # noqa: BLE001 msgpack cannot pack it (an older version's or a hand-edited line)
                if number not in segment.unsendable:  # logged once, whatever the re-sends; counted by _account
                    segment.unsendable.add(number)
                    log.error("event spool: %s record %d cannot be sent (%s: %s); dropped", segment.path.name,
                              number + 1, type(exc).__name__, exc)
                continue
            if not ok:
                self._failed(sender)
                return False
            if not sent:
                segment.carried_on.add(self._connection)
            sent += 1
            self._last_ok = time.monotonic()
        segment.sent_at, segment.sent_records = time.monotonic(), sent
        progress = connection_bytes(sender)
        segment.sent_bytes = None if progress is None else progress[0]
        self._note_acknowledged(progress)
        if self.down_since is not None and self.stalled_since is None:  # while stalled, a send proves nothing
            log.warning("%s is back after %.1f s; sending the spooled events", self.address,
                        time.monotonic() - self.down_since)
            self.down_since = None
        return True

    def _failed(self, sender: FluentSender) -> None:
        error = sender.last_error
        sender.clear_last_error()
        if isinstance(error, TimeoutError) and self.stalled_since is None:  # connected, or connecting, but not read
            self.stalled_since = time.monotonic()
            log.warning("%s: a send timed out; confirming nothing and claiming no new events until it reads "
                        "again", self.address)
        sender.close()  # a fresh sender (and connection) next time
        self._sender = None
        self._proof_target = None
        self._count("send_failures", 1)
        if any(segment.sent_at is not None and not segment.delivered for segment in self._held):
            self._link_broke_at = time.monotonic()
        if self.stalled_since is None and any(len(s.carried_on - s.acknowledged_on) >= UNREAD_CARRIES
                                              for s in self._held if not s.delivered):
            self.stalled_since = time.monotonic()
            log.warning("%s: %d connections broke before they read or confirmed what they carried; confirming "
                        "nothing and claiming no new events until one reads", self.address, UNREAD_CARRIES)
        for segment in self._held:
            if not segment.delivered:
                segment.sent_at = None  # what the broken connection carried may not have arrived
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("%s: %s; keeping events in the spool %s until it is back", self.address, error,
                        self._spool.root)

    def _account(self, segment: Segment) -> None:
        """Count a delivered segment's lines once, as it leaves the spool: its records sent, the events that could not
        be sent dropped, the lines that are no event as not_events (before, as dropped: junk overstated the losses).
        Counted at each send, a segment sent again (after a broken connection, or by the next process after a kill -9)
        was counted again, so `sent` exceeded the events there were; counted here, only the process that deletes it
        counts it (one whose deletion the folder refuses counts it on confirmation, and a later process that sends it
        again counts it again)."""
        if segment.accounted:
            return
        segment.accounted = True
        if segment.sent_records:
            self._count("sent", segment.sent_records)
        lost = segment.torn_events + segment.unstamped + len(segment.unsendable)
        if lost:
            self._count("dropped", lost)
        if segment.not_events:
            self._count("not_events", segment.not_events)

    def _heartbeat_if_due(self) -> bool:
        """With sent segments waiting and no later event, a heartbeat checks the connection: once they are due,
        and again every `confirm_after_s` while they wait (a connection that died quietly after the first one,
        its peer's kernel never acknowledging them, held them until the next event came)."""
        self._confirm()
        now = time.monotonic()
        due = [s for s in self._held
               if s.sent_at is not None and not s.delivered and now - s.sent_at >= self._confirm_after_s]
        if due and (self._last_ok < max(s.sent_at for s in due) + self._confirm_after_s
                    or now - self._last_ok >= self._confirm_after_s):
            sender = self._connected()
            if not sender.emit_with_time("heartbeat", EventTime(time.time()), {}):
                self._failed(sender)
                return False
            self._last_ok = time.monotonic()
            self._confirm()
        return True

    def _connected(self) -> FluentSender:
        """The current sender, or a new one (a new connection, numbered)."""
        if self._sender is None:
            self._sender = self.address.sender(self._tag)
            self._connection += 1
        return self._sender

    def _note_acknowledged(self, progress: tuple[int, int] | None) -> None:
        """Count, per held segment, the connections that read it: the peer's kernel acknowledged PROOF_BYTES beyond
        its end, more than a peer that does not read can hold."""
        if progress is None or self.stalled_since is not None:
            return
        for segment in self._held:
            if (segment.sent_at is not None and segment.sent_bytes is not None
                    and progress[1] >= segment.sent_bytes + PROOF_BYTES
                    and self._connection not in segment.acknowledged_on):
                segment.acknowledged_on.add(self._connection)

    def _confirm(self) -> None:
        if self.stalled_since is not None:
            return  # what this connection carried may sit unread in Fluentd's buffers
        progress = connection_bytes(self._sender) if self._sender is not None else None
        self._note_acknowledged(progress)
        acknowledged = None if progress is None else progress[1]
        kept = []
        for segment in self._held:
            sent = segment.sent_at
            in_fluentd = segment.sent_bytes is None or (acknowledged is not None and acknowledged >= segment.sent_bytes)
            if not segment.delivered and (len(segment.acknowledged_on) >= ACKED_CONNECTIONS or (
                    sent is not None and in_fluentd and self._last_ok - sent >= self._confirm_after_s)):
                segment.delivered = True
            refused = segment.delete() if segment.delivered else None
            if segment.delivered:
                self._account(segment)
            if segment.delivered and refused is None:
                segment.release(delete=False)
                self._refused_deletion = False
                continue
            if refused is not None and not self._refused_deletion:  # logged once until a deletion succeeds
                self._refused_deletion = True
                log.warning("event spool %s: cannot delete sent segment %s (%s); it stays held and is not sent "
                            "again until it can be deleted", self._spool.root, segment.path.name, refused)
            kept.append(segment)
        self._held = kept
