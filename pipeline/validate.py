"""Reading the raw Favorita files against their schema, with errors that point at the data.

Every violation raises ``DataValidationError`` naming the file, the column and
the first offending lines (line 1 is the header), so a user can open the file
and see the problem. Small files are read whole; train/test are streamed in
blocks so the full ~5 GB train.csv never sits in memory.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import re
import unicodedata
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.gzip_data import data_size
from pipeline.names import probably_meant
from pipeline.stage import StageError
from pipeline.value_hints import value_hint
from pipeline.schema import LATEST_DATE, RAW_SCHEMAS, RAW_SUFFIXES, Column, RawFile

BLOCK_SIZE = 64 << 20
MAX_SHOWN = 5
SHOWN_CHARS = 80  # a value longer than this is cut in a message: one 200 KB cell made a 200 KB error line
HEADER_BYTES = 1 << 16  # the header line must end within this many bytes
TRUE_VALUES = ["True", "true", "TRUE", "1", "t"]  # "t" and "f": PostgreSQL's boolean (COPY, psql's CSV)
FALSE_VALUES = ["False", "false", "FALSE", "0", "f"]
# A date with a time of day, as a database's or Spark's timestamp column writes it (``2017-08-15 00:00:00``): where a
# file's first data row writes its dates so, its dates are read as timestamps and each must be at midnight (a time of
# day belongs to a day that depends on its time zone: not guessed). The hours, minutes, seconds and fractions
# (SQL Server's and Java's .000) Arrow's reader takes as a timestamp[us]: it refuses 24:00, a 60th second, a 7th
# decimal, a zone offset.
TIMED_DATE = r"\d{4}-\d{2}-\d{2}[ T]([01]\d|2[0-3])(:[0-5]\d(:[0-5]\d(\.\d{1,6})?)?)?"
TIMESTAMP = pa.timestamp("us")


# A file in another encoding (Excel's plain "CSV" on Windows writes Windows-1252): what to do, said once.
SAVE_AS_UTF8 = "save the file as CSV UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)'; or iconv -f cp1252 -t utf-8)"


class DataValidationError(StageError, ValueError):
    """A raw file that breaks the schema; the message names file, column and lines."""


class TruncatedFile(DataValidationError):
    """A raw file that ends inside a line: cut short, said before any error of the line it cut."""


def _file_lines(path: Path | None, rows: list[int]) -> dict[int, int]:
    """Data row (0-based, as the CSV reader counts them: blank lines skipped) -> its line in the file (1-based).

    Without blank lines a row's line is row + 2; read only when an error names rows, so a file's blank lines
    and quoted values spanning lines (``"Fiesta\ngrande"``: one row, two lines) do not shift the lines it names.
    A row is named by the line it starts on."""
    lines = {row: row + 2 for row in rows}
    if path is None or not rows:
        return lines
    wanted, row, number, quoted = set(rows), -1, 0, False  # row -1: the header
    try:
        with _open_binary(path) as handle:
            for chunk in handle:
                for line in chunk.splitlines():  # \n, \r\n and \r end a line, as for the reader
                    number += 1
                    if quoted:  # inside a quoted value: this line continues the row
                        quoted = _ends_quoted(line, True) if b'"' in line else True
                        continue
                    if number == 1 or line:
                        if row in wanted:
                            lines[row] = number
                        row += 1
                        quoted = _ends_quoted(line, False) if b'"' in line else False
                if row > max(wanted):
                    return lines
    except (OSError, EOFError, zlib.error):
        pass  # unreadable further on: the counted lines are the best there is
    return lines


def _ends_quoted(line: bytes, quoted: bool) -> bool:
    """Whether a line ends inside a quoted value (``quoted``: it starts inside one), as the CSV reader splits it.

    A quote opens a value only at the start of a field (``12" pizza`` is a plain value); inside, ``""`` is a quote.
    """
    at_start, k, n = not quoted, 0, len(line)
    while k < n:
        char = line[k]
        if quoted:
            if char == 34:  # "
                if k + 1 < n and line[k + 1] == 34:
                    k += 1
                else:
                    quoted = False
        elif char == 34 and at_start:
            quoted = True
        at_start = not quoted and char == 44  # ,
        k += 1
    return quoted


def _lines(rows: np.ndarray, values=None, path: Path | None = None) -> str:
    shown = []
    lines = _file_lines(path, [int(row) for row in rows[:MAX_SHOWN]])
    for k, row in enumerate(rows[:MAX_SHOWN]):
        text = f"line {lines[int(row)]}"
        if values is not None:
            shown_value = values[k].isoformat() if isinstance(values[k], dt.date) else repr(values[k])
            text += f" ({shown_value[:SHOWN_CHARS] + '...' if len(shown_value) > SHOWN_CHARS else shown_value})"
        shown.append(text)
    more = f" and {len(rows) - MAX_SHOWN} more" if len(rows) > MAX_SHOWN else ""
    return ", ".join(shown) + more


def describe_rows(path: Path, rows, values=None) -> str:
    """``line 5 ('x'), line 9 ('y') and 3 more``: data rows named by their lines in the file."""
    return _lines(np.asarray(rows), values, path)


# What an error about train.csv's or test.csv's id adds: a team's export often has an 'id' of its own (a SKU code,
# receipt numbers that repeat), which the schema's row id refuses, though the file may simply leave the column out.
ID_HINT = ("the id column is Kaggle's row id, which no feature reads: a file may leave it out, so rename or remove "
           "a column of ids of your own")


def fail(path: Path, column: str | None, problem: str, rows: np.ndarray | None = None, values=None,
         hint: str = "") -> None:
    """Raise naming the file, column and first offending lines; ``hint``: how to write the value, said last."""
    where = f"{path.name}: column '{column}'" if column else path.name
    detail = f"; first offending: {_lines(np.asarray(rows), values, path)}" if rows is not None and len(rows) else ""
    hint = f" ({ID_HINT})" if column == "id" else f": {hint}" if hint else ""
    raise DataValidationError(f"{where}: {problem}{detail}{hint}")


def find_raw_file(raw_dir: Path, name: str) -> Path | None:
    """NAME.csv or NAME.csv.gz in ``raw_dir``, or None (optional files may be absent)."""
    for suffix in RAW_SUFFIXES:
        candidate = Path(raw_dir) / f"{name}{suffix}"
        if candidate.exists():
            return candidate
    return None


def require_raw_file(raw_dir: Path, name: str) -> Path:
    path = find_raw_file(raw_dir, name)
    if path is None:
        raise DataValidationError(f"{name}: no {name}.csv or {name}.csv.gz in {raw_dir}")
    return path


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


# What a file that is no CSV text starts with: said for what it is, not 'header (line 1) is not UTF-8 text'.
OTHER_FORMATS = (
    (b"\x1f\x8b", "gzip-compressed data", "name it NAME.csv.gz (a .csv.gz is read compressed)"),
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook is one)",
     "save or export it as CSV UTF-8 (a zip of raw files is a data.source of its own, not a raw file)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel .xls workbook", "save or export it as CSV UTF-8"),
    (b"PAR1", "a Parquet file", "write it as CSV"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "name it NAME.csv.7z in the source, where download unpacks it"),
    (b"\xff\xfe", "UTF-16 text (Excel's 'Unicode Text')", "save it as CSV UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "save it as CSV UTF-8"),
)


def _refuse_other_formats(path: Path, head: bytes) -> None:
    for magic, what, fix in OTHER_FORMATS:
        if head.startswith(magic):
            if magic == b"\x1f\x8b" and path.name.endswith(".gz"):
                what, fix = "gzip-compressed twice", "gunzip it once"
            raise DataValidationError(f"{path.name}: is {what}, not CSV text: {fix}")


def _head(path: Path) -> bytes:
    """The file's first HEADER_BYTES (decompressed), its UTF-8 byte order mark (Excel's "CSV UTF-8") off; a file in
    another format refused."""
    try:
        with _open_binary(path) as handle:
            head = handle.read(HEADER_BYTES)  # not readline(): a file whose lines end in \r alone has no \n at all
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataValidationError(f"{path.name}: cannot read: {exc} (corrupt or truncated gzip?)") from None
    except OSError as exc:  # no such file, a directory, no permission: the gzip hint would mislead
        raise DataValidationError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    _refuse_other_formats(path, head)
    return head.removeprefix(b"\xef\xbb\xbf")  # no part of line 1


def _header(path: Path, strip: bool = True, head: bytes | None = None) -> list[str]:
    """The header's column names (quotes removed; with ``strip``, the spaces around them too); ``head``: the file's
    ``_head``, where the caller has read it already."""
    head = _head(path) if head is None else head
    first = re.split(rb"\r\n|\r|\n", head, maxsplit=1)[0]
    if not first.strip():
        if head.strip():
            raise DataValidationError(f"{path.name}: line 1 is blank: the header line must come first")
        raise DataValidationError(f"{path.name}: file is empty (no header line)")
    try:
        text = first.decode("utf-8")  # its byte order mark is off; a second one is named by check_header
    except UnicodeDecodeError:
        raise DataValidationError(f"{path.name}: header (line 1) is not UTF-8 text: {SAVE_AS_UTF8}") from None
    # split as the CSV reader splits it: a quoted name may hold a comma (a spreadsheet's "cost, EUR")
    names = next(csv.reader([text.strip() if strip else text]), [""])
    return [name.strip().strip('"') for name in names] if strip else names


class Header(NamedTuple):
    """A raw file's header line, checked against its schema: what the reader and prepare need of it."""

    names: list[str]  # the file's column names, in its order
    ignored: list[str]  # its columns the schema lacks, each once: left out when reading (prepare warns)
    left_out: frozenset[str]  # the schema's optional columns it lacks: read as empty on every row, not checked
    timed_dates: bool = False  # its first data row writes a date with a time of day: dates are read as timestamps


