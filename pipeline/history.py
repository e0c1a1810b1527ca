"""Prepared sales (Parquet) -> dense per store×item history arrays, and training rows from them.

Training-only (pandas): the arrays are indexed [series, day], so the feature
inputs of any forecast origin are slices, and the history snapshot a bundle
ships is the last ``history_days`` columns up to the origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.features import (
    CATEGORICAL_FIELDS,
    HOLIDAY_FLAGS,
    ITEM_FIELDS,
    STORE_FIELDS,
    FeatureInputError,
    FeatureRows,
    HistorySnapshot,
)

SALES_COLUMNS = ("date", "store_nbr", "item_nbr", "unit_sales", "onpromotion", "family", "class", "perishable",
                 "city", "store_type", "cluster") + HOLIDAY_FLAGS


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
            raise HistoryError(f"{path}: missing column(s) {', '.join(missing)} (see pipeline/schema.py PREPARED_SALES)")
        frames.append(pd.read_parquet(path, columns=list(SALES_COLUMNS)))
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if frame.empty:
        raise HistoryError(f"{', '.join(str(p) for p in paths)}: no rows")
    return frame


def _day_numbers(dates: pd.Series) -> np.ndarray:
    return dates.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype(np.int64)


def _text(values) -> np.ndarray:
    return np.asarray(pd.Series(values).astype(str).to_numpy(), dtype=str)


def build_history(frame: pd.DataFrame, first_day: int | None = None, last_day: int | None = None) -> SalesHistory:
    """Dense arrays from prepared rows (one row per date, store, item)."""
    day = _day_numbers(frame["date"])
    first_day = int(day.min()) if first_day is None else int(first_day)
    last_day = int(day.max()) if last_day is None else int(last_day)
    keep = (day >= first_day) & (day <= last_day)
    frame, day = frame.loc[keep], day[keep]
    store = frame["store_nbr"].to_numpy(np.int64)
    item = frame["item_nbr"].to_numpy(np.int64)
    keys, series = np.unique(store * (1 << 32) + item, return_inverse=True)
    n_days = last_day - first_day + 1
    col = day - first_day

    duplicate = np.bincount(series * n_days + col, minlength=keys.size * n_days) > 1
    if duplicate.any():
        flat = int(np.flatnonzero(duplicate)[0])
        s, d = divmod(flat, n_days)
        raise HistoryError(f"sales: duplicate row for store {keys[s] >> 32}, item {keys[s] & 0xFFFFFFFF}, "
                           f"date {np.datetime64(int(first_day + d), 'D')}")
    units = frame["unit_sales"].to_numpy(np.float32)
    if not np.isfinite(units).all():
        raise HistoryError("sales.unit_sales: non-finite value")
    sales = np.zeros((keys.size, n_days), np.float32)
    promo = np.zeros((keys.size, n_days), np.uint8)
    observed = np.zeros((keys.size, n_days), bool)
    # Negative values (returns kept by prepare.returns=keep) sell nothing on that day for the model.
    sales[series, col] = np.maximum(units, 0)
    promo[series, col] = frame["onpromotion"].to_numpy(bool)
    observed[series, col] = True

    perishable = np.zeros(keys.size, bool)
    perishable[series] = frame["perishable"].to_numpy(bool)

    items_frame = frame.drop_duplicates("item_nbr").sort_values("item_nbr")
    items = {"item_nbr": items_frame["item_nbr"].to_numpy(np.int32),
             "family": _text(items_frame["family"]), "class": items_frame["class"].to_numpy(np.int32),
             "perishable": items_frame["perishable"].to_numpy(bool).astype(np.int32)}
    stores_frame = frame.drop_duplicates("store_nbr").sort_values("store_nbr")
    stores = {"store_nbr": stores_frame["store_nbr"].to_numpy(np.int32), "city": _text(stores_frame["city"]),
              "store_type": _text(stores_frame["store_type"]), "cluster": stores_frame["cluster"].to_numpy(np.int32)}

    holidays = calendar_flags(frame, day, stores["store_nbr"], first_day, n_days)
    return SalesHistory(first_day=first_day, store_nbr=(keys >> 32).astype(np.int32),
                        item_nbr=(keys & 0xFFFFFFFF).astype(np.int32), sales=sales, promo=promo, observed=observed,
                        perishable=perishable, items=items, stores=stores, holidays=holidays)


def calendar_flags(frame: pd.DataFrame, day: np.ndarray, store_nbr: np.ndarray, first_day: int, n_days: int) -> np.ndarray:
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
        raise HistoryError(f"{path}: no calendar row for store {store_nbr[s]} on {np.datetime64(int(first_day + d), 'D')}")
    return flags


def rows_at_origin(history: SalesHistory, origin_col: int, history_days: int, horizon: int,
                   observed_only: bool = True) -> tuple[FeatureRows, np.ndarray, np.ndarray, np.ndarray]:
    """Feature inputs of every store×item for targets origin+1..origin+horizon.

    Returns (rows, target units, perishable flags, series index) for the rows whose
    target day lies in the arrays (and, with ``observed_only``, exists in the grid).
    """
    if origin_col - history_days + 1 < 0:
        raise FeatureInputError(f"origin column {origin_col}: needs {history_days} days of history before it")
    n_series = history.sales.shape[0]
    horizons = np.arange(1, horizon + 1)
    horizons = horizons[origin_col + horizons < history.days]
    series = np.repeat(np.arange(n_series), horizons.size)
    h = np.tile(horizons, n_series)
    target_col = origin_col + h
    if observed_only:
        keep = history.observed[series, target_col]
        series, h, target_col = series[keep], h[keep], target_col[keep]
    window = slice(origin_col - history_days + 1, origin_col + 1)
    sales_window = history.sales[:, window]
    promo_window = history.promo[:, window]
    store_pos = np.searchsorted(history.stores["store_nbr"], history.store_nbr)
    categorical = {name: values[series] for name, values in history.series_categorical().items()}
    rows = FeatureRows(
        sales=sales_window[series], promo=promo_window[series],
        origin_day=np.full(series.size, history.first_day + origin_col, np.int64), horizon=h,
        target_promo=history.promo[series, target_col], holidays=history.holidays[store_pos[series], target_col],
        categorical=categorical,
    )
    return rows, history.sales[series, target_col], history.perishable[series], series


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
    )


assert set(CATEGORICAL_FIELDS) == {"store_nbr", "item_nbr", *ITEM_FIELDS, *STORE_FIELDS}
