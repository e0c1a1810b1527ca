"""Prepared sales (Parquet) -> dense per store×item history arrays, and training rows from them.

Training-only (pandas, pyarrow): the arrays are indexed [series, day], so the
feature inputs of any forecast origin are slices, and the history snapshot a
bundle ships is the last ``history_days`` columns up to the origin.

``load_history`` reads the split files row group by row group, only the columns
features need, only the days asked for, straight into compact arrays
(float32 sales, uint8 promotions, bool grid), so Favorita's full 125 M-row grid
never sits in memory as a table: memory is the arrays (series × days × 6 bytes;
7 when some promotions are unknown: ``SalesHistory.promo_known``) plus one row group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.features import (
    CATEGORICAL_FIELDS,
    HOLIDAY_FLAGS,
    ITEM_FIELDS,
    STORE_FIELDS,
    FeatureInputError,
    FeatureRows,
    HistorySnapshot,
)
from pipeline.io import TRAIN_LAST_DAY_KEY
from pipeline.stage import bar_options


SALES_COLUMNS = ("date", "store_nbr", "item_nbr", "unit_sales", "onpromotion", "family", "class", "perishable",
                 "city", "store_type", "cluster") + HOLIDAY_FLAGS
PROMO_KNOWN_COLUMN = "onpromotion_known"  # read when the file has it (SalesHistory.promo_known)


class HistoryError(ValueError):
    """Prepared data the history arrays cannot be built from (names the file and column)."""


@dataclass
class SalesHistory:
    """Sales and promotions of every store×item on consecutive days, plus attributes and calendar."""

    first_day: int  # day number (days since 1970-01-01) of column 0
    store_nbr: np.ndarray  # [S] int32, sorted by (store, item)
    item_nbr: np.ndarray  # [S] int32
    sales: np.ndarray  # [S, D] float32, 0 where the grid has no row
    promo: np.ndarray  # [S, D] uint8
    observed: np.ndarray  # [S, D] bool: the grid has a row (a real target)
    perishable: np.ndarray  # [S] bool
    items: dict[str, np.ndarray]  # item_nbr + ITEM_FIELDS
    stores: dict[str, np.ndarray]  # store_nbr + STORE_FIELDS
    holidays: np.ndarray  # [K, D, len(HOLIDAY_FLAGS)] uint8, stores in stores['store_nbr'] order
    promo_known: np.ndarray | None = None  # [S, D] bool: the data gave the day's promotion (``promotion_known``);
    # None: it gave every one. Only the drift reference reads it: the model sees an unknown promotion as False.

    @property
    def days(self) -> int:
        return int(self.sales.shape[1])

    @property
    def last_day(self) -> int:
        return self.first_day + self.days - 1

    def series_categorical(self) -> dict[str, np.ndarray]:
        """Raw categorical values of each series (len S), in CATEGORICAL_FIELDS."""
        out: dict[str, np.ndarray] = {"store_nbr": self.store_nbr, "item_nbr": self.item_nbr}
        item_pos = np.searchsorted(self.items["item_nbr"], self.item_nbr)
        store_pos = np.searchsorted(self.stores["store_nbr"], self.store_nbr)
        for name in ITEM_FIELDS:
            out[name] = self.items[name][item_pos]
        for name in STORE_FIELDS:
            out[name] = self.stores[name][store_pos]
        return out


def read_sales(paths: Iterable[Path | str]) -> pd.DataFrame:
    """Read the prepared sales files (same schema) into one frame of the columns features need."""
    frames = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise HistoryError(f"{path}: not found (run the data stages first: dvc repro split)")
        names = set(pq.read_schema(path).names)
        missing = [c for c in SALES_COLUMNS if c not in names]
        if missing:
            raise HistoryError(f"{path}: missing column(s) {', '.join(missing)} "
                               "(see pipeline/schema.py PREPARED_SALES)")
        frames.append(pd.read_parquet(path, columns=list(SALES_COLUMNS)))
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if frame.empty:
        raise HistoryError(f"{', '.join(str(p) for p in paths)}: no rows")
    return frame


def _day_numbers(dates: pd.Series) -> np.ndarray:
    return dates.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype(np.int64)


def _text(values) -> np.ndarray:
    return np.asarray(pd.Series(values).astype(str).to_numpy(), dtype=str)


NS_PER_DAY = 86_400 * 10**9
KEY_COLUMNS = ("date", "store_nbr", "item_nbr")


def _series_keys(store: np.ndarray, item: np.ndarray) -> np.ndarray:
    return np.asarray(store, np.int64) * (1 << 32) + np.asarray(item, np.int64)


def _arrow_days(column: pa.ChunkedArray) -> np.ndarray:
    """Day numbers of a timestamp[ns] column (midnights) without a datetime64 round trip."""
    return column.cast(pa.int64()).to_numpy() // NS_PER_DAY


class _HistoryBuilder:
    """Scatters prepared rows, chunk by chunk, into the dense arrays of known series and days."""

    def __init__(self, keys: np.ndarray, first_day: int, n_days: int, promo_known_column: bool = True):
        """``promo_known_column`` False: the rows carry no ``onpromotion_known`` (every promotion counts as given)."""
        self.keys, self.first_day, self.n_days = keys, first_day, n_days
        self.promo_known_column = promo_known_column
        self.store_nbr = np.unique(keys >> 32)
        never = np.iinfo(np.int64).max
        self._first_sale = np.full(self.store_nbr.size, never, np.int64)  # per store: the day of its first sale
        self._promo_from = np.full(self.store_nbr.size, never, np.int64)  # ... of its first promotion given
        self._promo_empty: np.ndarray | None = None  # [S, D] bool: sale rows without a promotion (made when one is)
        self.sales = np.zeros((keys.size, n_days), np.float32)
        self.promo = np.zeros((keys.size, n_days), np.uint8)
        self.observed = np.zeros((keys.size, n_days), bool)
        self.perishable = np.zeros(keys.size, bool)
        self.holidays = np.zeros((self.store_nbr.size, n_days, len(HOLIDAY_FLAGS)), np.uint8)
        self._items: list[dict] = []
        self._stores: list[dict] = []

    def add(self, source: str, day: np.ndarray, column) -> None:
        """Rows of one chunk: ``day`` numbers (already within the window) and ``column(name)`` -> numpy."""
        if day.size == 0:
            return
        store, item = column("store_nbr"), column("item_nbr")
        series = np.searchsorted(self.keys, _series_keys(store, item))
        col = day - self.first_day
        flat = series * self.n_days + col
        order = np.argsort(flat, kind="stable")
        repeated = np.flatnonzero(flat[order][1:] == flat[order][:-1])
        seen = self.observed[series, col]
        if repeated.size or seen.any():
            r = int(order[repeated[0]]) if repeated.size else int(np.flatnonzero(seen)[0])
            raise HistoryError(f"{source}: duplicate row for store {store[r]}, item {item[r]}, "
                               f"date {np.datetime64(int(day[r]), 'D')}")
        units = np.asarray(column("unit_sales"), np.float32)
        if not np.isfinite(units).all():
            r = int(np.flatnonzero(~np.isfinite(units))[0])
            raise HistoryError(f"{source}: unit_sales: non-finite value {units[r]} "
                               f"for store {store[r]}, item {item[r]}")
        # Negative values (returns kept by prepare.returns=keep) sell nothing on that day for the model.
        self.sales[series, col] = np.maximum(units, 0)
        self.promo[series, col] = column("onpromotion")
        self.observed[series, col] = True
        perishable = np.asarray(column("perishable"), bool)
        self.perishable[series] = perishable
        store_pos = np.searchsorted(self.store_nbr, store)
        known = np.asarray(column(PROMO_KNOWN_COLUMN), bool) if self.promo_known_column else np.ones(day.size, bool)
        sold = units != 0  # a zero row is (almost always) a day the grid filled
        np.minimum.at(self._first_sale, store_pos[sold], day[sold])
        np.minimum.at(self._promo_from, store_pos[known], day[known])
        empty = ~known & sold
        if empty.any():
            if self._promo_empty is None:
                self._promo_empty = np.zeros(self.sales.shape, bool)
            self._promo_empty[series[empty], col[empty]] = True
        for j, name in enumerate(HOLIDAY_FLAGS):
            self.holidays[store_pos, col, j] = column(name)
        _, first_item = np.unique(item, return_index=True)
        self._items.append({"item_nbr": np.asarray(item)[first_item], "family": _text(column("family", first_item)),
                            "class": np.asarray(column("class", first_item)), "perishable": perishable[first_item]})
        _, first_store = np.unique(store, return_index=True)
        self._stores.append({"store_nbr": np.asarray(store)[first_store],
                             "city": _text(column("city", first_store)),
                             "store_type": _text(column("store_type", first_store)),
                             "cluster": np.asarray(column("cluster", first_store))})

    @staticmethod
    def _table(parts: list[dict], key: str) -> dict[str, np.ndarray]:
        merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        _, first = np.unique(merged[key], return_index=True)
        return {name: values[first] for name, values in merged.items()}

    def finish(self) -> SalesHistory:
        items = self._table(self._items, "item_nbr")
        items = {"item_nbr": items["item_nbr"].astype(np.int32), "family": items["family"],
                 "class": items["class"].astype(np.int32), "perishable": items["perishable"].astype(np.int32)}
        stores = self._table(self._stores, "store_nbr")
        stores = {"store_nbr": stores["store_nbr"].astype(np.int32), "city": stores["city"],
                  "store_type": stores["store_type"], "cluster": stores["cluster"].astype(np.int32)}
        return SalesHistory(first_day=self.first_day, store_nbr=(self.keys >> 32).astype(np.int32),
                            item_nbr=(self.keys & 0xFFFFFFFF).astype(np.int32), sales=self.sales, promo=self.promo,
                            observed=self.observed, perishable=self.perishable, items=items, stores=stores,
                            holidays=self.holidays, promo_known=self._promo_known())

    def _promo_known(self) -> np.ndarray | None:
        """SalesHistory.promo_known: a promotion is known where the data gave it, and on a day the grid filled
        (no sale: not on promotion, the Kaggle practice prepare follows), except before the store's first
        promotion given when it sold earlier; a sale without one is unknown. None when every day is known."""
        late = self._promo_from > self._first_sale
        if self._promo_empty is None and not late.any():
            return None
        known = np.ones(self.sales.shape, bool) if self._promo_empty is None else ~self._promo_empty
        series_store = np.searchsorted(self.store_nbr, self.keys >> 32)
        for k in np.flatnonzero(late):
            known[series_store == k, :int(np.clip(self._promo_from[k] - self.first_day, 0, self.n_days))] = False
        return known


def build_history(frame: pd.DataFrame, first_day: int | None = None, last_day: int | None = None) -> SalesHistory:
    """Dense arrays from prepared rows in memory (one row per date, store, item); files: ``load_history``."""
    day = _day_numbers(frame["date"])
    first_day = int(day.min()) if first_day is None else int(first_day)
    last_day = int(day.max()) if last_day is None else int(last_day)
    keep = (day >= first_day) & (day <= last_day)
    frame, day = frame.loc[keep], day[keep]
    if frame.empty:
        raise HistoryError("sales: no rows between the first and last day")
    keys = np.unique(_series_keys(frame["store_nbr"].to_numpy(), frame["item_nbr"].to_numpy()))
    builder = _HistoryBuilder(keys, first_day, last_day - first_day + 1, PROMO_KNOWN_COLUMN in frame.columns)

    def column(name, index=None):
        values = frame[name].to_numpy()
        return values if index is None else values[index]

    builder.add("sales", day, column)
    return builder.finish()


def _open_sales(paths: Iterable[Path | str]) -> list[tuple[Path, pq.ParquetFile]]:
    files = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise HistoryError(f"{path}: not found (run the data stages first: dvc repro split)")
        parquet = pq.ParquetFile(path)
        missing = [c for c in SALES_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise HistoryError(f"{path}: missing column(s) {', '.join(missing)} "
                               "(see pipeline/schema.py PREPARED_SALES)")
        files.append((path, parquet))
    return files


def _day_bounds(parquet: pq.ParquetFile, group: int) -> tuple[int, int] | None:
    """(first, last) day of a row group from its statistics; None when they are missing (then read it)."""
    stats = parquet.metadata.row_group(group).column(parquet.schema_arrow.get_field_index("date")).statistics
    if stats is None or not stats.has_min_max:
        return None
    low, high = (np.datetime64(v, "ns").astype("datetime64[D]").astype(np.int64) for v in (stats.min, stats.max))
    return int(low), int(high)


def declared_last_day(parquet: pq.ParquetFile) -> int:
    """The last day a split file says it covers (``TRAIN_LAST_DAY_KEY``), rows or not; very early when it says none."""
    value = (parquet.schema_arrow.metadata or {}).get(TRAIN_LAST_DAY_KEY)
    return int(np.datetime64(value.decode(), "D").astype(np.int64)) if value else -10**9


def load_history(paths: Iterable[Path | str], days: int | None = None, progress: bool = False) -> SalesHistory:
    """Dense history of the last ``days`` days (None: all) of prepared sales files, read row group by row group.

    Two passes over the row groups: the first reads the key columns (which
    series and days exist), the second the feature columns of the days kept,
    scattered straight into the arrays. Row groups wholly before the window are
    skipped by their statistics.
    """
    files = _open_sales(paths)
    groups = [(path, parquet, g) for path, parquet in files for g in range(parquet.num_row_groups)]
    if not sum(parquet.metadata.num_rows for _, parquet in files):
        raise HistoryError(f"{', '.join(str(p) for p, _ in files)}: no rows")
    bounds = [_day_bounds(parquet, g) for _, parquet, g in groups]
    if all(b is not None for b in bounds):
        last_day = max(b[1] for b in bounds)
    else:
        last_day = max(int(_arrow_days(parquet.read_row_group(g, columns=["date"]).column(0)).max(initial=-10**9))
                       for _, parquet, g in groups)
    last_day = max([last_day] + [declared_last_day(parquet) for _, parquet in files])
    floor = -10**9 if days is None else last_day - int(days) + 1
    groups = [group for group, b in zip(groups, bounds) if b is None or b[1] >= floor]

    key_parts, first_seen = [], []
    for path, parquet, g in tqdm(groups, desc="history: series", unit="group",
                                 **bar_options(progress), leave=False):
        table = parquet.read_row_group(g, columns=list(KEY_COLUMNS))
        day = _arrow_days(table.column("date"))
        keep = day >= floor
        if keep.any():
            first_seen.append(int(day[keep].min()))
            key_parts.append(np.unique(_series_keys(table.column("store_nbr").to_numpy()[keep],
                                                    table.column("item_nbr").to_numpy()[keep])))
    if not key_parts:
        raise HistoryError(f"{', '.join(str(p) for p, _ in files)}: no rows in the last {days} days")
    first_day = min(first_seen) if days is None else floor
    with_known = all(PROMO_KNOWN_COLUMN in parquet.schema_arrow.names for _, parquet in files)
    builder = _HistoryBuilder(np.unique(np.concatenate(key_parts)), first_day, last_day - first_day + 1, with_known)
    del key_parts
    columns = list(SALES_COLUMNS) + ([PROMO_KNOWN_COLUMN] if with_known else [])

    for path, parquet, g in tqdm(groups, desc="history: days", unit="group",
                                 **bar_options(progress), leave=False):
        table = parquet.read_row_group(g, columns=columns)
        day = _arrow_days(table.column("date"))
        keep = np.flatnonzero(day >= floor)
        if keep.size < table.num_rows:
            table, day = table.take(pa.array(keep)), day[keep]

        def column(name, index=None, table=table):
            values = table.column(name)
            if index is not None:
                values = values.take(pa.array(index))
            if pa.types.is_dictionary(values.type):
                values = values.cast(values.type.value_type)
            return values.to_numpy()

        builder.add(f"{path} (row group {g})", day, column)
    history = builder.finish()
    if progress:
        print(f"history: {history.sales.shape[0]:,} series x {history.days} days "
              f"({np.datetime64(history.first_day, 'D')} .. {np.datetime64(history.last_day, 'D')}), "
              f"{int(history.observed.sum()):,} grid rows, "
              f"{(history.sales.nbytes + history.promo.nbytes + history.observed.nbytes) / 2**30:.2f} GiB", flush=True)
    return history


def calendar_flags(frame: pd.DataFrame, day: np.ndarray, store_nbr: np.ndarray, first_day: int,
                   n_days: int) -> np.ndarray:
    """Holiday flags per store and day, [K, n_days, flags], from the prepared rows (which carry them)."""
    store_pos = np.searchsorted(store_nbr, frame["store_nbr"].to_numpy(np.int64))
    flags = np.zeros((store_nbr.size, n_days, len(HOLIDAY_FLAGS)), np.uint8)
    for j, name in enumerate(HOLIDAY_FLAGS):
        flags[store_pos, day - first_day, j] = frame[name].to_numpy(bool)
    return flags


def future_calendar(holidays_path: Path | str, store_nbr: np.ndarray, first_day: int, n_days: int) -> np.ndarray:
    """Holiday flags of days after the data (the forecast horizon), from prepare's holidays side table."""
    path = Path(holidays_path)
    if not path.exists():
        raise HistoryError(f"{path}: not found (written by the prepare stage)")
    table = pd.read_parquet(path)
    missing = [c for c in ("date", "store_nbr") + HOLIDAY_FLAGS if c not in table.columns]
    if missing:
        raise HistoryError(f"{path}: missing column(s) {', '.join(missing)}")
    day = _day_numbers(table["date"])
    keep = (day >= first_day) & (day < first_day + n_days) & np.isin(table["store_nbr"].to_numpy(np.int64), store_nbr)
    table, day = table.loc[keep], day[keep]
    flags = calendar_flags(table, day, store_nbr, first_day, n_days)
    covered = np.zeros((store_nbr.size, n_days), bool)
    covered[np.searchsorted(store_nbr, table["store_nbr"].to_numpy(np.int64)), day - first_day] = True
    if not covered.all():
        s, d = np.argwhere(~covered)[0]
        missing_day = np.datetime64(int(first_day + d), 'D')
        raise HistoryError(f"{path}: no calendar row for store {store_nbr[s]} on {missing_day}")
    return flags


