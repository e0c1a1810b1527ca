"""Stage ``prepare``: validate the raw files, clean, zero-fill the grid, denormalize -> Parquet.

Works store by store so the full data set (~125 M train rows, a ~250 M-row
grid) never has to fit in memory: pass 1 streams train.csv, validating every
block and appending each store's rows to its own temporary Parquet file; pass 2
takes one store at a time, checks its keys, builds its zero-filled grid and
writes it as row groups of data/prepared/sales.parquet.

The grid (``prepare.grid``): its dates are the days present in train.csv (a
day with no sales in any store, e.g. Christmas when every store is closed, is
not a sales day). ``from_first_sale`` (default, Kaggle practice) starts each
store×item at its first row in train.csv, so items not yet launched or stores
not yet open get no zero rows; ``full`` starts every store×item that ever sold
at the first date. Either way it ends at the last date of train.csv, except for a
store with no row on its last ``closed_after_days`` sales days: closed, its grid ends
at its last row (``store_grid_end``), and prepare warns naming it.

Everything is written into a staging directory that replaces data/prepared
only when complete; a validation error leaves the previous output untouched.

On a Dask cluster (``pipeline.cluster``) pass 2 runs as one task per store on
the workers: each reads its store's partition from the staging directory (which
must be on storage every worker sees), builds the grid and writes it to its own
part file under a temporary name, renamed when complete, so a task Dask retries
after a worker died simply rewrites it. This process then copies the parts, in
store order and with the same row groups, into sales.parquet: the same bytes as
in one process. Pass 1 stays here: train.csv is one (gzip) stream.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.cluster import ClusterError, dask_client, run_tasks, scheduler_address
from pipeline.holidays import lookalike_key, place_name, store_day_flags, unmatched_locales
from pipeline.io import atomic_directory, close_writers, parquet_writer, write_parquet
from pipeline.params import PrepareParams, prepare_params
from pipeline.schema import HOLIDAY_FLAGS, PREPARED_SALES_SCHEMA, RAW_SCHEMAS
from pipeline.stage import StageError, bar_options, run_stage, stage_params
from pipeline.store_parts import append_part, write_part
from pipeline.validate import (
    MAX_SHOWN, DataValidationError, check_header, check_references, describe_rows, fail, find_raw_file,
    read_batches, read_small, require_raw_file,
)

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
PARTITION_COLUMNS = ("row", "id", "date", "item_nbr", "unit_sales", "onpromotion")  # row: data row number in train.csv
ROW_GROUP_ROWS = 2_000_000
# The holiday calendar reaches this far past the last sales day (or to the last day that
# holidays_events/test list, if later): a day holidays_events does not list is an ordinary
# day, so forecasts of the next year never stop for want of a calendar row.
HOLIDAY_LOOKAHEAD_DAYS = 366


@dataclass
class Reference:
    """The small files, validated and indexed for denormalizing."""

    items: pd.DataFrame
    stores: pd.DataFrame
    holidays: pd.DataFrame
    oil: pd.DataFrame
    transactions: pd.DataFrame


def read_reference(raw_dir: Path) -> Reference:
    """items and stores (required); holidays_events, oil, transactions (optional: absent = no rows)."""
    items = read_small(raw_dir, "items").sort_values("item_nbr", kind="stable").reset_index(drop=True)
    stores = read_small(raw_dir, "stores").sort_values("store_nbr", kind="stable").reset_index(drop=True)
    for place in ("city", "state"):  # one city spelt in two Unicode forms is one city (one category, one key)
        stores[place] = stores[place].map(place_name)
    known_stores = pa.array(stores["store_nbr"].to_numpy(dtype=np.int32))
    holidays = read_small(raw_dir, "holidays_events", optional=True)
    oil = read_small(raw_dir, "oil", optional=True).sort_values("date").reset_index(drop=True)
    if len(oil) and oil["dcoilwtico"].notna().sum() == 0:
        oil = oil.iloc[:0]  # every price unknown: the same as no oil.csv (the price is NaN everywhere)
    transactions = read_small(raw_dir, "transactions", references={"stores": known_stores}, optional=True)
    return Reference(items, stores, holidays, oil, transactions)


def open_files_budget() -> int:
    """How many store partitions pass 1 keeps open at once: half the process's open-file limit, raised to its hard
    limit first where the soft one is lower (macOS starts processes at 256, many Linux sessions at 1,024: a file
    of 2,000 stores failed with 'Too many open files'). The other half is for Arrow, MLflow and Dask."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to read
        return 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 1 << 16) if hard != resource.RLIM_INFINITY else 1 << 16
    if soft != resource.RLIM_INFINITY and soft < wanted:
        for target in (wanted, 10240):  # macOS refuses more than OPEN_MAX (10,240) whatever the hard limit says
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, wanted), hard))
                soft = min(target, wanted)
                break
            except (ValueError, OSError):
                continue
    return max(8, (wanted if soft == resource.RLIM_INFINITY else soft) // 2)


class StorePartitions:
    """Pass 1: train.csv split into one temporary Parquet file per store.

    At most ``max_open`` stores' files are open at once (the process's open-file limit is finite, and a file in
    Kaggle's order, by date then store, has every store in each block): when another store needs one, the least
    recently written is closed, and that store's next rows go to a further part file; ``close`` joins each
    store's parts into its one file, in the order written.
    """

    def __init__(self, directory: Path, max_open: int | None = None):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.max_open = max_open if max_open is not None else open_files_budget()
        self.writers: dict[int, pq.ParquetWriter] = {}  # open ones, least recently written first
        self.parts: dict[int, int] = {}  # store -> part files begun
        self.rows: dict[int, int] = {}
        self.last_day: dict[int, int] = {}  # store -> its last date with a row (days since 1970-01-01)

    def path(self, store: int) -> Path:
        return self.directory / f"store={store}.parquet"

    def _part(self, store: int, k: int) -> Path:
        return self.path(store) if k == 0 else self.directory / f"store={store}.part-{k}.parquet"

    def _writer(self, store: int, schema: pa.Schema) -> pq.ParquetWriter:
        writer = self.writers.pop(store, None)
        if writer is None:
            while len(self.writers) >= self.max_open:
                self.writers.pop(next(iter(self.writers))).close()
            k = self.parts.get(store, 0)
            writer = parquet_writer(self._part(store, k), schema)
            self.parts[store] = k + 1
        self.writers[store] = writer  # (re)inserted: now the most recently written
        return writer

    def add(self, batch: pa.RecordBatch, offset: int) -> None:
        stores = batch.column("store_nbr").to_numpy(zero_copy_only=False)
        order = np.argsort(stores, kind="stable")
        sorted_stores = stores[order]
        bounds = np.flatnonzero(np.diff(sorted_stores)) + 1
        rows = pa.array(np.arange(offset, offset + batch.num_rows))
        table = pa.Table.from_batches([batch]).append_column("row", rows)
        table = table.select(list(PARTITION_COLUMNS))
        days = batch.column("date").cast(pa.int32()).to_numpy(zero_copy_only=False)
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(order)]])):
            store = int(sorted_stores[lo])
            part = table.take(pa.array(order[lo:hi]))
            self._writer(store, part.schema).write_table(part)
            self.rows[store] = self.rows.get(store, 0) + hi - lo
            self.last_day[store] = max(self.last_day.get(store, -2**31), int(days[order[lo:hi]].max()))

    def close(self) -> None:
        try:
            close_writers(self.writers.values())
        finally:
            self.writers.clear()
        for store, count in self.parts.items():
            if count > 1:  # one store at a time: no more in memory than pass 2 reads of it
                parts = [self._part(store, k) for k in range(count)]
                table = pa.concat_tables([pq.read_table(part) for part in parts])
                for part in parts:
                    part.unlink()
                with parquet_writer(self.path(store), table.schema) as writer:
                    writer.write_table(table)
                self.parts[store] = 1


