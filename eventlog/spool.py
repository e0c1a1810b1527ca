"""A bounded on-disk spool of event segments, written and replayed by any number of processes.

Why this shape (the contract is in README.md, "Prediction logging"):
- Each process appends JSON lines to its own open segment with one write() per event, so
  an event is in the kernel's page cache before the request is answered: a killed process
  loses nothing; a power cut loses at most what was written since the last completed fsync
  and not yet sent (the caller's sync interval plus the fsyncs' own time).
- A segment is locked (flock) by whoever holds it: its writer while it is open, then the
  one process that claims it to send it. A process that dies releases its locks, so its
  segments are claimed by whichever process runs next, whatever the number of workers.
  The writer lets go when it seals a segment, and the fsync thread opens it afresh (skipping
  one already sent and deleted), so sending never waits for an fsync (on a busy virtual disk
  one took seconds) and no descriptor keeps a deleted segment's space in use.
- The spool is bounded: `enforce_limit()` deletes the oldest unclaimed segments, counting
  their events as dropped, until the directory is under `max_bytes` (its size read again per
  segment's worth dropped: checks that outlast the folder lock's wait run side by side). A failed write (a
  full disk) drops that event, counted, and every event until the next check (at most a
  second later), which first deletes the oldest unclaimed segment. A segment that reaches the
  largest file this process may write (RLIMIT_FSIZE: EFBIG) is no full disk: it is sealed and the
  event goes into a new one. Replay never writes to disk, so a full disk cannot stop delivery.
- Oldest means first by name: a name starts with the wall clock in nanoseconds, but never before
  the newest name this process has seen in the spool, so a clock stepped back cannot make new
  events sort (and be dropped) as the oldest. A name whose time is past EventTime's end
  (NAME_STAMP_END_NS) is no clock's: placed by its last write, and not run on from.
- A segment this process cannot open (another user's) is left alone: not sent, not dropped, not
  counted against the limit; so is a symbolic link (opened with O_NOFOLLOW, never followed: the file it
  names, anywhere, must not be sent as events, truncated or deleted), a hard link (a file with more than one
  name: the spool's writers make each segment under one name, so another is a file from elsewhere), and a
  `.jsonl` file not named as a segment (`SEGMENT_NAME`: the local prediction log, in a spool set to its folder,
  is no segment).
  A spool folder removed while in use is made again by the next event; the events of the open segment
  that went with it are counted as dropped. One moved away is followed: the next limit check moves its
  segments back under the spool's path (`follow_folder`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import resource
import stat
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eventlog.records import EVENT_TIME_END_S

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
OPENING_SUFFIX = ".new"  # created and locked under this name, then renamed: never claimed empty
# This process's own sealed segments are also kept as the records written, so that its delivery thread
# sends them without reading and parsing the file again; bounded (beyond it, segments are read from disk).
CACHED_SEGMENTS = 8
CACHED_RECORDS = 4096
# What the spool's writers name a segment: the wall clock in ns, the pid and a counter; or the version before
# 2026-12-01's `segment-000000000001.jsonl`. Any other `.jsonl` file in the folder is no segment: left alone.
SEGMENT_NAME = re.compile(r"[0-9]{20}-[0-9]+-[0-9]+\.jsonl|segment-[0-9]{12}\.jsonl")
DESTINATION_PREFIX = ".destination-"  # + a digest of where its events go; held (flock, shared) by who sends there
LIMIT_LOCK_WAIT_S = 1.0  # how long a limit check waits for another process's check before it runs all the same
LISTING_REUSE_S = 1.0  # claims walk one listing of the folder this long at most (a segment sealed since waits so long)
# A full disk: no room for a byte, or for a new file (out of inodes), or over a quota. Events are dropped, counted, and
# the oldest segment deleted until there is room; never a reason not to start.
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
Count = Callable[[str, int], None]  # ("spooled" | "dropped" | "not_events", how many)
# How every event line the spool's writers write begins (eventlog/records.py puts event_id first): a line that does
# so and cannot be read is an event cut short (a crash's torn tail), lost; any other unreadable line is no event.
EVENT_LINE_START = re.compile(rb'\{\s*"event_id"\s*:')
# ... and how it begins as written (eventlog/records.py encode_line): a segment's last line, no newline after it,
# cut within these bytes is an event torn before its event_id: lost (before, counted as no event).
EVENT_LINE_HEAD = b'{"event_id":'
# A name's time is a clock's only below the end of the forward protocol's EventTime (2106-02-07): an event written
# later cannot be sent, so no clock this app delivers under gets there. A name beyond it (made by hand, damaged, a
# clock thousands of years ahead) is placed by its last write, and new names do not run on from it: from a name of
# twenty 9s they ran to 21 digits, no segment's name, so every later event stayed in the spool unsent, uncounted.
NAME_STAMP_END_NS = EVENT_TIME_END_S * 10**9


@dataclass
class Segment:
    """A sealed segment this process holds the lock of (to send it, or to drop it)."""

    path: Path
    fd: int
    sent_at: float | None = None  # monotonic time of the last complete send; None: (re)send it
    lines: int = field(default=0)
    written: list[dict[str, Any]] | None = None  # the records this process wrote into it, line for line
    sent_bytes: int | None = None  # bytes written to the connection when it was sent (None: not counted)
    unsendable: set[int] = field(default_factory=set)  # records msgpack could not pack: dropped, counted once
    acknowledged_on: set[int] = field(default_factory=set)  # the connections (numbered) whose peer acknowledged all
    carried_on: set[int] = field(default_factory=set)  # the connections (numbered) that took some of it
    delivered: bool = False  # confirmed, but the folder refused its deletion (read-only): kept held, not sent again
    torn_events: int = 0  # lines of the last reading that began as events and cannot be read: events lost
    not_events: int = 0  # lines of the last reading that are no event (binary junk, other JSON): not events lost
    unstamped: int = 0  # records whose timestamp the forward protocol cannot carry (eventlog/forward.py): lost
    sent_records: int = 0  # records its last whole send handed to the connection
    accounted: bool = False  # its lines counted as sent or dropped: once, when it leaves the spool

    def records(self, on_bad_line: Callable[[str], None]) -> list[dict[str, Any]]:
        if self.written is not None:  # used once: a re-send after a failure reads the file
            records, self.written = self.written, None
            self.lines, self.torn_events, self.not_events = len(records), 0, 0
            return records
        os.lseek(self.fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(self.fd), "rb") as handle:
            data = handle.read()
        records, torn, lines = [], 0, data.splitlines()
        unterminated = len(lines) if data and not data.endswith((b"\n", b"\r")) else 0  # a torn tail's number
        for number, line in enumerate(lines, 1):
            if number % 64 == 0:
                time.sleep(0)  # a long segment must not hold the GIL from request threads for 5 ms
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:  # a line torn by a crash, or junk
                if EVENT_LINE_START.match(line) or (number == unterminated and EVENT_LINE_HEAD.startswith(line)):
                    torn += 1
                    on_bad_line(f"{self.path.name} line {number}: an event that cannot be read, dropped "
                                f"({type(exc).__name__}: {exc})")
                else:
                    on_bad_line(f"{self.path.name} line {number}: no event ({type(exc).__name__}: {exc})")
                continue
            if not isinstance(record, dict):
                on_bad_line(f"{self.path.name} line {number}: no event (JSON, not an object)")
            elif not (isinstance(record.get("event_id"), str) and record["event_id"]):
                # Elasticsearch would store it under an id of its own: a new document each time it is re-sent
                on_bad_line(f"{self.path.name} line {number}: no event (no event_id: not one this app wrote)")
            else:
                records.append(record)
        self.lines, self.torn_events, self.not_events = len(records), torn, len(lines) - len(records) - torn
        return records

    def delete(self) -> OSError | None:
        """Remove the file (still held); the error if the folder refused (read-only, immutable) or the file is not
        at its path but still somewhere (its folder moved away: Spool.follow_folder moves it back), else None."""
        try:
            self.path.unlink()
        except FileNotFoundError as exc:
            if os.fstat(self.fd).st_nlink > 0:  # deleted, it would be sent again once moved back, and counted again
                return exc
        except OSError as exc:
            return exc
        return None

    def release(self, delete: bool) -> OSError | None:
        """Let go of the segment (its lock), deleting it first if asked; the error if that deletion was refused:
        the segment is then left in the spool, released all the same (before, a refused deletion raised before
        the descriptor was closed, and its lock stayed held by this process until it exited: never sent)."""
        try:
            return self.delete() if delete else None
        finally:
            os.close(self.fd)  # closing the last descriptor releases the flock


class Spool:
    """One process's writer into a shared spool directory, and its claims on sealed segments."""

    def __init__(self, root: Path, max_bytes: int, segment_max_bytes: int, count: Count):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes
        self._count = count
        self._lock = threading.Lock()
        self._fd = -1
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._unsynced = False
        self._named = False  # a segment renamed into the folder since its last fsync: the folder to fsync too
        self._sealed: list[Path] = []  # sealed segments written since their last fsync
        self._written: list[dict[str, Any]] | None = None  # the open segment's records (None: not kept)
        self._cached: dict[Path, list[dict[str, Any]]] = {}  # sealed segments' records, oldest first
        self._names = itertools.count()
        self._lines = 0  # events written into the open segment
        self._last_stamp = 0  # the newest segment name's time: new names never sort before it (a clock step)
        self._left_alone: set[str] = set()  # files this process cannot open or must not (links): logged once each
        self._disk_full = False  # set by a failed write, cleared by the next enforce_limit() that began after it
        self._last_warning = 0.0
        self._unlogged_drops = 0  # drops since the last drop message: the next one (or close) reports them
        self._warn_lock = threading.Lock()
        _check_writable(self.root)
        self._folder = -1  # the spool folder as opened (follow_folder: one moved away is still reachable by it)
        self._folder_id: tuple[int, int] | None = None
        self._follow_lock = threading.Lock()
        self._destination = -1  # the held .destination-* file (hold_destination)
        self._destination_name = ""
        self._destination_wanted = False  # its file could not be made (out of inodes): each limit check tries again
        self._unclaimed: deque[Path] = deque()  # claim_next's listing, oldest first, not yet tried
        self._listed: tuple[Path, float] | None = None  # that listing's folder and monotonic time
        self.follow_folder()
        self.segment_paths()  # reads the newest name already in the spool (a restart after a clock step)

    # --- writing (request threads) ---------------------------------------------------

    def append(self, line: bytes, record: dict[str, Any] | None = None) -> bool:
        """Write one complete line with one write(); False (counted as dropped) if the disk refused.

        `record`, if given, is what `line` encodes (json.loads(line) == record), kept for this process's
        delivery thread; the caller must not change it afterwards."""
        with self._lock:
            try:
                if self._disk_full:
                    raise OSError(errno.ENOSPC, "out of space until the oldest events are dropped")
                if self._fd < 0:
                    self._open_segment()
                try:
                    self._write_whole(line)
                except OSError as exc:
                    if exc.errno != errno.EFBIG or self._size == 0:
                        raise
                    # the segment reached the largest file this process may write (RLIMIT_FSIZE), not a full disk:
                    # a new segment takes the event (before, dropped as on a full disk, each event until the next
                    # check, which then deleted the oldest segment for room that deleting cannot make)
                    self._seal_locked()
                    self._open_segment()
                    self._write_whole(line)
            except OSError as exc:
                if exc.errno == errno.EFBIG:  # even an empty segment cannot take it: deleting segments frees nothing
                    self._count("dropped", 1)
                    self._warn(f"event spool {self.root}: an event of {len(line)} bytes is over the largest file this "
                               f"process may write ({_file_size_limit()}); dropped", dropped=1)
                    return False
                self._disk_full = True
                until = ("the oldest are deleted to make room" if exc.errno in FULL_DISK
                         else "a write succeeds again (the oldest are deleted meanwhile)")
                self._count("dropped", 1)
                self._warn(f"event spool {self.root}: write failed ({exc}); events are dropped until {until}",
                           dropped=1)
                return False
            self._size += len(line)
            self._lines += 1
            self._unsynced = True
            if self._written is not None:
                if record is None or len(self._written) >= CACHED_RECORDS:
                    self._written = None  # the file is the only full copy of this segment
                else:
                    self._written.append(record)
            if self._size >= self.segment_max_bytes:
                self._seal_locked()
        self._count("spooled", 1)
        return True

    def _write_whole(self, line: bytes) -> None:
        """Append `line` to the open segment whole, or raise leaving none of it (the caller holds the lock). A write
        cut short (the disk filled, or the file reached RLIMIT_FSIZE) is followed by one of the rest, which raises
        why (ENOSPC, EFBIG): the part written is cut off again, so no torn line is left for the next event to
        continue."""
        written = os.write(self._fd, line)
        try:
            while written < len(line):
                more = os.write(self._fd, line[written:])
                if more == 0:
                    raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
                written += more
        except OSError:
            os.ftruncate(self._fd, self._size)
            raise

    def _open_segment(self) -> None:
        # Names sort oldest first: after the newest this process has seen, even if the wall clock stepped back.
        self._last_stamp = stamp = max(time.time_ns(), self._last_stamp + 1)
        name = f"{stamp:020d}-{os.getpid()}-{next(self._names)}"
        opening = self.root / (name + OPENING_SUFFIX)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        try:
            fd = os.open(opening, flags, 0o644)
        except FileNotFoundError:  # the folder was removed (a backlog cleared by hand, a tmp cleaner) or moved away
            self.root.mkdir(parents=True, exist_ok=True)
            log.warning("event spool %s: the folder was removed or moved away while in use; made it again", self.root)
            fd = os.open(opening, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(opening, self.root / (name + SUFFIX))
            self._named = True
        except OSError:
            os.close(fd)
            opening.unlink(missing_ok=True)
            raise
        self._fd, self._path, self._size, self._opened_at = fd, self.root / (name + SUFFIX), 0, time.monotonic()
        self._lines = 0
        self._written = []

    def _seal_locked(self) -> None:
        """Close the open segment: from now on any process may claim it. Its fsync is left to sync()."""
        if self._fd >= 0:
            if self._size == 0 and self._path is not None:
                self._path.unlink(missing_ok=True)  # still locked by us: no one else has it open
            elif self._open_segment_deleted():
                self._count("dropped", self._lines)  # spooled, and gone with the file: never to be sent
                log.error("event spool %s: segment %s was deleted while open (the folder removed?); its %d "
                          "events are lost, counted as dropped", self.root, self._path.name, self._lines)
            elif self._path is not None:
                if self._written:
                    self._cached[self._path] = self._written
                    total = sum(len(records) for records in self._cached.values())
                    while len(self._cached) > CACHED_SEGMENTS or total > CACHED_RECORDS:
                        total -= len(self._cached.pop(next(iter(self._cached))))  # the oldest: read from disk
                if self._unsynced:
                    self._sealed.append(self._path)
            self._written = None
            os.close(self._fd)  # the writer's lock goes with it
            self._fd, self._path, self._size, self._unsynced = -1, None, 0, False

    def _open_segment_deleted(self) -> bool:
        """Whether the open segment's file has no name left (caller holds the lock and an open segment)."""
        return self._path is not None and os.fstat(self._fd).st_nlink == 0

    # --- upkeep (the delivery thread) ------------------------------------------------

    def sync(self, seal_older_than_s: float | None = None) -> None:
        """fsync what was written; seal the open segment first if it is older than the given age.

        An open segment deleted under us is sealed (its events counted as dropped) whatever its age, so
        that the next event opens a segment that can still be sent."""
        with self._lock:
            if self._fd >= 0 and ((seal_older_than_s is not None
                                   and time.monotonic() - self._opened_at >= seal_older_than_s)
                                  or self._open_segment_deleted()):
                self._seal_locked()
            paths, self._sealed = self._sealed, []
            if self._fd >= 0 and self._unsynced and self._path is not None:
                paths.append(self._path)
            self._unsynced = False
            named, self._named = self._named, False
        for path in paths:
            try:  # a descriptor of its own: a dup of the writer's would hold its lock through the fsync
                fd = self._open_to_sync(path)
            except FileNotFoundError:
                continue  # sent and deleted already: nothing left to lose
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a symbolic link put in its place: never followed, as everywhere else
                    self._leave_alone(path)
                else:
                    self._warn(f"event spool {self.root}: fsync failed ({exc})")
                continue
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # put in its place (a FIFO, a device): not ours to fsync
                os.close(fd)
                self._cannot_open(path, "not a regular file")
                continue
            try:
                os.fsync(fd)  # flushes the file's pages, whichever descriptor wrote them
            except OSError as exc:
                self._warn(f"event spool {self.root}: fsync failed ({exc})")
            finally:
                os.close(fd)
        if named:
            self._sync_folder()

    def _sync_folder(self) -> None:
        """fsync the spool's folder (as this process opened it, wherever it is now): a segment's name, given by its
        rename from ``.new``, is the folder's data, and a file's fsync makes its contents durable, not the name
        (POSIX; ext4 and XFS happen to commit both). Before, a power cut could leave a fsynced segment's events under
        its ``.new`` name, which a later start deletes as an abandoned opening, uncounted. Once per new segment."""
        with self._follow_lock:
            fd = os.dup(self._folder) if self._folder >= 0 else -1
        try:
            if fd < 0:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
        except FileNotFoundError:
            pass  # the folder was removed: its segments went with it (counted where they are found missing)
        except OSError as exc:
            self._warn(f"event spool {self.root}: fsync of its folder failed ({exc})")
        finally:
            if fd >= 0:
                os.close(fd)

    def _open_to_sync(self, path: Path) -> int:
        """A read descriptor of a segment at its path or, its folder moved away, in the folder this process opened
        (wherever it is now; follow_folder moves it back under the lock held here): FileNotFoundError: deleted;
        ELOOP: a symbolic link is there now (never followed, as every open of the spool's; before, this one followed
        it, and one to a FIFO hung the delivery thread in its open). O_NONBLOCK: a FIFO put there cannot either."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            with self._follow_lock:
                if self._folder >= 0:
                    try:
                        return os.open(path.name, flags, dir_fd=self._folder)
                    except FileNotFoundError:
                        pass
                return os.open(path, flags)  # moved back meanwhile

    def close(self) -> None:
        with self._lock:
            self._seal_locked()
        self.sync()
        self._warn("", force=True)  # drops not reported yet: this process will not say them later
        with self._follow_lock:
            if self._folder >= 0:
                os.close(self._folder)  # a later follow_folder (a limit check after close) opens the path again
                self._folder, self._folder_id = -1, None

    def __del__(self) -> None:  # a Spool dropped without close() (tests, a failed start) must not keep its folder open
        for held in (getattr(self, "_folder", -1), getattr(self, "_destination", -1)):
            if held >= 0:
                try:
                    os.close(held)
                except OSError:
                    pass

    def hold_destination(self, destination: str) -> None:
        """Take this spool for `destination` (e.g. "Fluentd at host:port") for as long as this process runs, or raise
        SpoolInUse when a live process holds it for another: any process sends any segment of its spool, so two
        servers of one checkout given different Fluentds (the default `logs/spool` for both) sent each other's
        events to the wrong one (a probe: 631 of one server's 1,562 events). Processes sending to one destination
        share the spool, their claims by segment locks. A file per destination, each process holding it shared; a
        file no process holds is a stopped server's, removed. Checked under the folder lock, so two starting at once
        cannot both pass."""
        mine = DESTINATION_PREFIX + hashlib.sha256(destination.encode()).hexdigest()[:16]
        self._destination_name = destination  # held again where the path points if the folder moves (follow_folder)
        folder = self._lock_folder()
        try:
            for name in sorted(os.listdir(self.root)):
                if not name.startswith(DESTINATION_PREFIX) or name == mine:
                    continue
                try:
                    # O_NONBLOCK: a FIFO put under such a name would block this open until a writer came
                    fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except FileNotFoundError:
                    continue
                except OSError as exc:  # a link: whether a server holds it cannot be told, and it is not ours to remove
                    if exc.errno != errno.ELOOP:
                        raise
                    self._leave_alone(self.root / name)
                    continue
                if not stat.S_ISREG(os.fstat(fd).st_mode):  # no server's file (a FIFO, a device): not ours either
                    os.close(fd)
                    self._leave_alone(self.root / name, "not a regular file")
                    continue
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        other = os.read(fd, 1024).decode("utf-8", "replace") or "another destination"
                        raise SpoolInUse(errno.EBUSY, f"event spool {self.root}: a running server sends its events to "
                                         f"{other}, this one to {destination}; each would send the other's events: "
                                         f"give each its own SHELFCAST_EVENT_SPOOL") from None
                    if folder is not None:
                        os.unlink(self.root / name)  # a stopped server's
                finally:
                    os.close(fd)
            writable = True
            try:  # O_NOFOLLOW: through a link, the address below was written over a file anywhere, or made one
                fd = os.open(self.root / mine, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except PermissionError as refused:  # another user's (a server run once as root): its address is ours,
                # the same bytes (its name is their digest), and a read-only descriptor takes the flock that holds the
                # spool; before, the server did not start (`cannot start: PermissionError: ... .destination-...`)
                try:
                    fd = os.open(self.root / mine, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except FileNotFoundError:  # none there to hold: the folder refused to make it
                    raise refused from None
                writable = False
            except OSError as exc:
                if exc.errno in FULL_DISK:  # no room for a new file (out of inodes): a full disk, which must not stop
                    # the server (before: `cannot start: OSError: [Errno 28] No space left on device`); held once
                    # there is room, by the next limit check that can make the file (each second)
                    if not self._destination_wanted:
                        log.warning("event spool %s: no room for %s, the file that holds this spool for %s (%s); "
                                    "held once there is room", self.root, mine, destination, exc.strerror or exc)
                    self._destination_wanted = True
                    return
                if exc.errno != errno.ELOOP:
                    raise
                raise SpoolLink(errno.ELOOP, f"event spool {self.root}: {mine}, the file that holds this spool for "
                                f"{destination}, is {_link_text(self.root / mine)}; it must be the spool's own "
                                f"file: remove it") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise SpoolLink(errno.EINVAL, f"event spool {self.root}: {mine}, the file that holds this spool for "
                                f"{destination}, is not a regular file; it must be the spool's own file: remove it")
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:  # the same bytes by every process that holds it; only a refusal's message reads them
                if writable:
                    os.pwrite(fd, destination.encode(), 0)
            except OSError as exc:  # a full disk: the hold is the flock, held all the same; before, the app did not
                # start at all ("cannot start: OSError: [Errno 28] No space left on device", naming no file), where a
                # running one on a full disk drops events, counted, and serves
                log.warning("event spool %s: cannot write %s's address into %s (%s); holding the spool for it all the "
                            "same (a server sending elsewhere is refused without being told where this one sends)",
                            self.root, destination, mine, exc.strerror or exc)
            self.release_destination()
            self._destination, self._destination_wanted = fd, False
        finally:
            if folder is not None:
                os.close(folder)

    def last_to_leave(self) -> bool:
        """Whether this process, leaving, is the last one holding the spool for its destination (every worker of every
        server that sends there holds it), so the one to report what is left unsent: each exiting worker walked the
        spool, N workers stopping together logged N lines whose counts rose line to line. Once True, this process
        holds it alone until release_destination. Of processes leaving together the last to let go of its shared
        hold is told True (or one that took it meanwhile); rarely two, if the first released it before the second
        looked. True with no destination held (a spool used on its own)."""
        if self._destination < 0:
            return True
        fcntl.flock(self._destination, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._destination, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process still holds it: it sends these events, or reports them when it leaves
        return True

    def release_destination(self) -> None:
        """Let another destination take the spool (once this process has sent what it will)."""
        if self._destination >= 0:
            os.close(self._destination)
            self._destination = -1

    def follow_folder(self) -> int:
        """If the spool's path no longer names the folder this process opened (moved away, by its own name or a
        folder's above it), move the segments left in that folder, still open here wherever it went, back under
        the path, where they are sent as any others; how many. Before, they stayed there, never sent nor counted.
        The names stay the same, so every process's claims and open segments name them again. A folder removed has
        none left (its open segments were counted as dropped when sealed). Called by each limit check."""
        with self._follow_lock:
            try:
                named = os.stat(self.root)
            except FileNotFoundError:
                named = None
            if named is not None and (named.st_dev, named.st_ino) == self._folder_id:
                return 0
            moved, names, old = 0, [], self._folder
            if old >= 0:
                try:
                    names = sorted(name for name in os.listdir(old) if SEGMENT_NAME.fullmatch(name))
                except OSError:  # removed with its files: nothing left to move
                    names = []
            if names:
                where = _folder_path(old)
                try:
                    self.root.mkdir(parents=True, exist_ok=True)
                    for name in names:
                        try:
                            os.rename(name, self.root / name, src_dir_fd=old)
                            moved += 1
                        except FileNotFoundError:  # another process moved it back, or it was sent and deleted
                            pass
                except OSError as exc:  # another filesystem there now (EXDEV), or the path cannot be written
                    self._warn(f"event spool {self.root}: the folder was moved away while in use (now {where}) and "
                               f"its {len(names) - moved} segments cannot be moved back ({exc}): they are not sent "
                               f"until they are moved into {self.root}")
                    return moved
                log.warning("event spool %s: the folder was moved away while in use (now %s); moved its %d "
                            "segments back, to be sent", self.root, where, moved)
            elif named is None and old >= 0:
                return 0  # nothing to move, and no folder at the path yet: the next event makes it
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                return moved  # gone again, or not a folder: the next check looks again
            if old >= 0:
                os.close(old)
            status = os.fstat(fd)
            self._folder, self._folder_id = fd, (status.st_dev, status.st_ino)
            if self._destination >= 0:  # its .destination-* went with the folder moved away: hold the new one
                try:
                    self.hold_destination(self._destination_name)
                except (SpoolInUse, SpoolLink) as exc:  # another destination took the new folder first, or a link
                    # is where its file goes: say so, go on
                    self._warn(str(exc))
            return moved

    def claim_next(self, held: set[Path]) -> Segment | None:
        """The oldest sealed segment no process holds, locked for this process; None if none.

        Claims walk one listing of the folder, listed again once walked through or LISTING_REUSE_S old, and
        before answering None. Listed and sorted for every claim, a replay of N segments cost N listings: 5,000
        small segments (a 4-hour outage of 4 workers) took 81 s to claim, 30 ms a claim and growing."""
        listed_now = False
        while True:
            now = time.monotonic()
            if not self._unclaimed or self._listed is None or self._listed[0] != self.root \
                    or now - self._listed[1] > LISTING_REUSE_S:
                self._unclaimed, self._listed, listed_now = deque(self.segment_paths()), (self.root, now), True
            while self._unclaimed:
                path = self._unclaimed.popleft()
                if path in held:
                    continue
                segment = self._try_claim(path)  # gone since it was listed (sent or dropped), or held: None
                if segment is not None:
                    with self._lock:
                        segment.written = self._cached.pop(path, None)
                    return segment
            if listed_now:
                return None

    def enforce_limit(self) -> int:
        """Drop the oldest unclaimed segments while the spool is over max_bytes (or a write failed).

        After a failed write this process first seals its open segment, so its own writer lock cannot
        keep the oldest segment from being deleted. Only a failure seen when the check began is cleared
        at its end: a write that fails while it runs leaves the flag for the next check (which frees
        room even if no write comes in between)."""
        self.follow_folder()
        with self._lock:
            must_free = write_failed = self._disk_full
            if write_failed:
                self._seal_locked()
        folder = self._lock_folder()  # one check at a time across processes: each sees what the others deleted
        try:
            dropped, not_events = self._drop_oldest(must_free)
        finally:
            if folder is not None:
                os.close(folder)  # releases the flock
        if write_failed:
            with self._lock:
                self._disk_full = False  # room was made, or there is none to make: let the next write try
        if not_events:  # rare (junk put in a segment, a crash's tail of NULs): not throttled; counted by _drop_oldest
            log.warning("event spool %s: %d line(s) that were no event went with the oldest segments; counted as "
                        "not_events, not as dropped", self.root, not_events)
        if dropped:  # counted by _drop_oldest, segment by segment
            self._warn(f"event spool {self.root}: over its limit of {self.max_bytes} bytes or out of disk; "
                       f"dropped the {dropped} oldest events", dropped=dropped)
        else:
            self._warn("")  # reports drops the last messages held back, once 10 s have passed
        self._remove_orphans()
        if self._destination_wanted:  # out of inodes at start: hold it now if there is room
            try:
                self.hold_destination(self._destination_name)
            except (SpoolInUse, SpoolLink) as exc:  # another destination took it meanwhile, or a link is in the way
                self._destination_wanted = False
                self._warn(str(exc))
        return dropped

    def _lock_folder(self) -> int | None:
        """The spool folder opened and flocked; None if it cannot be opened (gone, or not a folder: the check then
        runs unlocked, and meets that itself) or another process held the lock for LIMIT_LOCK_WAIT_S (one stopped
        mid-check, SIGSTOP: the check runs unlocked rather than never). Without it, workers whose checks ran at the
        same moment (started together, every second) each saw the spool over its limit and each deleted its oldest
        segment: four workers dropped up to four segments where one was over."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        give_up = time.monotonic() + LIMIT_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() < give_up:
                    time.sleep(0.005)
                    continue
            except OSError:
                pass
            os.close(fd)
            return None

    def _drop_oldest(self, must_free: bool) -> tuple[int, int]:
        """Delete the oldest unclaimed segments while over max_bytes (or one, if `must_free`), counting each one's
        events as dropped (and lines that are no event as not_events) as it goes: (the events dropped, the lines
        in them that were no event).

        The spool's size is read again, after a segment's lines were counted and before its deletion, once this
        check has dropped a segment's worth (segment_max_bytes) since it last read it: a check far over the limit
        takes seconds (every segment it drops is parsed), so the others' checks give up waiting for its lock
        (LIMIT_LOCK_WAIT_S) and run beside it. Each deleted the excess it had listed at its start: 4 workers
        dropped all 94,161 events of a 168 MB spool over a 40 MB limit, 0 MB left. Now checks running side by
        side see each other's deletions and together drop the excess, give or take a segment's worth each. (Read
        before every deletion, a spool of 2,000 small outage segments took 38 s to drop, against 0.1 s.)"""
        sizes = self._segment_sizes()
        total, since_read, dropped, not_events = sum(sizes.values()), 0, 0, 0
        for path, size in sizes.items():
            if total <= self.max_bytes and not must_free:
                break
            segment = self._try_claim(path)
            if segment is None:
                if path.name in self._left_alone:  # found just now: not counted against the limit either
                    total -= size
                continue
            segment.records(lambda _: None)
            lines = segment.lines + segment.torn_events  # its events, those cut short too; junk is no event lost
            if not must_free and since_read + size >= self.segment_max_bytes:
                total, since_read = sum(self._segment_sizes().values()), 0
                if total <= self.max_bytes:  # another check made the room meanwhile
                    segment.release(delete=False)
                    break
            refused = segment.release(delete=True)
            if refused is not None:  # the folder takes no deletions now (read-only): none of the others either
                self._warn(f"event spool {self.root}: cannot delete the oldest segment {path.name} to make room "
                           f"({refused}); it is kept, and sent once Fluentd takes it")
                break
            with self._lock:
                self._cached.pop(path, None)
            # counted as each segment goes: a check can run for seconds, and a worker killed in it (gunicorn's
            # graceful_timeout, the OOM killer) had counted none of the segments it deleted (counted at the end)
            if lines:
                self._count("dropped", lines)
            if segment.not_events:
                self._count("not_events", segment.not_events)
            total, since_read = total - size, since_read + size
            dropped += lines
            not_events += segment.not_events
            must_free = False
        return dropped, not_events

    def _segment_sizes(self) -> dict[Path, int]:
        """The size of each segment in the spool now, oldest first, that counts against the limit: not a symbolic or
        hard link, nor a file this process cannot open (reported once each, left alone)."""
        sizes = {}
        for path in self.segment_paths():
            if path.name in self._left_alone:  # this process can neither count nor drop it
                continue
            try:
                status = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(status.st_mode):  # never followed (a dangling one, too): reported once, left alone
                self._leave_alone(path)
            elif status.st_nlink > 1:  # a hard link: not counted, nor dropped, as a symbolic one
                self._leave_alone(path, _hard_link_text(status.st_nlink))
            else:
                sizes[path] = status.st_size
        return sizes

    def waiting(self) -> tuple[int, int]:
        """(segments, bytes) in the spool that no process holds now: what is left for the next process given this
        folder. A held one (another worker's open segment, or one it is sending) is that process's to send."""
        segments = size = 0
        for path in self.segment_paths():
            if path.name in self._left_alone:
                continue
            segment = self._try_claim(path)  # a link, a hard link or no regular file is never claimed
            if segment is not None:
                segments, size = segments + 1, size + os.fstat(segment.fd).st_size
                segment.release(delete=False)
        return segments, size

    def segment_paths(self) -> list[Path]:
        """Sealed and open segments, oldest first (names start with the creation time; an older version's
        `segment-000000000001.jsonl` is placed by its last write: sorted by name, it came after every new segment,
        so the limit dropped new events before those older ones). Other `.jsonl` names are no segment: logged once."""
        try:
            listed = os.listdir(self.root)
        except FileNotFoundError:
            return []
        names = []
        for name in listed:
            if SEGMENT_NAME.fullmatch(name):
                names.append(name)
            elif name.endswith(SUFFIX):  # e.g. the local prediction log, in a spool set to its folder
                self._leave_alone(self.root / name, "not named as a segment (<20-digit time>-<pid>-<n>.jsonl)")
        names.sort(key=self._age)
        for name in reversed(names):  # another process's newest name, too: its clock may be ahead of ours
            stamp = _name_stamp(name)
            if stamp is not None:
                with self._lock:
                    self._last_stamp = max(self._last_stamp, stamp)
                break
        return [self.root / name for name in names]

    def _age(self, name: str) -> tuple[int, str]:
        stamp = _name_stamp(name)
        if stamp is None:
            try:
                stamp = os.stat(self.root / name).st_mtime_ns
            except OSError:
                stamp = 0
        return stamp, name

    def _open_for_reading(self, path: Path) -> int | None:
        """A read descriptor of a regular file; None if it is gone or cannot be opened (logged once per file).

        A segment written by another user (e.g. root with umask 077) is left to whoever can read it: it
        must not stop this process from sending, or dropping, the others."""
        try:  # O_NONBLOCK: a FIFO here must not hang us; O_NOFOLLOW: a link is never followed (ELOOP)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._leave_alone(path)
            else:
                self._cannot_open(path, exc.strerror or str(exc))
            return None
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            os.close(fd)
            self._cannot_open(path, "not a regular file")
            return None
        if status.st_nlink > 1:  # before, read and sent as events, then its name here deleted
            os.close(fd)
            self._leave_alone(path, _hard_link_text(status.st_nlink))
            return None
        return fd

    def _cannot_open(self, path: Path, reason: str) -> None:
        if path.name not in self._left_alone:
            self._left_alone.add(path.name)
            log.error("event spool %s: cannot open %s (%s); leaving it in place, neither sent, dropped nor "
                      "counted against the spool's limit", self.root, path.name, reason)

    def _leave_alone(self, path: Path, why: str = "") -> None:
        """Log once that a file in the spool is not one of its own (a symbolic link unless `why` says otherwise):
        placed by an operator, a restore tool, or someone who can write only to the spool folder, it may name a
        file anywhere, which the spool must neither send as events nor truncate nor delete."""
        if path.name not in self._left_alone:
            self._left_alone.add(path.name)
            log.warning("event spool %s: %s is %s; leaving it in place, neither sent, dropped nor counted against "
                        "the spool's limit", self.root, path.name, why or _link_text(path))

    def _try_claim(self, path: Path) -> Segment | None:
        fd = self._open_for_reading(path)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:  # replaced or deleted after we opened it
                raise FileNotFoundError(path)
        except OSError:  # BlockingIOError: someone holds it
            os.close(fd)
            return None
        return Segment(path, fd)

    def _remove_orphans(self) -> None:
        """`.new` files left by a process that died between creating and naming a segment (empty)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:  # the spool folder was removed under us: nothing to tidy
            return
        self._left_alone &= set(names)  # forget files that are gone (an orphan's name too: logged once)
        for name in names:
            path = self.root / name
            if name.endswith(OPENING_SUFFIX) and time.time() - _mtime(path) > 60:  # a link: its own age
                segment = self._try_claim(path)
                if segment is not None:
                    segment.release(delete=True)

    def _warn(self, message: str, dropped: int = 0, force: bool = False) -> None:
        """Log ``message`` (which drops ``dropped`` events) at most once per 10 s, so a full disk cannot flood
        the log; the drops of messages held back are added to the next one that is logged (or, with no
        message, to a line of their own), so the logged drops add up to the dropped count."""
        with self._warn_lock:  # request threads (holding self._lock) and the delivery thread both come here
            now = time.monotonic()
            self._unlogged_drops += dropped
            if (now - self._last_warning < 10.0 and not force) or not (message or self._unlogged_drops):
                return
            held_back = self._unlogged_drops - dropped
            if held_back:
                message = (f"{message}; " if message else f"event spool {self.root}: ") + \
                    f"{held_back} more events dropped since the last message"
            self._last_warning, self._unlogged_drops = now, 0
        log.error(message)


class SpoolInUse(OSError):
    """The spool folder is held by a running process that sends to another destination."""


class SpoolLink(OSError):
    """The spool's file that this process must write (its destination's) is a symbolic link (never followed) or no
    regular file (a FIFO would block the open, and take no address)."""


def _link_text(path: Path) -> str:
    """'a symbolic link to <target>', for a message."""
    try:
        return f"a symbolic link to {os.readlink(path)}"
    except OSError:
        return "a symbolic link"


def _hard_link_text(names: int) -> str:
    """What a hard link in the spool is, for a message."""
    return f"a hard link ({names} names for one file, where a segment has one: its lines may be another file's)"


def _check_writable(root: Path) -> None:
    """OSError naming ``root`` unless a file can be made in it: a spool that cannot be written would answer
    every request and drop every event, so the process stops at start instead. No room for a new file (out of
    inodes, a quota: FULL_DISK) is a full disk, logged: events are dropped, counted, until there is room."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".writable-", dir=root)
    except OSError as exc:
        if exc.errno in FULL_DISK:  # out of inodes: the folder may be written, there is no room now (a full disk)
            log.warning("event spool %s: no room for a new file (%s); events are dropped, counted, until there is "
                        "room", root, exc.strerror or exc)
            return
        raise OSError(exc.errno, f"event spool {root}: cannot create files in it ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _file_size_limit() -> str:
    """The largest file this process may write, for a message: its RLIMIT_FSIZE (`ulimit -f`, systemd's LimitFSIZE,
    docker's --ulimit fsize), or, with none, the filesystem's own largest file."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return "the filesystem's largest file" if soft == resource.RLIM_INFINITY else f"RLIMIT_FSIZE: {soft} bytes"


def _folder_path(fd: int) -> str:
    """Where an open folder is now (Linux's /proc), for a message; a description where that cannot be told."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "another path"


def _name_stamp(name: str) -> int | None:
    """The creation time a segment's name starts with (20 digits of nanoseconds); None for other names, and for a
    time no clock this app sends under gives (NAME_STAMP_END_NS): such a name is placed by its last write."""
    head = name.split("-", 1)[0]
    if not (len(head) == 20 and head.isascii() and head.isdigit()):
        return None
    stamp = int(head)
    return stamp if stamp < NAME_STAMP_END_NS else None


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return time.time()
