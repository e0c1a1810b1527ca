"""Reading the raw Favorita files against their schema, with errors that point at the data.

Every violation raises ``DataValidationError`` naming the file, the column and
the first offending lines (line 1 is the header), so a user can open the file
and see the problem. Small files are read whole; train/test are streamed in
blocks so the full ~5 GB train.csv never sits in memory.
"""

from __future__ import annotations

import datetime as dt
import gzip
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.schema import EARLIEST_DATE, LATEST_DATE, RAW_SCHEMAS, RAW_SUFFIXES, Column, RawFile

BLOCK_SIZE = 64 << 20
MAX_SHOWN = 5
TRUE_VALUES = ["True", "true", "TRUE", "1"]
FALSE_VALUES = ["False", "false", "FALSE", "0"]


class DataValidationError(ValueError):
    """A raw file that breaks the schema; the message names file, column and lines."""


def _lines(rows: np.ndarray, values=None) -> str:
    shown = []
    for k, row in enumerate(rows[:MAX_SHOWN]):
        text = f"line {int(row) + 2}"
        if values is not None:
            text += f" ({values[k]!r})"
        shown.append(text)
    more = f" and {len(rows) - MAX_SHOWN} more" if len(rows) > MAX_SHOWN else ""
    return ", ".join(shown) + more


def fail(path: Path, column: str | None, problem: str, rows: np.ndarray | None = None, values=None) -> None:
    where = f"{path.name}: column '{column}'" if column else path.name
    detail = f"; first offending: {_lines(np.asarray(rows), values)}" if rows is not None and len(rows) else ""
    raise DataValidationError(f"{where}: {problem}{detail}")


def find_raw_file(raw_dir: Path, name: str) -> Path | None:
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


def _header(path: Path) -> list[str]:
    try:
        with _open_binary(path) as handle:
            first = handle.readline()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataValidationError(f"{path.name}: cannot read: {exc} (corrupt or truncated gzip?)") from None
    if not first.strip():
        raise DataValidationError(f"{path.name}: file is empty (no header line)")
    try:
        text = first.decode("utf-8").lstrip("\ufeff").strip()
    except UnicodeDecodeError:
        raise DataValidationError(f"{path.name}: header (line 1) is not UTF-8 text") from None
    return [name.strip().strip('"') for name in text.split(",")]


def _check_header(path: Path, spec: RawFile) -> None:
    names = _header(path)
    missing = [c for c in spec.column_names if c not in names]
    if missing:
        raise DataValidationError(f"{path.name}: column '{missing[0]}': missing (header has: {', '.join(names)})")
    unknown = [c for c in names if c not in spec.column_names]
    if unknown:
        raise DataValidationError(f"{path.name}: column '{unknown[0]}': not part of the {spec.name} schema")
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DataValidationError(f"{path.name}: column '{duplicate}': appears twice in the header")


def _convert_options(spec: RawFile, as_text: bool = False) -> pacsv.ConvertOptions:
    types = {c.name: (pa.string() if as_text else c.type) for c in spec.columns}
    return pacsv.ConvertOptions(column_types=types, true_values=TRUE_VALUES, false_values=FALSE_VALUES,
                                null_values=[""], strings_can_be_null=not as_text)


def _batches(path: Path, spec: RawFile, as_text: bool = False, block_size: int = BLOCK_SIZE) -> Iterator[pa.RecordBatch]:
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block_size),
                            convert_options=_convert_options(spec, as_text))
    yield from reader


def _pattern_for(column: Column) -> str | None:
    if pa.types.is_integer(column.type):
        return r"^\s*[-+]?\d+\s*$"
    if pa.types.is_floating(column.type):
        return r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?(nan|NaN|inf|Infinity)\s*$"
    if pa.types.is_boolean(column.type):
        return "^(" + "|".join(TRUE_VALUES + FALSE_VALUES) + ")$"
    return None


