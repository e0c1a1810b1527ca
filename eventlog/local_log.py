"""An append-only JSON-lines file: one write() per line, fsync'd by the owner's upkeep.

The embedded default destination of prediction events (no Fluentd) and the fallback of
monitoring's one-shot events. Several processes may append to one file: O_APPEND writes of
whole lines do not interleave.

A write that a full disk cuts short leaves part of a line at the file's end. It is cut off again when it is
still the file's tail (else the next line appended would continue it, and readers would meet a torn line in
the middle of the log: pipeline/event_sources.py refuses such a log); where it cannot be, the next line this
process appends starts with a newline, ending the torn one (an empty line, which readers skip).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class JsonLinesLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = self._open()
        self._lock = threading.Lock()
        self._unsynced = False
        self._torn = False  # a line of this process was cut short and is still in the file: end it first
        self._since_check = 0  # lines appended since the last follow_path()

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # read too: a line cut short by a full disk is checked to be the file's tail before it is cut off (a log this
        # user may write but not read is opened write-only as before: such a line is then ended, not cut off)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except PermissionError:
            return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, line: bytes) -> None:
        with self._lock:
            if self._fd < 0:
                raise OSError(f"{self.path}: log is closed")
            ends_torn = self._torn  # this write's first byte ends the torn line before it
            if ends_torn:
                line = b"\n" + line
            written = 0
            try:
                while written < len(line):
                    written += os.write(self._fd, memoryview(line)[written:])
            except OSError:
                if written:
                    part = line[int(ends_torn):written]
                    self._torn = bool(part) and not self._cut_off(part)
                raise
            self._torn = False
            self._unsynced = True
            self._since_check += 1

    def _cut_off(self, part: bytes) -> bool:
        """Remove ``part`` (what a failed write left) if it is still the file's tail, after a newline; whether it
        is gone. Another process's whole line appended after it (room made meanwhile) leaves it in place."""
        try:
            size = os.fstat(self._fd).st_size
            start = size - len(part)
            if start < 0 or os.pread(self._fd, len(part), start) != part:
                return False
            if start > 0 and os.pread(self._fd, 1, start - 1) != b"\n":
                return False
            os.ftruncate(self._fd, start)
        except OSError:
            return False
        return True

    def follow_path(self) -> int:
        """If the path no longer names the open file (removed by hand, or renamed by a rotation without
        copytruncate), open the path again, so the next line goes where readers look; how many lines this process
        wrote into a removed file since the last call (lost with it; 0 otherwise). Before, every later event
        went into the removed file, counted as sent, until the process restarted."""
        with self._lock:
            if self._fd < 0:
                return 0
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                named = None
            own = os.fstat(self._fd)
            if named is not None and (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino):
                self._since_check = 0
                return 0
            fd = self._open()  # an OSError leaves this file in use, and the next call tries again
            os.close(self._fd)
            lost = self._since_check if own.st_nlink == 0 else 0
            self._fd, self._torn, self._since_check = fd, False, 0
        if own.st_nlink == 0:
            log.error("event log %s was removed while in use; made it again (%d events written into the removed "
                      "file since the last check are lost, counted as dropped)", self.path, lost)
        else:
            log.warning("event log %s was moved away (a rotation?); appending to a new file of that name", self.path)
        return lost

    def sync(self) -> None:
        """fsync outside the lock, so a request thread never waits for the disk."""
        with self._lock:
            fd = os.dup(self._fd) if self._fd >= 0 and self._unsynced else -1
            self._unsynced = False
        if fd >= 0:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
