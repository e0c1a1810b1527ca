"""prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR) over a server's whole life.

Every gunicorn worker keeps its counters and histograms in files of its own, ``counter_<pid>.db`` and
``histogram_<pid>.db``, which must outlive it (its counts stay in the totals /metrics reports), and
prometheus_client never removes them: each worker ever started (``kill -HUP``, ``--max-requests``, a crash)
left two more files, each read by every scrape. ``retire_process()`` (the master, once a worker has exited)
adds a dead worker's values into ``counter_dead.db`` and ``histogram_dead.db`` and removes its files, so the
folder holds two files per live worker plus those two, however many workers came and went.

A scrape reads the files under a shared lock (``metrics.lock`` in the folder) and the master folds under an
exclusive one, so no scrape sees a worker's counts twice (folded and still in its file) or not at all, nor a
file removed between prometheus_client's listing and its read (an error for counters and histograms).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LOCK_FILE = "metrics.lock"
FOLDED_TYPES = ("counter", "histogram")  # kept after a worker dies (its live gauges go: mark_process_dead)
FOLDED_INTO = "dead"  # counter_dead.db, histogram_dead.db: read by prometheus_client as any other such file


@contextlib.contextmanager
def _locked(directory: Path, operation: int):
    descriptor = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, operation)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def exposition(directory: Path | str) -> bytes:
    """/metrics in Prometheus text format, summed over every file in ``directory``."""
    directory = Path(directory)
    with _locked(directory, fcntl.LOCK_SH):
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        return generate_latest(registry)


def retire_process(pid: int, directory: Path | str) -> None:
    """After process ``pid`` exited: its live gauges removed, its counters and histograms added into the folded
    files and its own files removed."""
    directory = Path(directory)
    mark_process_dead(pid, str(directory))
    if not directory.is_dir():  # no worker has started yet (the master makes it at start)
        return
    with _locked(directory, fcntl.LOCK_EX):
        for kind in FOLDED_TYPES:
            own = directory / f"{kind}_{pid}.db"
            if not own.exists():
                continue
            folded = MmapedDict(str(directory / f"{kind}_{FOLDED_INTO}.db"))
            try:  # per key (metric, labels, and a histogram's bucket): a sum, as a scrape adds the files up
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(own)):
                    total, _ = folded.read_value(key)
                    folded.write_value(key, total + value, timestamp)
            finally:
                folded.close()
            own.unlink()
