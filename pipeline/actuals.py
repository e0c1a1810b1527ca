"""Actual sales that live accuracy is judged on (`make drift --actuals`, `release decide --actuals`): a CSV with the
columns store_nbr, item_nbr, date, unit_sales — Favorita's train.csv works, gzipped (train.csv.gz) or not, at its
full size (125 M rows: 16 bytes a row in memory)."""

from __future__ import annotations

import datetime as dt
import math
import numbers
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

EPOCH = dt.date(1970, 1, 1)  # Arrow's date32 counts days from here
DAY_BITS = 16  # a date32 day of 2000…2099 (schema.EARLIEST_DATE…LATEST_DATE) is < 2**16
ITEM_BITS = 31  # item_nbr: 1 … 2**31 - 1; store_nbr: 1 … 32,767 (15 bits): a key is 62 bits
STORE_BITS = 63 - ITEM_BITS - DAY_BITS  # what a code has room for (the file's own range is checked on reading)
RECENT_DAYS = 7  # a store without rows on one of the file's last days: late rows, perhaps (said in a warning)
CHUNK_ROWS = 1 << 23  # 64 MB of int64: above glibc's largest mmap threshold (32 MB), so a mapping of its own


class ActualsError(ValueError):
    """An actual-sales file that cannot be used; names the file, line and column."""


def sold_codes(stores: np.ndarray, items: np.ndarray, days: np.ndarray) -> np.ndarray:
    """One int64 per (store, item, date32 day), ordered as (store, item, day): sorting the codes sorts the rows."""
    return ((stores.astype(np.int64) << (ITEM_BITS + DAY_BITS)) | (items.astype(np.int64) << DAY_BITS)
            | days.astype(np.int64))


def read_actuals(path: Path | str) -> SoldUnits:
    """(store_nbr, item_nbr, ISO date) -> unit_sales; a return (negative units) sold nothing that day, as evaluate
    counts it. The keys are what prediction events carry in ``inputs``. A store x item with no row on a day the file
    has sales for, on or after its first row in the file, sold nothing (0.0), as prepare's grid and so evaluate
    count it (README "What an absent day means"): without them every zero-sales day was left unscored.

    The file is read, and checked, as prepare reads train.csv (pipeline/validate.py: an error names the line and
    column); two rows of one store, item and day are refused, as prepare refuses them."""
    # Imported here: the serving image imports this module (monitoring's drift report names ActualsError) and
    # has no pyarrow; only reading a file needs it.
    import pyarrow as pa
    from tqdm import tqdm

    from pipeline.schema import ACTUALS
    from pipeline.validate import DataValidationError, fail, read_batches

    path = Path(path)
    codes, units = ChunkedArray(np.int64), ChunkedArray(np.float64)
    is_day = np.zeros(1 << DAY_BITS, dtype=bool)  # the file's days: a row in some store
    store_days = []  # each batch's (store, day) pairs: Favorita's are 91 K in all
    try:
        with tqdm(desc=f"actuals: read {path.name}", unit="rows", unit_scale=True, disable=None) as bar:
            for _, batch in read_batches(path, ACTUALS):
                days = batch.column("date").cast(pa.int32()).to_numpy(zero_copy_only=False)
                is_day[days] = True
                stores = batch.column("store_nbr").to_numpy(zero_copy_only=False)
                store_days.append(np.unique((stores.astype(np.int64) << DAY_BITS) | days))
                codes.extend(sold_codes(stores, batch.column("item_nbr").to_numpy(zero_copy_only=False), days))
                units.extend(np.maximum(batch.column("unit_sales").to_numpy(zero_copy_only=False), 0.0))
                bar.update(batch.num_rows)
        code, sold = codes.array(), units.array()  # Favorita's train.csv: 1 GB each
        pa.default_memory_pool().release_unused()  # the batches' buffers, held by Arrow's allocator until asked
        order = np.argsort(code, kind="stable")  # the peak: code, sold, order and one gathered copy (~4.3 GB)
        code = code[order]
        sold = sold[order]
        repeated = np.flatnonzero(code[1:] == code[:-1])
        if len(repeated):
            rows = np.sort(np.concatenate([order[repeated], order[repeated + 1]]))
            fail(path, "date+store_nbr+item_nbr", "the same store, item and day twice", rows,
                 [_described(c) for c in np.sort(code[np.concatenate([repeated, repeated + 1])])[:5]])
        del order
    except DataValidationError as exc:
        message = str(exc)
        raise ActualsError(f"{path}{message[len(path.name):]}" if message.startswith(path.name) else
                           f"{path}: {message}") from None
    days = np.flatnonzero(is_day)
    warning = unreported_store_days(np.unique(np.concatenate(store_days or [np.empty(0, np.int64)])), days)
    if warning:
        print(f"actuals: warning: {path}: {warning}", file=sys.stderr, flush=True)
    return SoldUnits(code, sold, days)