class IdTracker:
    """train.csv ids must be unique, whatever their range: any non-negative int64, dense or sparse.

    Kaggle's ids (0..N-1 in file order) are strictly increasing, which already proves
    them unique: that is all pass 1 checks, at no memory cost. Only when they are not
    does ``check`` read the ids back from the store partitions (where pass 1 stored
    them with their row numbers), spill (id, row) pairs into ``BUCKETS`` files by
    ``id % BUCKETS`` and sort one bucket at a time: memory never grows with the
    largest id (a bitmap over ids of 10**12 would need 931 GiB).
    """

    BUCKETS = 16

    def __init__(self, directory: Path):
        self.directory = directory
        self.last = -1
        self.increasing = True

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if self.increasing and len(ids):
            self.increasing = bool(ids[0] > self.last and np.all(ids[1:] > ids[:-1]))
            self.last = int(ids[-1])

    def check(self, path: Path, partitions: list[Path]) -> None:
        """Fail naming the lines of repeated ids (in file order); the spill files are removed either way."""
        if self.increasing:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        buckets = [self.directory / f"ids-{k}.bin" for k in range(self.BUCKETS)]
        try:
            handles = [open(bucket, "wb") for bucket in buckets]
            try:
                for partition in partitions:
                    for batch in pq.ParquetFile(partition).iter_batches(batch_size=1 << 20, columns=["id", "row"]):
                        pairs = np.stack([batch.column(0).to_numpy(), batch.column(1).to_numpy()], axis=1)
                        which = pairs[:, 0] % self.BUCKETS
                        order = np.argsort(which, kind="stable")
                        bounds = np.searchsorted(which[order], np.arange(self.BUCKETS + 1))
                        for k, handle in enumerate(handles):
                            pairs[order[bounds[k]:bounds[k + 1]]].tofile(handle)
            finally:
                for handle in handles:
                    handle.close()
            rows, values = [], []
            for bucket in buckets:
                pairs = np.fromfile(bucket, dtype=np.int64).reshape(-1, 2)
                order = np.argsort(pairs[:, 0], kind="stable")
                ids = pairs[order, 0]
                repeated = np.flatnonzero(ids[1:] == ids[:-1])
                if len(repeated):
                    culprits = order[np.union1d(repeated, repeated + 1)]
                    rows.append(pairs[culprits, 1])
                    values.append(pairs[culprits, 0])
            if rows:
                rows_all, values_all = np.concatenate(rows), np.concatenate(values)
                first = np.argsort(rows_all, kind="stable")
                fail(path, "id", "duplicate id", rows_all[first], values_all[first[:5]].tolist())
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def split_train_by_store(
    raw_dir: Path, reference: Reference, workdir: Path, progress: bool
) -> tuple[StorePartitions, np.ndarray, dict[int, list[int]]]:
    """Pass 1: validate train.csv block by block; returns the partitions, the sales dates and, for each (days since
    1970-01-01), its rows and the first row that has it."""
    path = require_raw_file(raw_dir, "train")
    spec = RAW_SCHEMAS["train"]
    known_stores = pa.array(reference.stores["store_nbr"].to_numpy(dtype=np.int32))
    known_items = pa.array(reference.items["item_nbr"].to_numpy(dtype=np.int32))
    partitions = StorePartitions(workdir)
    ids, left_out = IdTracker(workdir / ".ids"), check_header(path, spec).left_out  # no id column: nothing to check
    day_rows: dict[int, list[int]] = {}  # day -> [rows, the first row that has it]
    try:
        with tqdm(unit="rows", unit_scale=True, desc=f"prepare: read {path.name}",
                  **bar_options(progress)) as bar:
            for offset, batch in read_batches(path, spec):
                check_references(path, batch, offset, "store_nbr", known_stores, "stores")
                check_references(path, batch, offset, "item_nbr", known_items, "items")
                if "id" not in left_out:
                    ids.add(batch.column("id").to_numpy(zero_copy_only=False))
                days = batch.column("date").cast(pa.int32()).to_numpy(zero_copy_only=False)
                for day, first, rows in zip(*(a.tolist() for a in np.unique(days, return_index=True,
                                                                             return_counts=True))):
                    seen = day_rows.setdefault(day, [0, offset + first])
                    seen[0] += rows
                partitions.add(batch, offset)
                bar.update(batch.num_rows)
    finally:
        partitions.close()
    ids.check(path, [partitions.path(store) for store in sorted(partitions.rows)])
    check_stray_end_dates(path, day_rows)
    calendar = np.array(sorted(day_rows), dtype="datetime64[D]")
    return partitions, calendar, day_rows


