"""A request's features from a loaded bundle, with the work its store×item alone decides done once.

``build_features(rows_from_snapshot(...))`` on one request row spends most of its time on ~25 reductions over
the store×item's history window (means, shares of sale days, promotion response, the year-ago base) and on
lookups; the request's date and promotion flag change none of them. ``ServedFeatures`` keeps them per
store×item (``features.SeriesWindow``) in a least-recently-used cache of at most ``max_series`` entries (the app's
SHELFCAST_SERIES_CACHE_ENTRIES, app/config.py), and from
the load what depends on the target day alone (its horizon and calendar columns, each store's holiday flags) and
each store's and item's vocabulary ids; a request then adds its target weekday's and year-ago columns (four
small reductions) and its flag. The features are bit-identical to that path's (``features.row_values``, one
definition for both; tests/pipeline/models/test_served_features.py). An entry holds the window's log1p sales
(8 bytes a day: 3,136 at 392 days) and under 1,536 bytes more; the app's default bound, 4,096 entries, is at most
19.1 MB a loaded bundle, whatever the number of series (Favorita's 4,100 items × 54 stores would take ~1 GB as
entries).
Rows that path would refuse, or more than SMALL_BATCH_ROWS, are left to it (``matrix`` answers None): it says why.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from pipeline.features import (HOLIDAY_FLAGS, SMALL_BATCH_ROWS, STORE_FIELDS, ITEM_FIELDS, UNKNOWN_ID,
                               FeatureInputError, FeatureMatrix, FeatureSpec, HistorySnapshot, SeriesWindow,
                               Vocabularies, _equal_range, _series_lookup_small, _texts, row_values, series_history,
                               series_window, target_day_of)

ENTRY_BYTES_BEYOND_WINDOW = 1536  # an entry's memory beyond its window's 8 bytes a day (a test measures it)
_INT64 = (-(1 << 63), (1 << 63) - 1)


class ServedFeatures:
    """One bundle's request features (``matrix``), its store×items' window columns cached (see the module): at most
    ``max_series`` of them, 0 none."""

    def __init__(self, spec: FeatureSpec, vocab: Vocabularies, snapshot: HistorySnapshot, max_series: int):
        if max_series < 0:
            raise ValueError(f"max_series: must be >= 0, got {max_series!r}")
        self._spec, self._vocab, self._snapshot, self.max_series = spec, vocab, snapshot, max_series
        self._origin = int(snapshot.origin_day)
        days = min(int(np.asarray(snapshot.calendar_days).size), spec.horizon)  # beyond either: the path refuses
        self._targets = [target_day_of(spec, h, self._origin + h) for h in range(1, days + 1)]
        holidays = np.asarray(snapshot.calendar_holidays)
        self._usable = (np.shape(snapshot.sales)[1:] == np.shape(snapshot.promo)[1:] == (spec.history_days,)
                        and holidays.ndim == 3 and holidays.shape[1] >= days
                        and holidays.shape[2] == len(HOLIDAY_FLAGS))  # else the path says what is wrong
        self._holidays = holidays[:, :days].astype(np.float64).tolist() if self._usable else []
        self._series: OrderedDict[tuple[int, int], SeriesWindow] = OrderedDict()
        self._lock = threading.Lock()  # the reload thread's warm-up may run beside a request
        self._stores: dict[int, tuple[int, list[int]]] = {}  # store -> (position, ids of store_nbr + STORE_FIELDS)
        self._items: dict[int, list[int]] = {}  # item of the snapshot's table -> ids of item_nbr + ITEM_FIELDS

    def __len__(self) -> int:
        """Store×items whose window columns are cached."""
        return len(self._series)

    def matrix(self, store_nbr, item_nbr, days, onpromotion) -> FeatureMatrix | None:
        """The features of request rows (integers; day numbers; 0/1 flags), or None where rows_from_snapshot and
        build_features must answer: more than SMALL_BATCH_ROWS rows, or a row they refuse (they say why)."""
        stores, items, days, flags = (_as_list(values) for values in (store_nbr, item_nbr, days, onpromotion))
        n = len(stores)
        if not (self._usable and 0 < n <= SMALL_BATCH_ROWS and len(items) == len(days) == len(flags) == n):
            return None
        rows = []
        for store, item, day, flag in zip(stores, items, days, flags):  # what rows_from_snapshot checks first
            if not (_is_int64(store) and _is_int64(item) and _is_int64(day) and _is_int64(flag) and flag in (0, 1)):
                return None
            horizon = int(day) - self._origin
            place = self._store(int(store)) if 1 <= horizon <= len(self._targets) else None
            if place is None:
                return None
            rows.append((int(store), int(item), horizon, float(flag), place))
        try:
            dense, categorical = [], []
            for store, item, horizon, flag, (position, store_ids) in rows:
                series = self._series_window(store, item)
                if series is None:
                    return None
                dense.append(row_values(self._spec, series, self._origin, self._targets[horizon - 1], flag,
                                        self._holidays[position][horizon - 1]))
                categorical.append(store_ids[:1] + self._item_ids(item) + store_ids[1:])
        except FeatureInputError:  # a category value the path refuses: it names the first such row
            return None
        return FeatureMatrix(dense=np.asarray(dense, dtype=np.float64).astype(np.float32),
                             categorical=np.asarray(categorical, dtype=np.int32))

    def _store(self, store: int) -> tuple[int, list[int]] | None:
        """The store's position in the snapshot's store table and its ids; None for a store not in it."""
        found = self._stores.get(store)
        if found is None:
            table = self._snapshot.stores
            lo, hi = _equal_range(table["store_nbr"], store)
            if lo >= hi:
                return None
            try:
                ids = [self._id("store_nbr", str(store))] + [self._id(name, _text_at(table[name], lo))
                                                             for name in STORE_FIELDS]
            except FeatureInputError:
                return None
            found = self._stores.setdefault(store, (lo, ids))
        return found

    def _item_ids(self, item: int) -> list[int]:
        ids = self._items.get(item)
        if ids is None:
            table = self._snapshot.items
            lo, hi = _equal_range(table["item_nbr"], item)
            ids = [self._id("item_nbr", str(item))] + [self._id(name, _text_at(table[name], lo) if lo < hi else "")
                                                       for name in ITEM_FIELDS]
            if lo < hi:  # an item of the table: at most the table's items are kept
                self._items[item] = ids
        return ids

    def _id(self, field_name: str, text: str) -> int:
        return self._vocab.ids(field_name).get(text, UNKNOWN_ID)

    def _series_window(self, store: int, item: int) -> SeriesWindow | None:
        """The store×item's window columns (all-zero history for one without any); None if its history is not
        finite, non-negative units (build_features names the row and day)."""
        key = (store, item)
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                self._series.move_to_end(key)
                return series
        position, known = _series_lookup_small(self._snapshot, [store], [item])
        sales, promo = series_history(self._snapshot, position, known)
        if not np.isfinite(sales).all() or (sales < 0).any():
            return None
        log_sales = np.log1p(np.asarray(sales, dtype=np.float64))  # as _build_small: one [1, W] row
        series = series_window(self._spec, log_sales[0], log_sales[0] > 0, np.asarray(promo, dtype=np.float64)[0])
        if self.max_series:
            with self._lock:
                self._series[key] = series
                self._series.move_to_end(key)
                while len(self._series) > self.max_series:
                    self._series.popitem(last=False)
        return series


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _is_int64(value) -> bool:
    """An integer (a bool counts, as NumPy converts it) that int64 holds: what the path converts unchanged."""
    return isinstance(value, (int, np.integer)) and _INT64[0] <= int(value) <= _INT64[1]


def _text_at(column: np.ndarray, position: int) -> str:
    """One value of a snapshot table's column as rows_from_snapshot's text (through NumPy's str, as there)."""
    return np.asarray(_texts(column[position:position + 1]), dtype=str).tolist()[0]
