"""Stage ``download``: put the Favorita raw files into data/raw/.

The source (``data.source``, or ``$SHELFCAST_DATA_SOURCE`` when set: see
``pipeline.source``) is ``synthetic`` (generated offline by ``pipeline.synthetic``),
a local directory, or an http(s):// / file:// URL of a directory or of a .zip
archive (Kaggle's download is a zip of .7z files). For each raw file the first
of ``NAME.csv.gz``, ``NAME.csv``, ``NAME.csv.7z`` that exists is fetched;
train, items and stores are required, the others optional. A zip may hold one
member per raw file (two, say backup/train.csv and train.csv, are refused); a
per-file ``NAME.csv.7z`` installs only its own ``NAME.csv``, other members are
left out and named in the summary. A local file as the source must be a zip.

Fetching is restartable: bytes go to ``data/.downloads/*.part`` and an
interrupted transfer resumes from there (an HTTP Range request, guarded by
If-Range so a changed file restarts from zero; a local copy resumes only while
the source file's size and mtime are those recorded when it started). A file
whose content turns out corrupt (bad gzip, zip or 7z data) is deleted, so the
next run fetches it afresh instead of resuming a broken copy. A finished file is checked
against its expected size (Content-Length / the source file) and, when
``data.sha256`` lists it, its SHA-256, before it is unpacked into a staging
directory; data/raw/ is replaced only when every file is there, so it never
holds a partial file.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import hashlib
import http.client
import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from pipeline.atomic import NO_SPACE_ERRNOS
from pipeline.cluster import ClusterError, dask_client, scheduler_address
from pipeline.gzip_data import MAGIC, decoded_head, gzip_end
from pipeline.io import atomic_directory
from pipeline.params import DataParams, data_params
from pipeline.schema import OPTIONAL_RAW_FILES, RAW_FILES
from pipeline.source import (ABSENT_IN_FOLDER, CANDIDATE_SUFFIXES, TRANSIENT, check_raw_file_names, data_source,
                             forbidden_note, http_error, is_single_file, join, local_path, located, login_note,
                             missing_raw_files, other_formats_note, retry_wait, url_itself_note, validator_headers)
from pipeline.stage import StageError, bar_options, run_stage, stage_params
from pipeline.synthetic import generate
from pipeline.url_credentials import login_request, open_login_request, shown_url, source_identity

RAW_DIR = Path("data/raw")
PARTIAL_DIR = Path("data/.downloads")
CHUNK = 1 << 20
# What makes unpacking fail on a corrupt archive (the file is then deleted, not resumed).
CORRUPT_ARCHIVE = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)
# A folder the partial copies cannot be written to (its mode or owner: chmod 0500, another user's data/): as little
# helped by retrying, and said of the folder, not of one copy in it.
NOT_PERMITTED = (errno.EACCES, errno.EPERM)
# The Content-Encoding an S3 object uploaded gzipped carries (``--content-encoding gzip``). urllib does not decode it,
# and need not: the bytes as sent are a gzip of the file, kept as they come so that a Range request (which addresses
# the encoded bytes, as S3 and RFC 9110 have it) resumes them; a NAME.csv so sent is installed as NAME.csv.gz.
GZIP_CODINGS = ("gzip", "x-gzip")


# The files download writes in data/.downloads (``_part_path``, its record, ``install_zip``'s member): what a run that
# fetched its source whole may remove as stale; anything else there is not download's and is left.
PARTIAL_NAME = re.compile(r"[0-9a-f]{12}-.+\.(part|json)|unzipped-.+")


class DownloadError(StageError):
    """A source that cannot be fetched or does not verify."""


# ---------------------------------------------------------------- fetching one file


def _part_path(partial_dir: Path, url: str) -> Path:
    """The partial copy of ``url``, named by its ``source_identity``: a run whose token was rotated (CI mints one per
    run) resumes it, with the ETag / Last-Modified recorded beside it as the If-Range validator."""
    tag = hashlib.sha256(source_identity(url).encode("utf-8")).hexdigest()[:12]
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    return partial_dir / f"{tag}-{name}.part"


def _is_in(filename, folder: Path) -> bool:
    """Whether an OSError's ``filename`` is a file directly in ``folder`` (a partial copy or its record), not the
    source being read."""
    return filename is not None and Path(filename).parent == folder


def _sha256(path: Path, decoded: bool = False) -> str:
    """The SHA-256 of ``path``'s bytes, or (``decoded``) of its gzip content, streamed."""
    digest = hashlib.sha256()
    with (gzip.open(path, "rb") if decoded else open(path, "rb")) as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_resuming(source: Path, part: Path, progress: bool) -> int:
    """Copy a local file into ``part``, continuing after the bytes already there.

    Resumes only while the source is the file the part was started from (same size
    and mtime, recorded next to the part): a replaced source restarts from zero.
    """
    stat = source.stat()
    total = stat.st_size
    identity = {"size": total, "mtime_ns": stat.st_mtime_ns}
    meta_path = part.with_suffix(".json")
    try:
        recorded = json.loads(meta_path.read_text()) if meta_path.exists() else None
    except ValueError:
        recorded = None
    done = part.stat().st_size if part.exists() else 0
    if done and (recorded != identity or done > total):
        part.unlink()
        done = 0
    with open(source, "rb") as src:  # opened before the record: an unreadable source leaves nothing in the folder
        meta_path.write_text(json.dumps(identity))
        with open(part, "ab") as dst, tqdm(total=total, initial=done, unit="B", unit_scale=True,
                                           desc=f"download: {source.name}", **bar_options(progress)) as bar:
            src.seek(done)
            for block in iter(lambda: src.read(CHUNK), b""):
                dst.write(block)
                bar.update(len(block))
    return total


