"""Stage ``source``: which data source is in effect, and a fingerprint of its content.

DVC reruns a stage when a dependency's *content* changes, but a source outside
the project (a directory of CSV files, a URL) is no file DVC tracks. This stage
runs on every ``dvc repro`` (``always_changed`` in dvc.yaml) and writes
data/source.json: the source in effect (a URL as ``url_credentials.source_identity`` gives it: no
login or token, which CI may rotate each run) and, per raw file, its SHA-256 (local
files) or its HTTP validators (ETag / Last-Modified / Content-Length). The
download stage depends on that file, so it reruns exactly when the source's
content, or the choice of source, changed; otherwise DVC skips it.

The source is ``data.source`` of params.yaml, unless the environment variable
``SHELFCAST_DATA_SOURCE`` is set: then that wins, so a user can point the
pipeline at their own data without editing a tracked file
(``dvc exp run -S data.source=...`` is the DVC-native way to do the same).

Hashing a large local file is done once: a cache next to the fingerprint
remembers each file's hash with its size, inode, mtime and ctime (ctime cannot
be set back by copying tools), so an unchanged file is not read again.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.atomic import file_digest, write_json_atomic
from pipeline.params import DataParams, data_params
from pipeline.schema import OPTIONAL_RAW_FILES, RAW_FILES
from pipeline.stage import StageError, run_stage, stage_params
from pipeline.url_credentials import (login_request, open_login_request, same_origin, shown_url, source_identity,
                                     split_credentials)
from pipeline.versions import SOURCE_FINGERPRINT_PATH

ENV_VAR = "SHELFCAST_DATA_SOURCE"
HASH_CACHE_PATH = Path("data/.source-hashes.json")
# For each raw file the first of these that exists is the one fetched (pipeline.download).
CANDIDATE_SUFFIXES = (".csv.gz", ".csv", ".csv.7z")
RAW_NAMES = RAW_FILES + OPTIONAL_RAW_FILES
# What a raw file in another format (train.parquet, oil.xlsx) is told: it is not read.
ONLY_CSV = "only CSV files are read (export it as NAME.csv or NAME.csv.gz)"
# ... unless it is CSV already, compressed in a way that is not read (train.csv.xz, oil.csv.zip): then that is said.
OTHER_COMPRESSIONS = {".xz": "xz", ".lzma": "lzma", ".bz2": "bzip2", ".zip": "zip", ".zst": "zstd", ".lz4": "lz4",
                      ".z": "compress", ".br": "brotli"}


def not_read_note(name: str, base: str) -> str:
    """Why a raw file named ``name`` (``base``'s, in another format) is not read, and what to do."""
    stem, dot, compression = name.strip().lower().rpartition(".")
    if stem == f"{base}.csv" and f".{compression}" in OTHER_COMPRESSIONS:
        return (f"CSV compressed with {OTHER_COMPRESSIONS[f'.{compression}']}, which is not read: decompress it into "
                f"{base}.csv, or gzip that as {base}.csv.gz")
    return ONLY_CSV.replace("NAME", base)
# A checksum or signature of another file, as data portals publish beside each file (oil.csv.sha256,
# train.csv.gz.asc; coreutils' oil.csv.sha256sum): no data of its own, so never taken for a raw file in another
# format (``is_side_file``); one whose file is not there is (``check_raw_file_names``).
SIDE_FILE_SUFFIXES = (".md5", ".sha1", ".sha256", ".sha512", ".md5sum", ".sha1sum", ".sha256sum", ".sha512sum",
                      ".sig", ".asc")


class SourceError(StageError):
    """A data source that cannot be reached or read to fingerprint it."""


# What an HTTP request line cannot carry (http.client refuses it with InvalidURL, whose text is the path and query,
# a token included; urlsplit silently drops a tab or newline instead), and what its path and query cannot (a
# non-ASCII letter: http.client stops with a UnicodeEncodeError; a host may be one, as IDNA encodes it).
_NOT_IN_A_REQUEST = re.compile(r"[\x00-\x20\x7f]")
_NOT_IN_A_PATH = re.compile(r"[^\x00-\x7f]")


def data_source(params: DataParams) -> str:
    """The source in effect: $SHELFCAST_DATA_SOURCE when set, else params.yaml's data.source. An http(s) URL with a
    space or control character in it is refused here, for both stages, naming where it was set."""
    chosen = os.environ.get(ENV_VAR, "").strip()
    source = chosen or params.source
    parts = urllib.parse.urlsplit(source)
    if is_remote(source) and (_NOT_IN_A_REQUEST.search(source) or _NOT_IN_A_PATH.search(parts.path + parts.query)):
        where = f"${ENV_VAR}" if chosen else "data.source"
        raise SourceError(f"{where}: {shown_url(source)!r} has a space, control or non-ASCII character, which no "
                          "HTTP request can carry: percent-encode it (a space as %20, é as %C3%A9)")
    return source


def located(source: str, root: Path | str) -> str:
    """``source`` as the stages read it: a relative local path from the project root ``root`` (where DVC runs them),
    not from the directory a ``python -m pipeline.<stage> --root DIR`` was started in."""
    if source == "synthetic" or urllib.parse.urlparse(source).scheme:
        return source
    path = Path(source).expanduser()
    return source if path.is_absolute() else str(Path(root) / path)


def is_remote(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def local_path(source: str) -> Path:
    """The file or folder a local source names; ``~`` is the user's home, as in the shell the path was copied from."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(source).expanduser()


def join(base: str, name: str) -> str:
    """``name`` inside the directory ``base`` (a path or a URL). A folder URL's query goes with every file: a token
    that grants the folder (an Azure container's SAS, ``?token=...``) was read as part of the name, each file
    missing."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme in ("http", "https", "file"):
        path = parts.path.rstrip("/") + "/" + urllib.parse.quote(name)
        return urllib.parse.urlunsplit(parts._replace(path=path, fragment=""))
    return str(Path(base) / name)


def is_single_file(source: str) -> bool:
    """Whether ``source`` names one file (a .zip URL, or a local file) rather than a folder of raw files."""
    return (urllib.parse.urlparse(source).path.lower().endswith(".zip")
            or (not is_remote(source) and local_path(source).is_file()))


def missing_raw_files(names) -> str | None:
    """The error when the raw file ``names`` (as found: train.csv.gz, ...) lack a required one; None when complete."""
    missing = [base for base in RAW_FILES if not any(f"{base}{suffix}" in names for suffix in CANDIDATE_SUFFIXES)]
    return (f"has no {', '.join(missing)} (looked for NAME{', NAME'.join(CANDIDATE_SUFFIXES)})" if missing
            else None)


def is_side_file(name: str) -> bool:
    """Whether ``name`` is a checksum or signature file (SIDE_FILE_SUFFIXES, any case): read past, as it holds no
    data; its hash is not checked (data.sha256 is where an expected hash is given)."""
    return name.strip().lower().endswith(SIDE_FILE_SUFFIXES)


def exact_raw_files(names) -> set[str]:
    """The raw files ``names`` hold under an exact name (NAME + a CANDIDATE_SUFFIXES suffix)."""
    return {base for base in RAW_NAMES if any(f"{base}{suffix}" in names for suffix in CANDIDATE_SUFFIXES)}


def side_file_of(name: str) -> str:
    """The file a side file ``name`` is the checksum or signature of: its name less SIDE_FILE_SUFFIXES
    (``oil.csv.gz.sha256.asc`` -> ``oil.csv.gz``)."""
    name = name.strip()
    while is_side_file(name):
        name = name[:name.lower().rfind(".")]
    return name


def _folded(text: str) -> str:
    return re.sub(r"[\s_\-.]", "", text.casefold())


# What a browser or an editor adds to the name it was given: a second download's copy number (train (1).csv), an
# extension Windows hides (train.csv saved as train.csv.txt by Notepad, or as train.csv.csv), a trailing space.
_COPY_NUMBER = re.compile(r"\s*\(\d+\)$")
_ADDED_EXTENSIONS = (".txt", ".csv")


def _suffix_meant(suffix: str) -> str | None:
    """The raw file suffix ``suffix`` (lowercase) is, or was before an editor added an extension; None if neither."""
    if suffix in CANDIDATE_SUFFIXES:
        return suffix
    added = next((end for end in _ADDED_EXTENSIONS if suffix.endswith(end)), None)
    return suffix[:-len(added)] if added and suffix[:-len(added)] in CANDIDATE_SUFFIXES else None


def lookalike_raw_files(names, found=None) -> list[tuple[str, str, str | None]]:
    """Files among ``names`` that look meant as a raw file the names lack under its exact names: (file, raw file,
    its exact name or None). A raw name but for case, spaces, ``_``, ``-`` (``Holidays_Events.csv``,
    ``Train.CSV``, ``holidays-events.csv.gz``), a copy number, an added ``.txt`` or a trailing space
    (``holidays_events (1).csv``, ``oil.csv.txt``) has that exact name: read past, the file would be silently
    absent (no holidays, no oil), as a misspelt column would. A raw name in another format (``train.parquet``,
    ``oil.xlsx``) has None: only CSV is read. A checksum or signature file (``oil.csv.sha256``: ``is_side_file``) is
    none of these. ``found``: the raw files found (default: those ``names`` hold under an exact name); a folder's
    are those that open, which on a case-insensitive file system Train.csv does."""
    names = [name for name in names if not is_side_file(name)]
    if found is None:
        found = exact_raw_files(names)
    wanted = {_folded(base): base for base in RAW_NAMES if base not in found}
    alike = []
    for name in sorted(names):
        stem, dot, rest = name.strip().partition(".")
        base = wanted.get(_folded(_COPY_NUMBER.sub("", stem)))
        if base is None or not dot:
            continue
        suffix = _suffix_meant(f".{rest.lower()}")
        alike.append((name, base, f"{base}{suffix}" if suffix else None))
    return alike


# A raw file's name with a part or copy number: a file split in parts (train_1.csv, train-2017.csv, train.part2.csv,
# train.csv.1, train.csv.7z.001) or a second copy (train (2).csv, a browser's second download beside the first).
_PART_NAME = re.compile(r"(?P<base>{bases})(?:"
                        r"(?:[\s_\-.]*(?:part|pt)?[\s_\-.]*\d+|\s*\(\d+\))\.csv(?:\.gz|\.7z)?"  # train_2.csv
                        r"|\.csv(?:\.gz|\.7z)?[\s_\-.]*(?:part|pt)?[\s_\-.]*\d+)"  # train.csv.1
                        .format(bases="|".join(RAW_NAMES)))


def part_files(names) -> dict[str, list[str]]:
    """Raw file -> the files among ``names`` that carry its name with a part or copy number (``_PART_NAME``): read
    past, their rows would silently be absent (a train.csv beside train_2.csv, its second half)."""
    parts: dict[str, list[str]] = {}
    for name in sorted(names):
        if not is_side_file(name) and (match := _PART_NAME.fullmatch(name.strip().lower())):
            parts.setdefault(match.group("base"), []).append(name)
    return parts


def check_raw_file_names(where: str, names, error: type[StageError] | None = None, found=None) -> None:
    """SourceError (or ``error``) for a file of ``names`` (a folder's, a zip's members') named a raw file but for
    case or separators (see ``lookalike_raw_files``), gzipped twice (``NAME.csv.gz.gz``: ``gzip`` run on a .gz), an
    optional raw file in another format (``oil.xlsx``), or the checksum or signature of an optional raw file that is
    not there (``oil.csv.sha256`` without ``oil.csv``); ``where``: the source as the error names it."""
    for name, base, exact in lookalike_raw_files(names, found):
        if exact is not None:
            raise (error or SourceError)(
                f"{where} has {name} but no {base} file: is {exact} meant? (raw file names are matched exactly, "
                f"in lowercase: rename it {exact}; read past, it would be as if there were none)")
        if name.strip().lower().endswith(".csv.gz.gz"):
            raise (error or SourceError)(
                f"{where} has {name} but no {base} file: its name says gzip-compressed twice: gunzip it once, into "
                f"{base}.csv.gz (read past, it would be as if there were none)")
        if base in OPTIONAL_RAW_FILES:  # a required one is named in the error that it is missing (other_formats_note)
            raise (error or SourceError)(
                f"{where} has {name} but no {base} file: {not_read_note(name, base)}; or, if no {base} data "
                "are meant, move it out of the folder (read past, it would be as if there were none)")
    names = list(names)
    if found is None:  # lookalike_raw_files' default, of all ``names``: not of the one name looked at below
        found = exact_raw_files(names)
    for base, parts in part_files(names).items():
        shown = ", ".join(parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
        if base in found:  # the file and a part of it, or another copy: only the one named exactly would be read
            exact = next((f"{base}{suffix}" for suffix in CANDIDATE_SUFFIXES if f"{base}{suffix}" in names),
                         f"{base}.csv")
            raise (error or SourceError)(
                f"{where} has {exact} and {shown}: parts of one file, or other copies of it? Only {exact} is read, "
                f"the rest would be read past, their rows absent: join the parts into one {exact} (with one header "
                "line, at its top), or move the others out")
        if base in OPTIONAL_RAW_FILES:  # a required one is named in the error that it is missing (other_formats_note)
            raise (error or SourceError)(
                f"{where} has {shown} but no {base} file: parts of one file? Only {base}.csv or {base}.csv.gz is "
                f"read: join them into one {base}.csv (with one header line, at its top); read past, it would be as "
                "if there were none")
    for name in sorted(name for name in names if is_side_file(name) and side_file_of(name) not in names):
        for _, base, _ in lookalike_raw_files([side_file_of(name)], found):
            if base in OPTIONAL_RAW_FILES:  # the checksum of a file not copied: its data would be silently absent
                described = side_file_of(name)
                raise (error or SourceError)(
                    f"{where} has {name} but no {base} file: it is a checksum or signature of {described}, which is "
                    f"not there: put {described} beside it; or, if no {base} data are meant, move it out of the "
                    "folder (read past, it would be as if there were none)")


def other_formats_note(names, found=None) -> str:
    """What a 'has no ...' error adds when the missing raw files are there in a format that is not read."""
    other = [(name, base) for name, base, exact in lookalike_raw_files(names, found)
             if exact is None and base in RAW_FILES]
    parts = {base: files for base, files in part_files(names).items() if base in RAW_FILES}
    joined = "".join(f"; found {', '.join(files)}: parts of one file? join them into one {base}.csv (with one header "
                     "line, at its top)" for base, files in parts.items())
    notes = "".join(f"; found {name}: {not_read_note(name, base)}" for name, base in other)
    return notes + joined


def candidate_names() -> list[str]:
    return [f"{base}{suffix}" for base in RAW_NAMES for suffix in CANDIDATE_SUFFIXES]


class HashCache:
    """sha256 of local files, reused while a file's size, inode, mtime and ctime are unchanged."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        identity = [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]
        known = self.entries.get(key)
        if known and known[:4] == identity:
            return known[4]
        digest = file_digest(file)
        self.entries[key] = identity + [digest]
        return digest

    def save(self) -> None:
        write_json_atomic(self.path, self.entries)


# What a server answers for a name it does not have: 404/410, and 403 from an S3 bucket read without list
# permission (public objects, s3:GetObject only). A folder's raw files are looked for under three names each, so
# these mean "not under this name"; a required file not found says which names were refused (forbidden_note).
ABSENT = (404, 410)
ABSENT_IN_FOLDER = (403, 404, 410)
# What a server may answer a HEAD it will not take, where a GET of the same URL works: 403 (an S3 URL presigned for
# GET signs the method), 405 Method Not Allowed (a web framework's GET-only route: FastAPI's, an API gateway's) and
# 501 Not Implemented (Python's http.server.BaseHTTPRequestHandler with a do_GET alone).
HEAD_REFUSED = (403, 405, 501)


# What a server answers while it is briefly unable to serve (a proxy's or CDN's 502/504, S3's 503 SlowDown, a rate
# limit's 429, a request timeout's 408, a 500): asked again, data.download.retries attempts in all, after its
# Retry-After in seconds where it gives one, else 1, 2, 4 ... s; at most RETRY_WAIT_MAX_S a wait.
TRANSIENT = (408, 429, 500, 502, 503, 504)
RETRY_WAIT_MAX_S = 30.0


def retry_wait(exc: urllib.error.HTTPError, attempt: int) -> float:
    """Seconds to wait before asking again after a ``TRANSIENT`` answer to attempt ``attempt`` (0 the first)."""
    after = exc.headers.get("Retry-After", "") if exc.headers is not None else ""
    try:
        wait = float(after)
    except ValueError:  # none, or an HTTP date: the backoff's
        wait = 2.0 ** attempt
    return min(max(wait, 0.0), RETRY_WAIT_MAX_S)


def http_error(exc: urllib.error.HTTPError) -> str:
    """An HTTP error as one line: ``HTTP <code> <reason>``. urllib gives a redirect loop (or more than its 10
    redirects) as a 30x whose reason is three lines, which became three lines of a one-line error."""
    reason = str(exc.reason)
    if reason.startswith(urllib.request.HTTPRedirectHandler.inf_msg):
        return (f"HTTP {exc.code}: the server's redirects go round in a loop (or past urllib's limit of "
                f"{urllib.request.HTTPRedirectHandler.max_redirections}): open the URL in a browser to see where it "
                "leads, and point data.source at the file's own address")
    return f"HTTP {exc.code} {' '.join(reason.split())}"


# A file's first bytes, for a folder URL that has no raw files beneath it but answers with a file itself.
FILE_SIGNATURES = ((b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "a zip archive"), (b"\x1f\x8b", "gzip data"),
                   (b"7z\xbc\xaf\x27\x1c", "a 7z archive"))


def url_itself_note(source: str, timeout_s: float) -> str:
    """What a folder URL's 'has no train, items, stores' adds where the URL is a file itself: one naming a raw file
    (``.../train.csv``), or a download link whose path does not end in .zip (figshare's ``.../ndownloader/files/123``,
    Google Drive's ``...?export=download&id=...``), read as a folder as any URL not ending in .zip is: said from a GET
    of its first bytes, as the file they start. Nothing where the URL does not answer with one."""
    if Path(urllib.parse.urlsplit(source).path).name.lower().endswith(CANDIDATE_SUFFIXES):
        return (": the URL names one raw file, not a folder: point data.source at the folder URL that holds the raw "
                "files (or at a .zip of them)")
    request = login_request(source, headers={"User-Agent": "shelfcast-download", "Range": "bytes=0-7"})
    try:
        with open_login_request(request, timeout_s) as response:
            head = response.read(8)
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError):
        return ""
    what = next((what for magic, what in FILE_SIGNATURES if head.startswith(magic)), None)
    if what is None:
        return ""
    fix = ("download it and point data.source at the file, or at a URL of it whose path ends in .zip"
           if what == "a zip archive" else "download it, unpack it into a folder of the raw files and point "
           "data.source at that folder")
    return (f": the URL itself answers with {what}, not a folder (a URL is read as a zip only where its path ends "
            f"in .zip): {fix}")


def forbidden_note(refused: list[str], found) -> str:
    """What a 'has no ...' error adds when the server refused the missing required files' names with 403, which may
    be a permission rather than an absence (``found``: the raw file names found)."""
    missing = [base for base in RAW_FILES if not any(f"{base}{suffix}" in found for suffix in CANDIDATE_SUFFIXES)]
    names = [name for name in refused if name.split(".")[0] in missing]
    return (f"; the server answered 403 Forbidden for {', '.join(names)} (absent from an S3 bucket without list "
            "permission, or there but private: check the files' permissions)") if names else ""


def login_note(url: str, status: int, answered_by: str | None = None) -> str:
    """What an error line adds for a 401: the login the URL gives was refused, or it was not sent where a redirect
    led (``answered_by``: the URL that answered, ``url_credentials.same_origin``), or none was given and where to
    give one (not params.yaml, which git commits and DVC records)."""
    if status != 401:
        return ""
    bare, user, _ = split_credentials(url)
    if user is not None and answered_by and not same_origin(bare, answered_by):
        return (f": it redirects to {shown_url(answered_by)}, which is not sent the login the URL gives (another host "
                "or port): point data.source at the URL it redirects to, with the login")
    if user is not None:
        return ": the server refused the login the URL gives (check its user and password)"
    return (f": the server asks for a login: give it in the URL, http(s)://USER:PASSWORD@host/..., set in ${ENV_VAR} "
            "(a CI secret) rather than params.yaml, which git commits")


def _validator_headers_retrying(url: str, timeout_s: float, retries: int) -> tuple:
    """``validator_headers``, asked again after a ``TRANSIENT`` answer, ``retries`` attempts in all."""
    for attempt in range(retries):
        try:
            return validator_headers(url, timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code not in TRANSIENT or attempt == retries - 1:
                raise
            time.sleep(retry_wait(exc, attempt))
    return validator_headers(url, timeout_s)  # retries < 1: asked once


def _http_validators(url: str, timeout_s: float, absent: tuple[int, ...] = ABSENT,
                     refused: list[str] | None = None, retries: int = 1) -> dict | None:
    """ETag / Last-Modified / Content-Length of a URL, or None when the server says it does not exist (a status of
    ``absent``; a 403 among them is appended to ``refused``)."""
    try:
        headers, size = _validator_headers_retrying(url, timeout_s, retries)
    except urllib.error.HTTPError as exc:
        if exc.code in absent:
            if exc.code == 403 and refused is not None:
                refused.append(Path(urllib.parse.urlparse(url).path).name)
            return None
        raise SourceError(f"{shown_url(url)}: {http_error(exc)} (checking the source for changes)"
                          f"{login_note(url, exc.code, exc.url)}") from None
    except (OSError, urllib.error.URLError) as exc:
        raise SourceError(f"{shown_url(url)}: cannot reach it to check for changes: {exc}") from None
    validators = {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"), "size": size}
    if validators["etag"] is None and validators["last_modified"] is None:
        validators["sha256"] = _content_sha256(url, timeout_s)
    return validators


def _content_sha256(url: str, timeout_s: float) -> str:
    """The SHA-256 of the bytes a GET of ``url`` sends (as sent: a gzip Content-Encoding kept), for a server that
    gives no ETag or Last-Modified (a web app's route that writes the CSV, FastAPI's StreamingResponse): its size
    alone was the fingerprint, and a corrected value of the same length (7.0 -> 8.0) did not rerun download, whose
    previous data stayed in use. Fetched each run, as such a server says nothing else about a change."""
    digest, request = hashlib.sha256(), login_request(url, headers={"User-Agent": "shelfcast-download"})
    try:
        with open_login_request(request, timeout_s) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"{shown_url(url)}: {http_error(exc)} (reading it to check for changes: the server gives "
                          f"no ETag or Last-Modified){login_note(url, exc.code, exc.url)}") from None
    except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
        raise SourceError(f"{shown_url(url)}: cannot read it to check for changes (the server gives no ETag or "
                          f"Last-Modified): {exc}") from None
    return digest.hexdigest()


def validator_headers(url: str, timeout_s: float) -> tuple:
    """A HEAD's headers and Content-Length; where HEAD is refused (``HEAD_REFUSED``), a GET of the first byte's, and
    the whole size from its Content-Range: an S3 presigned URL signs its method, and one made for GET refuses HEAD
    with 403; a GET-only route answers it 405, a handler without do_HEAD 501 (before, source stopped there on
    'HTTP 405 Method Not Allowed', a folder download fetched)."""
    head = login_request(url, method="HEAD", headers={"User-Agent": "shelfcast-download"})
    try:
        with open_login_request(head, timeout_s) as response:
            return response.headers, response.headers.get("Content-Length")
    except urllib.error.HTTPError as exc:
        if exc.code not in HEAD_REFUSED:
            raise
    first_byte = login_request(url, headers={"User-Agent": "shelfcast-download", "Range": "bytes=0-0"})
    with open_login_request(first_byte, timeout_s) as response:  # a 403 again: refused after all
        content_range = response.headers.get("Content-Range", "")
        whole = content_range.rpartition("/")[2] if response.status == 206 else ""
        return response.headers, whole if whole.isdigit() else response.headers.get("Content-Length")


def fingerprint(source: str, params: DataParams, cache: HashCache) -> dict:
    """What identifies the content of ``source``: per raw file its hash (local) or HTTP validators."""
    if source == "synthetic":
        return {"source": source}  # generated from data.synthetic, which download declares as params
    scheme = urllib.parse.urlparse(source).scheme
    if scheme not in ("", "file", "http", "https"):
        raise SourceError(f"data.source: unsupported URL scheme {scheme!r} (use http, https or file)")
    files: dict[str, dict] = {}
    refused: list[str] = []  # names a folder URL answered 403 for
    archive = urllib.parse.urlparse(source).path.lower().endswith(".zip")
    if is_remote(source):
        urls = [source] if archive else [join(source, name) for name in candidate_names()]
        for url in urls:
            validators = _http_validators(url, params.download.timeout_s, ABSENT if archive else ABSENT_IN_FOLDER,
                                          refused, params.download.retries)
            if validators is not None:
                files[Path(urllib.parse.urlparse(url).path).name] = validators
        if archive and not files:
            raise SourceError(f"data.source: {shown_url(source)}: the server has no such file (HTTP 404/410)")
    else:
        path = local_path(source)
        if not path.exists():
            raise SourceError(f"data.source: {source} does not exist")
        found = [path] if path.is_file() else [path / name for name in candidate_names() if (path / name).is_file()]
        if path.is_dir():
            check_raw_file_names(f"data.source: {source}", [entry.name for entry in path.iterdir() if entry.is_file()],
                                 found={file.name.split(".")[0] for file in found})
        for file in found:
            try:
                files[file.name] = {"sha256": cache.sha256(file), "size": file.stat().st_size}
            except OSError as exc:
                raise SourceError(f"{file}: cannot read it: {exc}") from None
    missing = None if is_single_file(source) else missing_raw_files(files)
    if missing:  # download would stop on it: say so now, not "0 file(s)" as if all were well
        listed = [] if is_remote(source) else [entry.name for entry in local_path(source).iterdir()]
        itself = url_itself_note(source, params.download.timeout_s) if is_remote(source) else ""
        raise SourceError(f"data.source: {shown_url(source)} {missing}{forbidden_note(refused, files)}"
                          f"{other_formats_note(listed, {name.split('.')[0] for name in files})}{itself}")
    return {"source": source, "files": files}


def write_fingerprint(params: DataParams, out: Path = SOURCE_FINGERPRINT_PATH,
                      cache_path: Path = HASH_CACHE_PATH, root: Path = Path(".")) -> str:
    source = data_source(params)
    cache = HashCache(cache_path)
    # As written, wherever run, and without a token: a rotated one alone is no change of source (url_credentials).
    content = {**fingerprint(located(source, root), params, cache), "source": source_identity(source)}
    if source != "synthetic" and not is_remote(source):
        cache.save()
    write_json_atomic(out, content)
    text = out.read_text(encoding="utf-8")
    via = f" (from ${ENV_VAR})" if os.environ.get(ENV_VAR, "").strip() else ""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"{shown_url(source)}{via}: {len(content.get('files', {}))} file(s), fingerprint {digest} in {out}"


def _main(args: argparse.Namespace) -> str:
    return write_fingerprint(data_params(stage_params(args)), args.root / SOURCE_FINGERPRINT_PATH,
                             args.root / HASH_CACHE_PATH, args.root)


def main(argv: list[str] | None = None) -> int:
    return run_stage("source", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
