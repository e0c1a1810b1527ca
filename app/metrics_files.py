"""prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR) over a server's whole life.

Every gunicorn worker keeps its counters and histograms in files of its own, ``counter_<pid>.db`` and
``histogram_<pid>.db``, whose counts must outlive it (they stay in the totals /metrics reports), and
prometheus_client never removes them: each worker ever started (``kill -HUP``, ``--max-requests``, a crash)
left two more files, each read by every scrape. ``retire_process()`` (the master, once a worker has exited)
reads a dead worker's two files with prometheus_client's MultiProcessCollector, adds its samples into
``retired.json`` (ours: per metric family, each sample's total over the workers gone) and removes its files,
so the folder holds two files per live worker plus that one, however many workers came and went. A scrape
adds those totals to what the live workers' files hold (counters, and a histogram's cumulative buckets, count
and sum, all add up). Only prometheus_client's public API is used: its file format is its own business.

A scrape reads the files under a shared lock (``metrics.lock`` in the folder) and the master folds under an
exclusive one, so no scrape sees a worker's counts twice (folded and still in its file) or not at all, nor a
file removed between prometheus_client's listing and its read (an error for counters and histograms).

``served_<pid>.json`` holds the models a live worker serves (shelfcast_model_info, app/metrics.py), rewritten
when they change and removed with the worker: a prometheus_client Gauge cannot drop a label set in
multiprocess mode, so each model a worker ever served kept a series, at 0, for the worker's life.

A directory the server made itself (the default, ``shelfcast-metrics-*`` in the temporary directory) names its
master in ``master.pid`` (``claim()``), and is removed when the server exits; a master that was SIGKILLed (or
lost with its machine's power) never exits, so each such start left one behind. ``remove_orphaned()``, at every
start, removes those whose master is gone: the same user's directory, whose master.pid names no live process of
that user started when the master was. One without master.pid (a directory a user set, which ``disown()`` keeps
unnamed, or one made by an older version or not yet claimed) is never removed, nor one whose ``server.lock`` is
held.

One server at a time uses a directory: its master holds an exclusive flock on ``server.lock`` in it from its
start (``hold()``; its workers inherit the lock, so it lasts until the last of them has exited). Two servers
given one PROMETHEUS_MULTIPROC_DIR (a staging and a production server sharing an environment file) each emptied
it at start, deleting the other's live counts, and each /metrics then summed both servers' requests; the second
one is now refused at start, naming the first's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LOCK_FILE = "metrics.lock"
FOLDED_TYPES = ("counter", "histogram")  # kept after a worker dies (its live gauges go: mark_process_dead)
RETIRED = "retired.json"  # the dead workers' counter and histogram totals: [{name, type, documentation, samples}]
RETIRING_PREFIX = "retiring-"  # a scratch folder holding links to the one dead worker's files being read
SERVED_PREFIX = "served_"  # served_<pid>.json: the models a live worker serves (shelfcast_model_info)
OWNER = "master.pid"  # "<pid> <start time>" of the master that made the directory (and is to remove it)
SERVER_LOCK = "server.lock"  # flocked by the server using the directory, for its life; holds its master's pid


class DirectoryInUse(RuntimeError):
    """Another running server holds the directory (``hold()``)."""


class DirectoryGone(RuntimeError):
    """The directory was removed while the server ran (by hand, or a /tmp cleaner): the live workers' counts are in
    files no longer in it, so there is nothing to sum until workers are started again (``restore()``)."""

    def __init__(self, directory: Path):
        super().__init__(f"PROMETHEUS_MULTIPROC_DIR {directory} was removed while the server ran: no counts to "
                         "report; the server makes it again as it starts a worker, and counts from 0 in the workers "
                         "started since (kill -HUP the master to restart them all now)")


@contextlib.contextmanager
def _locked(directory: Path, operation: int):
    try:
        descriptor = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        if directory.is_dir():
            raise
        raise DirectoryGone(directory) from None
    try:
        fcntl.flock(descriptor, operation)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def exposition(directory: Path | str, *collectors) -> bytes:
    """/metrics in Prometheus text format, summed over every live worker's file in ``directory`` and the totals
    of those gone (``retired.json``), with ``collectors``' metrics (read under the same lock). DirectoryGone where
    ``directory`` no longer exists."""
    directory = Path(directory)
    with _locked(directory, fcntl.LOCK_SH):
        registry = CollectorRegistry()
        registry.register(_Families(_with_retired(_collected(directory), _read_retired(directory))))
        for collector in collectors:
            registry.register(collector)
        return generate_latest(registry)


class _Families:
    """A collector of metric families already collected."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return self.families


