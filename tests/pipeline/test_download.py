"""download from a directory, file:// and http:// (a real local server), resuming, verifying, archives."""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import json
import http.server
import os
import re
import struct
import sys
import threading
import urllib.parse
import zipfile
from pathlib import Path

import pytest

from pipeline.download import DownloadError, download, fetch
from pipeline.params import data_params
from pipeline.prepare import prepare

from .conftest import (REPO, default_params, kaggle_sample_files, prepare_with, run_download_stage,
                       run_stage_with_file_size_limit, without_root_file_access, write_kaggle_sample)

RAW_NAMES = {"train", "test", "items", "stores", "holidays_events", "oil", "transactions"}


def _params(source: str, **extra):
    raw = default_params()
    raw["data"]["source"] = source
    raw["data"].update(extra)
    return data_params(raw)


def _raw_names(raw_dir: Path) -> set[str]:
    return {p.name.split(".")[0] for p in raw_dir.iterdir()}


def _prepares(raw_dir: Path, tmp_path: Path) -> None:
    prepare(raw_dir, tmp_path / "prepared", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    assert (tmp_path / "prepared" / "sales.parquet").exists()


def test_from_directory_then_prepare(kaggle_sample, tmp_path):
    raw = tmp_path / "raw"
    summary = download(_params(str(kaggle_sample)), raw, tmp_path / "partial", progress=False)
    assert _raw_names(raw) == RAW_NAMES
    assert (raw / "train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    assert (raw / "items.csv").read_bytes() == (kaggle_sample / "items.csv").read_bytes()
    assert "7 files" in summary
    _prepares(raw, tmp_path)


def test_a_folder_under_the_home_directory_may_be_written_with_a_tilde(kaggle_sample, tmp_path, monkeypatch):
    """`data.source: ~/favorita` was "does not exist": no shell expands a path read from params.yaml."""
    from pipeline.source import HashCache, fingerprint

    monkeypatch.setenv("HOME", str(kaggle_sample.parent))
    source = f"~/{kaggle_sample.name}"
    assert set(fingerprint(source, _params(source), HashCache(tmp_path / "hashes.json"))["files"]) >= {"items.csv"}
    download(_params(source), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert _raw_names(tmp_path / "raw") == RAW_NAMES


def test_a_relative_source_is_read_from_the_project_root_whatever_the_working_directory(tmp_path, monkeypatch):
    """`python -m pipeline.source --root proj` (and download) from another directory read `data.source: ../own data`
    from that directory: "data.source: ../own data does not exist", where `dvc repro` (run in the root) found it."""
    import yaml

    from pipeline import download as download_stage
    from pipeline import source as source_stage

    write_kaggle_sample(tmp_path / "own dätä", compress=("train",))
    root = tmp_path / "proj"
    root.mkdir()
    params = default_params()
    params["data"]["source"] = "../own dätä"
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)

    assert source_stage.main(["--root", str(root), "--quiet"]) == 0
    assert download_stage.main(["--root", str(root), "--quiet"]) == 0
    assert _raw_names(root / "data" / "raw") == RAW_NAMES
    # recorded as written, so that DVC's own run (from the root) finds the fingerprint unchanged
    assert json.loads((root / "data" / "source.json").read_text(encoding="utf-8"))["source"] == "../own dätä"


def test_from_file_url_then_prepare(kaggle_sample, tmp_path):
    raw = tmp_path / "raw"
    download(_params(kaggle_sample.as_uri()), raw, tmp_path / "partial", progress=False)
    assert _raw_names(raw) == RAW_NAMES
    _prepares(raw, tmp_path)


def test_missing_required_file_fails_without_touching_raw(tmp_path):
    source = write_kaggle_sample(tmp_path / "src")
    (source / "items.csv").unlink()
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match="has no items"):
        download(_params(str(source)), raw, tmp_path / "partial", progress=False)
    assert not raw.exists()


def test_optional_files_may_be_absent(tmp_path):
    source = write_kaggle_sample(tmp_path / "src")
    for name in ("oil", "transactions", "holidays_events", "test"):
        (source / f"{name}.csv").unlink()
    raw = tmp_path / "raw"
    summary = download(_params(str(source)), raw, tmp_path / "partial", progress=False)
    assert _raw_names(raw) == {"train", "items", "stores"} and "3 files" in summary
    _prepares(raw, tmp_path)


def _refused_by_source_download_and_zip(tmp_path: Path, source: Path, message: str) -> None:
    """``source`` (a folder) refused with ``message`` by the source stage's fingerprint, by the download stage run
    as a command (nothing installed in data/raw), and as a zip of it."""
    from pipeline.source import HashCache, SourceError, fingerprint

    with pytest.raises(SourceError) as error:
        fingerprint(str(source), _params(str(source)), HashCache(tmp_path / "hashes.json"))
    assert str(error.value) == f"data.source: {source} {message}"
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    done = run_download_stage(root, source)
    assert (done.returncode, done.stderr) == (1, f"download: error: data.source: {source} {message}\n")
    assert not (root / "data" / "raw").exists()
    archive = _zip_of(source, tmp_path / "data.zip")
    with pytest.raises(DownloadError, match=rf"^data.zip {re.escape(message)}$"):
        download(_params(str(archive)), tmp_path / "raw", tmp_path / "partial", progress=False)


def _refused_in_process(tmp_path: Path, source: Path, pattern: str) -> None:
    """``source`` (a folder) refused with a message matching ``pattern`` by the source stage's fingerprint, by
    download (nothing installed) and as a zip of it: `_refused_by_source_download_and_zip` without the command's
    process, for cases parametrized many times."""
    from pipeline.source import HashCache, SourceError, fingerprint

    with pytest.raises(SourceError, match=pattern):
        fingerprint(str(source), _params(str(source)), HashCache(tmp_path / "hashes.json"))
    with pytest.raises(DownloadError, match=pattern):
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert not (tmp_path / "raw").exists()
    archive = _zip_of(source, tmp_path / "data.zip")
    with pytest.raises(DownloadError, match=rf"^data.zip {pattern}"):
        download(_params(str(archive)), tmp_path / "raw", tmp_path / "partial", progress=False)


@contextlib.contextmanager
def _serving(handler_class, directory: Path | None = None):
    """A loopback HTTP server of ``handler_class`` (serving ``directory``, where given) on a thread: its port."""
    handler = handler_class if directory is None else functools.partial(handler_class, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _zip_of(directory: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for csv in sorted(directory.iterdir()):
            zipped.write(csv, arcname=csv.name)
    return archive


def _corrupt_member_data(archive: Path, member: str) -> None:
    """Flip bytes inside one member's deflate stream (the zip directory stays readable)."""
    with zipfile.ZipFile(archive) as zipped:
        info = zipped.getinfo(member)
    data = bytearray(archive.read_bytes())
    header = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(header + 5, header + min(info.compress_size, 60)):
        data[k] ^= 0x5A
    archive.write_bytes(bytes(data))


def test_corrupt_zip_is_a_clean_error_and_leaves_nothing_behind(tmp_path):
    plain = write_kaggle_sample(tmp_path / "plain")
    archive = _zip_of(plain, tmp_path / "data.zip")
    _corrupt_member_data(archive, "train.csv")
    partial = tmp_path / "partial"
    with pytest.raises(DownloadError, match=r"data.zip: corrupt zip archive \(member train.csv\)"):
        download(_params(str(archive)), tmp_path / "raw", partial, progress=False)
    assert list(partial.iterdir()) == []
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("bad", ["truncated", "bad CRC"])
def test_a_bad_zip_does_not_poison_the_next_run(tmp_path, bad):
    """After a corrupt zip (same size as the good one, or cut short) the fixed file downloads cleanly."""
    plain = write_kaggle_sample(tmp_path / "plain")
    good = _zip_of(plain, tmp_path / "good.zip").read_bytes()
    archive = tmp_path / "data.zip"
    if bad == "truncated":
        archive.write_bytes(good[: len(good) // 2])
    else:
        archive.write_bytes(good)
        _corrupt_member_data(archive, "items.csv")
    partial = tmp_path / "partial"
    with pytest.raises(DownloadError, match="data.zip"):
        download(_params(str(archive)), tmp_path / "raw", partial, progress=False)
    assert list(partial.iterdir()) == []
    archive.write_bytes(good)
    download(_params(str(archive)), tmp_path / "raw", partial, progress=False)
    assert (tmp_path / "raw" / "train.csv").read_bytes() == (plain / "train.csv").read_bytes()


def test_interrupted_local_copy_resumes_only_from_the_same_file(tmp_path):
    source = tmp_path / "items.csv"
    source.write_bytes(b"x" * 5000)
    partial = tmp_path / "partial"
    partial.mkdir()
    params = _params(str(tmp_path))
    part, name = fetch(str(source), partial, params, progress=False)
    assert name == "items.csv"
    part.write_bytes(part.read_bytes()[:1000])  # as if interrupted after 1000 bytes
    assert fetch(str(source), partial, params, progress=False)[0].read_bytes() == b"x" * 5000  # resumed
    part.write_bytes(part.read_bytes()[:1000])
    source.write_bytes(b"y" * 6000)  # replaced meanwhile: same prefix length must not be trusted
    os.utime(source, ns=(1, 1))
    assert fetch(str(source), partial, params, progress=False)[0].read_bytes() == b"y" * 6000


def test_a_write_refused_while_fetching_is_one_line_naming_the_copy_and_the_next_run_resumes(tmp_path, monkeypatch):
    """A full disk (here a file size limit: EFBIG, as ENOSPC without mounting a small disk) was retried as a cut
    connection would be and said as '<source>/train.csv: failed after 3 attempt(s): [Errno 27] File too large'."""
    source = write_kaggle_sample(tmp_path / "src")
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.setenv("SHELFCAST_DATA_SOURCE", str(source))
    limit = 4000
    assert (source / "train.csv").stat().st_size > limit > max(p.stat().st_size for p in source.iterdir()
                                                               if p.name != "train.csv")

    done = run_stage_with_file_size_limit("download", root, limit)

    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert re.fullmatch(rf"download: error: data/\.downloads/\w+-train\.csv\.part: File too large \(while fetching "
                        rf"{re.escape(str(source))}/train\.csv; the 4,000 bytes fetched are kept there: make room and "
                        r"rerun, it resumes\)\n", done.stderr), done.stderr
    assert not (root / "data" / "raw").exists()
    download(_params(str(source)), root / "data" / "raw", root / "data" / ".downloads", progress=False)
    assert (root / "data" / "raw" / "train.csv").read_bytes() == (source / "train.csv").read_bytes()


def test_a_downloads_folder_that_cannot_be_written_is_one_line_naming_it_not_retried(tmp_path, monkeypatch):
    """data/.downloads at mode 0500 (or another user's): EACCES was retried as a cut connection would be and said as
    '<source>/train.csv: failed after 3 attempt(s): [Errno 13] ... (partial data kept ...)', though nothing was. Root
    ignores the mode, so as root the stage runs without CAP_DAC_OVERRIDE (setpriv), as any other user would."""
    as_user = without_root_file_access()
    source = write_kaggle_sample(tmp_path / "src")
    root = tmp_path / "project"
    (root / "data" / ".downloads").mkdir(parents=True)
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (root / "data" / ".downloads").chmod(0o500)
    try:
        done = run_download_stage(root, source, as_user)
    finally:
        (root / "data" / ".downloads").chmod(0o700)
    assert done.returncode == 1 and done.stderr == (
        f"download: error: data/.downloads: Permission denied: download cannot write its partial copies there (while "
        f"fetching {source}/train.csv): make the folder writable by this user, or remove it, and rerun\n"), done.stderr
    assert not (root / "data" / "raw").exists()


def test_a_downloads_folder_on_a_read_only_file_system_is_said_for_what_it_is(tmp_path):
    """EROFS was told the full disk's 'the 0 bytes fetched are kept there: make room and rerun': no room helps a
    read-only mount (as a disk with errors is remounted). A real read-only tmpfs on data/.downloads."""
    import shutil
    import subprocess

    source = write_kaggle_sample(tmp_path / "src")
    root = tmp_path / "project"
    partial = root / "data" / ".downloads"
    partial.mkdir(parents=True)
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(partial)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        done = run_download_stage(root, source)
    finally:
        subprocess.run(["umount", str(partial)], check=True)
    assert done.returncode == 1 and done.stderr == (
        f"download: error: data/.downloads: Read-only file system: download cannot write its partial copies there "
        f"(while fetching {source}/train.csv): remount that file system read-write, or make data/ a link to a "
        "folder on a writable one, and rerun\n"), done.stderr
    assert not (root / "data" / "raw").exists()


def test_a_local_source_file_that_cannot_be_read_is_one_line_naming_it_not_retried(tmp_path):
    """items.csv at mode 000: EACCES on the source was retried three times and said as 'failed after 3 attempt(s)
    ... (partial data kept in ...)', though nothing was kept, and its resume record was left behind."""
    as_user = without_root_file_access()
    source = write_kaggle_sample(tmp_path / "src")
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (source / "items.csv").chmod(0o000)
    try:
        done = run_download_stage(root, source, as_user)
    finally:
        (source / "items.csv").chmod(0o644)
    assert done.returncode == 1 and done.stderr == (
        f"download: error: {source}/items.csv: Permission denied: download cannot read this source file: make it "
        "readable by this user and rerun\n"), done.stderr
    assert not (root / "data" / "raw").exists()
    assert not [p.name for p in (root / "data" / ".downloads").iterdir() if "items" in p.name]


def test_a_complete_run_removes_stale_partial_copies_and_a_failed_one_keeps_them(tmp_path):
    """A partial copy named under the whole-URL hash (before source_identity: one per rotated token) or of another
    source was never resumed nor removed: data/.downloads grew with each. A run that fetched its source whole
    removes download's files left there, and only those; a failed run keeps them (it resumes its own)."""
    source = write_kaggle_sample(tmp_path / "src")
    partial = tmp_path / "partial"
    partial.mkdir()
    stale = {"0123456789ab-train.csv.part": 5000, "0123456789ab-train.csv.json": 40, "unzipped-train.csv": 10}
    for name, size in stale.items():
        (partial / name).write_bytes(b"x" * size)
    (partial / "notes.txt").write_text("not download's")
    (source / "stores.csv").rename(tmp_path / "stores.csv")
    with pytest.raises(DownloadError):
        download(_params(str(source)), tmp_path / "raw", partial, progress=False)
    assert set(stale) <= {p.name for p in partial.iterdir()}
    (tmp_path / "stores.csv").rename(source / "stores.csv")

    summary = download(_params(str(source)), tmp_path / "raw", partial, progress=False)

    assert summary.endswith(f"; 5,050 bytes of stale partial copies removed from {partial}"), summary
    assert sorted(p.name for p in partial.iterdir()) == ["notes.txt"]
    assert _raw_names(tmp_path / "raw") == RAW_NAMES
    assert "removed" not in download(_params(str(source)), tmp_path / "raw", partial, progress=False)


def test_sha256_is_verified(kaggle_sample, tmp_path):
    good = hashlib.sha256((kaggle_sample / "items.csv").read_bytes()).hexdigest()
    raw = tmp_path / "raw"
    download(_params(str(kaggle_sample), sha256={"items.csv": good}), raw, tmp_path / "p", progress=False)
    with pytest.raises(DownloadError, match="sha256 .* does not match data.sha256.items.csv"):
        download(_params(str(kaggle_sample), sha256={"items.csv": "0" * 64}), tmp_path / "raw2", tmp_path / "p",
                 progress=False)
    assert not (tmp_path / "raw2").exists()


@pytest.mark.parametrize("listed", ["itmes.csv", "items.csv.gz"])
def test_a_sha256_for_a_file_that_was_not_fetched_is_refused(kaggle_sample, tmp_path, listed):
    """A typo, or the .gz name where the plain file was fetched: nothing was verified, so nothing is accepted."""
    with pytest.raises(DownloadError, match=rf"^data.sha256.{listed}: no file of that name was fetched from "):
        download(_params(str(kaggle_sample), sha256={listed: "0" * 64}), tmp_path / "raw", tmp_path / "p",
                 progress=False)
    assert not (tmp_path / "raw").exists()
    with pytest.raises(DownloadError, match="data.sha256.train.csv: data.source is synthetic"):
        download(_params("synthetic", sha256={"train.csv": "0" * 64}), tmp_path / "raw", tmp_path / "p",
                 progress=False)


def test_a_folder_with_a_file_both_plain_and_gzipped_is_refused(kaggle_sample, tmp_path):
    """train.csv beside train.csv.gz: the .gz was taken and rows appended to the .csv silently ignored."""
    import gzip
    import shutil

    source = tmp_path / "source"
    shutil.copytree(kaggle_sample, source)
    (source / "train.csv").write_bytes(gzip.decompress((source / "train.csv.gz").read_bytes()))
    with pytest.raises(DownloadError, match=r"has both train.csv.gz and train.csv: keep one"):
        download(_params(str(source)), tmp_path / "raw", tmp_path / "p", progress=False)


def test_truncated_gzip_source_is_rejected(tmp_path):
    source = write_kaggle_sample(tmp_path / "src", compress=("train",))
    data = (source / "train.csv.gz").read_bytes()
    (source / "train.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DownloadError, match="train.csv.gz: corrupt or truncated gzip"):
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert not (tmp_path / "raw").exists()


def test_a_gzip_padded_with_zero_bytes_is_read_as_gnu_gzip_reads_it(tmp_path):
    """Tape and backup tools and padded uploads leave zero bytes after a .gz's data, which GNU gzip ignores
    ('trailing zero bytes ignored'): download installed such a train.csv.gz as it was and prepare called it corrupt
    (Arrow's 'zlib inflate failed: unknown compression method'). Its copy now ends where its data ends; the
    members' own trailing zeros (a small file's length field is 00 00 at its end) are kept."""
    source = write_kaggle_sample(tmp_path / "src")
    text = (source / "train.csv").read_bytes()
    (source / "train.csv").unlink()
    whole = gzip.compress(text[:500], mtime=0) + gzip.compress(text[500:], mtime=0)  # two members, as synthetic's
    assert whole.endswith(b"\0")
    (source / "train.csv.gz").write_bytes(whole + b"\0" * 4096)
    raw = tmp_path / "raw"
    download(_params(str(source)), raw, tmp_path / "partial", progress=False)
    assert (raw / "train.csv.gz").read_bytes() == whole
    assert (source / "train.csv.gz").stat().st_size == len(whole) + 4096  # the source file is left as it is
    _prepares(raw, tmp_path)


def test_other_bytes_after_a_gzips_data_are_one_line_naming_the_file(tmp_path):
    """GNU gzip reads past them with a warning ('trailing garbage ignored'); they cannot be told from damage, so
    they are refused, saying where they start and what they are, not as 'corrupt or truncated gzip'."""
    source = write_kaggle_sample(tmp_path / "src", compress=("train",))
    whole = (source / "train.csv.gz").read_bytes()
    (source / "train.csv.gz").write_bytes(whole + b"\0\0junk\n")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    done = run_download_stage(root, source)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"download: error: train.csv.gz: the 7 bytes after its gzip data (byte {len(whole):,} "
                           f"on) are neither gzip nor zero padding (b'junk\\n' at byte {len(whole) + 2:,}): something "
                           "was appended to the file or it is damaged (GNU gzip reads past them as 'trailing "
                           "garbage'); replace it with a good copy\n")
    assert not (root / "data" / "raw").exists() and not list((root / "data" / ".downloads").glob("*.part"))


def test_kaggle_zip_of_7z_archives(tmp_path):
    py7zr = pytest.importorskip("py7zr")
    plain = write_kaggle_sample(tmp_path / "plain")
    archive = tmp_path / "favorita-grocery-sales-forecasting.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for csv in plain.iterdir():
            seven = tmp_path / f"{csv.name}.7z"
            with py7zr.SevenZipFile(seven, "w") as writer:
                writer.write(csv, arcname=csv.name)
            zipped.write(seven, arcname=seven.name)
    raw = tmp_path / "raw"
    download(_params(archive.as_uri()), raw, tmp_path / "partial", progress=False)
    assert {p.name for p in raw.iterdir()} == {f"{n}.csv" for n in RAW_NAMES}
    assert (raw / "train.csv").read_bytes() == (plain / "train.csv").read_bytes()
    _prepares(raw, tmp_path)


# ---------------------------------------------------------------- http


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory with ETag and Range support; can cut the first response short. A file named in
    ``encoded`` is sent with that Content-Encoding, as S3 sends an object uploaded with it: for gzip, the file's
    gzip (a .gz file as it is, unless named in ``recompressed``: a server gzipping all it sends), and Range and ETag
    are of those bytes."""

    cut_after: dict[str, int] = {}
    requests: list[tuple[str, str | None]] = []
    encoded: dict[str, str] = {}
    recompressed: set[str] = set()
    mislabelled: set[str] = set()  # sent under its Content-Encoding as it is, not encoded
    coding_on_206 = True  # False: a server (a CDN) that names the Content-Encoding on a 200 only
    head_refused: int | None = None  # HEAD answered with this status: 403 as S3 on a URL presigned for GET

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        if self.head_refused:
            self.send_error(self.head_refused)
            return
        super().do_HEAD()

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = Path(self.translate_path(self.path))
        self.requests.append((Path(self.path).name, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        coding = self.encoded.get(path.name)
        if coding == "gzip" and path.name not in self.mislabelled and (not path.name.endswith(".gz")
                                                                       or path.name in self.recompressed):
            data = gzip.compress(data, mtime=0)
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        ranged = self.headers.get("Range")
        if ranged and self.headers.get("If-Range") == etag:
            start = int(ranged.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", etag)
        if coding and (self.coding_on_206 or start == 0):
            self.send_header("Content-Encoding", coding)
        self.end_headers()
        body = data[start:]
        cut = self.cut_after.pop(path.name, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_server(kaggle_sample):
    _RangeHandler.requests = []
    _RangeHandler.cut_after = {}
    _RangeHandler.encoded = {}
    _RangeHandler.recompressed = set()
    _RangeHandler.mislabelled = set()
    _RangeHandler.coding_on_206 = True
    _RangeHandler.head_refused = None

    with _serving(_RangeHandler, kaggle_sample) as port:
        yield f"http://127.0.0.1:{port}/"


def test_from_http(http_server, kaggle_sample, tmp_path):
    raw = tmp_path / "raw"
    download(_params(http_server), raw, tmp_path / "partial", progress=False)
    assert _raw_names(raw) == RAW_NAMES
    assert (raw / "train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    assert list((tmp_path / "partial").iterdir()) == []
    _prepares(raw, tmp_path)


def test_a_folder_url_with_a_token_in_its_query_sends_it_with_every_file(http_server, kaggle_sample, tmp_path):
    """An Azure container's SAS URL (https://acct.blob.core.windows.net/sales?sv=...&sig=...) grants its files as
    .../sales/train.csv.gz?sv=...: the query was read as part of each name ('?sig=x/train.csv.gz'), every file
    missing."""
    from pipeline.source import HashCache, fingerprint

    source = http_server + "?sv=2024-01-01&sig=x%2By"
    raw = tmp_path / "raw"
    download(_params(source), raw, tmp_path / "partial", progress=False)
    assert (raw / "train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    assert _raw_names(raw) == RAW_NAMES
    assert ("train.csv.gz?sv=2024-01-01&sig=x%2By", None) in _RangeHandler.requests
    assert "train.csv.gz" in fingerprint(source, _params(source), HashCache(tmp_path / "hashes.json"))["files"]


def test_a_folder_urls_token_is_in_no_line_source_or_download_prints(http_server, kaggle_sample, tmp_path, capsys,
                                                                     monkeypatch):
    """An Azure SAS folder URL (?sv=...&sig=...) or an S3 presigned one (?X-Amz-Signature=...): the query went with
    every error line, the summary and each progress bar ('download: train.csv.gz?sv=...&sig=...'), so the token
    reached terminals and CI logs. Lines show the URL as url_credentials.shown_url gives it."""
    import yaml

    from pipeline.download import main as download_main
    from pipeline.source import main as source_main

    shown = http_server  # http://127.0.0.1:PORT/
    monkeypatch.setenv("SHELFCAST_DATA_SOURCE", f"{shown}?sv=2024-01-01&sig=S3CRETsig%2B&X-Amz-Signature=S3CRETamz")
    raw = default_params()
    raw["data"]["download"]["retries"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))

    def lines(main) -> tuple[int, str]:
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # capsys's stream as a terminal: bars are drawn
        status = main(["--root", str(tmp_path)])  # with progress bars
        out, err = capsys.readouterr()
        assert "S3CRET" not in out + err, out + err
        return status, out + err

    status, text = lines(source_main)
    assert status == 0 and text.startswith(f"source: {shown} (from $SHELFCAST_DATA_SOURCE): 7 file(s)"), text
    status, text = lines(download_main)
    assert status == 0 and f"from {shown} in " in text and "download: train.csv.gz" in text, text
    _RangeHandler.cut_after["train.csv.gz"] = 300  # one attempt, cut short: "failed after 1 attempt(s)"
    status, text = lines(download_main)
    assert status == 1 and f"{shown}train.csv.gz: failed after 1 attempt(s)" in text, text
    (kaggle_sample / "stores.csv").unlink()  # "has no stores", from both stages
    status, text = lines(source_main)
    assert status == 1 and f"data.source: {shown} has no stores" in text, text
    status, text = lines(download_main)
    assert status == 1 and f"data.source: {shown} has no stores" in text, text


@pytest.mark.parametrize("folder", ["my data/", "data\t/", "data/\n", "données/"])
def test_a_url_with_a_space_control_or_non_ascii_character_is_one_line_without_its_token(http_server, tmp_path, capsys,
                                                                                 monkeypatch, folder):
    """urlopen refuses such a URL with http.client.InvalidURL, whose text is the request's path and query: source
    stopped on it with a traceback, and download retried it as a cut connection and printed it, token included
    ("failed after 3 attempt(s): URL can't contain control characters. '/my data/train.csv.gz?sv=...&sig=...'").
    A non-ASCII letter in the path (as a browser's address bar shows 'données') stopped both with a traceback
    (UnicodeEncodeError from http.client)."""
    import yaml

    from pipeline.download import main as download_main
    from pipeline.source import main as source_main

    monkeypatch.setenv("SHELFCAST_DATA_SOURCE", f"{http_server}{folder}?sv=2024-01-01&sig=S3CRETsig")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    for main in (source_main, download_main):
        status = main(["--root", str(tmp_path), "--quiet"] if main is download_main else ["--root", str(tmp_path)])
        out, err = capsys.readouterr()
        assert status == 1 and "S3CRET" not in out + err and "Traceback" not in err, out + err
        assert "$SHELFCAST_DATA_SOURCE: " in err and "percent-encode" in err and "attempt" not in err, err
    assert not list((tmp_path / "data").glob(".downloads/*.part"))


def test_a_url_presigned_for_get_is_fingerprinted_though_head_is_refused(http_server, kaggle_sample, tmp_path):
    """An S3 presigned URL signs its method: one made for GET (the kind `aws s3 presign` makes) answers HEAD with
    403, and source, which checked a .zip only by HEAD, stopped on 'HTTP 403 Forbidden' for a file download fetches.
    The validators then come from a GET of its first byte; the size is the whole file's (Content-Range)."""
    from pipeline.source import HashCache, fingerprint

    _zip_of(write_kaggle_sample(tmp_path / "plain"), kaggle_sample / "favorita.zip")
    source = http_server + "favorita.zip?X-Amz-Signature=abc"
    _RangeHandler.head_refused = 403
    data = (kaggle_sample / "favorita.zip").read_bytes()
    assert fingerprint(source, _params(source), HashCache(tmp_path / "hashes.json"))["files"]["favorita.zip"] == {
        "etag": '"' + hashlib.sha256(data).hexdigest()[:16] + '"', "last_modified": None, "size": str(len(data))}
    assert _RangeHandler.requests == [("favorita.zip?X-Amz-Signature=abc", "bytes=0-0")]  # HEAD is not logged


@pytest.mark.parametrize("status", [405, 501])
def test_a_server_that_refuses_head_is_fingerprinted_by_a_get_of_the_first_byte(http_server, kaggle_sample, tmp_path,
                                                                                 status):
    """A server that takes GET but not HEAD: a GET-only route (FastAPI's, an API gateway's) answers 405, a handler
    with a do_GET alone (http.server.BaseHTTPRequestHandler) 501. source stopped on 'HTTP 405 Method Not Allowed
    (checking the source for changes)', so `dvc repro` did too, where download fetches every file; now its
    fingerprint comes from a GET of each file's first byte, as for a URL presigned for GET."""
    from pipeline.source import HashCache, fingerprint

    _RangeHandler.head_refused = status
    files = fingerprint(http_server, _params(http_server), HashCache(tmp_path / "hashes.json"))["files"]
    assert set(files) == {path.name for path in kaggle_sample.iterdir()}
    data = (kaggle_sample / "items.csv").read_bytes()
    assert files["items.csv"] == {"etag": '"' + hashlib.sha256(data).hexdigest()[:16] + '"', "last_modified": None,
                                  "size": str(len(data))}
    assert ("items.csv", "bytes=0-0") in _RangeHandler.requests


class _RedirectLoop(http.server.BaseHTTPRequestHandler):
    """Every path redirects to itself (a misconfigured rewrite rule, a sign-in redirect that loops)."""

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD  # noqa: N815 (http.server's naming)

    def log_message(self, *args):
        pass


def test_a_redirect_loop_is_one_line_in_source_and_download(tmp_path):
    """urllib gives up on a redirect loop with an HTTPError whose reason is three lines ('The HTTP server returned a
    redirect error that would lead to an infinite loop.\nThe last 30x error message was:\nFound'), and source's
    and download's one-line error were three lines."""
    from pipeline.source import HashCache, SourceError, fingerprint

    with _serving(_RedirectLoop) as port:
        source = f"http://127.0.0.1:{port}/sales/"
        with pytest.raises(SourceError) as checked:
            fingerprint(source, _params(source), HashCache(tmp_path / "hashes.json"))
        with pytest.raises(DownloadError) as fetched:
            download(_params(source), tmp_path / "raw", tmp_path / "partial", progress=False)
    for error in (checked.value, fetched.value):
        assert "\n" not in str(error) and "train.csv.gz: HTTP 302: the server's redirects go round in a loop" in str(
            error), str(error)


def test_kaggles_7z_files_left_beside_the_csv_unpacked_from_them_are_all_named_at_once(tmp_path):
    """Kaggle's zip unpacks to NAME.csv.7z files, and 7-Zip unpacks each beside itself: the folder then holds every
    raw file twice. download refused the first, 'has both train.csv and train.csv.7z: keep one', and each of the
    others on the next run, seven runs to learn what one line can say."""
    py7zr = pytest.importorskip("py7zr")
    folder = write_kaggle_sample(tmp_path / "favorita")
    for csv in sorted(folder.iterdir()):
        with py7zr.SevenZipFile(folder / f"{csv.name}.7z", "w") as writer:
            writer.write(csv, arcname=csv.name)
    with pytest.raises(DownloadError) as refused:
        download(_params(str(folder)), tmp_path / "raw", tmp_path / "partial", progress=False)
    message = str(refused.value)
    assert all(f"{name}.csv and {name}.csv.7z" in message for name in RAW_NAMES), message
    assert message.endswith("keep one of each (which is newer cannot be told, and the other would be ignored): .7z "
                            "archives left beside the CSV files unpacked from them? delete the .csv.7z files (or the "
                            "CSV files)"), message


def test_a_folder_url_holding_one_raw_file_under_two_names_is_refused(http_server, kaggle_sample, tmp_path):
    """A local folder holding train.csv beside train.csv.gz is refused (which is meant cannot be told); a server's
    folder was not: download fetched the first name it tried, train.csv.gz, and never looked further, so an old
    train.csv.gz left beside a new train.csv (uploaded plain this time) was prepared without a word (probed: 99
    rows of the old file where the new one held 2,578)."""
    (kaggle_sample / "train.csv").write_text(kaggle_sample_files()["train"])
    with pytest.raises(DownloadError, match=r"data.source: http://127.0.0.1:\d+/ has both train.csv.gz and "
                                            r"train.csv: keep one"):
        download(_params(http_server), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert not (tmp_path / "raw").exists()


class _AnswersSomeFirst:
    """A test server's handler (mixed in before its base) that answers some requests itself, a 503 or a redirect,
    in ``answered_first``; the others its base serves."""

    def answered_first(self) -> bool:
        raise NotImplementedError

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        if not self.answered_first():
            super().do_HEAD()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if not self.answered_first():
            super().do_GET()


class _BusyAtFirst(_AnswersSomeFirst, http.server.SimpleHTTPRequestHandler):
    """Answers each path's first ``busy_times`` requests (HEAD or GET) 503 with Retry-After: 0, as S3's SlowDown or
    a CDN's overloaded edge does for a moment, then serves the folder."""

    busy_times = 1
    seen: dict[str, int] = {}

    def answered_first(self) -> bool:  # busy: 503
        count = self.seen.get(self.path, 0)
        self.seen[self.path] = count + 1
        if count >= self.busy_times:
            return False
        self.send_response(503)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def log_message(self, *args):
        pass


def test_a_server_briefly_unable_to_serve_is_asked_again(kaggle_sample, tmp_path):
    """A 503 (S3's SlowDown, a CDN's overloaded edge), 502, 504, 429 or 408 stopped source ('HTTP 503 Service
    Unavailable (checking the source for changes)') and download at once, where a cut connection is retried
    data.download.retries times: now both ask again, after the Retry-After the server gives (else 1, 2, 4 ... s)."""
    from pipeline.source import HashCache, fingerprint

    _BusyAtFirst.seen, _BusyAtFirst.busy_times = {}, 1
    with _serving(_BusyAtFirst, kaggle_sample) as port:
        source = f"http://127.0.0.1:{port}/"
        files = fingerprint(source, _params(source), HashCache(tmp_path / "hashes.json"))["files"]
        assert set(files) == {path.name for path in kaggle_sample.iterdir()}
        download(_params(source), tmp_path / "raw", tmp_path / "partial", progress=False)
        assert (tmp_path / "raw" / "train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
        _BusyAtFirst.seen, _BusyAtFirst.busy_times = {}, 99  # busy for good: the attempts end, in one line
        with pytest.raises(DownloadError, match=r"^http://127.0.0.1:\d+/train.csv.gz: failed after 3 attempt\(s\): "
                                                r"HTTP 503 Service Unavailable \(nothing fetched\)$"):
            fetch(source + "train.csv.gz", tmp_path / "partial", _params(source), progress=False)


def test_a_url_that_is_a_file_not_a_folder_says_so(http_server, kaggle_sample, tmp_path):
    """A URL is read as a zip only where its path ends in .zip; a download link (figshare's
    .../ndownloader/files/123, Google Drive's ...?export=download&id=...) was read as a folder, and source and
    download said only 'has no train, items, stores', of a URL that answers with the zip of all three. A local
    file is read as a zip by its content; a URL's first bytes now say what it is in that error, as does a URL
    naming one raw file (.../train.csv), which a local path naming one was refused as."""
    from pipeline.source import HashCache, SourceError, fingerprint

    _zip_of(write_kaggle_sample(tmp_path / "plain"), kaggle_sample / "download")
    link = http_server + "download?id=7"
    with pytest.raises(SourceError, match=r"has no train, items, stores .*: the URL itself answers with a zip "
                                          r"archive, not a folder .*download it and point data.source at the file"):
        fingerprint(link, _params(link), HashCache(tmp_path / "hashes.json"))
    with pytest.raises(DownloadError, match=r"has no train, items, stores .*: the URL itself answers with a zip "
                                            r"archive"):
        download(_params(link), tmp_path / "raw", tmp_path / "partial", progress=False)
    one_file = http_server + "train.csv.gz"
    with pytest.raises(DownloadError, match=r"has no train, items, stores .*: the URL names one raw file, not a "
                                            r"folder"):
        download(_params(one_file), tmp_path / "raw", tmp_path / "partial", progress=False)


class _NoValidators(http.server.BaseHTTPRequestHandler):
    """A web app's route that writes each file (a CSV export endpoint, FastAPI's StreamingResponse): 200 with the
    bytes and their Content-Length, no ETag, no Last-Modified."""

    directory: Path
    cut_after: int | None = None  # the body cut after this many bytes, the connection closed

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self._send(body=False)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._send(body=True)

    def _send(self, body: bool):
        path = self.directory / Path(urllib.parse.urlsplit(self.path).path).name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data if self.cut_after is None else data[:self.cut_after])
            self.close_connection = self.cut_after is not None

    def log_message(self, *args):
        pass


def test_a_cut_download_without_etag_or_last_modified_is_not_said_to_be_kept_for_resuming(tmp_path):
    """A download cut short was '... (partial data kept in data/.downloads/... for the next run)'; from a server
    without ETag or Last-Modified the next run cannot resume it (no If-Range: a Range alone could join two versions)
    and fetched it from zero, the kept copy lying in between. It is said so and not kept."""
    folder = write_kaggle_sample(tmp_path / "served")
    _NoValidators.directory, _NoValidators.cut_after = folder, 100
    partial = tmp_path / "partial"
    try:
        with _serving(_NoValidators) as port:
            with pytest.raises(DownloadError, match=r"got 100 bytes, expected \d+ \(nothing kept: the server sends no "
                                                    r"ETag or Last-Modified, so a cut copy cannot be resumed"):
                fetch(f"http://127.0.0.1:{port}/train.csv", partial, _params("x"), progress=False)
    finally:
        _NoValidators.cut_after = None
    assert list(partial.iterdir()) == []


def test_a_server_without_etag_or_last_modified_fingerprints_the_content(tmp_path):
    """source fingerprinted a file over HTTP by its ETag, Last-Modified and Content-Length; from a server that gives
    the size alone, a corrected value of the same length (unit_sales 7.0 -> 8.0) left data/source.json as it was,
    so `dvc repro` did not rerun download and trained on the old rows. Such a file's fingerprint is the SHA-256 of
    its bytes, read by source each run: changed content changes it, the same content keeps it."""
    from pipeline.source import HashCache, fingerprint

    folder = write_kaggle_sample(tmp_path / "served")
    _NoValidators.directory = folder
    with _serving(_NoValidators) as port:
        source = f"http://127.0.0.1:{port}/sales/"

        def files():
            return fingerprint(source, _params(source), HashCache(tmp_path / "hashes.json"))["files"]

        before = files()
        train = (folder / "train.csv").read_text()
        first = train.splitlines()[1]
        assert first.endswith(",96995,2.0,"), first
        (folder / "train.csv").write_text(train.replace(first, first.replace(",2.0,", ",9.0,"), 1))
        after = files()
        assert after["train.csv"]["size"] == before["train.csv"]["size"]
        assert after["train.csv"] != before["train.csv"]
        assert after["train.csv"]["sha256"] == hashlib.sha256((folder / "train.csv").read_bytes()).hexdigest()
        assert {name: after[name] for name in after if name != "train.csv"} == {
            name: before[name] for name in before if name != "train.csv"}
        assert files() == after


def test_a_plain_csv_sent_under_a_gzip_content_encoding_is_installed_as_the_csv_it_is(http_server, kaggle_sample,
                                                                                       tmp_path):
    """An S3 object uploaded with --content-encoding gzip but not gzipped is served as its plain bytes under that
    header: download named it NAME.csv.gz and refused it, 'items.csv (sent gzip-encoded): is not gzip-compressed
    (it starts 'item_nbr,family,class,perishable'): name a plain CSV NAME.csv, without .gz, or gzip it', a fix for
    a file that was named right. Bytes that are no gzip are the file: installed as NAME.csv."""
    _RangeHandler.encoded = {"items.csv": "gzip"}
    _RangeHandler.mislabelled = {"items.csv"}
    raw = tmp_path / "raw"
    download(_params(http_server), raw, tmp_path / "partial", progress=False)
    assert (raw / "items.csv").read_bytes() == (kaggle_sample / "items.csv").read_bytes()
    assert not (raw / "items.csv.gz").exists()
    _prepares(raw, tmp_path)


def test_a_csv_sent_gzip_encoded_is_installed_as_csv_gz_and_resumes(http_server, kaggle_sample, tmp_path):
    """S3 sends an object uploaded with Content-Encoding: gzip as its gzip bytes; urllib does not decode them, and
    items.csv was installed holding gzip data, which prepare refused ('name it NAME.csv.gz'). The bytes are kept
    as sent, so a Range request (over the encoded bytes, as S3 has it) resumes them, and installed as .csv.gz."""
    _RangeHandler.encoded = {"items.csv": "gzip", "train.csv.gz": "gzip"}  # a .gz uploaded with the header too
    _RangeHandler.cut_after["items.csv"] = 40
    raw = tmp_path / "raw"
    as_sent = hashlib.sha256(gzip.compress((kaggle_sample / "items.csv").read_bytes(), mtime=0)).hexdigest()
    download(_params(http_server, sha256={"items.csv": as_sent}), raw, tmp_path / "partial", progress=False)
    assert not (raw / "items.csv").exists()
    assert gzip.decompress((raw / "items.csv.gz").read_bytes()) == (kaggle_sample / "items.csv").read_bytes()
    assert (raw / "train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    assert [r for r in _RangeHandler.requests if r[0] == "items.csv"] == [("items.csv", None),
                                                                         ("items.csv", "bytes=40-")]
    _prepares(raw, tmp_path)


def test_a_csv_sent_gzip_encoded_is_installed_as_csv_gz_when_the_resuming_206_does_not_say_so(
        http_server, kaggle_sample, tmp_path):
    """The 206 that resumes a NAME.csv continues the 200's bytes (If-Range matched their ETag), so the file has the
    coding the 200 named, whether or not the 206 repeats it: taken from the last response alone, a resumed
    items.csv whose 206 left the header out was installed as items.csv holding gzip data, and prepare refused it."""
    _RangeHandler.encoded = {"items.csv": "gzip"}
    _RangeHandler.coding_on_206 = False
    _RangeHandler.cut_after["items.csv"] = 40
    raw = tmp_path / "raw"
    download(_params(http_server), raw, tmp_path / "partial", progress=False)
    assert [r for r in _RangeHandler.requests if r[0] == "items.csv"] == [("items.csv", None),
                                                                         ("items.csv", "bytes=40-")]
    assert not (raw / "items.csv").exists()
    assert gzip.decompress((raw / "items.csv.gz").read_bytes()) == (kaggle_sample / "items.csv").read_bytes()
    _prepares(raw, tmp_path)


def test_a_csv_gz_the_server_gzips_again_is_decoded_once(http_server, kaggle_sample, tmp_path):
    """A server that gzips what it sends (Content-Encoding: gzip) around a train.csv.gz: the bytes were installed
    as they came, a gzip of the gzip, which prepare refused ('gzip-compressed twice: gunzip it once'), though the
    user's file is fine. An HTTP client decodes a content coding once: download does, after fetching (a resumed
    Range addresses the encoded bytes), and installs the train.csv.gz inside."""
    _RangeHandler.encoded = {"train.csv.gz": "gzip"}
    _RangeHandler.recompressed = {"train.csv.gz"}
    _RangeHandler.cut_after["train.csv.gz"] = 40
    raw = tmp_path / "raw"
    download(_params(http_server), raw, tmp_path / "partial", progress=False)
    assert [r for r in _RangeHandler.requests if r[0] == "train.csv.gz"] == [("train.csv.gz", None),
                                                                           ("train.csv.gz", "bytes=40-")]
    assert (raw / "train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    assert not [p for p in (tmp_path / "partial").iterdir()]
    _prepares(raw, tmp_path)


def test_the_sha256_of_a_csv_gz_the_server_gzips_again_is_the_files(http_server, kaggle_sample, tmp_path):
    """data.sha256.train.csv.gz is `sha256sum train.csv.gz` of the file the server holds; the bytes the server
    gzips around it are its own (its level, its header). They were hashed: every run refused the right file,
    'sha256 ... does not match', and fetched it again. A wrong sha256 is still refused, saying which bytes."""
    _RangeHandler.encoded = {"train.csv.gz": "gzip"}
    _RangeHandler.recompressed = {"train.csv.gz"}
    raw = tmp_path / "raw"
    right = hashlib.sha256((kaggle_sample / "train.csv.gz").read_bytes()).hexdigest()
    download(_params(http_server, sha256={"train.csv.gz": right}), raw, tmp_path / "partial", progress=False)
    assert (raw / "train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    with pytest.raises(DownloadError, match=r"train.csv.gz: sha256 [0-9a-f]{64} \(of the file inside the gzip "
                                            r"Content-Encoding it was sent in\) does not match data.sha256"):
        download(_params(http_server, sha256={"train.csv.gz": "0" * 64}), tmp_path / "raw2", tmp_path / "partial",
                 progress=False)


@pytest.mark.parametrize("base", ["train", "oil"])
def test_a_raw_file_gzipped_twice_by_name_is_one_line_saying_so(tmp_path, base):
    """`gzip train.csv.gz` leaves train.csv.gz.gz: it was 'has no train ...; found train.csv.gz.gz: only CSV files
    are read (export it as NAME.csv ...)', though it is CSV, and an oil.csv.gz.gz was read past without a word."""
    source = write_kaggle_sample(tmp_path / "src", compress=(base,))
    gzipped = (source / f"{base}.csv.gz").read_bytes()
    (source / f"{base}.csv.gz").unlink()
    (source / f"{base}.csv.gz.gz").write_bytes(gzip.compress(gzipped))
    message = (f"has {base}.csv.gz.gz but no {base} file: its name says gzip-compressed twice: gunzip it once, into "
               f"{base}.csv.gz (read past, it would be as if there were none)")
    _refused_by_source_download_and_zip(tmp_path, source, message)


@pytest.mark.parametrize("name, coding", [("items.csv", "br"), ("items.csv", "deflate"),
                                          ("favorita.zip", "gzip")])
def test_a_content_encoding_download_cannot_read_is_one_line_before_the_body(http_server, kaggle_sample, tmp_path,
                                                                            name, coding):
    """brotli or deflate (urllib decodes neither), or gzip around an archive (called corrupt, and fetched again
    each run): refused on the header, the file left unfetched."""
    _zip_of(write_kaggle_sample(tmp_path / "plain"), kaggle_sample / "favorita.zip")
    _RangeHandler.encoded = {name: coding}
    source = http_server + ("favorita.zip" if name.endswith(".zip") else "")
    with pytest.raises(DownloadError) as error:
        download(_params(source), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert str(error.value).startswith(f"{http_server}{name}: the server sends it with Content-Encoding: {coding}, ")
    assert "\n" not in str(error.value) and not (tmp_path / "raw").exists()
    assert not list((tmp_path / "partial").glob("*.part"))


def test_interrupted_http_download_resumes(http_server, kaggle_sample, tmp_path):
    _RangeHandler.cut_after["train.csv.gz"] = 700
    raw = tmp_path / "raw"
    download(_params(http_server), raw, tmp_path / "partial", progress=False)
    assert (raw / "train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    train_requests = [r for r in _RangeHandler.requests if r[0] == "train.csv.gz"]
    assert train_requests == [("train.csv.gz", None), ("train.csv.gz", "bytes=700-")]


def test_partial_file_survives_a_failed_run_and_is_resumed(http_server, kaggle_sample, tmp_path):
    partial = tmp_path / "partial"
    params = _params(http_server)
    one_try = type(params.download)(retries=1, timeout_s=10)
    params = type(params)(params.source, params.sha256, one_try, params.synthetic)
    _RangeHandler.cut_after["train.csv.gz"] = 500
    with pytest.raises(DownloadError, match="partial data kept"):
        fetch(http_server + "train.csv.gz", partial, params, progress=False)
    assert [p.stat().st_size for p in partial.glob("*.part")] == [500]
    fetched, _name = fetch(http_server + "train.csv.gz", partial, params, progress=False)
    assert fetched.read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    assert _RangeHandler.requests[-1] == ("train.csv.gz", "bytes=500-")


def test_changed_remote_file_restarts_from_zero(http_server, kaggle_sample, tmp_path):
    partial = tmp_path / "partial"
    params = _params(http_server)
    one_try = type(params.download)(retries=1, timeout_s=10)
    params = type(params)(params.source, params.sha256, one_try, params.synthetic)
    _RangeHandler.cut_after["items.csv"] = 40
    with pytest.raises(DownloadError):
        fetch(http_server + "items.csv", partial, params, progress=False)
    (kaggle_sample / "items.csv").write_text((kaggle_sample / "items.csv").read_text() + "999999,BOOKS,9999,0\n")
    fetched, _name = fetch(http_server + "items.csv", partial, params, progress=False)
    assert fetched.read_bytes() == (kaggle_sample / "items.csv").read_bytes()


def test_a_download_cut_half_way_resumes_after_its_token_was_rotated(http_server, kaggle_sample, tmp_path):
    """CI mints a new SAS / presigned token each run: the partial copy's name hashed the whole URL, token and all, so
    the next run started from zero instead of resuming. It is named by url_credentials.source_identity now."""
    partial = tmp_path / "partial"
    params = _params(http_server)
    params = type(params)(params.source, params.sha256, type(params.download)(retries=1, timeout_s=10),
                          params.synthetic)
    _RangeHandler.cut_after["train.csv.gz"] = 500
    with pytest.raises(DownloadError, match="partial data kept"):
        fetch(http_server + "train.csv.gz?sv=2024-01-01&se=2026-12-06&sig=first", partial, params, progress=False)
    fetched, _name = fetch(http_server + "train.csv.gz?sv=2024-01-01&se=2026-12-07&sig=second", partial, params,
                           progress=False)
    assert fetched.read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    assert _RangeHandler.requests[-1] == ("train.csv.gz?sv=2024-01-01&se=2026-12-07&sig=second", "bytes=500-")


@pytest.mark.parametrize("sep", ["&", ";"])
def test_a_rotated_token_alone_leaves_the_source_fingerprint_as_it_was(http_server, tmp_path, monkeypatch, sep):
    """data/source.json held the whole URL, token included: a rotated token alone made DVC rerun download on the same
    data, and kept a secret on disk. A query key that may select data (?version=2) is still part of it. Fields split
    by `;` (the older form) were one field, token and all."""
    from pipeline.source import write_fingerprint

    out = tmp_path / "source.json"

    def written(query: str) -> str:
        monkeypatch.setenv("SHELFCAST_DATA_SOURCE", f"{http_server}?{query.replace('&', sep)}")
        write_fingerprint(_params("synthetic"), out, tmp_path / "hashes.json", tmp_path)
        return out.read_text()

    first = written("version=2&sv=2024-01-01&sig=S3CRETone&X-Amz-Signature=S3CRETamz")
    assert "S3CRET" not in first and json.loads(first)["source"] == f"{http_server}?version=2"
    assert written("version=2&sv=2024-01-01&sig=S3CRETtwo&X-Amz-Signature=S3CRETzon") == first
    assert written("version=3&sv=2024-01-01&sig=S3CRETtwo") != first


# ---------------------------------------------------------------- sources that are not what they seem


def _old_train_rows() -> str:
    """An outdated train.csv: the header and one row, valid on its own."""
    return "\n".join(kaggle_sample_files()["train"].splitlines()[:2]) + "\n"


@pytest.mark.parametrize("second", ["backup/train.csv", "train.csv.gz"])
def test_a_zip_with_two_members_for_one_raw_file_is_refused(tmp_path, second):
    """backup/train.csv before train.csv (or train.csv beside train.csv.gz): the first was taken silently."""
    import gzip

    plain = write_kaggle_sample(tmp_path / "plain")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        if second.startswith("backup/"):
            zipped.writestr(second, _old_train_rows())
        for csv in sorted(plain.iterdir()):
            zipped.write(csv, arcname=csv.name)
        if second.endswith(".gz"):
            zipped.writestr(second, gzip.compress(_old_train_rows().encode()))
    first, other = sorted(["train.csv", second], key=lambda n: not n.startswith("backup/"))
    with pytest.raises(DownloadError, match=rf"^data.zip: has both {first} and {other} for train: keep one"):
        download(_params(str(archive)), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert not (tmp_path / "raw").exists()


def _seven(path: Path, members: dict[str, str]) -> Path:
    py7zr = pytest.importorskip("py7zr")
    with py7zr.SevenZipFile(path, "w") as writer:
        for name, text in members.items():
            writer.writestr(text.encode("utf-8"), name)
    return path


def test_a_per_file_7z_installs_only_its_own_member(tmp_path):
    """test.csv.7z holding an old train.csv too: that train.csv replaced the real one in data/raw."""
    source = write_kaggle_sample(tmp_path / "source")
    test_text = (source / "test.csv").read_text()
    (source / "test.csv").unlink()
    _seven(source / "test.csv.7z", {"test.csv": test_text, "train.csv": _old_train_rows()})
    raw = tmp_path / "raw"
    summary = download(_params(str(source)), raw, tmp_path / "partial", progress=False)
    assert (raw / "train.csv").read_bytes() == (source / "train.csv").read_bytes()
    assert (raw / "test.csv").read_text() == test_text
    assert "(left out, not its archive's own file: train.csv in test.csv.7z)" in summary
    _prepares(raw, tmp_path)


def test_a_7z_without_its_own_file_is_refused_in_download(tmp_path):
    """train.csv.7z holding sales_export.csv: download said 'got train', prepare then found no train.csv."""
    source = write_kaggle_sample(tmp_path / "source")
    _seven(source / "train.csv.7z", {"sales_export.csv": (source / "train.csv").read_text()})
    (source / "train.csv").unlink()
    with pytest.raises(DownloadError, match=r"^train.csv.7z: holds sales_export.csv, not train.csv"):
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert not (tmp_path / "raw").exists()


def test_a_truncated_7z_is_named_as_the_users_file(tmp_path):
    """It was reported as d260f2db7f5c-train.csv.7z.part, the temporary copy's name."""
    source = write_kaggle_sample(tmp_path / "source")
    seven = _seven(source / "train.csv.7z", {"train.csv": (source / "train.csv").read_text()})
    (source / "train.csv").unlink()
    seven.write_bytes(seven.read_bytes()[:-20])
    with pytest.raises(DownloadError, match=r"^train.csv.7z: not a readable .7z archive"):
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)


@pytest.mark.parametrize("kind", ["single csv", "tar.gz"])
def test_a_file_that_is_no_zip_is_said_for_what_it_is_and_kept(tmp_path, kind):
    """It was 'corrupt zip archive ... deleted, the next run fetches it again' (a CSV is no zip; nothing deletes it)."""
    import tarfile

    plain = write_kaggle_sample(tmp_path / "plain")
    if kind == "single csv":
        source, expected = plain / "train.csv", "is a file, a single raw file: put it in a folder"
    else:
        source, expected = tmp_path / "data.tar.gz", "is a file, a tar archive: unpack it"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(plain, arcname="data")
    before = source.read_bytes()
    with pytest.raises(DownloadError) as error:
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    message = str(error.value)
    assert message.startswith(f"data.source: {source} {expected}") and "a .zip of them" in message
    assert "corrupt zip" not in message
    assert source.read_bytes() == before


def _mark_members(archive: Path, method: int | None = None, flags: int | None = None) -> None:
    """Set every member's compression method or general-purpose flags, in its local header and the central
    directory, as Windows' Deflate64 zips or a password-protected zip carry them (zipfile writes neither)."""
    data = bytearray(archive.read_bytes())
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(signature)
        while at >= 0:
            if flags is not None:
                struct.pack_into("<H", data, at + flags_at, flags)
            if method is not None:
                struct.pack_into("<H", data, at + method_at, method)
            at = data.find(signature, at + 4)
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("mark, expected, again", [
    (dict(flags=0x1), "is password-protected (encrypted)", "without a password"),
    (dict(method=9), "is compressed with Deflate64 (Windows' 'Compressed (zipped) folder' can use it for large "
                     "files), zip method 9, which Python cannot unpack", "with ordinary Deflate"),
])
def test_a_zip_python_cannot_unpack_is_said_for_what_it_is_not_corrupt(tmp_path, mark, expected, again):
    """An encrypted member was a RuntimeError traceback with the archive's copy left in data/.downloads; a Deflate64
    one was 'corrupt zip archive ... replace it with a complete one', which a new copy could not help."""
    plain = write_kaggle_sample(tmp_path / "plain")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
        for csv in sorted(plain.iterdir()):
            zipped.write(csv, arcname=csv.name)
    _mark_members(archive, **mark)
    partial = tmp_path / "partial"
    with pytest.raises(DownloadError) as error:
        download(_params(str(archive)), tmp_path / "raw", partial, progress=False)
    assert str(error.value) == (f"data.zip: member holidays_events.csv {expected}; the archive is not corrupt: "
                                "unpack it yourself (7-Zip, unzip) and point data.source at the folder, or zip the "
                                f"files again {again}")
    assert list(partial.iterdir()) == []
    assert not (tmp_path / "raw").exists()


def test_a_corrupt_local_zip_is_not_said_to_be_fetched_again(tmp_path):
    plain = write_kaggle_sample(tmp_path / "plain")
    archive = _zip_of(plain, tmp_path / "data.zip")
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(DownloadError, match=r"corrupt zip archive.*the source file is left as it is") as error:
        download(_params(str(archive)), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert "the next run fetches it again" not in str(error.value)
    assert archive.exists()


def test_a_zip_url_answering_404_is_a_one_line_error(http_server, tmp_path, capsys, monkeypatch):
    """_Missing escaped on the zip branch: a traceback; and the source stage said '0 file(s)' as if all were well."""
    from pipeline.download import main as download_main
    from pipeline.source import HashCache, SourceError, fingerprint

    url = http_server + "favorita.zip"
    with pytest.raises(DownloadError, match=rf"^data.source: {url}: the server has no such file \(HTTP 404/410\)"):
        download(_params(url), tmp_path / "raw", tmp_path / "partial", progress=False)
    with pytest.raises(SourceError, match=rf"^data.source: {url}: the server has no such file"):
        fingerprint(url, _params(url), HashCache(tmp_path / "hashes.json"))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.setenv("SHELFCAST_DATA_SOURCE", url)
    assert download_main(["--root", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("download: error: data.source: ") and "Traceback" not in err and err.count("\n") == 1


def test_the_source_hash_is_reused_for_an_unchanged_file_and_redone_for_one_rewritten_with_its_mtime_put_back(
        tmp_path, monkeypatch):
    """README: a local raw file is hashed once, then remembered while its size, inode, mtime and ctime stay the same.
    A file rewritten in place to the same size with its mtime put back (cp -p, rsync -t, a tool restoring
    timestamps) differs only in its ctime: a cache keyed on the rest would keep the old hash, and download would
    not rerun on the new data."""
    import pipeline.source as source_module
    from pipeline.source import HashCache

    hashed, digest = [], source_module.file_digest  # the real hashing, counted
    monkeypatch.setattr(source_module, "file_digest", lambda file: hashed.append(file.name) or digest(file))
    items = tmp_path / "items.csv"
    items.write_text("item_nbr,family,class,perishable\n1,A,1,0\n")
    before = items.stat()
    cache = HashCache(tmp_path / "hashes.json")
    first = cache.sha256(items)
    cache.save()
    assert HashCache(tmp_path / "hashes.json").sha256(items) == first and hashed == ["items.csv"]

    with open(items, "r+b") as handle:  # same inode, same size
        handle.write(b"item_nbr,family,class,perishable\n2,B,1,0\n")
    os.utime(items, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (items.stat().st_size, items.stat().st_ino, items.stat().st_mtime_ns) == (
        before.st_size, before.st_ino, before.st_mtime_ns)
    assert HashCache(tmp_path / "hashes.json").sha256(items) != first and hashed == ["items.csv", "items.csv"]


def test_the_source_stage_refuses_a_folder_without_the_required_files(tmp_path, kaggle_sample):
    from pipeline.source import HashCache, SourceError, fingerprint

    (kaggle_sample / "items.csv").unlink()
    with pytest.raises(SourceError, match=r"has no items \(looked for NAME.csv.gz, NAME.csv, NAME.csv.7z\)"):
        fingerprint(str(kaggle_sample), _params(str(kaggle_sample)), HashCache(tmp_path / "hashes.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"has no train, items, stores"):
        fingerprint(str(empty), _params(str(empty)), HashCache(tmp_path / "hashes.json"))


def test_the_source_a_run_records_leaves_credentials_out(tmp_path):
    """MLflow runs record the data source (pipeline.tracking.RunData); a URL's user, password or token must not
    go with it into a tracking server others read."""
    from pipeline.versions import SOURCE_FINGERPRINT_PATH, shown_source

    assert shown_source(tmp_path) == "unknown"  # before the source stage ran
    (tmp_path / SOURCE_FINGERPRINT_PATH).parent.mkdir(parents=True)
    for source, shown in [("https://ann:s3cret@example.com:8443/sales/favorita.zip?token=abc#x",
                           "https://example.com:8443/sales/favorita.zip"),
                          ("http://tok@[::1]:8000/x.zip", "http://[::1]:8000/x.zip"), ("https:///x.zip", "https:///x.zip"),
                          ("/data/my-sales", "/data/my-sales"), ("synthetic", "synthetic")]:
        (tmp_path / SOURCE_FINGERPRINT_PATH).write_text(json.dumps({"source": source}))
        assert shown_source(tmp_path) == shown


LOGIN_PAGE = (b"\xef\xbb\xbf\n<!DOCTYPE html>\n<html><head><title>Sign in - Data Portal</title></head>"
              b"<body></body></html>\n")


class _LoginWallHandler(http.server.BaseHTTPRequestHandler):
    """A site that answers every address with its sign-in page, status 200 (Kaggle's download links, a portal);
    with ``coding``, sent gzip-compressed under that Content-Encoding, as a proxy that compresses pages does."""

    coding: str | None = None

    def _page(self) -> bytes:
        return LOGIN_PAGE if self.coding is None else gzip.compress(LOGIN_PAGE)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self._page())))
        if self.coding is not None:
            self.send_header("Content-Encoding", self.coding)
        self.end_headers()

    def do_GET(self):
        self.do_HEAD()
        self.wfile.write(self._page())

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("coding", [None, "gzip", "br"])
@pytest.mark.parametrize("path", ["data/", "favorita.zip"])
def test_an_html_page_instead_of_the_file_is_said_for_what_it_is(tmp_path, path, coding, monkeypatch):
    """A URL that answers with a sign-in page was reported as a 'corrupt or truncated gzip' / 'corrupt zip archive
    ... the next run fetches it again': a retry fetches the same page; the user must change the source. Sent
    gzip-encoded in place of a CSV, the page was installed as NAME.csv.gz and prepare said 'column 'id': missing
    (header has: <!DOCTYPE html>...)'; with a coding download refuses before the body (brotli, gzip around a .zip),
    'store the file without a content encoding': the page is said for what it is there too, untitled."""
    monkeypatch.setattr(_LoginWallHandler, "coding", coding)
    with _serving(_LoginWallHandler) as port, pytest.raises(DownloadError) as error:
        url = f"http://127.0.0.1:{port}/{path}"
        download(_params(url), tmp_path / "raw", tmp_path / "partial", progress=False)
    message = str(error.value)
    body_read = coding is None or (coding == "gzip" and path == "data/")
    assert "an HTML page" in message and ("'Sign in - Data Portal'" in message) == body_read, message
    assert "\n" not in message and "Content-Encoding" not in message, message
    assert url in message and "corrupt" not in message and "fetches it again" not in message, message
    assert not (tmp_path / "raw").exists()
    assert not [p for p in (tmp_path / "partial").iterdir() if p.suffix == ".part"]  # nothing to resume into


# Pages that do not open with <!DOCTYPE html> or <html>: a comment first (generated and templated pages), an XHTML
# page's XML declaration (lighttpd's error pages), a fragment a proxy or a captive portal sends. Each was installed as
# data and refused in prepare for its shape ('train.csv: line 1 is blank: the header line must come first',
# "column 'date': missing (header has: <?xml ...)"), or, as NAME.csv.gz, "is not gzip-compressed (it starts '')".
OTHER_PAGES = {
    "a comment first": b"\n  <!-- served by portal 4.2 -->\n<!DOCTYPE html><html><head><title>Sign in - Data Portal"
                       b"</title></head></html>\n",
    "an XHTML page": b'<?xml version="1.0" encoding="iso-8859-1"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 '
                     b'Transitional//EN"\n "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n<html xmlns='
                     b'"http://www.w3.org/1999/xhtml"><head><title>Sign in - Data Portal</title></head></html>\n',
    "a fragment": b"<HEAD>\n<TITLE>Sign in - Data Portal</TITLE>\n</HEAD><BODY><P>Your session has ended</BODY>\n",
}


@pytest.mark.parametrize("page", sorted(OTHER_PAGES))
def test_an_html_page_that_does_not_open_with_its_doctype_is_said_for_what_it_is(tmp_path, page, monkeypatch):
    monkeypatch.setattr(_LoginWallHandler, "_page", lambda self: OTHER_PAGES[page])
    with _serving(_LoginWallHandler) as port, pytest.raises(DownloadError) as error:
        url = f"http://127.0.0.1:{port}/data/"
        download(_params(url), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert "; the server answered with an HTML page ('Sign in - Data Portal') for train.csv.gz, train.csv, " \
           "train.csv.7z, items.csv.gz" in str(error.value), error.value
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("start", [b"id,date,store_nbr,item_nbr", b"<id>,date", b"<pre>,date", b"<abbr,date",
                                   b"<!-,date", b"<?xml,date"])
def test_what_no_html_page_starts_with_is_not_taken_for_one(tmp_path, start):
    """The HTML signatures are the MIME Sniffing Standard's, each a whole tag name, and a CSV starts with none."""
    from pipeline.download import html_page

    path = tmp_path / "train.csv"
    path.write_bytes(start + b"\n1,2\n")
    assert html_page(path) is None


class _WebAppHandler(_RangeHandler):
    """A web app's host (a single-page app's fallback route, as Netlify, Vercel or a CDN rewrite serve it): a path it
    has no file for is answered 200 with the app's page."""

    PAGE = b"<!DOCTYPE html><html><head><title>Store app</title></head><body><div id=app></div></body></html>"

    def send_error(self, code, message=None, explain=None):
        if code != 404:
            return super().send_error(code, message, explain)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.PAGE)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.PAGE)


def test_a_folder_url_whose_server_answers_names_it_lacks_with_a_page_is_read_like_a_folder(kaggle_sample, tmp_path):
    """Each raw file is looked for as NAME.csv.gz, NAME.csv, NAME.csv.7z: a host answering the names it lacks with its
    app's page (200) stopped download at the first, items.csv.gz, 'the server answered with an HTML page ('Store
    app'), not the file: a sign-in or error page?', though items.csv was there. Such a name counts as absent; a
    required file found under no name says which names were pages."""
    (kaggle_sample / "oil.csv").unlink()
    assert not (kaggle_sample / "items.csv.gz").exists()
    with _serving(_WebAppHandler, kaggle_sample) as port:
        url = f"http://127.0.0.1:{port}/"
        download(_params(url), tmp_path / "raw", tmp_path / "partial", progress=False)
        assert _raw_names(tmp_path / "raw") == RAW_NAMES - {"oil"}
        _prepares(tmp_path / "raw", tmp_path)
        (kaggle_sample / "stores.csv").unlink()
        with pytest.raises(DownloadError) as error:
            download(_params(url), tmp_path / "raw2", tmp_path / "partial", progress=False)
    assert str(error.value) == (
        f"data.source: {url} has no stores (looked for NAME.csv.gz, NAME.csv, NAME.csv.7z); the server answered with "
        "an HTML page ('Store app') for stores.csv.gz, stores.csv, stores.csv.7z, not a file: a sign-in page, or the "
        "site's page for a name it does not have? data.source must be a direct download link (for a site that needs "
        "signing in, such as Kaggle's, download the files yourself and point data.source at their folder)")
    assert not (tmp_path / "raw2").exists()


class _BucketHandler(_RangeHandler):
    """An S3 bucket whose objects are public but not its listing: a missing object answers 403 AccessDenied (both
    to HEAD and GET), as S3 does without s3:ListBucket."""

    def send_error(self, code, message=None, explain=None):
        super().send_error(403 if code == 404 else code, message, explain)


@pytest.fixture
def bucket(kaggle_sample):
    with _serving(_BucketHandler, kaggle_sample) as port:
        yield f"http://127.0.0.1:{port}/"


def test_a_bucket_answering_403_for_absent_names_is_read_like_a_folder(bucket, kaggle_sample, tmp_path):
    """Each raw file is looked for as NAME.csv.gz, NAME.csv, NAME.csv.7z: the names that are not there answered 403
    on an S3 bucket without list permission, and source and download stopped at the first ('HTTP 403 Forbidden'),
    so such a bucket could only serve a folder holding every optional file, each as .csv.gz."""
    from pipeline.source import HashCache, SourceError, fingerprint

    assert (kaggle_sample / "items.csv").exists() and not (kaggle_sample / "items.csv.gz").exists()
    found = fingerprint(bucket, _params(bucket), HashCache(tmp_path / "hashes.json"))["files"]
    assert set(found) == {p.name for p in kaggle_sample.iterdir() if p.is_file()}
    raw = tmp_path / "raw"
    download(_params(bucket), raw, tmp_path / "partial", progress=False)
    assert _raw_names(raw) == RAW_NAMES
    _prepares(raw, tmp_path)
    # a required file the bucket refuses is named with the refusal, which may be a permission, not an absence
    (kaggle_sample / "stores.csv").unlink()
    with pytest.raises(DownloadError, match=r"has no stores .*403 Forbidden for stores.csv.gz, stores.csv, "
                                            r"stores.csv.7z"):
        download(_params(bucket), tmp_path / "raw2", tmp_path / "partial", progress=False)
    with pytest.raises(SourceError, match=r"has no stores .*403 Forbidden for stores.csv.gz"):
        fingerprint(bucket, _params(bucket), HashCache(tmp_path / "hashes.json"))
    # ... and a single archive the server refuses is that refusal, not "no such file"
    with pytest.raises(DownloadError, match=r"favorita.zip: HTTP 403"):
        download(_params(bucket + "favorita.zip"), tmp_path / "raw3", tmp_path / "partial", progress=False)


@pytest.mark.parametrize("name, meant", [("Holidays_Events.csv", "holidays_events.csv"), ("oil.CSV", "oil.csv"),
                                         ("holidays-events.csv.gz", "holidays_events.csv.gz"),
                                         ("Train.csv", "train.csv"),
                                         # what a browser or an editor adds: a copy number, a hidden extension
                                         ("holidays_events (1).csv", "holidays_events.csv"),
                                         ("holidays_events.csv.txt", "holidays_events.csv"),
                                         ("oil.csv.csv", "oil.csv"), ("oil.csv ", "oil.csv"),
                                         ("train.csv.txt", "train.csv")])
def test_a_raw_file_named_but_for_case_or_separators_is_refused_not_read_past(tmp_path, name, meant):
    """A folder's Holidays_Events.csv was read past without a word: prepare ran with no holidays at all (and an
    oil.CSV with no oil); a Train.csv was 'has no train', with no word of the file beside it. So were a second
    download's holidays_events (1).csv and Notepad's holidays_events.csv.txt (Windows hides the extension), and
    train.csv.txt was 'only CSV files are read (export it as NAME.csv ...)', though it is CSV."""
    source = write_kaggle_sample(tmp_path / "src", compress=("holidays_events",) if name.endswith(".gz") else ())
    base = meant.split(".")[0]
    next(source.glob(f"{base}.csv*")).rename(source / name)
    message = rf"has {re.escape(name)} but no {base} file: is {meant} meant\? \(raw file names are matched exactly"
    _refused_in_process(tmp_path, source, message)


@pytest.mark.parametrize("part", ["train_2.csv", "train-2017.csv", "train.part2.csv", "train.csv.1", "train (2).csv",
                                  "train.csv.gz.002"])
def test_a_second_part_or_copy_beside_a_raw_file_is_refused_not_read_past(tmp_path, part):
    """A folder holding train.csv and train_2.csv (its second half: a file split to mail it, or an export in two
    runs) prepared from train.csv alone, half the sales silently absent, as did a second download's train (2).csv
    (a newer copy?) and split's train.csv.1: names beside the file were never looked at once it was found."""
    source = write_kaggle_sample(tmp_path / "src")
    lines = (source / "train.csv").read_text().splitlines(keepends=True)
    (source / "train.csv").write_text("".join(lines[:150]))
    (source / part).write_text("".join(lines[:1] + lines[150:]))
    message = (rf"has train.csv and {re.escape(part)}: parts of one file, or other copies of it\? Only train.csv is "
               r"read, the rest would be read past, their rows absent: join the parts into one train.csv \(with one "
               r"header line, at its top\), or move the others out$")
    _refused_in_process(tmp_path, source, message)


def test_parts_without_their_file_are_named_and_a_checksum_or_other_name_is_no_part(tmp_path):
    from pipeline.source import HashCache, SourceError, fingerprint

    source = write_kaggle_sample(tmp_path / "src")
    lines = (source / "train.csv").read_text().splitlines(keepends=True)
    (source / "train.csv").unlink()
    (source / "train-part-00000.csv").write_text("".join(lines[:150]))
    (source / "train-part-00001.csv").write_text("".join(lines[:1] + lines[150:]))
    message = (r"has no train \(looked for .*\); found train-part-00000.csv, train-part-00001.csv: parts of one "
               r"file\? join them into one train.csv")
    with pytest.raises(DownloadError, match=message):
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    with pytest.raises(DownloadError, match=message):  # a zip's members are named as a folder's files are
        download(_params(str(_zip_of(source, tmp_path / "data.zip"))), tmp_path / "raw", tmp_path / "partial",
                 progress=False)
    (source / "train-part-00001.csv").unlink()
    (source / "train-part-00000.csv").rename(source / "train.csv")
    # an optional file's parts alone: read past, there would silently be no oil
    oil = (source / "oil.csv").read_text()
    (source / "oil.csv").unlink()
    (source / "oil_2016.csv").write_text(oil)
    with pytest.raises(SourceError, match=r"has oil_2016.csv but no oil file: parts of one file\?"):
        fingerprint(str(source), _params(str(source)), HashCache(tmp_path / "hashes.json"))
    (source / "oil_2016.csv").rename(source / "oil.csv")
    # what carries no part number beside a raw file, or is a part's checksum, is read past as before
    for other in ("train.csv.sha256", "train_notes.txt", "trainer.csv", "items_by_family.csv"):
        (source / other).write_text("x\n")
    assert "7 files" in download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)


def test_a_required_raw_file_in_another_format_is_named_in_the_error(tmp_path):
    from pipeline.source import HashCache, SourceError, fingerprint

    source = write_kaggle_sample(tmp_path / "src")
    (source / "items.csv").rename(source / "items.parquet")
    message = r"has no items \(looked for .*\); found items.parquet: only CSV files are read"
    with pytest.raises(SourceError, match=message):
        fingerprint(str(source), _params(str(source)), HashCache(tmp_path / "hashes.json"))
    with pytest.raises(DownloadError, match=message):
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    # ... in a zip too (README: "a local folder's or zip's"): it was 'has no items (looked for ...)' alone
    archive = _zip_of(source, tmp_path / "data.zip")
    with pytest.raises(DownloadError, match=rf"^data.source: {re.escape(str(archive))} {message}"):
        download(_params(str(archive)), tmp_path / "raw", tmp_path / "partial", progress=False)
    (source / "items.parquet").rename(source / "items.csv")
    assert "7 files" in download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)


@pytest.mark.parametrize("name, compression", [("train.csv.xz", "xz"), ("train.csv.zip", "zip"),
                                               ("oil.csv.bz2", "bzip2"), ("oil.csv.zst", "zstd")])
def test_a_csv_compressed_in_a_way_not_read_is_said_as_that(tmp_path, name, compression):
    """A train.csv.xz was 'only CSV files are read (export it as NAME.csv or NAME.csv.gz)': it is CSV; its
    compression is what is not read."""
    from pipeline.source import HashCache, SourceError, fingerprint

    source = write_kaggle_sample(tmp_path / "src")
    base = name.split(".")[0]
    (source / f"{base}.csv").rename(source / name)
    found = f"; found {name}: " if base == "train" else f" has {name} but no {base} file: "
    message = (f"{found}CSV compressed with {compression}, which is not read: decompress it into {base}.csv, or gzip "
               f"that as {base}.csv.gz")
    with pytest.raises(SourceError) as error:
        fingerprint(str(source), _params(str(source)), HashCache(tmp_path / "hashes.json"))
    assert message in str(error.value)
    with pytest.raises(DownloadError) as error:
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["oil.xlsx", "holidays_events.parquet", "transactions.xls"])
def test_an_optional_raw_file_in_another_format_is_one_line_naming_it(tmp_path, name):
    """An oil.xlsx was read past without a word: prepare ran without oil prices, as if the user had none, where a
    required items.xlsx is refused ('only CSV files are read'). source, download and a zip's members refuse it."""
    source = write_kaggle_sample(tmp_path / "src")
    base = name.split(".")[0]
    (source / f"{base}.csv").rename(source / name)
    message = (f"has {name} but no {base} file: only CSV files are read (export it as {base}.csv or {base}.csv.gz); "
               f"or, if no {base} data are meant, move it out of the folder (read past, it would be as if there were "
               "none)")
    _refused_by_source_download_and_zip(tmp_path, source, message)
    (source / name).unlink()  # no such file at all: an optional file may be absent
    assert "6 files" in download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)


def test_checksum_and_signature_files_beside_the_data_are_read_past_and_oil_xlsx_still_refused(tmp_path):
    """Data portals publish a checksum or signature beside each file. The refusal of an optional file in another
    format (oil.xlsx) took oil.csv.sha256 (its oil.csv not there) for one: source and download stopped on a folder
    that holds nothing but CSV data. Side files are read past by source, download and a zip's members alike."""
    from pipeline.source import HashCache, fingerprint

    source = write_kaggle_sample(tmp_path / "src", compress=("train",))
    (source / "oil.csv").unlink()
    sides = ["transactions.csv.sig", "train.csv.gz.sha256", "TRAIN.CSV.GZ.SHA256", "items.csv.sha512",
             "stores.csv.sha1", "test.csv.sha256sum", "SHA256SUMS", "checksums.txt"]
    for side in sides:
        (source / side).write_text(f"{'0' * 64}  {side.rsplit('.', 1)[0]}\n", encoding="utf-8")
    assert set(fingerprint(str(source), _params(str(source)), HashCache(tmp_path / "hashes.json"))["files"]) == {
        "train.csv.gz", "test.csv", "items.csv", "stores.csv", "holidays_events.csv", "transactions.csv"}
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    done = run_download_stage(root, source)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (root / "data" / "raw").iterdir()) == sorted(
        ["train.csv.gz", "test.csv", "items.csv", "stores.csv", "holidays_events.csv", "transactions.csv"])
    archive = _zip_of(source, tmp_path / "data.zip")
    assert "6 files" in download(_params(str(archive)), tmp_path / "raw", tmp_path / "partial", progress=False)
    (source / "oil.xlsx").write_bytes(b"PK\x03\x04")  # beside its checksum, the workbook is still refused
    (tmp_path / "xlsx").mkdir()
    _refused_by_source_download_and_zip(tmp_path / "xlsx", source, "has oil.xlsx but no oil file: only CSV files are "
                                        "read (export it as oil.csv or oil.csv.gz); or, if no oil data are meant, "
                                        "move it out of the folder (read past, it would be as if there were none)")


@pytest.mark.parametrize("side", ["oil.csv.sha256", "oil.csv.MD5", "oil.csv.gz.asc", "oil.csv.sha256sum"])
def test_a_checksum_of_an_optional_raw_file_that_is_not_there_is_one_line_naming_both(tmp_path, side):
    """Found by review: a checksum or signature is read past, and so was one whose data file is missing: a folder
    with oil.csv.sha256 and no oil.csv (the data not copied, its download failed) was read without oil prices, and
    nobody told. It is refused as oil.xlsx is, naming the file the checksum is of; oil.csv.sha256sum (coreutils'
    naming) is a checksum too, not oil data in another format."""
    source = write_kaggle_sample(tmp_path / "src", compress=("train",))
    (source / "oil.csv").unlink()
    (source / side).write_text(f"{'0' * 64}  oil.csv\n", encoding="utf-8")
    described = side.rsplit(".", 1)[0]
    _refused_by_source_download_and_zip(tmp_path, source, f"has {side} but no oil file: it is a checksum or "
                                        f"signature of {described}, which is not there: put {described} beside it; "
                                        "or, if no oil data are meant, move it out of the folder (read past, it "
                                        "would be as if there were none)")



@pytest.mark.parametrize("list_name, listed", [
    ("SHA256SUMS", ["train.csv.7z", "test.csv.7z", "items.csv.7z", "stores.csv.7z", "oil.csv.7z",
                    "holidays_events.csv.7z", "transactions.csv.7z", "sample_submission.csv.7z"]),
    ("SHA256SUMS", ["train.csv", "test.csv", "items.csv", "stores.csv", "oil.csv", "holidays_events.csv",
                    "transactions.csv", "sample_submission.csv"]),
    ("checksums.txt", ["m5/sales_train_validation.csv", "m5/test.csv"]),
    ("items.csv.sha256", ["items.csv", "oil.csv"]),
])
def test_a_checksum_list_of_files_the_folder_lacks_is_read_past(tmp_path, list_name, listed):
    """Found by review of e7c3ee7, which refused a checksum list naming an optional raw file that is not there: a
    list is its publisher's inventory, copied whole, not a sign the user meant to give that file (as a lone
    oil.csv.sha256 is). Kaggle's bundle lists its .csv.7z files (the refusal said to put oil.csv.7z in the folder, a
    format a folder does not read); a user who unpacked train, items and stores and left test, oil, transactions
    out, as optional files may be, was refused; so was a folder holding another data set's list (m5/test.csv) or a
    .sha256 that lists more than its own file. Such lists are read past again, in a folder, a zip and the source
    stage alike; the summary names the files installed."""
    from pipeline.source import HashCache, fingerprint

    source = write_kaggle_sample(tmp_path / "src", compress=("train",))
    for base in ("oil", "test", "transactions"):
        (source / f"{base}.csv").unlink()
    (source / list_name).write_text("".join(f"{'a' * 64}  {name}\n" for name in listed), encoding="utf-8")
    fingerprint(str(source), _params(str(source)), HashCache(tmp_path / "hashes.json"))
    done = download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert done.startswith("4 files (holidays_events, items, stores, train) from "), done
    archive = _zip_of(source, tmp_path / "data.zip")
    assert download(_params(str(archive)), tmp_path / "raw2", tmp_path / "partial", progress=False).startswith(
        "4 files (holidays_events, items, stores, train) from ")


def test_a_plain_csv_named_csv_gz_is_said_for_what_it_is(tmp_path):
    """A plain train.csv saved as train.csv.gz was 'corrupt or truncated gzip (Not a gzipped file (b'id'))': it is
    neither, and re-copying it (what 'truncated' suggests) changes nothing."""
    source = write_kaggle_sample(tmp_path / "src")
    (source / "train.csv").rename(source / "train.csv.gz")
    with pytest.raises(DownloadError, match=r"^train.csv.gz: is not gzip-compressed \(it starts 'id,date,store_nbr,"
                                            r"item_nbr,unit_sales,onpromotion'\): name a plain CSV NAME.csv"):
        download(_params(str(source)), tmp_path / "raw", tmp_path / "partial", progress=False)
    assert not (tmp_path / "raw").exists() and not list((tmp_path / "partial").glob("*"))


# ---------------------------------------------------------------- a source behind a login


PASSWORD = "p@ss w:rd"  # an `@`, a space and a `:`: percent-encoded in the URL, sent decoded


class _LoginHandler(_RangeHandler):
    """A folder behind HTTP basic auth (nginx's auth_basic, a Nexus or Artifactory repository): 401 without the
    login. ``logins``: the Authorization header of each request."""

    logins: list[str | None] = []

    def _let_in(self) -> bool:
        sent = self.headers.get("Authorization")
        self.logins.append(sent)
        if sent == "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode():
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="sales"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        if self._let_in():
            super().do_HEAD()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self._let_in():
            super().do_GET()


@pytest.fixture
def login_server(kaggle_sample):
    _LoginHandler.logins = []
    _LoginHandler.requests = []
    _LoginHandler.cut_after = {}

    with _serving(_LoginHandler, kaggle_sample) as port:
        yield f"127.0.0.1:{port}/"


def test_a_login_in_the_source_url_is_sent_as_basic_auth_and_never_shown_or_written(login_server, kaggle_sample,
                                                                                    tmp_path, capsys, monkeypatch):
    """`https://user:password@host/path/` never worked: urllib took `ann:p%40ss...@127.0.0.1` for the host name,
    and source and download stopped on 'Name or service not known' (download after three attempts). The login is
    sent as HTTP basic auth, percent-decoded, and kept out of every line, data/source.json and the partial copies'
    names; a login refused, or none given, is one line saying which."""
    import yaml

    from pipeline.download import main as download_main
    from pipeline.source import main as source_main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))

    def run(main, login: str) -> tuple[int, str]:
        monkeypatch.setenv("SHELFCAST_DATA_SOURCE", f"http://{login}{login_server}")
        status = main(["--root", str(tmp_path), "--quiet"])
        out, err = capsys.readouterr()
        return status, out + err

    login = f"ann:{urllib.parse.quote(PASSWORD, safe='')}@"
    for main in (source_main, download_main):
        status, text = run(main, login)
        assert status == 0 and f"http://{login_server}" in text, text
        assert "p@ss" not in text and "p%40ss" not in text, text
    assert (tmp_path / "data/raw/train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    written = (tmp_path / "data/source.json").read_text()
    assert json.loads(written)["source"] == f"http://{login_server}" and "ann" not in written
    assert _LoginHandler.logins and all(sent is not None for sent in _LoginHandler.logins)

    for main in (source_main, download_main):
        status, text = run(main, "ann:wrong@")
        assert status == 1 and "refused the login" in text and "wrong" not in text, text
        assert len(text.strip().splitlines()) == 1, text
        status, text = run(main, "")
        assert status == 1 and "asks for a login" in text and "$SHELFCAST_DATA_SOURCE" in text, text


def test_a_login_is_not_sent_on_to_the_host_a_redirect_names(login_server, tmp_path):
    """The login goes to the host the URL names: a server that redirects elsewhere (a CDN, a bucket) does not hand
    it on (urllib copies a request's ordinary headers into the redirected request)."""
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(302)
            self.send_header("Location", f"http://{login_server.rstrip('/')}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    login = f"ann:{urllib.parse.quote(PASSWORD, safe='')}"
    with _serving(Redirect) as port, pytest.raises(DownloadError, match="HTTP 401") as refused:
        fetch(f"http://{login}@127.0.0.1:{port}/items.csv", tmp_path / "partial", _params("synthetic"),
              progress=False)
    assert _LoginHandler.logins == [None]
    # not 'check its user and password': they were never sent there
    assert str(refused.value).endswith(f": it redirects to http://{login_server}items.csv, which is not sent the login "
                                       "the URL gives (another host or port): point data.source at the URL it "
                                       "redirects to, with the login"), refused.value
    assert "p%40ss" not in str(refused.value) and "ann" not in str(refused.value)


class _MovedLoginHandler(_AnswersSomeFirst, _LoginHandler):
    """The login server with its folder moved: /old/NAME redirects (301, before any login check, as nginx's
    `return 301` does) to /NAME on the same host and port."""

    def answered_first(self) -> bool:  # moved: 301
        if not self.path.startswith("/old/"):
            return False
        self.send_response(301)
        self.send_header("Location", self.path.removeprefix("/old"))
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True


def test_a_login_follows_a_redirect_on_its_own_host(kaggle_sample, tmp_path, capsys, monkeypatch):
    """A folder moved on the same server (or http:// moved to https://) is followed with its login: dropped at the
    redirect, source and download stopped on 401 saying "the server refused the login the URL gives (check its
    user and password)" for a password that was right."""
    import yaml

    from pipeline.download import main as download_main
    from pipeline.source import main as source_main

    _LoginHandler.logins = []
    _LoginHandler.requests = []
    _LoginHandler.cut_after = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    login = f"ann:{urllib.parse.quote(PASSWORD, safe='')}"
    with _serving(_MovedLoginHandler, kaggle_sample) as port:
        monkeypatch.setenv("SHELFCAST_DATA_SOURCE", f"http://{login}@127.0.0.1:{port}/old/")
        for main in (source_main, download_main):
            status = main(["--root", str(tmp_path), "--quiet"])
            out, err = capsys.readouterr()
            assert status == 0, out + err
    assert (tmp_path / "data/raw/train.csv.gz").read_bytes() == (kaggle_sample / "train.csv.gz").read_bytes()
    assert _LoginHandler.logins and all(sent is not None for sent in _LoginHandler.logins)


@pytest.mark.parametrize("redirected, carried", [
    ("https://data.example:443/b", True), ("http://data.example/b", True), ("http://data.example:80/b", True),
    ("http://data.example:8080/b", False), ("http://cdn.example/b", False), ("https://data.example:8443/b", False),
    ("ftp://data.example/b", False), ("http://data.example:99999/b", False)])
def test_a_login_is_carried_only_to_its_own_origin(redirected, carried):
    """Same host, port and scheme, or http upgraded to https on the default ports; any other host or port not."""
    from pipeline.url_credentials import same_origin

    assert same_origin("http://data.example/a", redirected) is carried
    assert not same_origin("https://data.example/a", "http://data.example/b")  # never downgraded to plain http
