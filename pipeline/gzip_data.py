"""Where a fetched gzip file's data ends: the shapes of .gz download accepts.

GNU gzip reads members one after another and ignores zero bytes after the last (tape and backup tools, padded
uploads leave them: "trailing zero bytes ignored"); Arrow, which prepare reads through, takes them for a member
and fails ("unknown compression method"). So download measures where the data ends, drops such padding from its
copy, and refuses anything else after the data, which GNU gzip only warns of ("trailing garbage ignored") and
which cannot be told from a damaged file. Stdlib only.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import NamedTuple

MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
GZIP_WBITS = 31  # zlib's gzip framing: header, deflate data, CRC-32 and length checked


class GzipEnd(NamedTuple):
    """``data_end``: the byte after the last member; ``after``: from there, the first bytes that are not zero
    padding (b"" when the file ends there or holds only zeros after it) and ``after_at``, where they start."""

    data_end: int
    size: int
    after: bytes
    after_at: int


def _member_end(handle, start: int) -> int:
    """The byte after the gzip member at ``start``; zlib.error for bad data, CRC or length, EOFError if cut."""
    handle.seek(start)
    decoder = zlib.decompressobj(GZIP_WBITS)
    read = 0
    while not decoder.eof:
        data = handle.read(CHUNK)
        if not data:
            raise EOFError(f"the file ends inside a gzip member, at byte {start + read:,}")
        read += len(data)
        while data and not decoder.eof:
            decoder.decompress(data, CHUNK)  # output bounded and dropped: only the checks matter here
            data = decoder.unconsumed_tail
    return start + read - len(decoder.unused_data)


def gzip_end(path: Path) -> GzipEnd:
    """Every member of ``path`` checked to its end (zlib.error / EOFError as for ``_member_end``), and what
    follows the last one."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        end = 0
        while end < size:
            handle.seek(end)
            if handle.read(2) != MAGIC:
                break
            end = _member_end(handle, end)
        handle.seek(end)
        at = end
        for block in iter(lambda: handle.read(CHUNK), b""):
            rest = block.lstrip(b"\0")
            if rest:
                return GzipEnd(end, size, rest[:16], at + len(block) - len(rest))
            at += len(block)
    return GzipEnd(end, size, b"", size)



def decoded_head(path: Path, size: int = 4096) -> bytes:
    """The first ``size`` bytes of a gzip file's content; as many as decode (maybe none) where it is cut or
    corrupt, which ``gzip_end`` then names."""
    decoder = zlib.decompressobj(GZIP_WBITS)
    try:
        with open(path, "rb") as handle:
            return decoder.decompress(handle.read(1 << 16), size)
    except zlib.error:
        return b""