def _collected(directory: Path) -> list:
    """The metric families prometheus_client's MultiProcessCollector reads from the ``*.db`` files in
    ``directory``, summed over them (a histogram's buckets cumulative, as exposed)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return list(registry.collect())


def _sample_key(name: str, labels: dict) -> tuple:
    return name, tuple(sorted(labels.items()))


def _read_retired(directory: Path) -> list[dict]:
    try:
        return json.loads((directory / RETIRED).read_text(encoding="utf-8"))
    except FileNotFoundError:  # no worker has been retired yet
        return []


def _add_retired(retired: list[dict], families) -> None:
    """Add ``families``' samples into ``retired`` (``retired.json``'s families), per sample name and labels: a
    family or sample not there yet is appended."""
    by_name = {family["name"]: family for family in retired}
    for metric in families:
        family = by_name.get(metric.name)
        if family is None:
            family = by_name[metric.name] = {"name": metric.name, "type": metric.type,
                                             "documentation": metric.documentation, "samples": []}
            retired.append(family)
        samples = family["samples"]  # [sample name, labels, value], in the order first seen
        index = {_sample_key(name, labels): i for i, (name, labels, _) in enumerate(samples)}
        for sample in metric.samples:
            at = index.get(_sample_key(sample.name, sample.labels))
            if at is None:
                index[_sample_key(sample.name, sample.labels)] = len(samples)
                samples.append([sample.name, dict(sample.labels), sample.value])
            else:
                samples[at][2] += sample.value


def _with_retired(live: list, retired: list[dict]) -> list:
    """The live families with the retired totals added to their matching samples; a retired sample or family
    the live files lack is appended (one family per name)."""
    retired_by_name = {family["name"]: family for family in retired}
    merged = []
    for metric in live:
        family = retired_by_name.pop(metric.name, None)
        if family is None:
            merged.append(metric)
            continue
        totals = {_sample_key(name, labels): value for name, labels, value in family["samples"]}
        samples = [(s.name, s.labels, s.value + totals.pop(_sample_key(s.name, s.labels), 0.0))
                   for s in metric.samples]
        samples += [(name, labels, value) for name, labels, value in family["samples"]
                    if _sample_key(name, labels) in totals]
        merged.append(_family(metric.name, metric.documentation, metric.type, samples))
    for family in retired:  # families no live worker has (yet)
        if family["name"] in retired_by_name:
            merged.append(_family(family["name"], family["documentation"], family["type"], family["samples"]))
    return merged


def _family(name: str, documentation: str, kind: str, samples: list):
    """A counter's or histogram's samples ``(sample name, labels, value)`` as the family a custom collector yields,
    built the way prometheus_client documents (CounterMetricFamily, HistogramMetricFamily); the only kinds the
    folded files hold (FOLDED_TYPES)."""
    label_names = [n for n in (samples[0][1] if samples else {}) if n != "le"]
    by_labels: dict[tuple, dict] = {}
    for sample_name, labels, value in samples:
        series = by_labels.setdefault(tuple(labels[n] for n in label_names), {"buckets": [], "sum": 0.0, "total": 0.0})
        if sample_name.endswith("_bucket"):
            series["buckets"].append((labels["le"], value))
        elif sample_name.endswith("_sum"):
            series["sum"] = value
        elif sample_name.endswith("_total") or sample_name == name:
            series["total"] = value
    if kind == "histogram":
        family = HistogramMetricFamily(name, documentation, labels=label_names)
        for values, series in by_labels.items():
            family.add_metric(list(values), series["buckets"], series["sum"])
    else:
        family = CounterMetricFamily(name, documentation, labels=label_names)
        for values, series in by_labels.items():
            family.add_metric(list(values), series["total"])
    return family


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
    directory = Path(directory)
    for pattern in ("*.db", f"{SERVED_PREFIX}*.json*", f"{RETIRED}*"):
        for stale in directory.glob(pattern):
            stale.unlink()
    for scratch in directory.glob(f"{RETIRING_PREFIX}*"):
        shutil.rmtree(scratch, ignore_errors=True)


def retire_process(pid: int, directory: Path | str) -> None:
    """After process ``pid`` exited: its live gauges removed, its counters' and histograms' samples added into
    ``retired.json`` and its own files removed. OSError where retired.json cannot be written (a full disk): then
    nothing is changed, and the dead worker's files, left in place, are still summed by every scrape."""
    directory = Path(directory)
    mark_process_dead(pid, str(directory))
    if not directory.is_dir():  # no worker has started yet (the master makes it at start)
        return
    with _locked(directory, fcntl.LOCK_EX):
        for served in (directory / f"{SERVED_PREFIX}{pid}.json", directory / f"{SERVED_PREFIX}{pid}.json.tmp"):
            served.unlink(missing_ok=True)
        own = [path for kind in FOLDED_TYPES if (path := directory / f"{kind}_{pid}.db").exists()]
        if not own:
            return
        scratch = Path(tempfile.mkdtemp(prefix=RETIRING_PREFIX, dir=directory))  # not *.db: no scrape reads it
        try:  # MultiProcessCollector reads a folder's *.db files: this one holds only the dead worker's
            for path in own:
                try:
                    os.link(path, scratch / path.name)
                except OSError:  # a file system without hard links
                    shutil.copyfile(path, scratch / path.name)
            families = _collected(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        retired = _read_retired(directory)
        _add_retired(retired, families)
        staging = directory / f"{RETIRED}.tmp"
        try:
            staging.write_text(json.dumps(retired), encoding="utf-8")
            os.replace(staging, directory / RETIRED)  # a scrape (after the lock) sees the old totals or the new
        except OSError:  # a full disk: retired.json and the worker's files stay as they were, still summed
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
            raise
        for path in own:
            path.unlink()


def restore(directory: Path | str) -> bool:
    """Make ``directory`` again where it was removed while the server ran (True then): by the master before each
    worker it starts, and by a worker making a metric file, so the file can be made (prometheus_client makes a
    process's file with its first series of the kind: a worker that cannot failed to boot, and gunicorn then stopped
    the whole server; a live worker answered 500 to each request)."""
    directory = Path(directory)
    if directory.is_dir():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    return True


def _start_time(pid: int) -> str | None:
    """Process ``pid``'s start time (clock ticks since boot, /proc/<pid>/stat field 22): with the pid, it names
    one process, not whichever process is given the pid next. None where /proc does not tell."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def claim(directory: Path | str, pid: int) -> None:
    """Name master ``pid`` as the owner of ``directory``, a directory it made (written whole, then renamed)."""
    directory = Path(directory)
    scratch = directory / f"{OWNER}.tmp"
    scratch.write_text(f"{pid} {_start_time(pid) or '-'}\n", encoding="ascii")
    scratch.replace(directory / OWNER)


def disown(directory: Path | str) -> None:
    """``directory`` was given to this server (PROMETHEUS_MULTIPROC_DIR): no owner named in it, so it is never
    taken for an orphan, even where a server had made it once."""
    (Path(directory) / OWNER).unlink(missing_ok=True)


def hold(directory: Path | str) -> int:
    """Take ``directory`` for this server, before anything in it is touched: an exclusive flock on its
    ``server.lock``, naming this process, held as long as the descriptor returned stays open in this process or a
    child forked from it (a server's master keeps it for its life). DirectoryInUse naming the holder's pid where
    another running server holds it; OSError where the file cannot be opened."""
    try:
        descriptor, named = os.open(Path(directory) / SERVER_LOCK, os.O_RDWR | os.O_CREAT, 0o666), True  # umask
    except PermissionError:  # another user's lock file in a directory both may write (a shared group): an flock
        descriptor, named = os.open(Path(directory) / SERVER_LOCK, os.O_RDONLY), False  # needs only reading
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        raise DirectoryInUse(f"{directory} is the metrics directory of another running server (pid {holder}, or "
                             "its workers, still exiting)") from None
    except BaseException:
        os.close(descriptor)
        raise
    if named:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
    return descriptor


def _held(directory: Path) -> bool:
    """Whether a running server holds ``directory`` (``hold()``); False where it has no server.lock."""
    try:
        descriptor = os.open(directory / SERVER_LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def _owner_alive(pid: int, started: str, uid: int) -> bool:
    """Whether the master that wrote ``pid started`` may still run: a process ``pid`` of user ``uid``, started
    then. In doubt (its start time or owner unreadable), alive."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not the master, which ran as the directory's owner
        return False
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:  # root may signal anyone: compare the owner itself
            return False
    except OSError:
        return True
    now = _start_time(pid)
    return started == "-" or now is None or now == started  # a different start time: the pid was reused


def remove_orphaned(parent: Path | str, prefix: str) -> list[Path]:
    """Remove the directories ``prefix*`` in ``parent`` that this user's servers made and whose master is gone
    (SIGKILLed: its on_exit never ran); the paths removed. Never one with no owner named, another user's, a
    link, one whose master still runs, or one a server holds (its workers outlive a SIGKILLed master a while)."""
    removed = []
    uid = os.getuid()
    for path in Path(parent).glob(f"{prefix}*"):
        try:
            info = path.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                continue
            pid_text, started = (path / OWNER).read_text(encoding="ascii").split()
            pid = int(pid_text)
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if pid > 0 and not _owner_alive(pid, started, uid) and not _held(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