def target_rows(history: SalesHistory, series: np.ndarray, origin_cols: np.ndarray, horizon: int,
                observed_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair index, horizon, target column) of the rows of (series, origin column) pairs, pair-major, then horizon:
    the targets inside the arrays (and, with ``observed_only``, in the grid). ``rows_for_pairs`` builds these rows."""
    series, origin_cols = np.asarray(series, np.int64), np.asarray(origin_cols, np.int64)
    pair = np.repeat(np.arange(series.size), horizon)
    h = np.tile(np.arange(1, horizon + 1), series.size)
    target_col = origin_cols[pair] + h
    keep = target_col < history.days
    if observed_only:
        keep &= history.observed[series[pair], np.minimum(target_col, history.days - 1)]
    return pair[keep], h[keep], target_col[keep]


def promotion_known(history: SalesHistory, series: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether the data gave the promotion of each (series, day column) (``_HistoryBuilder._promo_known``)."""
    if history.promo_known is None:
        return np.ones(np.shape(series), bool)
    return history.promo_known[series, cols]


def rows_for_pairs(history: SalesHistory, series: np.ndarray, origin_cols: np.ndarray, history_days: int,
                   horizon: int, observed_only: bool = True, categorical: dict[str, np.ndarray] | None = None,
                   ) -> tuple[FeatureRows, np.ndarray, np.ndarray, np.ndarray]:
    """Feature inputs of (series, origin column) pairs, each for targets origin+1..origin+horizon.

    Rows are pair-major, then horizon; ``rows.sales``/``promo`` hold one window per pair
    (``rows.window``: which). Returns (rows, target units, perishable flags,
    series index) for the rows whose target day lies in the arrays (and, with
    ``observed_only``, exists in the grid). ``categorical``: ``history.series_categorical()``,
    when the caller already has it (streaming calls this once per chunk).
    """
    series = np.asarray(series, np.int64)
    origin_cols = np.asarray(origin_cols, np.int64)
    if origin_cols.size and int(origin_cols.min()) - history_days + 1 < 0:
        raise FeatureInputError(f"origin column {int(origin_cols.min())}: "
                                f"needs {history_days} days of history before it")
    pair, h, target_col = target_rows(history, series, origin_cols, horizon, observed_only)
    row_series = series[pair]
    # Each pair's window once (rows.window says which one a row uses): the window features are per pair.
    used, pair = np.unique(pair, return_inverse=True)
    window = origin_cols[used][:, None] + np.arange(1 - history_days, 1)[None, :]
    pair_series = series[used][:, None]
    store_pos = np.searchsorted(history.stores["store_nbr"], history.store_nbr)
    categorical = history.series_categorical() if categorical is None else categorical
    rows = FeatureRows(
        sales=history.sales[pair_series, window], promo=history.promo[pair_series, window], window=pair,
        origin_day=history.first_day + origin_cols[used][pair], horizon=h,
        target_promo=history.promo[row_series, target_col],
        holidays=history.holidays[store_pos[row_series], target_col],
        categorical={name: values[row_series] for name, values in categorical.items()},
    )
    return rows, history.sales[row_series, target_col], history.perishable[row_series], row_series


