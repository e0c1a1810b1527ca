"""The CSV/Parquet helpers stages share (atomic writes live in pipeline/atomic.py, re-exported here)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.atomic import atomic_directory, atomic_file  # noqa: F401  (stages import them from here)

PARQUET_COMPRESSION = "zstd"

# data/split/train.parquet's schema metadata: the last day it covers (ISO date), the day before the validation
# window, which has rows only if it was a sales day. A chain closed on Sundays whose window starts on a Monday has
# training rows to the Saturday; the training history still ends on the Sunday, so the model's forecast window
# (its origin + 1 .. + horizon) is the validation window, not one day short of it.
TRAIN_LAST_DAY_KEY = b"shelfcast.last_day"


class _ReproducibleGzip(gzip.GzipFile):
    """gzip with no file name and time in its header: the same bytes give the same file, run after run."""

    def __init__(self, path: Path, level: int):
        self._raw = open(path, "wb")
        try:
            super().__init__(filename="", mode="wb", compresslevel=level, fileobj=self._raw, mtime=0)
        except BaseException:
            self._raw.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def open_csv_sink(path: Path, compression: str, level: int = 1):
    """A binary sink for CSV bytes: plain, or gzip (fast level: the raw files are big).

    Seeded synthetic data hash the same on every run, so DVC sees an unchanged output.
    """
    if compression == "gzip":
        return _ReproducibleGzip(path, level)
    if compression == "none":
        return open(path, "wb")
    raise ValueError(f"compression: expected gzip or none, got {compression!r}")


def kaggle_bool_strings(values: pa.Array) -> pa.Array:
    """Booleans as Kaggle writes them: True / False, and an empty field for null."""
    import pyarrow.compute as pc

    return pc.if_else(values, pa.scalar("True"), pa.scalar("False"))


class CsvTableWriter:
    """Streams Arrow tables to one CSV file in Kaggle's layout (bare header once, no quoting)."""

    def __init__(self, sink, schema: pa.Schema):
        sink.write((",".join(schema.names) + "\n").encode("utf-8"))
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        self._writer = pacsv.CSVWriter(sink, schema, write_options=options)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()


def write_csv(table: pa.Table, path: Path, compression: str = "none") -> None:
    """Write one whole table as CSV, atomically."""
    with atomic_file(path) as tmp, open_csv_sink(tmp, compression) as sink:
        writer = CsvTableWriter(sink, table.schema)
        writer.write(table)
        writer.close()


def write_frame_csv(frame, path: Path, compression: str = "none") -> None:
    """Write a small table as CSV the way Kaggle's files are: quotes only where needed."""
    with atomic_file(path) as tmp, open_csv_sink(tmp, compression) as sink:
        sink.write(frame.to_csv(index=False, lineterminator="\n", date_format="%Y-%m-%d").encode("utf-8"))


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write one whole table as Parquet, atomically."""
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression=PARQUET_COMPRESSION)


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer for data written in row groups (the caller makes it atomic)."""
    return pq.ParquetWriter(path, schema, compression=PARQUET_COMPRESSION)


def close_writers(writers: Iterable[pq.ParquetWriter]) -> None:
    """Close every writer, even after one fails, and raise the first failure.

    On a full disk a writer's close fails (its footer cannot be written) and pyarrow leaves it marked open, so its
    finalizer closes it again at exit: a second error printed as a traceback after the stage's own, and at times an
    aborted interpreter (exit 134). A failed writer is marked closed here: the stage's one error is the only one.
    """
    first: BaseException | None = None
    for writer in list(writers):
        try:
            writer.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other writers are closed
            writer.is_open = False
            first = first if first is not None else exc
    if first is not None:
        raise first
