"""An append-only JSON-lines file: one write() per line, fsync'd by the owner's upkeep.

The embedded default destination of prediction events (no Fluentd) and the fallback of
monitoring's one-shot events. Several processes may append to one file: O_APPEND writes of
whole lines do not interleave.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class JsonLinesLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._unsynced = False

    def append(self, line: bytes) -> None:
        with self._lock:
            if self._fd < 0:
                raise OSError(f"{self.path}: log is closed")
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            self._unsynced = True

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