def check_header(path: Path, spec: RawFile) -> Header:
    """Check the header line against ``spec``. Columns the schema does not have are read past (a store's export
    often carries a column of its own), but a name that looks like one of the schema's columns the file lacks
    (``Unit_Sales``, ``onpromotions``) is refused: ignoring it would silently read that column as absent."""
    head = _head(path)
    names = _header(path, head=head)
    for name in names:  # prints as the column's name, is not: a second byte order mark, a zero-width space
        invisible = [char for char in name if unicodedata.category(char) == "Cf"]
        if invisible and "".join(c for c in name if c not in invisible) in spec.column_names:
            raise DataValidationError(
                f"{path.name}: line 1: column name {ascii(name)} holds an invisible character "
                f"(U+{ord(invisible[0]):04X} {unicodedata.name(invisible[0], 'FORMAT CHARACTER')}"
                f"{': a second byte order mark?' if invisible[0] == chr(0xFEFF) else ''}): remove it (column names "
                "are matched exactly)")
    missing = [c.name for c in spec.columns if c.name not in names and not c.optional]
    if missing:
        hint = ""
        for delimiter, shown in ((";", ";"), ("\t", "tab")):
            if len(names) == 1 and {c.name for c in spec.columns if not c.optional} <= {
                    n.strip().strip('"') for n in names[0].split(delimiter)}:
                hint = f": the file seems to use {shown} as delimiter; Shelfcast reads comma-separated files"
        if re.fullmatch(r"sep=.?", ",".join(names).strip()):  # Excel writes it when asked to keep the separator
            hint = (f": line 1 is a spreadsheet's {','.join(names).strip()!r} line, not the header: delete it (the "
                    "header line must come first; Shelfcast reads comma-separated files)")
        if not hint and (meant := probably_meant(missing[0], [n for n in names if n not in spec.column_names])):
            hint = f": is '{meant}' meant? (column names are matched exactly)"
        raise DataValidationError(f"{path.name}: column '{missing[0]}': missing (header has: {', '.join(names)})"
                                  f"{hint}")
    empty = [n for n in names if not n]
    if empty and names[-len(empty):] == empty:
        raise DataValidationError(
            f"{path.name}: line 1: the header ends in {len(empty)} empty column name(s) (a spreadsheet's empty "
            "columns?): delete them, and the empty fields they leave at the end of each line")
    spaced = [raw for raw in _header(path, strip=False, head=head) if raw != raw.strip()]
    if spaced:
        raise DataValidationError(f"{path.name}: line 1: column name {spaced[0]!r} has spaces around it: remove "
                                  "them (column names are matched exactly)")
    duplicate = next((n for n in names if n in spec.column_names and names.count(n) > 1), None)
    if duplicate is not None:  # which one holds the values cannot be told; columns of the file's own may repeat
        raise DataValidationError(f"{path.name}: column '{duplicate}': appears twice in the header")
    unknown = list(dict.fromkeys(n for n in names if n not in spec.column_names))
    absent = [c for c in spec.column_names if c not in names]
    for name in unknown:
        if meant := probably_meant(name, absent):
            raise DataValidationError(f"{path.name}: column '{name}': not part of the {spec.name} schema; is "
                                      f"'{meant}' meant? (column names are matched exactly: rename it '{meant}', "
                                      f"or, if it is a column of the file's own, to a name less like it)")
    return Header(names, unknown, frozenset(c.name for c in spec.columns if c.optional and c.name not in names),
                  _first_row_has_timed_dates(head, spec, names))


