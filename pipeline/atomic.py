"""Atomic file and directory writes, and file digests: stdlib only, so serving code can use them.

The one atomic-write helper of pipeline, app and monitoring (the engine, which
imports only numpy and numba, keeps its own in engine/saver.py). A stage that
fails must leave no half-written output, and a reader (the app, a dashboard)
must never see half a report: every file is written under a temporary name next
to its target, flushed to disk, and renamed into place only when complete; an
output directory is built aside and swapped in as a whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_file(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp's 0600 would make outputs private
        _fsync(tmp_path)  # the bytes are on disk before the name points at them (a power cut leaves old or new)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) in one step: readers see the old content or the new."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path | str, data: Any) -> None:
    """``data`` as indented, key-sorted JSON (NaN refused: not JSON), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it replaces ``target`` as a whole, readable by every user."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        make_readable_by_all(staging)
        swap_in_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_readable_by_all(directory: Path) -> None:
    """Files 0644 and folders 0755 under ``directory``, whatever wrote them (mkdtemp and mkstemp make 0700 and
    0600; a copy keeps its source's mode; the umask): the serving container runs as another user (uid 10001)."""
    for folder, _, files in os.walk(directory):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def swap_in_directory(staging: Path, target: Path) -> None:
    """Replace ``target`` by the complete ``staging`` directory (a reader sees the old or the new one)."""
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (bundles: sha256; DVC's file hash: md5)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