def unreported_store_days(store_days: np.ndarray, days: np.ndarray, shown: int = 3) -> str | None:
    """What to say of stores without a single row on some of the file's last RECENT_DAYS days (from their first on):
    each of their items counts as selling nothing then (README "What an absent day means"), right for a closed store,
    a false drop in live accuracy for a store whose rows are not in yet. Older gaps are left unsaid: stores closed
    on New Year's Day, in Favorita's own train.csv. ``store_days``: sorted unique store << DAY_BITS | day."""
    stores, day = store_days >> DAY_BITS, store_days & ((1 << DAY_BITS) - 1)
    recent = days[-RECENT_DAYS:]
    ends = np.r_[np.flatnonzero(stores[1:] != stores[:-1]) + 1, len(stores)]
    starts = np.r_[0, ends[:-1]]
    late = []  # (store, its absent recent days)
    for start, end in zip(starts.tolist(), ends.tolist()):
        absent = np.setdiff1d(recent[recent >= day[start]], day[max(start, end - RECENT_DAYS):end], assume_unique=True)
        if len(absent):
            late.append((int(stores[start]), absent))
    if not late:
        return None
    described = [f"store {store} on {', '.join(str(EPOCH + dt.timedelta(days=int(d))) for d in absent)}"
                 for store, absent in late[:shown]]
    more = f" and {len(late) - shown} more store(s)" if len(late) > shown else ""
    return (f"no row for {'; '.join(described)}{more}, among the file's last {len(recent)} days, which other stores "
            "have rows on: each of its items counts as selling nothing then (a closed store); if those rows are not "
            "in yet, leave those days out of the actuals, or live accuracy is judged against zeros")


class ChunkedArray:
    """A column that grows in CHUNK_ROWS chunks, each a memory mapping of its own that goes back to the system
    when freed. Kept as a list of each batch's own arrays (~15 MB each), Favorita's train.csv left 1.7 GB in
    the C heap after they were joined and freed: glibc's malloc serves blocks under its 32 MB mmap threshold
    from the heap, and keeps them."""

    def __init__(self, dtype):
        self._dtype, self._chunks, self._filled = dtype, [], CHUNK_ROWS

    def extend(self, values: np.ndarray) -> None:
        while len(values):
            if self._filled == CHUNK_ROWS:
                self._chunks.append(np.empty(CHUNK_ROWS, self._dtype))  # untouched pages cost nothing yet
                self._filled = 0
            taken = min(len(values), CHUNK_ROWS - self._filled)
            self._chunks[-1][self._filled:self._filled + taken] = values[:taken]
            self._filled, values = self._filled + taken, values[taken:]

    def array(self) -> np.ndarray:
        """Every value in one array; the chunks are let go."""
        if not self._chunks:
            return np.empty(0, self._dtype)
        self._chunks[-1] = self._chunks[-1][:self._filled]
        joined, self._chunks, self._filled = np.concatenate(self._chunks), [], CHUNK_ROWS
        return joined


def _described(code: int) -> str:
    store, item, day = _parts(int(code))
    return f"{EPOCH + dt.timedelta(days=day)}/{store}/{item}"


def _parts(code: int) -> tuple[int, int, int]:
    return code >> (ITEM_BITS + DAY_BITS), (code >> DAY_BITS) & ((1 << ITEM_BITS) - 1), code & ((1 << DAY_BITS) - 1)


