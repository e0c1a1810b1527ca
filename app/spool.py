"""A durable local spool for prediction events that Fluentd has not acknowledged yet.

Why this shape:
- Append-only JSON-lines segment files: a crash can at worst tear the last line of the
  segment being written, and every complete line stays readable by a person (`jq`).
- Segments rotate at a size limit and are deleted once replayed, so disk use follows
  the backlog, not the history.
- The replay position (segment, byte offset) is committed atomically after every
  acknowledged batch, so a crash mid-replay re-sends at most the batch in flight and
  never one that Fluentd acknowledged.
- A spool directory belongs to one process at a time (an flock), so several WSGI
  workers never interleave writes; `Spool.claim` adopts a directory whose owner died,
  so its backlog is replayed by the next process instead of being orphaned.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

SEGMENT_PATTERN = re.compile(r"^segment-(\d{12})\.jsonl$")
POSITION_FILE = "position.json"
LOCK_FILE = "lock"
DEFAULT_SEGMENT_MAX_BYTES = 16 * 1024 * 1024


class SpoolError(RuntimeError):
    """The spool directory cannot be used as it is (names the file)."""


class SpoolBusyError(SpoolError):
    """Another process (or another Spool in this one) owns the directory."""


class SpoolPosition(NamedTuple):
    """Where replay resumes: a segment number and a byte offset inside it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class SpoolBatch:
    """Records read from the spool, and the position to commit once they are delivered."""

    records: list[dict[str, Any]]
    end: SpoolPosition
    skipped: int  # unreadable lines passed over (each one logged with its file and offset)


class AppendOnlyLines:
    """A file opened O_APPEND that receives whole lines in single write() calls.

    One write per batch of complete lines keeps lines from different writers (or
    processes sharing a log) from interleaving, and a crash can only tear the last line.
    """

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size
        self._unsynced = False

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self.size += written
        self._unsynced = self._unsynced or bool(data)

    def fsync(self) -> None:
        if self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False

    def take_unsynced(self) -> int | None:
        """A duplicate descriptor to fsync outside the caller's lock, or None if all is synced."""
        if not self._unsynced:
            return None
        self._unsynced = False
        return os.dup(self._fd)

    def close(self, sync: bool = True) -> None:
        if self._fd >= 0:
            if sync:
                self.fsync()
            os.close(self._fd)
            self._fd = -1