def _first_row_has_timed_dates(head: bytes, spec: RawFile, names: list[str]) -> bool:
    """Whether the first data row (within ``head``, the file's ``_head``) writes one of its dates with a time of day
    (TIMED_DATE)."""
    dates = [k for k, name in enumerate(names) if name in spec.column_names and spec.column(name).type == pa.date32()]
    if not dates:
        return False
    rows = csv.reader(io.StringIO(head.decode("utf-8", errors="replace"), newline=""))
    next(rows, None)
    first = next((row for row in rows if row), [])  # past blank lines, as the reader skips them: not line 2 as such
    return any(k < len(first) and re.fullmatch(TIMED_DATE, first[k]) for k in dates)


def _convert_options(spec: RawFile, as_text: bool, header: Header) -> pacsv.ConvertOptions:
    """The schema's types (a date as a timestamp where the file writes dates with a time of day); the header's
    columns the schema lacks are left out (not even converted)."""
    types = {c.name: (pa.string() if as_text else TIMESTAMP if header.timed_dates and c.type == pa.date32()
                      else c.type) for c in spec.columns}
    return pacsv.ConvertOptions(column_types=types, true_values=TRUE_VALUES, false_values=FALSE_VALUES,
                                null_values=[""], strings_can_be_null=not as_text,
                                include_columns=[name for name in header.names if name in types])