class SoldUnits(Mapping):
    """(store_nbr, item_nbr, ISO date) -> units sold: the file's rows, and 0.0 for a store x item on each day of the
    file (a day with a row in any store) from its first row on that has no row of its own: in Kaggle's layout it
    sold nothing (prepare.grid: from_first_sale). The rows are two arrays sorted by key (16 bytes a row: Favorita's
    125 M rows in 2 GB, where a dict of them took ~230 bytes a row); the zero days are looked up, not stored: a
    year of one store's sales already holds more zero days than rows."""

    def __init__(self, codes: np.ndarray, units: np.ndarray, days: np.ndarray):
        """``codes``: sold_codes of the rows, sorted and unique; ``units``: their units sold, in the same order;
        ``days``: the date32 days the rows have, sorted."""
        self._codes, self._units, self._days = codes, units, days
        starts = [np.zeros(min(len(codes), 1), dtype=np.int64)]
        for low in range(0, len(codes), CHUNK_ROWS):  # a slice at a time: Favorita's pairs would be 1 GB more
            pairs = codes[low:low + CHUNK_ROWS + 1] >> DAY_BITS
            starts.append(np.flatnonzero(pairs[1:] != pairs[:-1]) + low + 1)
        first_rows = np.concatenate(starts)
        self._pairs = codes[first_rows] >> DAY_BITS
        self._first = codes[first_rows] & ((1 << DAY_BITS) - 1)  # each store x item's first day in the file

    def _code(self, key: tuple[int, int, str]) -> int | None:
        """The key's code, or None where no row can have it: what logged events key by may be anything JSON holds
        (a number, text, null), and a dict of the rows simply did not find those."""
        try:
            store, item, date = key
            day = (dt.date.fromisoformat(date) - EPOCH).days
        except (TypeError, ValueError):
            return None
        store, item = _whole(store), _whole(item)
        if store is None or item is None:
            return None
        if not (0 < store < 1 << STORE_BITS and 0 < item < 1 << ITEM_BITS and 0 <= day < 1 << DAY_BITS):
            return None  # no row can have it (and it would not fit the code)
        return (store << (ITEM_BITS + DAY_BITS)) | (item << DAY_BITS) | day

    def __getitem__(self, key: tuple[int, int, str]) -> float:
        code = self._code(key)
        if code is None:
            raise KeyError(key)
        at = int(np.searchsorted(self._codes, code))
        if at < len(self._codes) and self._codes[at] == code:
            return float(self._units[at])
        pair, day = code >> DAY_BITS, code & ((1 << DAY_BITS) - 1)
        at = int(np.searchsorted(self._pairs, pair))
        known_pair = at < len(self._pairs) and self._pairs[at] == pair
        if not known_pair or day < self._first[at] or not _holds(self._days, day):  # a day of the file, from the first
            raise KeyError(key)
        return 0.0

    def __iter__(self) -> Iterator[tuple[int, int, str]]:
        dates = [(EPOCH + dt.timedelta(days=int(day))).isoformat() for day in self._days]
        for pair, first in zip(self._pairs.tolist(), self._first.tolist()):
            store, item = pair >> ITEM_BITS, pair & ((1 << ITEM_BITS) - 1)
            for date in dates[int(np.searchsorted(self._days, first)):]:
                yield store, item, date

    def __len__(self) -> int:
        return int(len(self._days) * len(self._first) - np.searchsorted(self._days, self._first).sum())

    @property
    def day_span(self) -> tuple[str, str] | None:
        """The file's first and last days with a row (ISO dates); None for a file without rows."""
        if not len(self._days):
            return None
        return tuple((EPOCH + dt.timedelta(days=int(day))).isoformat() for day in (self._days[0], self._days[-1]))


def _whole(value) -> int | None:
    """A whole number as an int (1, 1.0, numpy's int32(1)), else None ("1", None, 1.5, NaN)."""
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _holds(sorted_values: np.ndarray, value: int) -> bool:
    at = int(np.searchsorted(sorted_values, value))
    return at < len(sorted_values) and sorted_values[at] == value
