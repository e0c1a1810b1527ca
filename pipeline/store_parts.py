"""The parts cluster tasks write for one store, and the row groups that hold one store.

A stage's outputs stay single Parquet files (every reader opens
``data/prepared/sales.parquet`` and ``data/split/{train,validation}.parquet`` as
one file). On a Dask cluster the per-store work runs on the workers, each task
writing its store's rows as a *part*: an Arrow IPC file in the stage's staging
directory, one record batch per future Parquet write, under a temporary name
renamed when complete (a task Dask reruns after a worker died rewrites it). The
stage process then appends the parts, in store order, batch by batch, to its
Parquet writer: the same write calls as in one process, so the same bytes.

Row groups never span stores: prepare writes each store's grid as row groups of
its own, and split filters row group by row group. ``row_groups_by_store`` reads
which row groups hold a store from the footer's statistics, so a worker reads
one store of a file without scanning the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.atomic import atomic_file

STORE_COLUMN = "store_nbr"


def row_groups_by_store(parquet: pq.ParquetFile) -> dict[int, list[int]]:
    """{store_nbr: its row groups, in file order}, from the footer (no data read)."""
    column = parquet.schema_arrow.get_field_index(STORE_COLUMN)
    groups: dict[int, list[int]] = {}
    for group in range(parquet.num_row_groups):
        stats = parquet.metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            values = parquet.read_row_group(group, columns=[STORE_COLUMN]).column(0)
            low, high = pc.min(values).as_py(), pc.max(values).as_py()
        else:
            low, high = stats.min, stats.max
        if low != high:
            raise ValueError(f"row group {group} holds stores {low}..{high}: expected one store per row group")
        groups.setdefault(int(low), []).append(group)
    return groups


def write_part(path: Path | str, tables: Iterable[pa.Table], schema: pa.Schema) -> int:
    """An IPC part with one record batch per non-empty table (each becomes one Parquet write); returns its rows."""
    rows = 0
    with atomic_file(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for table in tables:
            if table.num_rows:
                writer.write_batch(table.combine_chunks().to_batches()[0])
                rows += table.num_rows
    return rows


def append_part(path: Path | str, writer: pq.ParquetWriter, row_group_size: int | None = None) -> int:
    """Write each batch of a part to ``writer`` as the stage process would have; returns the rows."""
    rows = 0
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for k in range(reader.num_record_batches):
            batch = reader.get_batch(k)
            writer.write_table(pa.Table.from_batches([batch]), row_group_size=row_group_size)
            rows += batch.num_rows
    return rows