def _explain_conversion_failure(path: Path, spec: RawFile, error: Exception) -> None:
    """Re-read as text to find which column and lines could not be parsed, then fail."""
    offset = 0
    try:
        for batch in _batches(path, spec, as_text=True):
            for column in spec.columns:
                values = batch.column(column.name)
                present = pc.invert(pc.equal(values, ""))
                if column.type == pa.date32():
                    parsed = pc.strptime(values, format="%Y-%m-%d", unit="s", error_is_null=True)
                    bad = pc.and_(present, pc.is_null(parsed))
                elif (pattern := _pattern_for(column)) is not None:
                    bad = pc.and_(present, pc.invert(pc.match_substring_regex(values, pattern)))
                else:
                    continue
                rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
                if len(rows):
                    kind = "date YYYY-MM-DD" if column.type == pa.date32() else str(column.type)
                    fail(path, column.name, f"not a valid {kind}", rows + offset, values.take(rows[:MAX_SHOWN]).to_pylist())
            offset += batch.num_rows
    except pa.ArrowInvalid as text_error:
        _explain_unreadable(path, text_error)
    _explain_unreadable(path, error)


def _explain_unreadable(path: Path, error: Exception) -> None:
    message = str(error)
    if "UTF8" in message or "UTF-8" in message or "utf-8" in message:
        with _open_binary(path) as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataValidationError(
                        f"{path.name}: line {number}: not UTF-8 text (byte {line[exc.start:exc.start + 1]!r} at "
                        f"position {exc.start})"
                    ) from None
    if "Empty CSV file" in message:
        raise DataValidationError(f"{path.name}: file is empty") from None
    if "Expected" in message and "columns" in message:
        raise DataValidationError(f"{path.name}: a line has the wrong number of fields: {message}") from None
    raise DataValidationError(f"{path.name}: cannot parse: {message}") from None


def read_batches(path: Path, spec: RawFile, block_size: int = BLOCK_SIZE) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Typed batches of a raw file with their first row number; structure and values checked."""
    _check_header(path, spec)
    offset = 0
    iterator = _batches(path, spec, block_size=block_size)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            if "conversion error" in str(exc) and "UTF8" not in str(exc):
                _explain_conversion_failure(path, spec, exc)
            _explain_unreadable(path, exc)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataValidationError(f"{path.name}: cannot read after row {offset}: {exc} "
                                      "(truncated or corrupt gzip?)") from None
        check_values(path, spec, batch, offset)
        yield offset, batch
        offset += batch.num_rows
    if offset < spec.min_rows:
        raise DataValidationError(f"{path.name}: has no data rows (header only)")


def check_values(path: Path, spec: RawFile, batch: pa.RecordBatch, offset: int) -> None:
    """Nulls, ranges, allowed values and date bounds of one batch."""
    for column in spec.columns:
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
        bounds = []
        if column.min is not None:
            bounds.append(pc.less(values, pa.scalar(column.min).cast(column.type)))
        if column.max is not None:
            bounds.append(pc.greater(values, pa.scalar(column.max).cast(column.type)))
        if column.type == pa.date32():
            bounds.append(pc.less(values, pa.scalar(dt.date.fromisoformat(EARLIEST_DATE), pa.date32())))
            bounds.append(pc.greater(values, pa.scalar(dt.date.fromisoformat(LATEST_DATE), pa.date32())))
        if column.allowed is not None:
            bounds.append(pc.invert(pc.is_in(values, value_set=pa.array(column.allowed))))
        for outside in bounds:
            outside = pc.fill_null(outside, False)
            if pc.any(outside).as_py():
                rows = np.flatnonzero(outside.to_numpy(zero_copy_only=False))
                allowed = (f"one of {', '.join(column.allowed)}" if column.allowed is not None
                           else f"within [{column.min if column.min is not None else EARLIEST_DATE}, "
                                f"{column.max if column.max is not None else LATEST_DATE}]")
                fail(path, column.name, f"value out of range (expected {allowed})", rows + offset,
                     values.take(rows[:MAX_SHOWN]).to_pylist())


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


def read_small(raw_dir: Path, name: str, references: dict[str, pa.Array] | None = None) -> pd.DataFrame:
    """A whole small raw file, validated (types, values, key, references), as a DataFrame."""
    spec = RAW_SCHEMAS[name]
    path = require_raw_file(raw_dir, name)
    batches = []
    for offset, batch in read_batches(path, spec):
        for column, (target, _) in spec.references.items():
            if references and target in references:
                check_references(path, batch, offset, column, references[target], f"{target}")
        batches.append(batch)
    table = pa.Table.from_batches(batches, schema=batches[0].schema) if batches else None
    if table is None:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in spec.column_names})
    else:
        frame = table.select(list(spec.column_names)).to_pandas()
    if spec.key and len(frame):
        check_unique(path, frame, spec.key)
    for column in spec.columns:
        if column.type == pa.date32() and len(frame):
            frame[column.name] = pd.to_datetime(frame[column.name])
    return frame