class _TailTracking:
    """A read-only stream that remembers its last bytes, so a cut last line can be seen after parsing.

    A file cut inside its last line (say right after a comma, or inside a number) is
    still valid CSV with a plausible last row; only the missing end-of-line gives it
    away. Decompression (.gz) stays in Arrow; this only watches the bytes go by. A .gz
    is read to where its data ends (``gzip_data.data_size``): zero padding after it,
    which GNU gzip ignores, failed Arrow as 'corrupt gzip'.
    """

    KEEP = 4096

    def __init__(self, path: Path):
        size = data_size(path) if path.name.endswith(".gz") else None
        if size is not None and size < path.stat().st_size:  # mapped, not copied: the file is left as it is
            self._raw = pa.CompressedInputStream(pa.BufferReader(pa.memory_map(str(path)).read_buffer(size)), "gzip")
        else:
            self._raw = pa.input_stream(str(path), compression="detect")
        self.tail = b""
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self.tail = (self.tail + bytes(data))[-self.KEEP:]
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._raw.close()
        self.closed = True


def _check_complete_last_line(path: Path, header: list[str], tail: bytes, rows_read: int) -> None:
    """Every complete CSV file ends with an end-of-line; one that does not was cut short (``header``: the file's
    column names, in its order, its own columns too)."""
    if not _ends_inside_a_line(tail):  # \r alone: old Mac line endings, which the reader takes too
        return
    line = _file_lines(path, [rows_read - 1])[rows_read - 1]  # blank lines and values over lines before it count
    raise _truncated(path, header, tail, line)


def _truncated(path: Path, header: list[str], tail: bytes, line: int) -> TruncatedFile:
    """The error for a file whose last line, ``line``, has no end-of-line (``tail``: the file's last bytes)."""
    last = re.split(rb"\r\n|\r|\n", tail)[-1].decode("utf-8", errors="replace")
    return TruncatedFile(
        f"{path.name}: line {line}, column '{header[min(last.count(','), len(header) - 1)]}': the file "
        "ends inside this line "
        f"({last[-60:]!r}, no end-of-line after it): it looks truncated; re-copy it "
        "(if the file is complete, add a newline at its end)"
    )


def _batches(
    path: Path, spec: RawFile, header: Header, as_text: bool = False, block_size: int = BLOCK_SIZE,
    ended: list[bytes] | None = None
) -> Iterator[pa.RecordBatch]:
    """The file's batches (``as_text``: every column a string); typed, a file cut inside its last line is refused
    after its last batch; as text, the file's last bytes are appended to ``ended`` once it is read to its end."""
    stream = _TailTracking(path)
    try:
        try:
            # newlines_in_values: a quoted value may span lines (README); without it Arrow cuts its blocks at any
            # newline, and one inside quotes at a block's end stopped the read ("parser got out of sync with chunker")
            reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block_size),
                                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                    convert_options=_convert_options(spec, as_text, header))
        except pa.ArrowKeyError:  # a column the header line has as we split it but the CSV reader does not
            raise DataValidationError(f"{path.name}: line 1: the header does not read as the columns "
                                      f"{', '.join(header.names)}") from None
        except pa.ArrowInvalid as exc:
            # the header line alone with no newline after it (a spreadsheet's export of an empty sheet): Arrow
            # finds no line end and calls the file empty, but check_header has read the header: no data rows
            if "Empty CSV file" in str(exc):
                return
            raise
        names = reader.schema.names
        left_out = [c for c in spec.columns if c.name in header.left_out]
        if sorted(names + [c.name for c in left_out]) != sorted(spec.column_names):  # a quote or \r in the header
            raise DataValidationError(f"{path.name}: line 1: the header does not read as the columns "
                                      f"{', '.join(spec.column_names)} (got {', '.join(names)})")
        rows = 0
        for batch in reader:
            if header.timed_dates and not as_text:
                batch = _dates_at_midnight(path, batch, rows)
            rows += batch.num_rows
            if left_out:  # as if the column were there with every value empty
                batch = pa.RecordBatch.from_arrays(
                    [batch.column(c.name) if c.name in names else pa.nulls(batch.num_rows, pa.string() if as_text
                                                                             else c.type) for c in spec.columns],
                    names=list(spec.column_names))
            yield batch
        if not as_text:
            _check_complete_last_line(path, header.names, stream.tail, rows)
        elif ended is not None:
            ended.append(stream.tail)
    finally:
        stream.close()


def _pattern_for(column: Column) -> str | None:
    if pa.types.is_integer(column.type):
        return r"^\s*[-+]?\d+\s*$"
    if pa.types.is_floating(column.type):
        return r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?(nan|NaN|inf|Infinity)\s*$"
    if pa.types.is_boolean(column.type):
        return "^(" + "|".join(TRUE_VALUES + FALSE_VALUES) + ")$"
    return None