def segment_name(number: int) -> str:
    return f"segment-{number:012d}.jsonl"


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Append-only JSON-lines segments with a durable replay position.

    Threads: one delivery thread reads, commits and syncs; any thread may append (request
    threads do when the in-memory queue overflows). Appends are fsync'd by `sync()`, once
    per batch rather than once per line, and fsyncs run outside the lock so an appending
    request thread never waits for the disk.
    """

    def __init__(self, directory: Path | str, segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES):
        if segment_max_bytes < 1:
            raise ValueError(f"segment_max_bytes: must be >= 1, got {segment_max_bytes}")
        self.directory = Path(directory)
        self.segment_max_bytes = segment_max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._to_fsync: list[int] = []  # descriptors of rotated-out segments, synced by sync()
        self._directory_unsynced = False
        self._lock_fd = self._take_directory_lock()
        try:
            self._position = self._load_position()
            existing = self._segment_numbers()
            first_new = max([*existing, self._position.segment - 1]) + 1
            # Never append to a segment from an earlier run: its last line may be torn.
            self._active_number = first_new
            self._active = AppendOnlyLines(self.directory / segment_name(first_new))
            self._skip_finished_segments()
            self._delete_segments_before(self._position.segment)
            fsync_directory(self.directory)
        except BaseException:
            if hasattr(self, "_active"):
                self._active.close(sync=False)
            os.close(self._lock_fd)
            raise
        self._closed = False

    @classmethod
    def claim(cls, root: Path | str, segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES) -> "Spool":
        """Open the first spool under `root` that no live process owns, or a new one.

        Directories are named 0, 1, 2, ...; one per concurrently running process.
        """
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        taken = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        for number in taken:
            try:
                return cls(root / str(number), segment_max_bytes)
            except SpoolBusyError:
                continue
        candidate = (taken[-1] + 1) if taken else 0
        while True:
            try:
                return cls(root / str(candidate), segment_max_bytes)
            except SpoolBusyError:  # another process created it between our listing and now
                candidate += 1

    # --- writing -------------------------------------------------------------------

    def append(self, lines: list[bytes]) -> None:
        """Append complete JSON lines (each ending in a newline) in one write."""
        if not lines:
            return
        data = b"".join(lines)
        with self._lock:
            self._require_open()
            self._active.append(data)
            if self._active.size >= self.segment_max_bytes:
                self._rotate()

    def sync(self) -> None:
        """fsync what was appended since the last sync (a no-op when nothing was)."""
        with self._lock:
            if self._closed:
                return
            descriptors, self._to_fsync = self._to_fsync, []
            active = self._active.take_unsynced()
            if active is not None:
                descriptors.append(active)
            directory_unsynced, self._directory_unsynced = self._directory_unsynced, False
        try:
            for descriptor in descriptors:
                os.fsync(descriptor)
            if directory_unsynced:
                fsync_directory(self.directory)
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    # --- replaying -----------------------------------------------------------------

    def has_pending(self) -> bool:
        with self._lock:
            return self._position < self._end()

    def pending_bytes(self) -> int:
        """Bytes appended but not yet committed as delivered (for monitoring)."""
        with self._lock:
            total = 0
            for number in self._segment_numbers():
                if number < self._position.segment:
                    continue
                size = self._active.size if number == self._active_number else self._file_size(number)
                total += size - (self._position.offset if number == self._position.segment else 0)
            return total

    def read(self, max_records: int, max_bytes: int = 1024 * 1024) -> SpoolBatch:
        """Read up to `max_records` records from the committed position on.

        Reading does not move the position: `commit(batch.end)` does, once the
        records are delivered, so a failed delivery is simply read again.
        """
        with self._lock:
            self._require_open()
            position, end = self._position, self._end()
            records: list[dict[str, Any]] = []
            skipped = 0
            while position < end and len(records) < max_records:
                if position.segment == self._active_number:
                    limit = self._active.size
                else:
                    limit = self._file_size(position.segment)
                    if limit < 0:  # deleted or never created: move on
                        position = SpoolPosition(self._next_segment_after(position.segment), 0)
                        continue
                path = self.directory / segment_name(position.segment)
                new_offset, got, bad = self._read_lines(
                    path, position.offset, limit, max_records - len(records), max_bytes
                )
                records.extend(got)
                skipped += bad
                if new_offset >= limit and position.segment != self._active_number:
                    position = SpoolPosition(self._next_segment_after(position.segment), 0)
                else:
                    position = SpoolPosition(position.segment, new_offset)
                if got or bad:
                    break  # one segment per read keeps batches simple; the next read continues
            return SpoolBatch(records, position, skipped)

    def commit(self, position: SpoolPosition) -> None:
        """Durably record that everything before `position` was delivered."""
        with self._lock:
            self._require_open()
            if position < self._position or position > self._end():
                raise SpoolError(
                    f"{self.directory}: commit to {tuple(position)} is outside "
                    f"{tuple(self._position)}..{tuple(self._end())}"
                )
            if position == SpoolPosition(self._active_number, self._active.size) and self._active.size:
                self._rotate()  # the active segment is fully delivered: start an empty one
                position = SpoolPosition(self._active_number, 0)
        self._write_position(position)  # outside the lock: only the delivery thread commits
        with self._lock:
            self._position = position
            self._delete_segments_before(position.segment)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._active.close()
            for descriptor in self._to_fsync:
                os.fsync(descriptor)
                os.close(descriptor)
            self._to_fsync = []
            if self._directory_unsynced:
                fsync_directory(self.directory)
            if self._active.size == 0:  # nothing was written: leave no empty file behind
                (self.directory / segment_name(self._active_number)).unlink(missing_ok=True)
            os.close(self._lock_fd)

    # --- internals (called with self._lock held) -------------------------------------

    def _take_directory_lock(self) -> int:
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise SpoolBusyError(f"{self.directory}: spool is in use by another process") from None
            raise
        return fd

    def _skip_finished_segments(self) -> None:
        """Move the position past segments of earlier runs that hold nothing left to replay."""
        position = self._position
        while position.segment < self._active_number:
            size = self._file_size(position.segment)
            if size >= 0 and position.offset < size:
                break
            position = SpoolPosition(self._next_segment_after(position.segment), 0)
        if position.segment == self._active_number:
            position = SpoolPosition(self._active_number, 0)  # the active segment starts empty
        if position != self._position:
            self._write_position(position)
            self._position = position

    def _require_open(self) -> None:
        if self._closed:
            raise SpoolError(f"{self.directory}: spool is closed")

    def _end(self) -> SpoolPosition:
        return SpoolPosition(self._active_number, self._active.size)

    def _segment_numbers(self) -> list[int]:
        numbers = []
        for entry in os.listdir(self.directory):
            match = SEGMENT_PATTERN.match(entry)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _next_segment_after(self, number: int) -> int:
        later = [n for n in self._segment_numbers() if n > number]
        return later[0] if later else self._active_number

    def _file_size(self, number: int) -> int:
        try:
            return os.stat(self.directory / segment_name(number)).st_size
        except FileNotFoundError:
            return -1

    def _rotate(self) -> None:
        """Start the next segment; the fsyncs wait for sync(), so an appending request never does."""
        retired = self._active.take_unsynced()
        if retired is not None:
            self._to_fsync.append(retired)
        self._active.close(sync=False)
        self._active_number += 1
        self._active = AppendOnlyLines(self.directory / segment_name(self._active_number))
        self._directory_unsynced = True

    def _read_lines(
        self, path: Path, offset: int, limit: int, max_records: int, max_bytes: int
    ) -> tuple[int, list[dict[str, Any]], int]:
        """Parse whole lines of `path` from `offset` up to `limit`; a torn last line is skipped."""
        records: list[dict[str, Any]] = []
        skipped = 0
        start = offset
        with open(path, "rb") as handle:
            handle.seek(offset)
            while offset < limit and len(records) < max_records and offset - start < max_bytes:
                line = handle.readline(limit - offset)
                if not line.endswith(b"\n"):
                    # Only a segment from a run that crashed mid-write can end without one.
                    log.warning("%s: skipping a torn last line at byte %d (%d bytes)", path, offset, len(line))
                    skipped += 1
                    offset = limit
                    break
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                except ValueError as exc:
                    log.warning("%s: skipping an unreadable line at byte %d: %s", path, offset, exc)
                    skipped += 1
                else:
                    records.append(record)
                offset += len(line)
        return offset, records, skipped

    def _load_position(self) -> SpoolPosition:
        path = self.directory / POSITION_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return SpoolPosition(0, 0)
        except ValueError as exc:
            raise SpoolError(f"{path}: not valid JSON ({exc}); move it aside to replay the spool from its start") from None
        try:
            segment, offset = raw["segment"], raw["offset"]
            if not (isinstance(segment, int) and isinstance(offset, int) and segment >= 0 and offset >= 0):
                raise TypeError
        except (KeyError, TypeError):
            raise SpoolError(
                f"{path}: expected {{\"segment\": int >= 0, \"offset\": int >= 0}}, got {raw!r}"
            ) from None
        return SpoolPosition(segment, offset)

    def _write_position(self, position: SpoolPosition) -> None:
        path = self.directory / POSITION_FILE
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"segment": position.segment, "offset": position.offset}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(self.directory)

    def _delete_segments_before(self, number: int) -> None:
        for old in self._segment_numbers():
            if old < number:
                (self.directory / segment_name(old)).unlink(missing_ok=True)