class _Busy(Exception):
    """The server answered a ``TRANSIENT`` status: ask again (``fetch``'s attempts), after ``retry_wait``."""

    def __init__(self, error: urllib.error.HTTPError, line: str):
        super().__init__(line)
        self.error = error


class _Missing(Exception):
    """The server says there is no such file (HTTP 404/410), or refuses it (403: see source.ABSENT_IN_FOLDER)."""

    def __init__(self, url: str, code: int):
        super().__init__(url)
        self.code = code


def _content_coding(response, url: str) -> str:
    """The response's Content-Encoding ("" for none); one download cannot read is refused before its body is
    fetched: brotli, deflate, zstd, or gzip around an archive (a .zip or .7z would be called corrupt, and fetched
    again, each run); said as an HTML page where the response says it is one."""
    coding = (response.headers.get("Content-Encoding") or "").strip().lower()
    name = Path(urllib.parse.urlsplit(url).path).name
    if coding in ("", "identity") or (coding in GZIP_CODINGS and name.endswith((".csv", ".csv.gz"))):
        return "" if coding == "identity" else coding
    if response.headers.get_content_type() == "text/html":  # a sign-in or error page, not a file stored so
        raise not_the_file(shown_url(url), "")
    raise DownloadError(f"{shown_url(url)}: the server sends it with Content-Encoding: {coding}, which download "
                        "reads only for a NAME.csv or NAME.csv.gz sent gzip-encoded: store the file without a "
                        "content encoding (on S3: remove its Content-Encoding metadata)")


def _http_resuming(url: str, part: Path, timeout_s: float, progress: bool) -> tuple[int | None, str]:
    """GET ``url`` into ``part``, resuming with Range/If-Range; returns the expected size if known and the
    Content-Encoding of the bytes ("" for none)."""
    meta_path = part.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() and part.exists() else {}
    done = part.stat().st_size if part.exists() else 0
    request = login_request(url, headers={"User-Agent": "shelfcast-download"})
    validator = meta.get("etag") or meta.get("last_modified")
    if done and validator:
        request.add_header("Range", f"bytes={done}-")
        request.add_header("If-Range", validator)
    try:
        response = open_login_request(request, timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code in ABSENT_IN_FOLDER:
            raise _Missing(url, exc.code) from None
        if exc.code == 416 and done:  # asked beyond the end: start again
            part.unlink()
            return _http_resuming(url, part, timeout_s, progress)
        if exc.code in TRANSIENT:
            raise _Busy(exc, http_error(exc)) from None
        raise DownloadError(f"{shown_url(url)}: {http_error(exc)}"
                            f"{login_note(url, exc.code, exc.url)}") from None
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        coding = _content_coding(response, url)
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            start = int(content_range.split(" ")[1].split("-")[0]) if content_range.startswith("bytes ") else -1
            if start != done:
                raise DownloadError(f"{shown_url(url)}: server resumed at byte {start}, expected {done}")
            total_known = "/" in content_range and not content_range.endswith("*")
            total = int(content_range.rsplit("/", 1)[1]) if total_known else None
            mode = "ab"
            # The bytes continue the 200's (If-Range matched their ETag): their coding is the one it named, which
            # a 206 (a CDN's) may leave out.
            coding = meta.get("coding", coding)
        else:
            done = 0
            total = int(length) if length is not None else None
            mode = "wb"
        meta = {"etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified"),
                "total": total, "coding": coding}
        meta_path.write_text(json.dumps(meta))
        name = Path(urllib.parse.urlsplit(url).path).name  # not the query: it may hold a token
        with open(part, mode) as out, tqdm(total=total, initial=done, unit="B", unit_scale=True,
                                           desc=f"download: {name}", **bar_options(progress)) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    return total, coding