STRAY_DAY_SHARE = 0.05  # a first or last date with at most this share of a typical day's rows, after a gap: a typo


def check_stray_end_dates(path: Path, day_rows: dict[int, list[int]]) -> None:
    """DataValidationError naming the row when train.csv's first or last date stands apart: a day or more with no
    sales between it and the rest, and at most STRAY_DAY_SHARE of a typical day's rows on it. One such row (a
    mistyped 2031, or a date days after the export's end) made split's validation window a day of zeros for every
    other series, or a window outside every forecast horizon, with no word about train.csv."""
    days = sorted(day_rows)
    if len(days) < 3:
        return
    typical = float(np.median([day_rows[d][0] for d in days]))
    ends = ((days[-1], days[-2], "last", "after", "the last days of train.csv become the validation window"),
            (days[0], days[1], "first", "before", "its series' zero-filled history would start there"))
    for end, neighbour, which, side, why in ends:
        rows, first_row = day_rows[end]
        gap = abs(end - neighbour) - 1
        if gap >= 1 and rows <= STRAY_DAY_SHARE * typical:
            when = np.datetime64(end, "D")
            fail(path, "date", f"the {which} date, {when}, has {rows:,} row(s) where a typical day has {typical:,.0f}, "
                 f"and comes {gap:,} day(s) with no sales {side} the others ({np.datetime64(neighbour, 'D')}): a "
                 f"mistyped date? Fix or remove it: {why}", np.asarray([first_row]), [str(when)])


