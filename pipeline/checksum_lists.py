"""Checksum lists beside the data (SHA256SUMS, checksums.txt, MD5SUMS): which files they name.

A list that names a data file the folder or zip lacks says the user meant to give it: the source check refuses
that (pipeline/source.py ``check_raw_file_names``), as it refuses a lone ``oil.csv.sha256``. Hashes are not
compared: formats differ by tool, and ``data.sha256`` is the declared check. stdlib only.
"""

from __future__ import annotations

import re

# A file of checksum lines by its name: SHA256SUMS, MD5SUMS, sha256sum.txt, checksums.txt, CHECKSUMS (any case).
_LIST_NAME = re.compile(r"(?:(?:md5|sha\d*|b2|blake2b?)sums?|checksums?)(?:\.txt)?", re.IGNORECASE)
# coreutils: ``<hex>  <name>`` or ``<hex> *<name>`` (binary mode); a leading backslash marks an escaped name
_COREUTILS_LINE = re.compile(r"\\?(?P<hex>[0-9a-fA-F]{32,128})[ \t]+\*?(?P<name>.+)")
# BSD and ``sha256sum --tag``: ``SHA256 (<name>) = <hex>``
_BSD_LINE = re.compile(r"\\?[A-Za-z0-9-]+ ?\((?P<name>.+)\) ?= ?(?P<hex>[0-9a-fA-F]{32,128})")
# what is read of a list: far more than any data set's list needs, never a large file read whole
HEAD_BYTES = 1 << 20


def is_checksum_list(name: str) -> bool:
    """Whether ``name`` is a list of checksums by its name (SHA256SUMS, checksums.txt)."""
    return _LIST_NAME.fullmatch(name.strip()) is not None


def listed_names(data: bytes) -> list[str]:
    """The file names, as written, of the checksum lines in ``data``, in coreutils or BSD form. Lines that are no
    entry (comments, blanks, PGP armour) are passed over, CRLF and a byte-order mark too; a line cut off at
    HEAD_BYTES is left out."""
    text = data.decode("utf-8", "replace").lstrip("\ufeff")
    lines = text.splitlines()
    if len(data) >= HEAD_BYTES and lines:
        lines.pop()
    names = []
    for line in lines:
        line = line.strip()
        entry = _COREUTILS_LINE.fullmatch(line) or _BSD_LINE.fullmatch(line)
        if entry is None:
            continue
        name = entry["name"].strip()
        if line.startswith("\\"):  # coreutils' escaping of a name holding a backslash or a newline
            name = name.replace("\\n", "\n").replace("\\\\", "\\")
        if basename(name):
            names.append(name)
    return names


def basename(listed: str) -> str:
    """The file a listed name is (``data/oil.csv`` and Windows' ``data\\oil.csv`` are ``oil.csv``): a folder's data
    files are read from its top level, a zip's members by their file names."""
    return re.split(r"[\\/]", listed)[-1]
