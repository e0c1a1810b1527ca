"""Stage ``split``: time-based train / validation split of the prepared sales.

The last ``split.validation_days`` days of the prepared data are validation
(the competition's 16-day horizon by default); every earlier day is training.
Rows are rows of the prepared grid, each carrying only facts of its own day,
so nothing dated in the validation window can reach the training file. The
sales are streamed row group by row group, so full scale fits in memory.

On a Dask cluster (``pipeline.cluster``) each store's row groups are read and
divided by a task on a worker, which leaves its two parts in the staging
directory (``pipeline.store_parts``); this process appends them in order, with
the same write calls: the same bytes as in one process.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.cluster import ClusterError, dask_client, run_tasks, scheduler_address
from pipeline.io import TRAIN_LAST_DAY_KEY, atomic_directory, close_writers, parquet_writer
from pipeline.params import SplitParams, split_params
from pipeline.stage import StageError, bar_options, run_stage, stage_params
from pipeline.store_parts import append_part, row_groups_by_store, write_part

SALES_PATH = Path("data/prepared/sales.parquet")
SPLIT_DIR = Path("data/split")


def date_bounds(sales: pq.ParquetFile) -> tuple[np.datetime64, np.datetime64]:
    """First and last date, from the row-group statistics (no data read)."""
    index = sales.schema_arrow.get_field_index("date")
    lows, highs = [], []
    for group in range(sales.num_row_groups):
        stats = sales.metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            column = sales.read_row_group(group, columns=["date"]).column(0)
            lows.append(pc.min(column).as_py())
            highs.append(pc.max(column).as_py())
        else:
            lows.append(stats.min)
            highs.append(stats.max)
    return np.datetime64(min(lows), "D"), np.datetime64(max(highs), "D")


def first_validation_day(last_day: np.datetime64, validation_days: int) -> np.datetime64:
    return last_day - (validation_days - 1)


SPLITS = ("validation", "train")  # the order each row group's parts are written in


def _divide(table: pa.Table, cutoff: pa.Scalar) -> dict[str, pa.Table]:
    in_validation = pc.greater_equal(table.column("date"), cutoff)
    return {"validation": table.filter(in_validation), "train": table.filter(pc.invert(in_validation))}


@dataclass(frozen=True)
class StoreSplitTask:
    """One store's row groups of sales.parquet, and where its train and validation parts go."""

    store: int
    sales: str
    row_groups: tuple[int, ...]
    parts: tuple[str, str]  # in SPLITS order

    def __repr__(self) -> str:
        return f"store partition store_nbr={self.store} (row groups {self.row_groups[0]}..{self.row_groups[-1]} " \
               f"of {self.sales})"


def split_store(task: StoreSplitTask, cutoff_ns: int) -> dict[str, int]:
    """Task (on a Dask worker): divide one store's row groups; writes its two parts, returns their rows.

    Idempotent: each part is written under a temporary name and renamed when complete.
    """
    sales = pq.ParquetFile(task.sales)
    cutoff = pa.scalar(np.datetime64(cutoff_ns, "ns"), type=sales.schema_arrow.field("date").type)
    divided = [_divide(sales.read_row_group(group), cutoff) for group in task.row_groups]
    return {name: write_part(path, (parts[name] for parts in divided), sales.schema_arrow)
            for name, path in zip(SPLITS, task.parts)}


def _split_on_cluster(client, sales_path: Path, sales: pq.ParquetFile, cutoff: np.datetime64, staging: Path,
                      writers: dict[str, pq.ParquetWriter], progress: bool) -> dict[str, int]:
    """One task per store on the cluster's workers, then their parts appended to ``writers`` in row-group order."""
    sales_path = sales_path.resolve()  # absolute: a worker's directory is its own
    parts_dir = staging.resolve() / ".by_store"  # removed whole at the end, with anything a dead worker left
    parts_dir.mkdir()
    try:
        by_store = row_groups_by_store(sales)
    except ValueError as exc:
        raise StageError(f"{sales_path}: {exc} (rerun the prepare stage)") from None
    tasks = [StoreSplitTask(store, str(sales_path), tuple(groups),
                            tuple(str(parts_dir / f"{name}-store={store}.arrow") for name in SPLITS))
             for store, groups in by_store.items()]
    in_task_order = [group for task in tasks for group in task.row_groups]
    if in_task_order != sorted(in_task_order):
        raise StageError(f"{sales_path}: a store's row groups are not contiguous (rerun the prepare stage)")
    run_tasks(split_store, tasks, client=client, desc="split: stores", progress=progress,
              cutoff_ns=int(np.datetime64(cutoff, "ns").astype(np.int64)))
    counts = dict.fromkeys(SPLITS, 0)
    for task in tqdm(tasks, desc="split: assemble", unit="store", **bar_options(progress)):
        for name, path in zip(SPLITS, task.parts):  # each file gets its writes in row-group order, as in one process
            counts[name] += append_part(path, writers[name])
            Path(path).unlink()
    shutil.rmtree(parts_dir)
    return counts


def split(sales_path: Path, out_dir: Path, params: SplitParams, progress: bool = True, client=None) -> str:
    """Divide ``sales_path`` into train and validation; by store on the cluster's workers when ``client`` is given."""
    if not Path(sales_path).exists():
        raise StageError(f"{sales_path}: not found (run the prepare stage first)")
    sales = pq.ParquetFile(sales_path)
    if sales.metadata.num_rows == 0:
        raise StageError(f"{sales_path}: has no rows")
    first_day, last_day = date_bounds(sales)
    cutoff = first_validation_day(last_day, params.validation_days)
    if cutoff <= first_day:
        raise StageError(
            f"split.validation_days: {params.validation_days} days leave no training days "
            f"(data covers {first_day} .. {last_day})"
        )
    cutoff_scalar = pa.scalar(np.datetime64(cutoff, "ns"), type=sales.schema_arrow.field("date").type)
    counts = {"train": 0, "validation": 0}
    with atomic_directory(out_dir) as staging:
        declared = {"train": {TRAIN_LAST_DAY_KEY: str(cutoff - 1).encode()}, "validation": {}}
        writers = {name: parquet_writer(staging / f"{name}.parquet", sales.schema_arrow.with_metadata(
            {**(sales.schema_arrow.metadata or {}), **declared[name]})) for name in counts}
        try:
            if client is not None:
                counts = _split_on_cluster(client, Path(sales_path), sales, cutoff, staging, writers, progress)
            else:
                for group in tqdm(range(sales.num_row_groups), desc="split: row groups", unit="group",
                                  **bar_options(progress)):
                    for name, part in _divide(sales.read_row_group(group), cutoff_scalar).items():
                        if part.num_rows:
                            writers[name].write_table(part)
                            counts[name] += part.num_rows
        finally:
            close_writers(writers.values())
    return (f"train {counts['train']:,} rows ({first_day} .. {cutoff - 1}), validation {counts['validation']:,} rows "
            f"({cutoff} .. {last_day}) in {out_dir}")


def _main(args: argparse.Namespace) -> str:
    raw_params = stage_params(args)
    with dask_client(scheduler_address(raw_params)) as client:
        return split(args.root / SALES_PATH, args.root / SPLIT_DIR, split_params(raw_params),
                     progress=not args.quiet, client=client)


def main(argv: list[str] | None = None) -> int:
    return run_stage("split", _main, argv, errors=(ClusterError,))


if __name__ == "__main__":
    raise SystemExit(main())