PARTIAL_DAY_SHARE = 0.5  # a last date with fewer than this share of its weekday's rows: a day not over when exported


def partial_last_day_warning(path: Path, day_rows: dict[int, list[int]]) -> str | None:
    """One line when train.csv's last date has under PARTIAL_DAY_SHARE of the rows the same weekday had in the 4
    weeks before it (median), or None. An export run during the day (up to 'today') ends on a part of a day: every
    store×item without a row yet counts as selling nothing on it, and it is a day of the validation window and the
    last day of the history a served model forecasts from. Not refused: a day most stores are closed (New Year's
    Day) may end the data too. check_stray_end_dates refuses the clearer case, a few rows after days without any."""
    days = sorted(day_rows)
    last = days[-1]
    before = [day_rows[last - 7 * weeks][0] for weeks in (1, 2, 3, 4) if last - 7 * weeks in day_rows]
    if not before:
        return None
    typical, rows = float(np.median(before)), day_rows[last][0]
    if rows >= PARTIAL_DAY_SHARE * typical:
        return None
    when = np.datetime64(last, "D")
    return (f"{path.name}: the last date, {when}, has {rows:,} row(s) where the same weekday had {typical:,.0f} "
            f"(median of the {len(before)} week(s) before it), first at {describe_rows(path, [day_rows[last][1]])}: "
            "an export run before the day was over? Every store×item without a row counts as selling nothing that "
            "day, a day of the validation window and the last of the history forecasts start from: end the export "
            "at the last complete day (or, if most stores were closed that day, leave it)")


def _category(values: np.ndarray, codes: np.ndarray, dictionary: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes[values], type=pa.int32()), pa.array(dictionary, pa.string()))


