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

``served_<pid>.json`` holds the models a live worker serves (shelfcast_model_info, app/metrics.py), rewritten
when they change and removed with the worker: a prometheus_client Gauge cannot drop a label set in
multiprocess mode, so each model a worker ever served kept a series, at 0, for the worker's life.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LOCK_FILE = "metrics.lock"
FOLDED_TYPES = ("counter", "histogram")  # kept after a worker dies (its live gauges go: mark_process_dead)
FOLDED_INTO = "dead"  # counter_dead.db, histogram_dead.db: read by prometheus_client as any other such file
SERVED_PREFIX = "served_"  # served_<pid>.json: the models a live worker serves (shelfcast_model_info)


@contextlib.contextmanager
def _locked(directory: Path, operation: int):
    descriptor = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, operation)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def exposition(directory: Path | str, *collectors) -> bytes:
    """/metrics in Prometheus text format, summed over every file in ``directory``, with ``collectors``' metrics
    (read under the same lock)."""
    directory = Path(directory)
    with _locked(directory, fcntl.LOCK_SH):
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        for collector in collectors:
            registry.register(collector)
        return generate_latest(registry)


def write_served(directory: Path | str, pid: int, labels: list) -> None:
    """What process ``pid`` serves now (label value tuples), replacing what it served before, in one rename."""
    path = Path(directory) / f"{SERVED_PREFIX}{pid}.json"
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps([list(values) for values in labels]), encoding="utf-8")
    os.replace(staging, path)


def read_served(directory: Path | str) -> set[tuple]:
    """The label value tuples any live process serves (a process's file goes when it is retired)."""
    served = set()
    for path in Path(directory).glob(f"{SERVED_PREFIX}*.json"):
        try:
            served.update(tuple(values) for values in json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:  # retired meanwhile, outside the lock (a scrape without one: tests)
            continue
    return served


def clear(directory: Path | str) -> None:
    """At the server's start: an earlier run's files, whose counts must not be added to this one's."""
    for pattern in ("*.db", f"{SERVED_PREFIX}*.json*"):
        for stale in Path(directory).glob(pattern):
            stale.unlink()


def retire_process(pid: int, directory: Path | str) -> None:
    """After process ``pid`` exited: its live gauges removed, its counters and histograms added into the folded
    files and its own files removed."""
    directory = Path(directory)
    mark_process_dead(pid, str(directory))
    if not directory.is_dir():  # no worker has started yet (the master makes it at start)
        return
    with _locked(directory, fcntl.LOCK_EX):
        for served in (directory / f"{SERVED_PREFIX}{pid}.json", directory / f"{SERVED_PREFIX}{pid}.json.tmp"):
            served.unlink(missing_ok=True)
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