def rows_at_origin(history: SalesHistory, origin_col: int, history_days: int, horizon: int,
                   observed_only: bool = True) -> tuple[FeatureRows, np.ndarray, np.ndarray, np.ndarray]:
    """Feature inputs of every store×item for targets origin+1..origin+horizon (see ``rows_for_pairs``)."""
    n_series = history.sales.shape[0]
    return rows_for_pairs(history, np.arange(n_series), np.full(n_series, origin_col), history_days, horizon,
                          observed_only)


def closed_stores(history: SalesHistory, origin_col: int) -> dict[int, int]:
    """The stores that have closed for good by ``origin_col``, each with the day number of its last row.

    Prepare decides it (``prepare.store_grid_end``: no row on train.csv's last ``prepare.closed_after_days`` sales
    days) and ends such a store's grid at its last row, where an open store's runs to the last sales day (and one
    shut for fewer days keeps its zero rows). So it is read here, not decided again: a store whose grid rows end
    before the last sales day up to the origin has closed, its last row its last sales day. A store with no row up
    to the origin (it opens later) has not."""
    observed = history.observed[:, :origin_col + 1]
    if observed.size == 0 or history.store_nbr.size == 0:
        return {}
    series_store = np.asarray(history.store_nbr, np.int64)  # sorted: each store's series are one run
    starts = np.flatnonzero(np.r_[True, series_store[1:] != series_store[:-1]])
    by_store = np.logical_or.reduceat(observed, starts, axis=0)  # [stores, days]: any grid row of the store
    sales_days = by_store.any(axis=0)
    if not sales_days.any():
        return {}
    last_sales_col = int(np.flatnonzero(sales_days)[-1])
    has_row = by_store.any(axis=1)
    last_col = by_store.shape[1] - 1 - np.argmax(by_store[:, ::-1], axis=1)
    closed = has_row & (last_col < last_sales_col)
    return {int(series_store[starts[k]]): history.first_day + int(last_col[k]) for k in np.flatnonzero(closed)}


def snapshot_at(history: SalesHistory, origin_col: int, history_days: int, calendar: np.ndarray) -> HistorySnapshot:
    """The bundle's history snapshot: the window up to the origin, and the horizon's calendar."""
    if origin_col - history_days + 1 < 0:
        raise FeatureInputError(f"origin column {origin_col}: needs {history_days} days of history before it")
    window = slice(origin_col - history_days + 1, origin_col + 1)
    origin_day = history.first_day + origin_col
    return HistorySnapshot(
        origin_day=origin_day, store_nbr=history.store_nbr.copy(), item_nbr=history.item_nbr.copy(),
        sales=np.ascontiguousarray(history.sales[:, window]), promo=np.ascontiguousarray(history.promo[:, window]),
        items={k: v.copy() for k, v in history.items.items()}, stores={k: v.copy() for k, v in history.stores.items()},
        calendar_days=origin_day + 1 + np.arange(calendar.shape[1], dtype=np.int64), calendar_holidays=calendar,
        closed_stores=closed_stores(history, origin_col),
    )


assert set(CATEGORICAL_FIELDS) == {"store_nbr", "item_nbr", *ITEM_FIELDS, *STORE_FIELDS}