class GridBuilder:
    """Pass 2: one store's zero-filled, denormalized rows."""

    def __init__(self, reference: Reference, calendar: np.ndarray, params: PrepareParams):
        self.params, self.calendar = params, calendar
        items, stores = reference.items, reference.stores
        self.item_nbr = items["item_nbr"].to_numpy(dtype=np.int32)
        self.families = sorted(items["family"].unique().tolist())
        self.family_code = pd.Categorical(items["family"], categories=self.families).codes.astype(np.int32)
        self.item_class = items["class"].to_numpy(dtype=np.int32)
        self.perishable = items["perishable"].to_numpy().astype(bool)
        self.stores = stores
        self.store_dicts = {col: sorted(stores[col].astype(str).unique().tolist()) for col in ("city", "state", "type")}
        n_days = int((calendar[-1] - calendar[0]).astype(int)) + 1
        every_day = np.arange(calendar[0], calendar[0] + n_days, dtype="datetime64[D]")
        flags = store_day_flags(reference.holidays, every_day, stores)
        day_pos = (calendar - calendar[0]).astype(np.int64)
        self.flags = {name: flags[name][day_pos] for name in HOLIDAY_FLAGS}  # [calendar, stores]
        self.oil = daily_oil(reference.oil, every_day)[day_pos].astype(np.float32)
        tx = reference.transactions
        self.tx = np.zeros((len(calendar), len(stores)), dtype=np.int32)
        self.tx_known = np.zeros((len(calendar), len(stores)), dtype=bool)
        t_pos = np.searchsorted(calendar, tx["date"].to_numpy(dtype="datetime64[D]"))
        inside = (t_pos < len(calendar))
        inside[inside] = calendar[t_pos[inside]] == tx["date"].to_numpy(dtype="datetime64[D]")[inside]
        s_pos = np.searchsorted(stores["store_nbr"].to_numpy(), tx["store_nbr"].to_numpy())
        self.tx[t_pos[inside], s_pos[inside]] = tx["transactions"].to_numpy()[inside]
        self.tx_known[t_pos[inside], s_pos[inside]] = True
        self.calendar_ns = calendar.astype("datetime64[ns]")

    def build(self, store: int, rows: pa.Table, path: Path) -> pa.Table:
        store_pos = int(np.searchsorted(self.stores["store_nbr"].to_numpy(), store))
        n_cal = len(self.calendar)
        days = np.searchsorted(self.calendar, rows.column("date").to_numpy().astype("datetime64[D]"))
        items = np.searchsorted(self.item_nbr, rows.column("item_nbr").to_numpy())
        key = items.astype(np.int64) * n_cal + days
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        repeated = np.flatnonzero(sorted_key[1:] == sorted_key[:-1])
        if len(repeated):
            row_numbers = rows.column("row").to_numpy()
            culprits = np.sort(np.concatenate([order[repeated], order[repeated + 1]]))
            sample = [f"{self.calendar[days[r]]}/{store}/{self.item_nbr[items[r]]}" for r in culprits[:5]]
            fail(path, "date+store_nbr+item_nbr", "duplicate key", row_numbers[culprits], sample)
        first = np.full(len(self.item_nbr), n_cal, dtype=np.int64)
        np.minimum.at(first, items, days)
        if self.params.grid == "full":
            first[first < n_cal] = 0
        end = (store_grid_end(int(days.max()), n_cal, self.params.closed_after_days) if len(days)
               else n_cal)  # a closed store's ends at its last row
        lengths = np.maximum(end - first, 0)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        total = int(lengths.sum())
        item_of_row = np.repeat(np.arange(len(self.item_nbr)), lengths)
        day_of_row = np.arange(total) - np.repeat(starts - first, lengths)
        position = starts[items] + days - first[items]
        sales = np.zeros(total, dtype=np.float32)
        sales[position] = rows.column("unit_sales").to_numpy().astype(np.float32)
        if self.params.returns == "zero":
            np.maximum(sales, 0, out=sales)
        promo_column = rows.column("onpromotion")
        promo = np.zeros(total, dtype=bool)
        promo_known = np.zeros(total, dtype=bool)
        promo[position] = promo_column.fill_null(False).to_numpy(zero_copy_only=False)
        promo_known[position] = promo_column.is_valid().to_numpy(zero_copy_only=False)
        store_row = self.stores.iloc[store_pos]
        constant = np.zeros(total, dtype=np.int64)
        columns = {
            "date": pa.array(self.calendar_ns[day_of_row]),
            "store_nbr": pa.array(np.full(total, store, dtype=np.int16)),
            "item_nbr": pa.array(self.item_nbr[item_of_row]),
            "unit_sales": pa.array(sales),
            "onpromotion": pa.array(promo),
            "onpromotion_known": pa.array(promo_known),
            "family": _category(item_of_row, self.family_code, self.families),
            "class": pa.array(self.item_class[item_of_row]),
            "perishable": pa.array(self.perishable[item_of_row]),
        }
        for column, name in (("city", "city"), ("state", "state"), ("type", "store_type")):
            code = np.array([self.store_dicts[column].index(str(store_row[column]))], dtype=np.int32)
            columns[name] = _category(constant, code, self.store_dicts[column])
        columns["cluster"] = pa.array(np.full(total, int(store_row["cluster"]), dtype=np.int16))
        for name in HOLIDAY_FLAGS:
            columns[name] = pa.array(self.flags[name][day_of_row, store_pos])
        columns["dcoilwtico"] = pa.array(self.oil[day_of_row])
        columns["transactions"] = pa.array(self.tx[day_of_row, store_pos])
        columns["transactions_known"] = pa.array(self.tx_known[day_of_row, store_pos])
        return pa.table(columns, schema=PREPARED_SALES_SCHEMA)


def daily_oil(oil: pd.DataFrame, days: np.ndarray) -> np.ndarray:
    """The oil price on every day: forward-filled, then back-filled before the first price."""
    series = pd.Series(oil["dcoilwtico"].to_numpy(dtype=np.float64), index=oil["date"].to_numpy(dtype="datetime64[D]"))
    full_index = np.union1d(series.index.to_numpy(dtype="datetime64[D]"), days)
    filled = series.reindex(full_index).ffill().bfill()
    return filled.reindex(days).to_numpy()


