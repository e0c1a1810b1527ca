"""Actual sales that live accuracy is judged on (`make drift --actuals`, `release decide --actuals`): a CSV with the
columns store_nbr, item_nbr, date, unit_sales — Favorita's train.csv works, gzipped (train.csv.gz) or not."""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import gzip
import io
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

ACTUALS_COLUMNS = ("store_nbr", "item_nbr", "date", "unit_sales")
GZIP_MAGIC = b"\x1f\x8b"


class ActualsError(ValueError):
    """An actual-sales file that cannot be used; names the file, line and column."""


def read_actuals(path: Path | str) -> SoldUnits:
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
    return SoldUnits(actual)


class SoldUnits(Mapping):
    """(store_nbr, item_nbr, ISO date) -> units sold: the file's rows, and 0.0 for a store x item on each day of the
    file (a day with a row in any store) from its first row on that has no row of its own: in Kaggle's layout it
    sold nothing (prepare.grid: from_first_sale). Those zeros are looked up, not stored: a year of one store's
    sales already holds more zero days than rows."""

    def __init__(self, sold: dict[tuple[int, int, str], float]):
        self._sold = sold
        self._days = sorted({date for _, _, date in sold})
        self._is_day = frozenset(self._days)
        self._first: dict[tuple[int, int], str] = {}
        for store, item, date in sold:
            if date < self._first.get((store, item), "9999"):
                self._first[(store, item)] = date

    def __getitem__(self, key: tuple[int, int, str]) -> float:
        units = self._sold.get(key)
        if units is not None:
            return units
        store, item, date = key
        first = self._first.get((store, item))
        if first is None or date not in self._is_day or date < first:  # a day of the file, on or after the first
            raise KeyError(key)
        return 0.0

    def __iter__(self) -> Iterator[tuple[int, int, str]]:
        for (store, item), first in self._first.items():
            for date in self._days[bisect.bisect_left(self._days, first):]:
                yield store, item, date

    def __len__(self) -> int:
        return sum(len(self._days) - bisect.bisect_left(self._days, first) for first in self._first.values())
