"""Actual sales that live accuracy is judged on (`make drift --actuals`, `release decide --actuals`): a CSV with the
columns store_nbr, item_nbr, date, unit_sales — Favorita's train.csv works, gzipped (train.csv.gz) or not."""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import gzip
import io
import math
from pathlib import Path

ACTUALS_COLUMNS = ("store_nbr", "item_nbr", "date", "unit_sales")
GZIP_MAGIC = b"\x1f\x8b"


class ActualsError(ValueError):
    """An actual-sales file that cannot be used; names the file, line and column."""


def read_actuals(path: Path | str) -> dict[tuple[int, int, str], float]:
    """(store_nbr, item_nbr, ISO date) -> unit_sales; a return (negative units) sold nothing that day, as evaluate
    counts it. The keys are what prediction events carry in ``inputs``. A store x item with no row on a day the file
    has sales for, on or after its first row in the file, sold nothing (0.0), as prepare's grid and so evaluate
    count it (README "What an absent day means"): without them every zero-sales day was left unscored."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            packed = raw.read(2) == GZIP_MAGIC
    except OSError as exc:
        raise ActualsError(f"{path}: {exc.strerror or exc}") from None
    actual: dict[tuple[int, int, str], float] = {}
    try:
        with (gzip.open(path, "rb") if packed else open(path, "rb")) as binary:
            handle = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")  # a spreadsheet's BOM, if any
            reader = csv.DictReader(handle)
            missing = [c for c in ACTUALS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ActualsError(f"{path}: missing column(s) {', '.join(missing)} "
                                   f"(needs {', '.join(ACTUALS_COLUMNS)})")
            for number, row in enumerate(reader, start=2):
                try:
                    units = float(row["unit_sales"])
                    key = (int(row["store_nbr"]), int(row["item_nbr"]),
                           dt.date.fromisoformat(row["date"].strip()).isoformat())
                except (TypeError, ValueError, AttributeError) as exc:
                    raise ActualsError(f"{path}: line {number}: {exc}") from None
                if not math.isfinite(units):
                    raise ActualsError(f"{path}: line {number}: unit_sales must be a finite number, "
                                       f"got {row['unit_sales']!r}")
                actual[key] = max(units, 0.0)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, OSError, csv.Error) as exc:
        raise ActualsError(f"{path}: not a readable CSV{' (gzip)' if packed else ''}: {exc}") from None
    return zero_filled(actual)


def zero_filled(sold: dict[tuple[int, int, str], float]) -> dict[tuple[int, int, str], float]:
    """`sold` with 0.0 for every store x item on each day of the file (a day with a row in any store) from its first
    row on: the days it has no row, which in Kaggle's layout it sold nothing (prepare.grid: from_first_sale)."""
    days = sorted({date for _, _, date in sold})
    first: dict[tuple[int, int], str] = {}
    for store, item, date in sold:
        if date < first.get((store, item), "9999"):
            first[(store, item)] = date
    filled = dict(sold)
    for (store, item), start in first.items():
        for date in days[bisect.bisect_left(days, start):]:
            filled.setdefault((store, item, date), 0.0)
    return filled