def side_tables(reference: Reference, calendar: np.ndarray, test: pd.DataFrame | None) -> dict[str, pa.Table]:
    """Items, stores and the per-store holiday calendar (through the test period) for features and serving."""
    items = reference.items.assign(perishable=reference.items["perishable"].astype(bool))
    stores = reference.stores.rename(columns={"type": "store_type"})
    last = calendar[-1] + HOLIDAY_LOOKAHEAD_DAYS
    for listed in (reference.holidays["date"], test["date"] if test is not None else pd.Series([], dtype=object)):
        if len(listed):
            last = max(last, np.datetime64(pd.Timestamp(listed.max()).date(), "D"))
    days = np.arange(calendar[0], last + 1, dtype="datetime64[D]")
    flags = store_day_flags(reference.holidays, days, reference.stores)
    n_days, n_stores = len(days), len(reference.stores)
    holidays = {"date": np.repeat(days.astype("datetime64[ns]"), n_stores),
                "store_nbr": np.tile(reference.stores["store_nbr"].to_numpy(dtype=np.int16), n_days)}
    holidays.update({name: flags[name].ravel() for name in HOLIDAY_FLAGS})
    tables = {
        "items": pa.Table.from_pandas(items, preserve_index=False),
        "stores": pa.Table.from_pandas(stores, preserve_index=False),
        "holidays": pa.table(holidays),
    }
    if test is not None:
        tables["test"] = pa.Table.from_pandas(test.assign(onpromotion=test["onpromotion"].fillna(False).astype(bool),
                                                          id=test["id"].astype("Int64")),  # empty: no id column
                                              preserve_index=False)
    return tables


def unmatched_holidays_warning(raw_dir: Path, reference: Reference) -> str | None:
    """One line naming the Regional/Local holidays that match no store's state/city (they flag no store), or None.

    Not an error: a calendar may list places with no store. Names are matched ignoring case, spacing and
    Unicode form (``pipeline.holidays.place_key``), so what is left differs in spelling, or has no store; a
    name that prints like a store's (another Unicode character, an invisible one) is shown with ascii() too.
    """
    rows = unmatched_locales(reference.holidays, reference.stores)
    if not len(rows):
        return None
    path = find_raw_file(raw_dir, "holidays_events")
    places = {"Regional": ("state", reference.stores["state"]), "Local": ("city", reference.stores["city"])}
    shown, lookalikes = [], []
    for r in rows[:MAX_SHOWN]:
        locale, name = str(reference.holidays["locale"].iloc[r]), str(reference.holidays["locale_name"].iloc[r])
        shown.append(f"{locale} {name}")
        kind, names = places[locale]
        twin = next((str(n) for n in names if lookalike_key(n) == lookalike_key(name)), None)
        if twin is not None:
            lookalikes.append(f"{ascii(name)} is not the store {kind} {ascii(twin)}")
    alike = f"; they differ in Unicode characters only: {', '.join(lookalikes)}" if lookalikes else ""
    return (f"{path.name}: {len(rows)} Regional/Local row(s) whose locale_name matches no store's state/city "
            f"(compared ignoring case, spaces and Unicode form) flag no store: {describe_rows(path, rows, shown)}"
            f"{alike}")


def read_test(raw_dir: Path, reference: Reference) -> pd.DataFrame | None:
    if find_raw_file(raw_dir, "test") is None:
        return None
    known = {"stores": pa.array(reference.stores["store_nbr"].to_numpy(dtype=np.int32)),
             "items": pa.array(reference.items["item_nbr"].to_numpy(dtype=np.int32))}
    return read_small(raw_dir, "test", references=known)


@dataclass(frozen=True)
class StoreGridTask:
    """One store's pass-2 work, as paths and small values a worker on another machine can act on."""

    store: int
    partition: str  # the store's rows from pass 1 (Parquet)
    grid: str  # where the task writes the store's grid (Arrow IPC, one batch per row group of sales.parquet)
    raw_dir: str
    calendar: tuple[int, ...]  # the sales days, as days since 1970-01-01

    def __repr__(self) -> str:
        return f"store partition store_nbr={self.store} ({self.partition})"


_BUILDER_CACHE: dict[tuple, GridBuilder] = {}


def _builder_for(task: StoreGridTask, params: PrepareParams) -> GridBuilder:
    """The GridBuilder of a run, made once per worker process (its inputs are the small reference files).

    Keyed by the raw files' identity too: a worker outlives a run, and a rerun on changed data must not reuse it.
    """
    files = sorted(Path(task.raw_dir).iterdir())
    identity = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_ino) for f in files)
    key = (task.raw_dir, identity, task.calendar, params)
    if key not in _BUILDER_CACHE:
        _BUILDER_CACHE.clear()
        calendar = np.array(task.calendar, dtype="datetime64[D]")
        _BUILDER_CACHE[key] = GridBuilder(read_reference(Path(task.raw_dir)), calendar, params)
    return _BUILDER_CACHE[key]


def build_store_grid(task: StoreGridTask, params: PrepareParams, train_name: str, row_group_rows: int) -> int:
    """Task (on a Dask worker): build one store's grid and write it to ``task.grid``; returns its rows.

    Idempotent: the grid is written under a temporary name and renamed when complete.
    ``row_group_rows`` comes from the caller, so the parts have the row groups it writes.
    """
    builder = _builder_for(task, params)
    grid = builder.build(task.store, pq.read_table(task.partition), Path(train_name))
    return write_part(task.grid, (grid.slice(start, row_group_rows) for start in range(0, grid.num_rows,
                                                                                         row_group_rows)),
                      PREPARED_SALES_SCHEMA)