def _explain_conversion_failure(path: Path, spec: RawFile, header: Header, error: Exception) -> None:
    """Re-read as text to find which column and lines could not be parsed, then fail."""
    offset, ended = 0, []
    try:
        for batch, last in _with_last(_batches(path, spec, header, as_text=True, ended=ended)):
            _fail_on_repeated_header(path, spec, header, batch, offset)
            for column in spec.columns:
                values = batch.column(column.name)
                present = pc.invert(pc.equal(values, ""))
                if column.type == pa.date32():
                    bad = pc.and_(present, _not_a_date(values, header.timed_dates))
                elif (pattern := _pattern_for(column)) is not None:
                    bad = pc.and_(present, pc.invert(pc.match_substring_regex(values, pattern)))
                else:
                    continue
                rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
                if len(rows) and last and rows[0] == batch.num_rows - 1 and ended and _ends_inside_a_line(ended[0]):
                    row = offset + int(rows[0])  # the file's cut last line: a value cut short ('Tru', '2014-04-2')
                    raise _truncated(path, header.names, ended[0], _file_lines(path, [row])[row])
                if len(rows):
                    kind = "date YYYY-MM-DD" if column.type == pa.date32() else str(column.type)
                    if pa.types.is_boolean(column.type):  # 'yes', 'Y', 'x': say what is read
                        kind += (f" ({' / '.join(TRUE_VALUES)} or {' / '.join(FALSE_VALUES)}"
                                 f"{', or empty where unknown' if column.nullable else ''})")
                    shown = values.take(rows[:MAX_SHOWN]).to_pylist()
                    hint = (PADDED if _reads_unpadded(column, shown[0], header.timed_dates)
                            else value_hint(column.type, column.nullable, shown[0]))
                    fail(path, column.name, f"not a valid {kind}", rows + offset, shown, hint)
                if pa.types.is_integer(column.type):
                    _fail_on_integer_overflow(path, column, values, offset)
            offset += batch.num_rows
    except pa.ArrowInvalid as text_error:
        _explain_unreadable(path, text_error, spec.column_names)
    except (OSError, EOFError, zlib.error) as read_error:
        raise DataValidationError(f"{path.name}: cannot read: {read_error} (truncated or corrupt gzip?)") from None
    _explain_unreadable(path, error, spec.column_names)


# What a value refused only for the spaces around it is told (a padded or fixed-width export's 'False '): the reader
# takes spaces around a number or a date, not around a flag or a date with a time of day.
PADDED = "spaces around the value (a padded or fixed-width export?): remove them"


def _reads_unpadded(column: Column, value: str, timed: bool) -> bool:
    """Whether ``value`` is refused for the spaces around it only: without them it reads as the column's type."""
    text = value.strip()
    if text == value or not text:
        return False
    if column.type == pa.date32():  # a timestamp: ' 2017-08-15 00:00:00'
        return not _not_a_date(pa.array([text]), timed)[0].as_py()
    pattern = _pattern_for(column)
    return pattern is not None and re.search(pattern, text) is not None


