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

import os
import threading
from pathlib import Path


class JsonLinesLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # read too: a line cut short by a full disk is checked to be the file's tail before it is cut off (a log this
        # user may write but not read is opened write-only as before: such a line is then ended, not cut off)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except PermissionError:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._unsynced = False
        self._torn = False  # a line of this process was cut short and is still in the file: end it first

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