def _grids_on_cluster(client, raw_dir: Path, partitions: StorePartitions, calendar: np.ndarray,
                      params: PrepareParams, train_path: Path, writer: pq.ParquetWriter, progress: bool) -> int:
    """Pass 2 as one task per store on the cluster's workers, then their parts copied into ``writer`` in order."""
    days = tuple(calendar.astype(np.int64).tolist())
    workdir = partitions.directory.resolve()  # absolute: a worker's current directory is its own
    tasks = [StoreGridTask(store, str(workdir / partitions.path(store).name),
                           str(workdir / f"grid-store={store}.arrow"), str(raw_dir.resolve()), days)
             for store in sorted(partitions.rows)]
    try:
        run_tasks(build_store_grid, tasks, client=client, desc="prepare: stores", progress=progress, params=params,
                  train_name=train_path.name, row_group_rows=ROW_GROUP_ROWS)
    except ClusterError as exc:
        if isinstance(exc.__cause__, DataValidationError):  # bad data, found on a worker: the same one-line error
            raise DataValidationError(str(exc)) from None
        raise
    total = 0
    for task in tqdm(tasks, desc="prepare: assemble", unit="store", **bar_options(progress)):
        total += append_part(task.grid, writer, row_group_size=ROW_GROUP_ROWS)
        Path(task.grid).unlink()
        Path(task.partition).unlink()
    return total


NO_PROMOTIONS_WARNING = ("train.csv gives no promotion on any row (no onpromotion column, or every value empty): "
                         "every promotion counts as unknown, and the model will give a request's onpromotion no "
                         "weight")


def store_grid_end(last_row_day: int, n_sales_days: int, closed_after_days: int) -> int:
    """Where a store's grid ends (an index into the sales days, exclusive), given the index of its last row: the last
    sales day, unless the store has no row on any of the last ``closed_after_days`` (16: the competition's horizon):
    then it has closed (or its rows stopped coming), and its grid ends at its last row. Zero-filled to the end, its
    items were days of zero targets for training and, in the validation window, easy zeros scored as forecasts
    (a store closed for the last 4 months of a probe made a quarter of the validation rows: NWRMSLE 0.483 with
    them, 0.555 without). A store closed for a while and open again keeps its zero rows for the days it was shut."""
    closed = n_sales_days - 1 - last_row_day >= closed_after_days
    return last_row_day + 1 if closed else n_sales_days


def closed_stores_warning(path: Path, last_day: dict[int, int], calendar: np.ndarray, closed_after_days: int,
                          shown: int = 3) -> str | None:
    """One line naming the stores whose grid ends before the last sales day (``store_grid_end``), or None."""
    days = calendar.astype(np.int64)
    closed = []
    for store, last in sorted(last_day.items()):
        index = int(np.searchsorted(days, last))
        if store_grid_end(index, len(days), closed_after_days) < len(days):
            closed.append((store, np.datetime64(last, "D"), len(days) - 1 - index))
    if not closed:
        return None
    named = "; ".join(f"store {store} (last row {day}, none on the {gap:,} sales days after it)"
                      for store, day, gap in closed[:shown])
    more = f" and {len(closed) - shown} more store(s)" if len(closed) > shown else ""
    return (f"{path.name}: {named}{more}: taken as closed, its rows end there (not zero-filled to {calendar[-1]}: "
            "neither trained on nor scored after it; the app answers it 0 units, closed for good, after it). If its "
            "rows are only late, add them and rerun")


SPARSE_DAYS_SHARE = 0.5  # sales on fewer of the days from the first date to the last: not daily data


def sparse_days_warning(path: Path, calendar: np.ndarray) -> str | None:
    """One line when train.csv has sales on under SPARSE_DAYS_SHARE of its days (weekly or monthly totals, each
    dated on one day): a date without rows is no sales day, so such data were read as daily sales without a word,
    and the model forecast a week's units for a day. Closed Sundays (6 days of 7) or weekends (5 of 7) pass."""
    span = int((calendar[-1] - calendar[0]).astype(np.int64)) + 1 if len(calendar) else 0
    if span < 28 or len(calendar) >= SPARSE_DAYS_SHARE * span:
        return None
    gaps = np.diff(calendar.astype(np.int64))
    typical = int(np.median(gaps))
    return (f"{path.name}: sales on {len(calendar):,} of the {span:,} days from {calendar[0]} to {calendar[-1]} "
            f"(typically {typical} days apart): Shelfcast forecasts daily sales, one row per day, store and item "
            "that sold; weekly or monthly totals are read as one day's sales, with no sales on the days between")


