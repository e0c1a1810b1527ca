"""Stage ``split``: time-based train / validation split of the prepared sales.

The last ``split.validation_days`` days of the prepared data are validation
(the competition's 16-day horizon by default); every earlier day is training.
Rows are rows of the prepared grid, each carrying only facts of its own day,
so nothing dated in the validation window can reach the training file. The
sales are streamed row group by row group, so full scale fits in memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.io import atomic_directory, parquet_writer
from pipeline.params import SplitParams, split_params
from pipeline.stage import StageError, run_stage, stage_params

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


def split(sales_path: Path, out_dir: Path, params: SplitParams, progress: bool = True) -> str:
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
        writers = {name: parquet_writer(staging / f"{name}.parquet", sales.schema_arrow) for name in counts}
        try:
            for group in tqdm(range(sales.num_row_groups), desc="split: row groups", unit="group",
                              disable=not progress):
                table = sales.read_row_group(group)
                in_validation = pc.greater_equal(table.column("date"), cutoff_scalar)
                for name, mask in (("validation", in_validation), ("train", pc.invert(in_validation))):
                    part = table.filter(mask)
                    if part.num_rows:
                        writers[name].write_table(part)
                        counts[name] += part.num_rows
        finally:
            for writer in writers.values():
                writer.close()
    return (f"train {counts['train']:,} rows ({first_day} .. {cutoff - 1}), validation {counts['validation']:,} rows "
            f"({cutoff} .. {last_day}) in {out_dir}")


def _main(args: argparse.Namespace) -> str:
    return split(args.root / SALES_PATH, args.root / SPLIT_DIR, split_params(stage_params(args)),
                 progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    return run_stage("split", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
