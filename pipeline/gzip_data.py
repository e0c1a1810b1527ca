"""Where a gzip file's data ends: the shapes of .gz download accepts, and the bytes prepare reads of one.

GNU gzip reads members one after another and ignores zero bytes after the last (tape and backup tools, padded
uploads leave them: "trailing zero bytes ignored"); Arrow, which prepare reads through, takes them for a member
and fails ("unknown compression method"). So download measures where the data ends, drops such padding from its
copy, and refuses anything else after the data, which GNU gzip only warns of ("trailing garbage ignored") and
which cannot be told from a damaged file; and the raw file reader (``validate``) reads a .gz only to where its
data ends (``data_size``), so a padded file put in data/raw by hand reads as its download would, unchanged.
Stdlib only.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import NamedTuple

MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
FEED = 1 << 16  # input given a member's decoder at a time (``_member_end``)
GZIP_WBITS = 31  # zlib's gzip framing: header, deflate data, CRC-32 and length checked


class GzipEnd(NamedTuple):
    """``data_end``: the byte after the last member; ``after``: from there, the first bytes that are not zero
    padding (b"" when the file ends there or holds only zeros after it) and ``after_at``, where they start."""

    data_end: int
    size: int
    after: bytes
    after_at: int


class _ForwardReader:
    """A file read once, front to back, in CHUNK reads handed out as pieces (views, not copies); the unread end of
    the last piece can be given back, as a gzip member's decoder leaves the bytes after it (``unused_data``)."""

    def __init__(self, handle):
        self.handle, self.chunk, self.at, self.chunk_start = handle, memoryview(b""), 0, 0

    def tell(self) -> int:
        return self.chunk_start + self.at

    def piece(self, size: int) -> memoryview:
        """Up to ``size`` bytes from here (fewer at a chunk's end; none at the file's)."""
        if self.at == len(self.chunk):
            self._refill(b"")
        piece = self.chunk[self.at:self.at + size]
        self.at += len(piece)
        return piece

    def give_back(self, count: int) -> None:
        """The last ``count`` bytes of the last piece, to be read again."""
        self.at -= count

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the file's end), not consumed."""
        if len(self.chunk) - self.at < size:
            self._refill(bytes(self.chunk[self.at:]))
        return bytes(self.chunk[self.at:self.at + size])

    def _refill(self, kept: bytes) -> None:
        self.chunk_start += self.at
        self.chunk, self.at = memoryview(kept + self.handle.read(CHUNK)), 0


def _member_end(reader: _ForwardReader) -> int:
    """The byte after the gzip member that starts where ``reader`` is, which is left there; zlib.error for bad
    data, CRC or length, EOFError if cut. Fed FEED bytes at a time: the decoder copies what follows a member's end
    (``unused_data``), and a whole chunk's copy for each of many small members (as an appending logger writes them;
    the gzip module reads the same way) made the walk quadratic."""
    decoder = zlib.decompressobj(GZIP_WBITS)
    while not decoder.eof:
        data = reader.piece(FEED)
        if not data:
            raise EOFError(f"the file ends inside a gzip member, at byte {reader.tell():,}")
        while data and not decoder.eof:
            decoder.decompress(data, CHUNK)  # output bounded and dropped: only the checks matter here
            data = decoder.unconsumed_tail
    reader.give_back(len(decoder.unused_data))
    return reader.tell()


def gzip_end(path: Path) -> GzipEnd:
    """Every member of ``path`` checked to its end (zlib.error / EOFError as for ``_member_end``), and what
    follows the last one; the file is read once, front to back."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        reader = _ForwardReader(handle)
        end = 0
        while reader.peek(len(MAGIC)) == MAGIC:
            end = _member_end(reader)
        at = end
        for block in iter(lambda: reader.piece(CHUNK), b""):
            rest = bytes(block).lstrip(b"\0")
            if rest:
                return GzipEnd(end, size, rest[:16], at + len(block) - len(rest))
            at += len(block)
    return GzipEnd(end, size, b"", size)


def data_size(path: Path) -> int:
    """The bytes of the .gz at ``path`` that a reader decodes: up to the end of its data (``gzip_end``) when only zero
    padding follows it, else the whole file (other bytes after it are left for the reader to fail on). Only a file
    that ends in a zero byte is walked: padding does, and so does a member whose length field's high byte is 0 (under
    16 MiB decoded, modulo 4 GiB), so a large unpadded file is seldom read an extra time. zlib.error / EOFError as
    for ``gzip_end``."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(size - 1, 0))
        if handle.read(1) != b"\0":
            return size
    end = gzip_end(path)
    return end.data_end if end.data_end and not end.after else size


def decoded_head(path: Path, size: int = 4096) -> bytes:
    """The first ``size`` bytes of a gzip file's content; as many as decode (maybe none) where it is cut or
    corrupt, which ``gzip_end`` then names."""
    decoder = zlib.decompressobj(GZIP_WBITS)
    try:
        with open(path, "rb") as handle:
            return decoder.decompress(handle.read(1 << 16), size)
    except zlib.error:
        return b""