def _with_last(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """(batch, whether it is the last) for each of ``batches``, one read ahead; an error reading the next batch is
    raised after the one before it has been yielded, so what is wrong there is found first."""
    current = next(batches, None)
    while current is not None:
        try:
            following = next(batches, None)
        except Exception as error:
            yield current, False
            raise error
        yield current, following is None
        current = following


def _ends_inside_a_line(tail: bytes) -> bool:
    """Whether a file whose last bytes are ``tail`` ends without an end-of-line (\\n, \\r\\n or \\r)."""
    return bool(tail) and not tail.endswith((b"\n", b"\r"))


def _fail_on_repeated_header(path: Path, spec: RawFile, header: Header, batch: pa.RecordBatch, offset: int) -> None:
    """Rows that are the header line again (exports joined with ``cat``, each with its header): named as that, not
    as the first column's bad value ('not a valid int64 ('id')', which sent one to the id column)."""
    repeated = None
    for column in spec.columns:
        if column.name in header.left_out:
            continue
        same = pc.equal(pc.utf8_ltrim(batch.column(column.name), characters="\ufeff"), column.name)
        repeated = same if repeated is None else pc.and_(repeated, same)
    rows = np.flatnonzero(pc.fill_null(repeated, False).to_numpy(zero_copy_only=False)) if repeated is not None else []
    if len(rows):
        fail(path, None, "the header line again, in the data (files joined together, each with its header line?): "
             "remove it", rows + offset)


def _dates_at_midnight(path: Path, batch: pa.RecordBatch, offset: int) -> pa.RecordBatch:
    """``batch`` with its timestamp columns (a file's dates written with a time of day) as dates; refused naming the
    lines where a time is not midnight."""
    columns = batch.columns
    for k, values in enumerate(columns):
        if values.type != TIMESTAMP:
            continue
        day = pc.cast(values, pa.date32())
        timed = pc.fill_null(pc.not_equal(values, pc.cast(day, TIMESTAMP)), False)
        rows = np.flatnonzero(timed.to_numpy(zero_copy_only=False))
        if len(rows):
            shown = [str(value) for value in values.take(rows[:MAX_SHOWN]).to_pylist()]
            fail(path, batch.schema.names[k], "not a date: a time of day other than midnight", rows + offset, shown,
                 "which day a time belongs to depends on the time zone it was written in, so none is guessed: "
                 "write each row's date alone, YYYY-MM-DD, the day its sales count for (dates with a time of day "
                 "are read where every one is at midnight)")
        columns[k] = day
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _not_a_date(values: pa.Array, timed: bool = False) -> pa.Array:
    """Where a text value is no YYYY-MM-DD date the CSV reader would take (null where empty); with ``timed``, no
    date the reader takes as a timestamp either (TIMED_DATE: a time of day within range; midnight is checked on
    the typed values)."""
    if timed:
        dated = pc.match_substring_regex(values, f"^{TIMED_DATE}$")
        values = pc.if_else(dated, pc.utf8_slice_codeunits(values, 0, 10), values)
    else:  # the reader takes a date with spaces around it, ' 2017-08-15 ' (a timestamp it does not)
        values = pc.utf8_trim_whitespace(values)
    parsed = pc.strptime(values, format="%Y-%m-%d", unit="s", error_is_null=True)
    # strptime also takes 2016-9-1 and 16-09-01, which Arrow's CSV reader refuses
    padded = pc.match_substring_regex(values, r"^\d{4}-\d{2}-\d{2}$")
    # ... and rolls impossible days over (2017-02-30 -> 2017-03-02): the parsed day must be the one written
    written = pc.if_else(padded, values, "2000-01-01")
    same = pc.and_(pc.equal(pc.month(parsed), pc.cast(pc.utf8_slice_codeunits(written, 5, 7), pa.int64())),
                   pc.equal(pc.day(parsed), pc.cast(pc.utf8_slice_codeunits(written, 8, 10), pa.int64())))
    return pc.or_(pc.or_(pc.is_null(parsed), pc.invert(padded)), pc.invert(pc.fill_null(same, False)))


# What a store or item number too large for its column is told: a team's own codes (an item's EAN-13 barcode,
# 7861234567890) do not fit the 32-bit ids the prepared data, the model's embeddings and the app key on.
RENUMBER = {name: (f"codes of your own (an EAN barcode?): number each {what} within that range, the same number in "
                   f"every file, and keep your code beside it in a column of your own, which is read past")
            for name, what in (("item_nbr", "item"), ("store_nbr", "store"))}


def _fail_on_integer_overflow(path: Path, column: Column, values: pa.Array, offset: int) -> None:
    """Whole numbers too large (or too negative) for the column's integer type."""
    info = np.iinfo(column.type.to_pandas_dtype())
    digits = pc.utf8_trim_whitespace(pc.if_else(pc.equal(values, ""), "0", values))
    magnitude = pc.utf8_ltrim(digits, characters="+-0")
    negative = pc.starts_with(digits, "-")
    limit = pc.if_else(negative, str(-int(info.min)), str(int(info.max)))
    length, limit_length = pc.utf8_length(magnitude), pc.utf8_length(limit)
    longer = pc.greater(length, limit_length)
    same_but_larger = pc.and_(pc.equal(length, limit_length), pc.greater(magnitude, limit))
    rows = np.flatnonzero(pc.fill_null(pc.or_(longer, same_but_larger), False).to_numpy(zero_copy_only=False))
    if len(rows):
        low = int(info.min) if column.min is None else int(column.min)
        high = int(info.max) if column.max is None else int(column.max)
        fail(path, column.name, f"whole number out of range for {column.type} (expected {low} .. {high})",
             rows + offset, values.take(rows[:MAX_SHOWN]).to_pylist(), RENUMBER.get(column.name, ""))


def _locate_wrong_field_count(path: Path, expected: int) -> None:
    """Name the first line whose field count differs from the header's (Arrow's message has no line).

    Lines end at \\n, \\r or \\r\\n, and a quoted value may span lines, as in Arrow's parser: a row is named by
    the line it starts on.
    """
    with _open_binary(path) as handle:
        row: list[str] = []  # the physical lines of the row being read, as the file has them

        def lines():
            for line in io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline=""):
                row.append(line)
                yield line

        reader, start = csv.reader(lines(), strict=True), 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                fields, found = None, f"cannot be split into fields ({exc})"
            if fields is None or (fields and len(fields) != expected):  # []: a blank line, which the reader skips
                if row and _ends_inside_a_line(row[-1].encode("utf-8")):  # the file's end: its last line cut short
                    raise _truncated(path, _header(path), "".join(row).encode("utf-8"), start)
                found = found if fields is None else f"has {len(fields)} fields"
                shown = "".join(row).rstrip("\r\n")
                raise DataValidationError(f"{path.name}: line {start}: {found}, the header has {expected} "
                                          f"({shown[:80]!r})")
            start, row[:] = reader.line_num + 1, []


