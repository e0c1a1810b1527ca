"""pipeline/atomic.py: what an atomic write leaves on disk."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import atomic
from pipeline.atomic import write_text_atomic


def test_an_atomic_write_flushes_its_directory_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    """Found by review: the file was fsynced and renamed, but the rename (a change of the directory) was never
    flushed, so a power cut right after could leave the old content or no file. Each os.fsync (the real one still
    runs) records what its descriptor is and what the target holds at that moment."""
    target = tmp_path / "out" / "report.json"
    write_text_atomic(target, "old\n")
    real_fsync, flushed = os.fsync, []

    def recording_fsync(fd: int) -> None:
        flushed.append((os.readlink(f"/proc/self/fd/{fd}"), target.read_text(encoding="utf-8")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_text_atomic(target, "new\n")
    assert flushed[-1] == (str(target.parent), "new\n")  # the directory, once the name points at the new bytes
    assert flushed[0][0].startswith(str(target.parent / ".report.json.")) and flushed[0][1] == "old\n"


def test_a_directory_that_cannot_be_opened_is_written_all_the_same(tmp_path: Path, monkeypatch) -> None:
    """Windows refuses to open a directory (PermissionError): there the write goes on without the directory step,
    as before it had one; a file's own open is not affected."""
    real_open = os.open

    def no_directories(path, flags, *args):
        if Path(path).is_dir():
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_directories)
    write_text_atomic(tmp_path / "a.txt", "text\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "text\n"
    assert atomic.fsync_directory(tmp_path) is None


def test_a_directory_swap_flushes_the_new_files_before_and_the_parent_after(tmp_path: Path, monkeypatch) -> None:
    """Found by review (the last note left it alone): a model bundle swapped in by promote or release was renamed
    into place with none of its files flushed, and the renames never written, so a power cut could leave
    models/production naming empty files. Each os.fsync records what it flushed and what the target held then."""
    target = tmp_path / "production"
    with atomic.atomic_directory(target) as staging:
        (staging / "bundle.json").write_text("old\n", encoding="utf-8")
    real_fsync, flushed = os.fsync, []

    def recording_fsync(fd: int) -> None:
        held = (target / "bundle.json").read_text(encoding="utf-8")
        flushed.append((os.readlink(f"/proc/self/fd/{fd}"), held))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic.atomic_directory(target) as staging:
        (staging / "bundle.json").write_text("new\n", encoding="utf-8")
        (staging / "weights").mkdir()
        (staging / "weights" / "w.npz").write_bytes(b"w")
        staged = staging
    before = [path for path, held in flushed if held == "old\n"]
    assert {str(staged / "bundle.json"), str(staged / "weights" / "w.npz"), str(staged / "weights"),
            str(staged)} <= set(before)
    assert flushed[-1] == (str(tmp_path), "new\n")  # the parent, once the name points at the new directory


def test_the_engines_atomic_write_flushes_its_directory_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    """engine/saver.py keeps its own atomic write (the engine imports nothing of the pipeline's): a checkpoint's
    manifest, the switch-over, was renamed into place and the rename never flushed."""
    from engine import saver

    target = tmp_path / "ckpt.json"
    saver.atomic_write_bytes(str(target), b"old")
    real_fsync, flushed = os.fsync, []

    def recording_fsync(fd: int) -> None:
        flushed.append((os.readlink(f"/proc/self/fd/{fd}"), target.read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    saver.atomic_write_bytes(str(target), b"new")
    assert flushed[-1] == (str(tmp_path), b"new")
    assert flushed[0][0].startswith(str(tmp_path / ".tmp-")) and flushed[0][1] == b"old"


def test_a_directory_swapped_in_over_a_symbolic_link_replaces_the_link_alone_every_time(tmp_path: Path) -> None:
    """A deploy tool's layout, models/production -> releases/3, then promote installs twice in one process (a
    promote and its follow_production, a release deploy and its rollback). Found by a probe: the first swap left
    the link set aside (.production.old-<pid>: shutil.rmtree refuses a link, and ignore_errors hid it), and the
    second failed renaming the new directory onto it: NotADirectoryError, a traceback, production not installed.
    A dangling link failed the first swap the same way."""
    release = tmp_path / "releases" / "3"
    release.mkdir(parents=True)
    (release / "bundle.json").write_text("3", encoding="utf-8")
    models = tmp_path / "models"
    models.mkdir()
    target = models / "production"
    os.symlink(release, target)
    for version in ("4", "5"):
        staging = models / f".production.{version}.tmp"
        staging.mkdir()
        (staging / "bundle.json").write_text(version, encoding="utf-8")
        atomic.swap_in_directory(staging, target)
        assert not target.is_symlink() and (target / "bundle.json").read_text(encoding="utf-8") == version
        assert sorted(p.name for p in models.iterdir()) == ["production"], "something left beside it"
    assert (release / "bundle.json").read_text(encoding="utf-8") == "3"  # what the link named is untouched
    dangling = models / "canary"
    os.symlink(tmp_path / "gone", dangling)
    staging = models / ".canary.6.tmp"
    staging.mkdir()
    atomic.swap_in_directory(staging, dangling)
    assert dangling.is_dir() and not dangling.is_symlink()


def test_a_candidate_that_is_a_symbolic_link_is_removed_as_a_link_leaving_nothing_beside_it(tmp_path: Path) -> None:
    """`release end` (ReleaseStore.remove) of a canary a deploy tool installed as a link, canary -> releases/4. Found
    by a probe: the link was renamed to .canary.removed-<pid> and left there (shutil.rmtree refuses a link), one more
    at every removal of such a candidate."""
    from pipeline.release_store import CANARY, SHADOW, ReleaseStore

    store = ReleaseStore(tmp_path / "models")
    release = store.release_dir(4)
    release.mkdir(parents=True)
    (release / "bundle.json").write_text("4", encoding="utf-8")
    for variant in (CANARY, SHADOW, CANARY):
        os.symlink(release, store.variant_dir(variant))
        store.remove(variant)
        assert sorted(p.name for p in store.root.iterdir()) == ["releases"], "something left beside it"
    assert (release / "bundle.json").read_text(encoding="utf-8") == "4"  # what the link named is untouched
    store.variant_dir(CANARY).mkdir()  # a plain folder after them, as an install leaves it
    store.remove(CANARY)
    assert sorted(p.name for p in store.root.iterdir()) == ["releases"]
