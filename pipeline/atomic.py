"""Atomic file and directory writes, and file digests: stdlib only, so serving code can use them.

The one atomic-write helper of pipeline, app and monitoring (the engine, which
imports only numpy and numba, keeps its own in engine/saver.py). A stage that
fails must leave no half-written output, and a reader (the app, a dashboard)
must never see half a report: every file is written under a temporary name next
to its target, flushed to disk, and renamed into place only when complete; an
output directory is built aside and swapped in as a whole. Two commands that
replace the same directory's contents in steps (promote, release) take its
writer lock first (``one_writer``), so the second says who holds it instead of
interleaving its steps with the first's; train holds its project directory so
(``held_exclusively``: the one flock both take).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator


@contextlib.contextmanager
def atomic_file(target: Path | str, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success, with permissions ``mode``.

    The copy is made 0600 (mkstemp) and given ``mode`` before the rename: a private file (0o600, a secret) is never
    readable by others under either name; a chmod after the rename left a window where it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_copies(target)
    fd, tmp = tempfile.mkstemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # mkstemp's 0600 would make outputs private unless asked
        _fsync(tmp_path)  # the bytes are on disk before the name points at them (a power cut leaves old or new)
        os.replace(tmp_path, target)
        fsync_directory(target.parent)  # the rename itself is on disk: a power cut cannot undo it
    except OSError as exc:
        raise _naming(exc, target) from exc.__cause__
    finally:
        tmp_path.unlink(missing_ok=True)


def _staging_prefix(target: Path) -> str:
    """A staging copy's name starts with its target's and this process's id: ``.<name>.<pid>-<random>.tmp``."""
    return f".{target.name}.{os.getpid()}-"


def remove_abandoned_copies(target: Path) -> int:
    """Delete what a killed writer of ``target`` left beside it: staging copies (``.<name>.<pid>-*.tmp``, and
    ``.<name>.*.tmp`` without a process id, from before ids were in the name) and the previous version kept while a
    directory is swapped (``.<name>.old-<pid>``) whose process is gone. A full-size copy of a stage's output each,
    they would otherwise pile up with every interrupted run. Returns how many were removed."""
    removed = 0
    for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
        match = _ABANDONED.fullmatch(path.name[len(target.name) + 2:])
        owner = match and (match["pid"] or match["old"])
        if match is None or (owner is not None and process_alive(int(owner))):
            continue
        discard(path)
        removed += 1
    return removed


def discard(path: Path) -> None:
    """Delete ``path`` whatever it is, ignoring errors: a directory with what it holds, a file, or a symbolic link
    alone, never what it points to (``shutil.rmtree`` refuses a link, and with ``ignore_errors`` left it there)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# what follows ".<target name>." in a writer's copy: a staging copy (<pid>-<random>.tmp; <random>.tmp from before
# pids were in the name) or the previous directory kept during a swap (old-<pid>)
_COPY_SUFFIX = r"(?:(?P<pid>\d+)-)?[^./]+\.tmp|old-(?P<old>\d+)"
_ABANDONED = re.compile(_COPY_SUFFIX)
_COPY = re.compile(rf"\.(?P<target>.+)\.(?:{_COPY_SUFFIX})")


def target_of_copy(path: Path | str) -> Path | None:
    """The output a writer's copy beside it stands for (``data/.split.123-ab.tmp`` -> ``data/split``), also for a
    file inside a staged directory (``data/.raw.123-ab.tmp/train.csv.gz`` -> ``data/raw/train.csv.gz``), or None."""
    path = Path(path)
    for depth, copy in enumerate((path, *path.parents)):  # the nearest staging copy on the way up
        match = _COPY.fullmatch(copy.name)
        if match:
            return copy.with_name(match["target"]).joinpath(*path.parts[len(path.parts) - depth:])
    return None


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


@contextlib.contextmanager
def scratch_directory(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder ``<prefix><pid>-<random>`` in ``parent``, removed when the block ends. A process killed
    outright (SIGKILL, out of memory, a reboot) cannot remove it: each call first deletes the ones of ``prefix``
    whose process is gone, and those named without a process id (``<prefix><random>``, from before ids were in the
    name). A release or fetch killed while downloading left a whole bundle there for good (17 MB at the default
    params, ~410 MB at Favorita's size), one per kill."""
    parent.mkdir(parents=True, exist_ok=True)
    for path in parent.glob(f"{glob.escape(prefix)}*"):
        owner, dash, _ = path.name[len(prefix):].partition("-")
        if dash and owner.isdigit() and process_alive(int(owner)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=parent) as scratch:
        yield Path(scratch)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(folder: Path) -> None:
    """Flush ``folder``'s entries to disk: a rename is a change of its directory, which fsync of the file does not
    write; a power cut before the directory is written leaves the old file, or none. A platform where a directory
    cannot be opened (Windows: PermissionError) or not flushed (EINVAL on some file systems) has no such step."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every regular file and every folder under ``directory`` (links are left alone: not ours)."""
    for folder, _, files in os.walk(directory):
        for name in files:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                _fsync(path)
        fsync_directory(Path(folder))