def _fail_on_first_non_utf8_field(path: Path, read: tuple[str, ...]) -> None:
    """Name the first row whose bytes are not UTF-8 in a column that is read (``read``; a column of the file's own
    is never decoded, so cp1252 text there is fine), by the line it starts on, its column, and its value as
    Windows-1252 (what Excel's plain 'CSV' writes on Windows) reads it, which is most often the text meant.

    Rows are split as the CSV reader splits them: lines end at \\n, \\r or \\r\\n, a quoted value may span lines."""
    names = _header(path)
    with _open_binary(path) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
        reader, start = csv.reader(text), 1
        try:
            for fields in reader:
                for name, value in zip(names, fields):
                    if name in read and (bad := _UNDECODED.search(value)):
                        shown = value.encode("utf-8", errors="surrogateescape").decode("cp1252", errors="replace")
                        raise DataValidationError(
                            f"{path.name}: line {start}, column '{name}': not UTF-8 text (byte "
                            f"{bytes([ord(bad.group()) - 0xDC00])!r} in {shown[:SHOWN_CHARS]!r} as Windows-1252 "
                            f"reads it): {SAVE_AS_UTF8}")
                start = reader.line_num + 1
        except csv.Error:
            return  # not splittable into rows here: the caller's message still names the file


_UNDECODED = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as errors="surrogateescape" keeps it


def _explain_unreadable(path: Path, error: Exception, read: tuple[str, ...]) -> None:
    """``read``: the columns the CSV reader decodes (the schema's), so a bad byte is looked for only in them."""
    message = str(error)
    if "UTF8" in message or "UTF-8" in message or "utf-8" in message:
        try:
            _fail_on_first_non_utf8_field(path, read)
        except (OSError, EOFError, zlib.error):
            pass  # a gzip broken further on: the message below still names the file
    if "Empty CSV file" in message:
        raise DataValidationError(f"{path.name}: file is empty") from None
    if "Expected" in message and "columns" in message:
        try:
            _locate_wrong_field_count(path, len(_header(path)))
        except (OSError, EOFError, zlib.error):
            pass
        raise DataValidationError(f"{path.name}: a line has the wrong number of fields: {message}") from None
    raise DataValidationError(f"{path.name}: cannot parse: {message}") from None


def read_batches(path: Path, spec: RawFile, block_size: int = BLOCK_SIZE) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Typed batches of a raw file with their first row number; structure and values checked.

    One batch is read ahead, so a file that ends inside its last line is said as truncated before that line's
    values are checked (or a caller's checks run on it): a cut value ('Tru', an empty required field, an item number
    short of digits) was named as a bad value. Every other line's error is named as before."""
    header = check_header(path, spec)
    offset, held = 0, None
    batches = _explained_batches(path, spec, header, block_size)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except TruncatedFile:  # the file ends inside the last line of ``held``: its other rows are checked first
            if held is not None and held.num_rows > 1:
                check_values(path, spec, held.slice(0, held.num_rows - 1), offset, header.left_out)
            raise
        except DataValidationError:  # an error further on: the batch before it is checked first
            if held is not None:
                check_values(path, spec, held, offset, header.left_out)
            raise
        if held is not None:
            check_values(path, spec, held, offset, header.left_out)
            yield offset, held
            offset += held.num_rows
        held = batch
    if held is not None:
        check_values(path, spec, held, offset, header.left_out)
        yield offset, held
        offset += held.num_rows
    if offset < spec.min_rows:
        raise DataValidationError(f"{path.name}: has no data rows (header only)")


def _explained_batches(path: Path, spec: RawFile, header: Header, block_size: int) -> Iterator[pa.RecordBatch]:
    """``_batches``' typed batches; a failure of Arrow's reader raised as the DataValidationError naming its line."""
    iterator = _batches(path, spec, header, block_size=block_size)
    rows = 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            if "conversion error" in str(exc) and "UTF8" not in str(exc):
                _explain_conversion_failure(path, spec, header, exc)
            _explain_unreadable(path, exc, spec.column_names)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataValidationError(f"{path.name}: cannot read after row {rows}: {exc} "
                                      "(truncated or corrupt gzip?)") from None
        rows += batch.num_rows
        yield batch


def check_values(path: Path, spec: RawFile, batch: pa.RecordBatch, offset: int,
                 left_out: frozenset[str] = frozenset()) -> None:
    """Nulls, ranges, allowed values and date bounds of one batch (``left_out``: columns the file has not)."""
    _fail_on_empty_rows(path, spec, batch, offset, left_out)
    for column in spec.columns:
        if column.name in left_out:
            continue
        values = batch.column(column.name)
        if not column.nullable and values.null_count:
            rows = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
            fail(path, column.name, "empty value where one is required", rows + offset)
        if pa.types.is_string(column.type) and not column.nullable:
            empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(values), ""), False)
            if pc.any(empty).as_py():
                fail(path, column.name, "empty value where one is required",
                     np.flatnonzero(empty.to_numpy(zero_copy_only=False)) + offset)
        if pa.types.is_floating(column.type):
            finite = pc.fill_null(pc.is_finite(values), True)
            if not pc.all(finite).as_py():
                rows = np.flatnonzero(~finite.to_numpy(zero_copy_only=False))
                fail(path, column.name, "not a finite number", rows + offset, values.take(rows[:MAX_SHOWN]).to_pylist())
        for outside, expected in _bounds(column, values, spec.earliest_date):
            outside = pc.fill_null(outside, False)
            if pc.any(outside).as_py():
                rows = np.flatnonzero(outside.to_numpy(zero_copy_only=False))
                fail(path, column.name, f"value out of range (expected {expected})", rows + offset,
                     values.take(rows[:MAX_SHOWN]).to_pylist())