def fetch(url: str, partial_dir: Path, params: DataParams, progress: bool) -> tuple[Path, str]:
    """A complete, verified local copy of ``url`` (an http(s)/file URL or a path), and the file name its content
    has (``_content_name``)."""
    partial_dir.mkdir(parents=True, exist_ok=True)
    part = _part_path(partial_dir, url)
    name = Path(urllib.parse.urlparse(url).path).name
    parsed = urllib.parse.urlparse(url)
    shown = shown_url(url)
    last_error: Exception | None = None
    for attempt in range(params.download.retries):
        if isinstance(last_error, _Busy):  # the server is briefly unable: wait as it asks, then ask again
            time.sleep(retry_wait(last_error.error, attempt - 1))
        try:
            if parsed.scheme in ("http", "https"):
                expected, coding = _http_resuming(url, part, params.download.timeout_s, progress)
            else:
                expected, coding = _copy_resuming(local_path(url), part, progress), ""
        except _Missing:
            raise
        except _Busy as busy:
            last_error = busy
            continue
        except (OSError, urllib.error.URLError, TimeoutError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EROFS:  # no room to make: the mount is the matter
                raise DownloadError(f"{partial_dir}: {exc.strerror}: download cannot write its partial copies there "
                                    f"(while fetching {shown}): remount that file system read-write, or make data/ "
                                    "a link to a folder on a writable one, and rerun") from None
            if isinstance(exc, OSError) and exc.errno in NOT_PERMITTED and not parsed.scheme.startswith("http") \
                    and not _is_in(exc.filename, partial_dir):  # the source file's mode or owner, not a cut transfer
                raise DownloadError(f"{exc.filename or shown}: {exc.strerror}: download cannot read this source "
                                    "file: make it readable by this user and rerun") from None
            if isinstance(exc, OSError) and exc.errno in NOT_PERMITTED and _is_in(exc.filename, partial_dir):
                raise DownloadError(f"{partial_dir}: {exc.strerror}: download cannot write its partial copies there "
                                    f"(while fetching {shown}): make the folder writable by this user, or remove "
                                    "it, and rerun") from None
            if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:  # no retry: room made, the next run resumes
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(f"{part}: {exc.strerror} (while fetching {shown}; the {kept:,} bytes fetched are "
                                    "kept there: make room and rerun, it resumes)") from None
            last_error = exc  # interrupted: retry, resuming
            continue
        if parsed.scheme in ("http", "https"):
            page = html_page(part, coding)
            if page is not None:  # fetching again gets the same page: the source is what must change
                discard(part)
                raise not_the_file(shown, page)
        size = part.stat().st_size
        if expected is not None and size != expected:
            last_error = DownloadError(f"{name}: got {size} bytes, expected {expected}")
            if size > expected:
                part.unlink()
            continue
        content_name = _content_name(name, coding, part)
        wanted = params.sha256.get(name)
        if wanted is not None:
            _check_sha256(part, name, wanted, inside_coding=content_name.endswith(".gz.gz"))
        part.with_suffix(".json").unlink(missing_ok=True)
        return part, content_name
    kept = f"partial data kept in {part} for the next run"
    if not part.exists():  # every attempt refused before a byte came (a server busy each time)
        kept = "nothing fetched"
    elif parsed.scheme in ("http", "https") and not _resumable(part):
        discard(part)  # no run could resume it: kept, it was said to be resumed, and refetched from zero
        kept = ("nothing kept: the server sends no ETag or Last-Modified, so a cut copy cannot be resumed safely; "
                "the next run fetches it from the start")
    raise DownloadError(f"{shown}: failed after {params.download.retries} attempt(s): {last_error} ({kept})")


def _resumable(part: Path) -> bool:
    """Whether a cut HTTP copy can be resumed: its resume record has an ETag or Last-Modified for If-Range, without
    which ``_http_resuming`` asks for the whole file again (a Range alone could join two versions of it)."""
    try:
        meta = json.loads(part.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("etag") or meta.get("last_modified"))


def _content_name(name: str, coding: str, part: Path) -> str:
    """The file name the bytes fetched as ``name`` have: its own; under a gzip Content-Encoding (``GZIP_CODINGS``)
    NAME.csv.gz for a NAME.csv, and one more .gz where the decoded bytes are gzip again (a server compressing a
    NAME.csv.gz it serves), which ``install`` decodes once, as any HTTP client would. A NAME.csv whose bytes are no
    gzip at all is its own name: the header is wrong, not the file (an S3 object uploaded with ``--content-encoding
    gzip`` but not gzipped), and was refused as a .csv.gz 'not gzip-compressed', told to rename a file it had named
    right."""
    if coding not in GZIP_CODINGS:
        return name
    if not name.endswith(".gz"):
        with open(part, "rb") as handle:
            if not handle.read(len(MAGIC)).startswith(MAGIC):
                return name
    held = name if name.endswith(".gz") else f"{name}.gz"
    return f"{held}.gz" if decoded_head(part, len(MAGIC)) == MAGIC else held


def _check_sha256(part: Path, name: str, wanted: str, inside_coding: bool) -> None:
    """DownloadError (``part`` discarded) unless ``name``'s SHA-256 is ``wanted``: of the bytes fetched, or
    (``inside_coding``) of the file inside the gzip a server adds as it sends (``_content_name``'s .gz.gz): that
    coding's bytes are the server's (its level, its header), never the file's whose sha256 the user gives."""
    try:
        actual = _sha256(part, decoded=inside_coding)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        discard(part)
        raise DownloadError(f"{name}: corrupt or truncated gzip Content-Encoding ({exc})") from None
    if actual != wanted:
        discard(part)
        within = " (of the file inside the gzip Content-Encoding it was sent in)" if inside_coding else ""
        raise DownloadError(f"{name}: sha256 {actual}{within} does not match data.sha256.{name} = {wanted}")


class _Page(DownloadError):
    """A URL answered with an HTML page instead of the file (``page``: its title as ``html_page`` gives it, or "")."""

    def __init__(self, message: str, page: str):
        super().__init__(message)
        self.page = page


SIGN_IN_HINT = ("data.source must be a direct download link (for a site that needs signing in, such as Kaggle's, "
                "download the files yourself and point data.source at their folder)")


def not_the_file(shown: str, page: str) -> _Page:
    """The error for a URL answered with an HTML page (``page``: its title as ``html_page`` gives it, or "")."""
    return _Page(f"{shown}: the server answered with an HTML page{page}, not the file: a sign-in or error page? "
                 f"{SIGN_IN_HINT}", page)


def pages_note(pages: list[tuple[str, str]], found) -> str:
    """What a 'has no ...' error adds when the server answered the missing required files' names with HTML pages
    (``pages``: (name, title) in the order asked; ``found``: the raw files found)."""
    names = [name for name, _ in pages if name.split(".")[0] in RAW_FILES and name.split(".")[0] not in found]
    titles = list(dict.fromkeys(page for name, page in pages if name in names and page))
    return (f"; the server answered with an HTML page{titles[0] if titles else ''} for {', '.join(names)}, not a file: "
            f"a sign-in page, or the site's page for a name it does not have? {SIGN_IN_HINT}") if names else ""


# What an HTML page opens with, after white space, comments and an XML declaration: the MIME Sniffing Standard's
# HTML signatures (https://mimesniff.spec.whatwg.org, "identifying a resource with an unknown MIME type"), each a whole
# tag name (followed by white space, where the standard takes a space alone, or '>'). A raw file (CSV, gzip, 7z, zip)
# opens with none of them.
HTML_SIGNATURES = re.compile(rb"<(!doctype html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p)"
                             rb"[\s>]")
# What may come before the first tag: a comment (a templated page's), an XHTML page's XML declaration (lighttpd's
# error pages).
_BEFORE_THE_FIRST_TAG = re.compile(rb"(\s|<!--.*?-->|<\?xml[^>]*\?>)*", re.DOTALL)


def html_page(path: Path, coding: str = "") -> str | None:
    """`` ('<title>')`` (or ``""``) when ``path`` holds an HTML page rather than data, else None: its first tag, past
    comments and an XML declaration, is one of ``HTML_SIGNATURES`` (before, only a page opening with ``<!DOCTYPE
    html`` or ``<html`` was one). ``coding``: the Content-Encoding of its bytes; a page sent gzip-encoded (a proxy's
    error page) is read decoded."""
    if coding in GZIP_CODINGS:
        head = decoded_head(path)
    else:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    start = head.removeprefix(b"\xef\xbb\xbf").lower()
    start = start[_BEFORE_THE_FIRST_TAG.match(start).end():]
    if not HTML_SIGNATURES.match(start) and not start.startswith(b"<!--"):  # a comment cut by the head: a page too
        return None
    title = re.search(rb"<title[^>]*>([^<]{1,200})", head, re.IGNORECASE)
    text = " ".join(title.group(1).decode("utf-8", "replace").split()) if title else ""
    return f" ({text!r})" if text else ""


def discard(part: Path) -> None:
    """Forget a fetched file and its resume record: the next run fetches it from zero."""
    part.unlink(missing_ok=True)
    part.with_suffix(".json").unlink(missing_ok=True)


def remove_stale_partials(partial_dir: Path) -> int:
    """Remove download's files left in ``partial_dir`` after a run that fetched its source whole; return the bytes
    freed. Every file that run fetched was installed or discarded, so what is left no run resumes: another source's
    interrupted copy, or one named under an older rule (before ``source_identity`` the whole URL, token included,
    named it: one orphan per rotated token), which would otherwise stay for ever."""
    freed = 0
    for path in partial_dir.iterdir() if partial_dir.is_dir() else ():
        if path.is_file() and PARTIAL_NAME.fullmatch(path.name):
            freed += path.stat().st_size
            path.unlink()
    return freed


# ---------------------------------------------------------------- unpacking into data/raw


def _install_7z(archive: Path, file_name: str, staging: Path, label: str) -> list[str]:
    """Unpack from a per-file archive NAME.csv.7z only its own member, NAME.csv (or NAME.csv.gz), into staging.

    Another raw file inside it (an old train.csv in test.csv.7z) must not replace the one fetched on its
    own: other members are left out, and returned so the summary can say so. ``label`` names the archive
    as the user knows it (not the temporary copy).
    """
    try:
        import py7zr
    except ImportError:
        raise DownloadError(
            f"{label}: .7z archives need the py7zr package (pip install py7zr==1.1.4), "
            "or extract them yourself and point data.source at the directory"
        ) from None
    own = file_name[: -len(".7z")]  # NAME.csv
    try:
        with py7zr.SevenZipFile(archive, "r") as seven:
            files = [info.filename for info in seven.list() if not info.is_directory]
            mine = [n for n in files if Path(n).name in (own, f"{own}.gz")]
            if not mine:
                shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
                raise DownloadError(f"{label}: holds {shown or 'no file'}, not {own}: a per-file archive must "
                                    f"hold the file of its name (rename the member to {own}, or extract it and "
                                    "point data.source at the directory)")
            if len(mine) > 1:
                raise DownloadError(f"{label}: holds both {' and '.join(mine)}: keep one (which is meant cannot be "
                                    "told)")
            unpack = staging / ".unpack"
            unpack.mkdir(exist_ok=True)
            seven.extract(path=unpack, targets=mine)
    except DownloadError:
        discard(archive)
        raise
    except (py7zr.Bad7zFile, OSError, EOFError, zlib.error, ValueError) as exc:
        discard(archive)
        raise DownloadError(f"{label}: not a readable .7z archive: {exc}") from None
    member = Path(mine[0]).name
    shutil.move(str(unpack / mine[0]), staging / member)
    shutil.rmtree(unpack)
    if member.endswith(".gz"):
        _check_gzip_complete(staging / member, f"{label} ({member})")
    discard(archive)
    return [f"{n} in {label}" for n in files if n not in mine]


def install(fetched: Path, file_name: str, staging: Path, label: str | None = None) -> list[str]:
    """Place a fetched NAME.csv / NAME.csv.gz / NAME.csv.7z (or NAME.csv.gz.gz: decoded once) into the staging
    directory.

    Returns the members of a .7z left out (not its own file); ``label`` names the source file in messages.
    """
    label = label or file_name
    if file_name.endswith(".7z"):
        return _install_7z(fetched, file_name, staging, label)
    if file_name.endswith(".gz.gz"):  # only fetch names one so: a gzip Content-Encoding around a NAME.csv.gz
        _check_gzip_complete(fetched, label)
        inner = staging / file_name.removesuffix(".gz")
        with gzip.open(fetched, "rb") as encoded, open(inner, "wb") as out:
            shutil.copyfileobj(encoded, out, CHUNK)
        discard(fetched)
        _check_gzip_complete(inner, label)
        return []
    if file_name.endswith(".gz"):
        _check_gzip_complete(fetched, label)
    shutil.move(str(fetched), staging / file_name)
    return []


def _check_gzip_complete(path: Path, file_name: str) -> None:
    """A truncated .gz must be caught here, not as a half-read file in prepare; a file that is no gzip at all (a
    plain CSV named .csv.gz) is said for what it is, not as 'corrupt or truncated'. Zero padding after the gzip
    data is dropped from the copy, as GNU gzip ignores it; other bytes after it are refused (``gzip_data``)."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head and not head.startswith(MAGIC):
        discard(path)
        shown = head.split(b"\n")[0].decode("utf-8", errors="replace")
        raise DownloadError(f"{file_name}: is not gzip-compressed (it starts {shown[:60]!r}): name a plain CSV "
                            "NAME.csv, without .gz, or gzip it")
    try:
        end = gzip_end(path)
    except (OSError, EOFError, zlib.error) as exc:
        discard(path)
        raise DownloadError(f"{file_name}: corrupt or truncated gzip ({exc})") from None
    if end.after:
        discard(path)
        raise DownloadError(f"{file_name}: the {end.size - end.data_end:,} bytes after its gzip data (byte "
                            f"{end.data_end:,} on) are neither gzip nor zero padding ({end.after!r} at byte "
                            f"{end.after_at:,}): something was appended to the file or it is damaged (GNU gzip "
                            "reads past them as 'trailing garbage'); replace it with a good copy")
    if end.data_end < end.size:
        with open(path, "r+b") as handle:
            handle.truncate(end.data_end)


def _wanted(file_name: str) -> str | None:
    for base in RAW_FILES + OPTIONAL_RAW_FILES:
        if file_name in (f"{base}{s}" for s in CANDIDATE_SUFFIXES):
            return base
    return None


def _zip_members(zipped: zipfile.ZipFile, name: str) -> dict[str, zipfile.ZipInfo]:
    """Raw file -> its member; two members for one raw file (backup/train.csv and train.csv, or train.csv and
    train.csv.gz) are refused: either would be taken silently, and which is meant cannot be told."""
    chosen: dict[str, list[zipfile.ZipInfo]] = {}
    members = [member for member in zipped.infolist()
               if not member.is_dir() and not member.filename.startswith("__MACOSX/")]
    check_raw_file_names(name, [Path(member.filename).name for member in members], DownloadError)
    for member in members:
        base = _wanted(Path(member.filename).name)
        if base is not None:
            chosen.setdefault(base, []).append(member)
    for base, members in chosen.items():
        if len(members) > 1:
            both = " and ".join(m.filename for m in members)
            raise DownloadError(f"{name}: has both {both} for {base}: keep one (which is meant cannot be told, and "
                                "the other would be ignored)")
        _check_unpackable(members[0], name)
    return {base: members[0] for base, members in chosen.items()}


# Python's zipfile unpacks stored, deflate, bzip2 and LZMA members; others are named for what they are.
UNPACKABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
OTHER_METHODS = {9: "Deflate64 (Windows' 'Compressed (zipped) folder' can use it for large files)", 93: "Zstandard",
                 95: "XZ", 98: "PPMd"}


def _check_unpackable(member: zipfile.ZipInfo, name: str) -> None:
    """A password-protected member, or one compressed by a method zipfile lacks, is no corrupt archive: it was a
    RuntimeError traceback (encrypted) or 'corrupt zip archive ... replace it', and fetching it again cannot help."""
    if member.flag_bits & 0x1:
        problem, again = "is password-protected (encrypted)", "without a password"
    elif member.compress_type not in UNPACKABLE_METHODS:
        method = OTHER_METHODS.get(member.compress_type, "an unknown method")
        problem = f"is compressed with {method}, zip method {member.compress_type}, which Python cannot unpack"
        again = "with ordinary Deflate"
    else:
        return
    raise DownloadError(f"{name}: member {member.filename} {problem}; the archive is not corrupt: unpack it "
                        f"yourself (7-Zip, unzip) and point data.source at the folder, or zip the files again {again}")


def install_zip(archive: Path, staging: Path, partial_dir: Path, name: str, remote: bool = True
                ) -> tuple[set[str], list[str], list[str]]:
    """Kaggle's archive: a zip whose members are NAME.csv.7z (or plain/gzip CSV).

    A corrupt archive (bad zip structure, deflate data or CRC) is an error naming
    the member, and leaves nothing in ``partial_dir``: neither the unpacked member
    nor the archive, which a later run then fetches afresh. Returns the raw files
    installed, the .7z members left out and the names of the zip's files (for an
    error about a raw file it lacks, as a folder's are named).
    """
    found: set[str] = set()
    left_out: list[str] = []
    target = None
    member_name = None
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = [Path(member.filename).name for member in zipped.infolist()
                     if not member.is_dir() and not member.filename.startswith("__MACOSX/")]
            for base, member in _zip_members(zipped, name).items():
                file_name = Path(member.filename).name
                member_name = member.filename
                target = partial_dir / f"unzipped-{file_name}"
                with zipped.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                left_out += install(target, file_name, staging, label=f"{name} (member {member_name})")
                found.add(base)
    except CORRUPT_ARCHIVE as exc:
        where = f" (member {member_name})" if member_name else ""
        then = ("deleted, the next run fetches it again" if remote else
                "its copy is deleted; the source file is left as it is: replace it with a complete one")
        raise DownloadError(f"{name}: corrupt zip archive{where}: {exc}; {then}") from None
    finally:
        if target is not None:
            discard(target)
    discard(archive)
    return found, left_out, names


ACCEPTED = ("data.source must be 'synthetic', a directory (or its http(s)/file URL) holding NAME.csv, NAME.csv.gz "
            "or NAME.csv.7z for train, items, stores and the optional files, or a .zip of them")


def _refuse_two_copies(shown: str, *present: list[str]) -> None:
    """A folder (a local one, or a server's) holding a raw file under two names, ``train.csv`` beside
    ``train.csv.gz``: one would be read and the other ignored, and which is meant cannot be told. ``present``: each
    raw file's names found, all said in one line (Kaggle's per-file .7z archives left beside the CSV files unpacked
    from them were refused one file a run, seven runs)."""
    twice = [names for names in present if len(names) > 1]
    if not twice:
        return
    unpacked = all(set(names) == {f"{base}.csv", f"{base}.csv.7z"}
                   for names in twice for base in [names[0].split(".")[0]])
    hint = (": .7z archives left beside the CSV files unpacked from them? delete the .csv.7z files (or the CSV files)"
            if unpacked else "")
    both = "; ".join(" and ".join(names) for names in twice)
    raise DownloadError(f"data.source: {shown} has both {both}: keep one{' of each' if len(twice) > 1 else ''} (which "
                        f"is newer cannot be told, and the other would be ignored){hint}")


def _served(url: str, timeout_s: float) -> bool:
    """Whether a folder URL's server holds a file under this name: its HEAD (or, where HEAD is refused, a GET of the
    first byte) answered, and not with an HTML page (a web app's answer for every name it lacks). An error, absent
    or not, counts as no file: this only looks for a second copy of a file already fetched."""
    try:
        headers, _size = validator_headers(url, timeout_s)
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError):
        return False
    return headers.get_content_type() != "text/html"


def _check_local_file_source(source: str, path: Path) -> None:
    """A local file as the source must be a zip archive: anything else is said for what it is."""
    lower = path.name.lower()
    if lower.endswith(".zip") or zipfile.is_zipfile(path):
        return  # a corrupt .zip is reported when it is unpacked
    if lower.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        what = "a tar archive: unpack it and point data.source at the folder"
    elif lower.endswith((".csv", ".csv.gz", ".csv.7z")):
        what = "a single raw file: put it in a folder with the other raw files and point data.source at the folder"
    else:
        what = "not a zip archive"
    raise DownloadError(f"data.source: {source} is a file, {what}; {ACCEPTED}")


def fetch_source(source: str, staging: Path, partial_dir: Path, params: DataParams, progress: bool
                 ) -> tuple[list[str], list[str]]:
    """Fetch every raw file from a directory/URL (or one archive) into ``staging``.

    Returns the raw files found and the members of per-file .7z archives left out (not the archive's own file).
    """
    parsed = urllib.parse.urlparse(source)
    remote = parsed.scheme in ("http", "https")
    shown = shown_url(source)
    if parsed.scheme not in ("", "file", "http", "https"):
        raise DownloadError(f"data.source: unsupported URL scheme {parsed.scheme!r} (use http, https or file)")
    if not remote and not local_path(source).exists():
        raise DownloadError(f"data.source: {source} does not exist")
    fetched: set[str] = set()  # what data.sha256 may name
    refused: list[str] = []  # a folder URL's names the server answered 403 for
    pages: list[tuple[str, str]] = []  # ... and with an HTML page, and its title
    left_out: list[str] = []
    if is_single_file(source):
        if not remote:
            _check_local_file_source(source, local_path(source))
        name = Path(parsed.path).name
        try:
            archive, _name = fetch(source, partial_dir, params, progress)
        except _Missing as missing:
            if missing.code == 403:
                raise DownloadError(f"data.source: {shown}: HTTP 403 Forbidden (a private file, or a link that "
                                    "needs credentials)") from None
            raise DownloadError(f"data.source: {shown}: the server has no such file (HTTP 404/410)") from None
        fetched.add(name)
        try:
            found, left_out, listed = install_zip(archive, staging, partial_dir, name, remote=remote)
        except DownloadError:
            discard(archive)
            raise
    else:
        found, listed = set(), [] if remote else [entry.name for entry in local_path(source).iterdir()]
        if not remote:  # Holidays_Events.csv would be read past: no holidays, without a word
            check_raw_file_names(f"data.source: {source}", [entry.name for entry in local_path(source).iterdir()
                                                            if entry.is_file()], DownloadError,
                                 found={base for base in RAW_FILES + OPTIONAL_RAW_FILES
                                        if any(local_path(join(source, f"{base}{suffix}")).is_file()
                                               for suffix in CANDIDATE_SUFFIXES)})
        if not remote:  # a folder: two copies of one file (a .csv beside its .csv.gz) would leave one unread
            _refuse_two_copies(source, *([f"{base}{suffix}" for suffix in CANDIDATE_SUFFIXES
                                          if local_path(join(source, f"{base}{suffix}")).is_file()]
                                         for base in RAW_FILES + OPTIONAL_RAW_FILES))
        for base in RAW_FILES + OPTIONAL_RAW_FILES:
            for k, suffix in enumerate(CANDIDATE_SUFFIXES):
                url = join(source, f"{base}{suffix}")
                if not remote and not local_path(url).is_file():
                    continue
                try:
                    got, held = fetch(url, partial_dir, params, progress)
                except _Missing as missing:
                    if missing.code == 403:
                        refused.append(f"{base}{suffix}")
                    continue
                except _Page as answered:  # a site's page for a name it lacks (a web app's fallback, sent 200), or
                    pages.append((f"{base}{suffix}", answered.page))  # its sign-in wall: said if nothing is found
                    continue
                sent = f"{base}{suffix}" + (" (sent gzip-encoded)" if held != f"{base}{suffix}" else "")
                if remote:  # the names after it: a server's folder holding two copies too
                    _refuse_two_copies(shown, [f"{base}{suffix}"] + [
                        f"{base}{later}" for later in CANDIDATE_SUFFIXES[k + 1:]
                        if _served(join(source, f"{base}{later}"), params.download.timeout_s)])
                left_out += install(got, held, staging, label=sent)
                fetched.add(f"{base}{suffix}")
                found.add(base)
                break
    missing = missing_raw_files({f"{base}.csv" for base in found})
    if missing:  # named with the files (a folder's, a zip's) that look meant as the missing one
        itself = url_itself_note(source, params.download.timeout_s) if remote else ""
        raise DownloadError(f"data.source: {shown} {missing}{forbidden_note(refused, fetched)}"
                            f"{pages_note(pages, found)}{other_formats_note(listed, found)}{itself}")
    unchecked = sorted(set(params.sha256) - fetched)
    if unchecked:  # a typo, or train.csv listed where train.csv.gz was fetched: nothing would have been verified
        raise DownloadError(f"data.sha256.{unchecked[0]}: no file of that name was fetched from {shown} "
                            f"(fetched: {', '.join(sorted(fetched))})")
    return sorted(found), left_out


def download(params: DataParams, raw_dir: Path = RAW_DIR, partial_dir: Path = PARTIAL_DIR, progress: bool = True,
             source: str | None = None, client=None) -> str:
    """Fill ``raw_dir`` from ``source`` (default: ``params.source``), all files or none.

    With a Dask ``client``, synthetic data are written partly by the cluster's workers
    (``pipeline.synthetic``); fetching a directory or URL is I/O and stays here.
    """
    source = params.source if source is None else source
    with atomic_directory(raw_dir) as staging:
        if source == "synthetic":
            if params.sha256:
                raise DownloadError(f"data.sha256.{sorted(params.sha256)[0]}: data.source is synthetic, which "
                                    "fetches no file to check")
            counts = generate(params.synthetic, staging, progress=progress, client=client)
            syn = params.synthetic
            return (f"synthetic: {counts['train']:,} train rows, {syn.stores} stores x {counts['items']:,} items, "
                    f"{syn.start_date} .. {syn.end_date} (seed {syn.seed}) in {raw_dir}")
        found, left_out = fetch_source(source, staging, Path(partial_dir), params, progress)
    ignored = f" (left out, not its archive's own file: {', '.join(left_out)})" if left_out else ""
    freed = remove_stale_partials(Path(partial_dir))
    stale = f"; {freed:,} bytes of stale partial copies removed from {partial_dir}" if freed else ""
    return f"{len(found)} files ({', '.join(found)}) from {shown_url(source)} in {raw_dir}{ignored}{stale}"


def _main(args: argparse.Namespace) -> str:
    raw_params = stage_params(args)
    params = data_params(raw_params)
    source = located(data_source(params), args.root)
    address = scheduler_address(raw_params) if source == "synthetic" else None  # fetching needs no cluster
    with dask_client(address) as client:
        return download(params, args.root / RAW_DIR, args.root / PARTIAL_DIR, progress=not args.quiet,
                        source=source, client=client)


def main(argv: list[str] | None = None) -> int:
    return run_stage("download", _main, argv, errors=(ClusterError,))


if __name__ == "__main__":
    raise SystemExit(main())