WRITABLE_PROBE = ".writable-probe"  # check_writable's file, written and deleted at once
WRITABLE_PROBE_BYTES = 1 << 20  # what it writes: a full disk (or quota) refuses it; an empty file takes no block


def check_writable(folder: Path | str) -> None:
    """Write a file of WRITABLE_PROBE_BYTES in ``folder`` as every atomic write does (a staging copy, flushed, renamed
    into place) and delete it: an OSError where that fails (a read-only folder or mount, another user's, a full disk
    or quota), before a long job finds out at its first write. Less than that free still fails later."""
    probe = Path(folder) / WRITABLE_PROBE
    try:
        with atomic_file(probe) as staged:
            staged.write_bytes(bytes(WRITABLE_PROBE_BYTES))
    finally:
        probe.unlink(missing_ok=True)


# A write the system refuses for want of room (a full disk, a quota, a file size limit): retrying cannot help
# until room is made.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_text_atomic(path: Path | str, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` by ``text`` (UTF-8) in one step: readers see the old content or the new (``mode``:
    atomic_file's)."""
    with atomic_file(path, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path | str, data: Any) -> None:
    """``data`` as indented, key-sorted JSON (NaN refused: not JSON), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it replaces ``target`` as a whole, readable by every user."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_copies(target)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield staging
        make_readable_by_all(staging)
        swap_in_directory(staging, target)
    except OSError as exc:
        raise _naming(exc, target) from exc.__cause__
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _naming(exc: OSError, target: Path) -> OSError:
    """``exc``, or where it names no file (a library's write error, e.g. Arrow's on a full disk) the same
    error naming the output being written."""
    if exc.filename is not None:
        return exc
    named = OSError(exc.errno, exc.strerror or str(exc), str(target))
    named.__traceback__ = exc.__traceback__
    return named


def make_readable_by_all(directory: Path) -> None:
    """Files 0644 and folders 0755 under ``directory``, whatever wrote them (mkdtemp and mkstemp make 0700 and
    0600; a copy keeps its source's mode; the umask): the serving container runs as another user (uid 10001)."""
    for folder, _, files in os.walk(directory):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def swap_in_directory(staging: Path, target: Path) -> None:
    """Replace ``target`` by the complete ``staging`` directory (a reader sees the old or the new one).

    Ctrl-C and SIGTERM (an exception in a stage: pipeline/stage.py) wait for both renames: raised between them, the
    caller's cleanup deleted ``staging`` with ``target`` moved aside, and the output was gone. Every file and folder
    in ``staging`` is flushed before the renames and the parent after them, as ``atomic_file`` does for one file: a
    power cut leaves the old directory or the complete new one, never the new name over empty files. A ``target``
    that is a symbolic link (a deploy tool's ``models/production -> releases/3``, swapped atomically) is replaced by
    the directory, the link deleted and what it named left as it was."""
    fsync_tree(staging)
    previous = None
    if os.path.lexists(target):  # a symbolic link (a deploy tool's ``production -> releases/3``) is set aside too
        previous = target.with_name(f".{target.name}.old-{os.getpid()}")
        discard(previous)  # this process's earlier swap's, left if its deletion failed
    swapped = False
    try:
        with signals_deferred():
            if previous is not None:
                os.replace(target, previous)
            os.replace(staging, target)
            swapped = True
            fsync_directory(target.parent)
    finally:  # a signal held back is raised as the block ends: the old copy is deleted all the same
        if swapped and previous is not None:
            discard(previous)  # a link set aside goes alone: the release it named stays


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM where Python handles them (KeyboardInterrupt, a stage's Terminated) until the
    block is done, then deliver them: for steps that must not be parted (a signal's default action, killing the
    process, and SIGKILL still can). Python runs handlers in the main thread only, so elsewhere nothing is held.

    It makes no signal an exception, unlike pipeline/stage.py ``StageSignals`` (Ctrl-C's and SIGTERM's, for a
    stage's whole run): it only delays, for a few steps, the exception a signal already raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for number in DEFERRED_SIGNALS:
        handler = signal.getsignal(number)
        if callable(handler):
            saved[number] = handler
            signal.signal(number, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(pending):
            signal.raise_signal(number)


def remove_directory(target: Path | str) -> None:
    """Delete the directory ``target`` as a whole: it is renamed aside (``.<name>.old-<pid>``) and deleted there, so a
    kill leaves it whole or gone, never a part that reads as damage (the aside copy of a killed process is deleted
    by the next call, or by ``remove_abandoned_copies``). A symbolic link is left alone."""
    target = Path(target)
    remove_abandoned_copies(target)
    if target.is_symlink() or not target.is_dir():
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(target, aside)
    shutil.rmtree(aside, ignore_errors=True)


WRITER_LOCK = ".writer.lock"  # in a models directory: who writes it now (promote, release), for the next to read


class DirectoryBusy(RuntimeError):
    """Another process is writing the directory; the message names it."""


@contextlib.contextmanager
def held_exclusively(fd: int, busy: Callable[[int], str]) -> Iterator[None]:
    """Hold an exclusive flock on the open descriptor ``fd`` until the block ends, then close it: the one lock of
    the pipeline's writers (``one_writer``; train's ``one_train``). A killed holder releases it with its last
    descriptor, so nothing is left to clean up. It never waits: when another process holds it, DirectoryBusy at
    once, with the message ``busy(fd)`` makes (which may read the holder's name from ``fd``)."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryBusy(busy(fd)) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def one_writer(directory: Path, command: str) -> Iterator[None]:
    """Hold ``directory``'s writer lock while ``command`` stages and swaps bundles in it.

    Two promotes at once (or a promote and a release on the same models directory) would share staging folders,
    each deleting what the other staged, and swap in whichever finished last. The lock is an flock on
    ``directory/.writer.lock``: a killed holder releases it with its last descriptor. A second writer does not
    wait: it fails at once (DirectoryBusy), naming the first as that one wrote itself into the file."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd, named = os.open(directory / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o666), True  # the umask decides
    except PermissionError:  # another user's lock file in a directory both may write (a shared group): an flock
        fd, named = os.open(directory / WRITER_LOCK, os.O_RDONLY), False  # needs only a read descriptor

    def busy(fd: int) -> str:
        holder = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip() or "another process"
        return f"{directory} is being written by {holder}: run {command} again once it has finished"

    with held_exclusively(fd, busy):
        if named:
            since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{command} (pid {os.getpid()} on {socket.gethostname()}, since {since})\n".encode(), 0)
        yield


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (bundles: sha256; DVC's file hash: md5).

    A path that is no regular file (a named pipe, a device such as /dev/zero; a symlink is followed) is an OSError
    naming it, at once: before, opening a pipe waited for a writer for ever and /dev/zero was read for ever (a
    planted models/production/checksums.json hung `release install`)."""
    digest = hashlib.new(algorithm)
    with open_regular_file(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_regular_file(path: Path | str) -> BinaryIO:
    """``path`` opened for reading where it is a regular file (a symlink is followed), else an OSError naming it, at
    once: a named pipe's open does not wait for a writer, and a device (/dev/zero) is never read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    handle = open(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return handle
