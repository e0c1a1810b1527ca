"""pipeline/gzip_data.py: where a .gz's data ends, read once, whatever its members' sizes."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from pipeline import gzip_data
from pipeline.gzip_data import GzipEnd, gzip_end


def _members(count: int) -> bytes:
    return b"".join(gzip.compress(f"{row},2017-01-01,1,103665,7.0\n".encode(), mtime=0) for row in range(count))


def _bytes_read() -> int:
    """The bytes this process has read by read(2) and the like (Linux's /proc/self/io ``rchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts reads by Linux's /proc/self/io")
def test_a_gzip_of_many_small_members_is_read_once(tmp_path):
    """An appending logger (Fluentd's out_file with gzip, `gzip -c >> day.csv.gz`) writes a member per flush. The
    walk read a chunk (1 MiB) again from each member's start: 30,000 members of 46 bytes (1.4 MB) read about 21 GB
    and took 2 to 10 s here, 100,000 minutes; the file is read once."""
    data = _members(30_000)
    path = tmp_path / "train.csv.gz"
    path.write_bytes(data)
    before = _bytes_read()
    end = gzip_end(path)
    read = _bytes_read() - before
    assert end == GzipEnd(len(data), len(data), b"", len(data))
    assert read < 2 * len(data) + (1 << 20), f"{read:,} bytes read for a file of {len(data):,}"


@pytest.mark.parametrize("chunk, feed", [(7, 3), (64, 64), (1 << 20, 1 << 16)])
def test_members_padding_and_garbage_are_placed_exactly_across_read_boundaries(tmp_path, monkeypatch, chunk, feed):
    """Members, zeros and other bytes that straddle the reads (as small as 7 bytes, a magic split between two)
    are found where they are, as with one read of the whole file."""
    monkeypatch.setattr(gzip_data, "CHUNK", chunk)
    monkeypatch.setattr(gzip_data, "FEED", feed)
    data = _members(40)
    path = tmp_path / "train.csv.gz"
    for tail, expected in [(b"", GzipEnd(len(data), len(data), b"", len(data))),
                           (b"\0" * 50, GzipEnd(len(data), len(data) + 50, b"", len(data) + 50)),
                           (b"\0" * 9 + b"junk", GzipEnd(len(data), len(data) + 13, b"junk", len(data) + 9)),
                           (b"\x1f", GzipEnd(len(data), len(data) + 1, b"\x1f", len(data)))]:
        path.write_bytes(data + tail)
        assert gzip_end(path) == expected, tail
    path.write_bytes(data[:-3])
    with pytest.raises(EOFError, match="ends inside a gzip member"):
        gzip_end(path)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the last member's length field
    with pytest.raises(zlib.error):
        gzip_end(path)


def test_data_size_leaves_out_zero_padding_only(tmp_path):
    """What the raw file reader decodes of a .gz: to the end of its data where only zeros follow; the whole file
    where it ends in a member (its length field's own zero bytes kept) or in bytes other than zeros."""
    data = _members(3)
    assert data.endswith(b"\0")  # a small member's length field: walked, and all of it is data
    path = tmp_path / "train.csv.gz"
    for tail, expected in [(b"", len(data)), (b"\0" * 512, len(data)), (b"\0junk", len(data) + 5)]:
        path.write_bytes(data + tail)
        assert gzip_data.data_size(path) == expected, tail