def _any_promotion_known(sales_path: Path) -> bool:
    """Whether any prepared row knows its promotion flag: stops at the first batch that does."""
    for batch in pq.ParquetFile(sales_path).iter_batches(columns=["onpromotion_known"]):
        if pc.any(batch.column(0)).as_py():
            return True
    return False


def ignored_columns_warnings(raw_dir: Path) -> list[str]:
    """One line per raw file whose header has columns the schema lacks: they are read past, not refused (README
    "Bring your own data"), and said so, so a column meant to be read but misnamed is seen."""
    warnings = []
    for name, spec in RAW_SCHEMAS.items():
        path = find_raw_file(raw_dir, name)
        try:
            ignored = check_header(path, spec).ignored if path is not None else []
        except DataValidationError:
            continue  # an unreadable header: reading the file says so, in its turn
        if ignored:
            warnings.append(f"{path.name}: column(s) {', '.join(repr(c) for c in ignored)} not part of the {name} "
                            f"schema ({', '.join(spec.column_names)}): ignored")
    return warnings


def prepare(raw_dir: Path, out_dir: Path, params: PrepareParams, progress: bool = True, client=None) -> str:
    """Validate and prepare ``raw_dir`` into ``out_dir``; pass 2 on the cluster's workers when ``client`` is given."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise StageError(f"{raw_dir}: no raw data directory (run the download stage first)")
    for warning in ignored_columns_warnings(raw_dir):
        print(f"prepare: warning: {warning}", file=sys.stderr, flush=True)
    reference = read_reference(raw_dir)
    warning = unmatched_holidays_warning(raw_dir, reference)
    if warning:
        print(f"prepare: warning: {warning}", file=sys.stderr, flush=True)
    test = read_test(raw_dir, reference)
    train_path = require_raw_file(raw_dir, "train")
    total_rows = 0
    with atomic_directory(out_dir) as staging:
        workdir = staging / ".by_store"
        partitions, calendar, day_rows = split_train_by_store(raw_dir, reference, workdir, progress)
        if warning := sparse_days_warning(train_path, calendar):
            print(f"prepare: warning: {warning}", file=sys.stderr, flush=True)
        if warning := partial_last_day_warning(train_path, day_rows):
            print(f"prepare: warning: {warning}", file=sys.stderr, flush=True)
        if warning := closed_stores_warning(train_path, partitions.last_day, calendar, params.closed_after_days):
            print(f"prepare: warning: {warning}", file=sys.stderr, flush=True)
        sales_path = staging / "sales.parquet"
        writer = parquet_writer(sales_path, PREPARED_SALES_SCHEMA)
        try:
            if client is not None:
                total_rows = _grids_on_cluster(client, raw_dir, partitions, calendar, params, train_path, writer,
                                               progress)
            else:
                builder = GridBuilder(reference, calendar, params)
                for store in tqdm(sorted(partitions.rows), desc="prepare: stores", unit="store",
                                  **bar_options(progress)):
                    rows = pq.read_table(partitions.path(store))
                    grid = builder.build(store, rows, train_path)
                    writer.write_table(grid, row_group_size=ROW_GROUP_ROWS)
                    total_rows += grid.num_rows
                    partitions.path(store).unlink()
        finally:
            close_writers([writer])
        if total_rows and not _any_promotion_known(sales_path):
            print(f"prepare: warning: {NO_PROMOTIONS_WARNING}", file=sys.stderr, flush=True)
        shutil.rmtree(workdir)
        for name, table in side_tables(reference, calendar, test).items():
            write_parquet(table, staging / f"{name}.parquet")
    n_sales = sum(partitions.rows.values())
    return (f"{n_sales:,} train rows of {len(partitions.rows)} stores -> {total_rows:,} grid rows "
            f"({calendar[0]} .. {calendar[-1]}, grid={params.grid}, returns={params.returns}) in {out_dir}")


def _main(args: argparse.Namespace) -> str:
    raw_params = stage_params(args)
    with dask_client(scheduler_address(raw_params)) as client:
        return prepare(args.root / RAW_DIR, args.root / PREPARED_DIR, prepare_params(raw_params),
                       progress=not args.quiet, client=client)


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", _main, argv, errors=(ClusterError,))


if __name__ == "__main__":
    raise SystemExit(main())