def _fail_on_empty_rows(path: Path, spec: RawFile, batch: pa.RecordBatch, offset: int,
                        left_out: frozenset[str]) -> None:
    """Rows with every field empty, as a spreadsheet exports rows once formatted (``,,,,,``), are said as such: they
    were the first column's 'empty value where one is required' (train.csv's with the hint to drop its id column)."""
    empty = None
    for column in spec.columns:
        if column.name not in left_out:
            missing = batch.column(column.name).is_null()
            empty = missing if empty is None else pc.and_(empty, missing)
    if empty is not None and pc.any(empty).as_py():
        fail(path, None, "a row with every field empty (a spreadsheet's empty rows, such as ',,,,,'?): delete those "
             "lines", np.flatnonzero(empty.to_numpy(zero_copy_only=False)) + offset)


def _number(value: float, column: Column) -> str:
    return str(int(value)) if pa.types.is_integer(column.type) else f"{value:g}"


def _bounds(column: Column, values: pa.Array, earliest_date: str) -> list[tuple[pa.Array, str]]:
    """(mask of values outside, what was expected) for each limit the column has (a date's: from the file's
    ``earliest_date``)."""
    if column.type == pa.date32():
        low, high = (pa.scalar(dt.date.fromisoformat(day), pa.date32()) for day in (earliest_date, LATEST_DATE))
        return [(pc.or_(pc.less(values, low), pc.greater(values, high)),
                 f"a date within [{earliest_date}, {LATEST_DATE}]")]
    if column.allowed is not None:
        outside = pc.invert(pc.is_in(values, value_set=pa.array(column.allowed)))
        return [(outside, f"one of {', '.join(column.allowed)}")]
    low = pa.scalar(column.min).cast(column.type) if column.min is not None else None
    high = pa.scalar(column.max).cast(column.type) if column.max is not None else None
    if low is not None and high is not None:
        return [(pc.or_(pc.less(values, low), pc.greater(values, high)),
                 f"within [{_number(column.min, column)}, {_number(column.max, column)}]")]
    if low is not None:
        return [(pc.less(values, low), f">= {_number(column.min, column)}")]
    if high is not None:
        return [(pc.greater(values, high), f"<= {_number(column.max, column)}")]
    return []


def check_references(path: Path, batch: pa.RecordBatch, offset: int, column: str, known: pa.Array, target: str) -> None:
    """Every value of ``column`` must exist in ``known`` (a column of another file)."""
    missing = pc.invert(pc.is_in(batch.column(column), value_set=known))
    if pc.any(missing).as_py():
        rows = np.flatnonzero(missing.to_numpy(zero_copy_only=False))
        fail(path, column, f"value not found in {target}", rows + offset,
             batch.column(column).take(rows[:MAX_SHOWN]).to_pylist())


def check_unique(path: Path, frame: pd.DataFrame, key: tuple[str, ...], row_numbers: np.ndarray | None = None) -> None:
    """No two rows share a key; ``row_numbers`` maps frame rows to file rows when not 0..n-1."""
    duplicated = frame.duplicated(list(key), keep=False).to_numpy()
    if duplicated.any():
        rows = np.flatnonzero(duplicated)
        numbers = rows if row_numbers is None else np.asarray(row_numbers)[rows]
        sample = frame.iloc[rows[:MAX_SHOWN]][list(key)].astype(str).agg("/".join, axis=1).tolist()
        fail(path, "+".join(key), "duplicate key", numbers, sample)


def read_small(raw_dir: Path, name: str, references: dict[str, pa.Array] | None = None,
               optional: bool = False) -> pd.DataFrame:
    """A whole small raw file, validated (types, values, key, references), as a DataFrame.

    With ``optional``, an absent file reads as no rows (the typed, empty frame).
    """
    spec = RAW_SCHEMAS[name]
    path = find_raw_file(raw_dir, name) if optional else require_raw_file(raw_dir, name)
    batches = []
    if path is not None:
        for offset, batch in read_batches(path, spec):
            for column, (target, _) in spec.references.items():
                if references and target in references:
                    check_references(path, batch, offset, column, references[target], f"{target}")
            batches.append(batch)
    if batches:
        table = pa.Table.from_batches(batches, schema=batches[0].schema).select(list(spec.column_names))
    else:
        table = pa.schema([pa.field(c.name, c.type) for c in spec.columns]).empty_table()
    frame = table.to_pandas()
    if spec.key and len(frame):
        check_unique(path, frame, spec.key)
    for column in spec.columns:
        if column.type == pa.date32():
            frame[column.name] = pd.to_datetime(frame[column.name])
    return frame
