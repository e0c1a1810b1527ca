"""Forecast features, computed the same way at training and at serving time.

Training-serving skew is the classic CD4ML failure, so there is exactly one
feature function, ``build_features``: training calls it on many rows at once
(``pipeline.history`` gathers the rows), the app calls it on one request
(``rows_from_snapshot`` gathers that row from a model bundle's history
snapshot). This module imports numpy and the standard library only: serving
must not need pandas, pyarrow or MLflow.

Everything is relative to a forecast *origin* (the last day whose sales are
known) and a target day ``origin + horizon`` (horizon 1..16):

* history of the store×item over the ``history_days`` days ending at the
  origin: mean log1p sales over several windows, the share of days with a
  sale, day-of-week means (the target's weekday over the last k weeks),
  days since the last sale, promotion history;
* the target day: its promotion flag, the horizon, its calendar (day of week,
  day of month, paydays on the 15th and the last day of the month) and its
  holidays by locale;
* with ``yearly`` (``history_days`` >= 392): the same weekday 52 weeks before
  the target (that day and its week), the four weeks before that year-ago
  origin, how the year-ago target week differed from them (the season's
  change, e.g. December or the school season), the year-over-year trend, a
  flag saying whether the series already sold back then (all zero when not),
  and the target's day of the year (sine and cosine);
* categorical ids (store, item, family, class, perishable, city, type,
  cluster) mapped through vocabularies saved in the bundle; id 0 is reserved
  for a value the model has never seen.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

# Same names and order as pipeline.schema.HOLIDAY_FLAGS (a test keeps them equal;
# schema imports pyarrow, which serving must not need).
HOLIDAY_FLAGS = ("is_national_holiday", "is_regional_holiday", "is_local_holiday", "is_work_day", "is_event")

# The categorical inputs, in the column order of the categorical matrix.
CATEGORICAL_FIELDS = ("store_nbr", "item_nbr", "family", "class", "perishable", "city", "store_type", "cluster")
ITEM_FIELDS = ("family", "class", "perishable")
STORE_FIELDS = ("city", "store_type", "cluster")
UNKNOWN_ID = 0
HORIZON_FEATURE = "horizon"  # the dense feature: days from the origin to the requested day, / spec.horizon
MAX_HORIZON = 16
YEAR_DAYS = 364  # 52 weeks: the year-ago day falls on the same weekday
YEAR_AGO_WEEK = 3  # the year-ago target week: that day +- 3 days
YEAR_AGO_BASE_DAYS = 28  # the weeks before the year-ago origin the season's change is measured against
YEARLY_HISTORY_DAYS = YEAR_DAYS + YEAR_AGO_BASE_DAYS  # the shortest window the yearly features fit in
# Up to this many rows build_features computes row by row (_build_small: a request's rows), above it with
# whole-array operations (_build_batch: training, evaluate); both give the same bits (tests/pipeline/models/
# test_features_small_batch.py). At one row the array version is ~20 NumPy reductions and 8 text conversions,
# each mostly call overhead.
SMALL_BATCH_ROWS = 4


class FeatureInputError(ValueError):
    """Inputs the features cannot be computed from; the message names the field and row."""


@dataclass(frozen=True)
class FeatureSpec:
    """The feature settings (params.yaml ``features:``), stored in every bundle."""

    history_days: int = 112
    mean_windows: tuple[int, ...] = (3, 7, 14, 28, 56, 112)
    dow_weeks: tuple[int, ...] = (4, 8, 16)
    promo_windows: tuple[int, ...] = (14, 56)
    horizon: int = MAX_HORIZON
    yearly: bool = False  # year-ago features and the target's day of year (needs history_days >= 392)

    def __post_init__(self):
        object.__setattr__(self, "mean_windows", tuple(int(w) for w in self.mean_windows))
        object.__setattr__(self, "dow_weeks", tuple(int(w) for w in self.dow_weeks))
        object.__setattr__(self, "promo_windows", tuple(int(w) for w in self.promo_windows))
        for name in ("mean_windows", "dow_weeks", "promo_windows"):
            windows = getattr(self, name)
            repeated = sorted({w for w in windows if windows.count(w) > 1})
            if repeated:  # the same feature column twice: work and a wider model for nothing
                raise FeatureInputError(f"features.{name}: {repeated[0]} is listed twice; list each window once")
        if not self.mean_windows + self.promo_windows + self.dow_weeks:
            raise FeatureInputError("features: mean_windows, dow_weeks and promo_windows are all empty; list at "
                                    "least one window")
        longest = max(self.mean_windows + self.promo_windows + tuple(7 * k for k in self.dow_weeks))
        if self.history_days < longest:
            raise FeatureInputError(f"features.history_days: {self.history_days} is shorter than the longest window "
                                    f"({longest} days)")
        if not 1 <= self.horizon <= MAX_HORIZON:
            raise FeatureInputError(f"features.horizon: must be 1..{MAX_HORIZON}, got {self.horizon}")
        if min(self.mean_windows + self.promo_windows + self.dow_weeks) < 1:
            raise FeatureInputError("features: every window must be at least 1")
        if not isinstance(self.yearly, bool):
            raise FeatureInputError(f"features.yearly: expected true or false, got {self.yearly!r}")
        if self.yearly and self.history_days < YEARLY_HISTORY_DAYS:
            raise FeatureInputError(f"features.history_days: {self.history_days} is too short for features.yearly "
                                    f"(the year-ago features need {YEARLY_HISTORY_DAYS} days)")

    @property
    def longest_window(self) -> int:
        """Days of real history an origin needs for its short-term windows (the yearly ones may predate the data)."""
        return max(self.mean_windows + self.promo_windows + tuple(7 * k for k in self.dow_weeks))

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping) -> FeatureSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def dense_feature_names(spec: FeatureSpec) -> list[str]:
    """Column names of the dense matrix, in order (drift statistics are keyed by them)."""
    names = [f"mean_log1p_{w}d" for w in spec.mean_windows]
    names += [f"sale_days_share_{w}d" for w in spec.mean_windows]
    names += [f"dow_mean_log1p_{k}w" for k in spec.dow_weeks]
    names += ["days_since_last_sale", "days_since_first_sale"]
    names += [f"promo_share_{w}d" for w in spec.promo_windows]
    names += ["mean_log1p_on_promo", "promo_uplift_log1p"]
    names += ["target_onpromotion", HORIZON_FEATURE]
    names += [f"target_dow_{d}" for d in range(7)]
    names += ["target_day_of_month", "target_is_payday", "target_is_day_after_payday", "target_days_to_payday"]
    names += [f"target_{flag}" for flag in HOLIDAY_FLAGS]
    if spec.yearly:
        names += ["year_ago_known", "year_ago_log1p", "year_ago_week_mean_log1p", "year_ago_base_mean_log1p",
                  "year_ago_season_change_log1p", "year_over_year_trend_log1p", "target_day_of_year_sin",
                  "target_day_of_year_cos"]
    return names


def horizon_days(feature_values, horizon: int) -> np.ndarray:
    """The horizon day (1 .. horizon) of each HORIZON_FEATURE value (build_features writes day / horizon)."""
    return np.rint(np.asarray(feature_values, np.float64) * horizon).astype(np.int64)


@dataclass
class FeatureRows:
    """Everything the features of N rows are computed from (one row per store×item×target day).

    ``sales``/``promo`` hold the ``history_days`` days ending at each row's origin
    (last column = the origin). ``categorical`` maps each of CATEGORICAL_FIELDS to
    N raw values (ints or strings; None/'' for unknown).

    Training rows come 16 to a (series, origin) pair, all with the same window:
    there ``sales``/``promo`` hold each *pair's* window once and ``window`` says
    which one row i uses, so the window's features are computed once per pair,
    not once per target day (the same numbers: each is a function of its window).
    """

    sales: np.ndarray  # [N, W] float, units sold (>= 0); [P, W] with ``window``
    promo: np.ndarray  # [N, W] 0/1; [P, W] with ``window``
    origin_day: np.ndarray  # [N] int64 days since 1970-01-01
    horizon: np.ndarray  # [N] int 1..spec.horizon
    target_promo: np.ndarray  # [N] 0/1
    holidays: np.ndarray  # [N, len(HOLIDAY_FLAGS)] 0/1 flags of the target day
    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    window: np.ndarray | None = None  # [N] int: row i's history is sales[window[i]]; None: its own row i

    def __len__(self) -> int:
        return int(np.asarray(self.horizon).shape[0])

    def window_index(self) -> np.ndarray:
        """Row -> its row of ``sales``/``promo``."""
        return np.arange(len(self)) if self.window is None else np.asarray(self.window, np.int64)


@dataclass
class FeatureMatrix:
    dense: np.ndarray  # [N, F] float32
    categorical: np.ndarray  # [N, C] int32 vocabulary ids


class Vocabularies:
    """Category value -> id maps; id 0 is reserved for values unseen in training."""

    def __init__(self, values: Mapping[str, Sequence[str]]):
        missing = [f for f in CATEGORICAL_FIELDS if f not in values]
        if missing:
            raise FeatureInputError(f"vocabularies: missing field(s) {', '.join(missing)}")
        self.values = {f: sorted({str(v) for v in values[f]}) for f in CATEGORICAL_FIELDS}
        self._sorted = {f: np.asarray(v, dtype=str) for f, v in self.values.items()}
        self._ids: dict[str, dict[str, int]] = {}  # text -> id, what encode() finds by searchsorted (built on use)

    @classmethod
    def fit(cls, categorical: Mapping[str, np.ndarray]) -> Vocabularies:
        return cls({f: np.unique(_as_text(categorical[f])) for f in CATEGORICAL_FIELDS})

    def size(self, field_name: str) -> int:
        """Number of ids including the reserved unknown id."""
        return len(self.values[field_name]) + 1

    def encode(self, field_name: str, raw) -> np.ndarray:
        text = _as_text(raw)
        table = self._sorted[field_name]
        if table.size == 0:
            return np.zeros(text.shape, dtype=np.int32)
        pos = np.searchsorted(table, text)
        pos_clipped = np.minimum(pos, table.size - 1)
        found = table[pos_clipped] == text
        return np.where(found, pos_clipped + 1, UNKNOWN_ID).astype(np.int32)

    def ids(self, field_name: str) -> dict[str, int]:
        """Text -> id of one field: ``encode``'s answer for one value by a dict lookup (absent: UNKNOWN_ID)."""
        table = self._ids.get(field_name)
        if table is None:
            table = {}
            for position, text in enumerate(self._sorted[field_name].tolist()):  # the texts searchsorted compares
                table.setdefault(text, position + 1)  # the first of equal texts, as searchsorted finds it
            self._ids[field_name] = table
        return table

    def to_json(self) -> dict:
        return {f: list(v) for f, v in self.values.items()}

    @classmethod
    def from_json(cls, data: Mapping) -> Vocabularies:
        return cls(data)


def _as_text(raw) -> np.ndarray:
    """Category values as text: ints as decimal, missing (None) as the empty string."""
    array = np.asarray(raw)
    if array.dtype.kind in "iub":
        return array.astype(np.int64).astype(str)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise FeatureInputError("categorical value: expected whole numbers, got a fractional or missing float")
        return array.astype(np.int64).astype(str)
    return np.asarray(["" if v is None else str(v) for v in array.ravel()], dtype=str).reshape(array.shape)


def calendar_of(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(day of week Monday=0, day of month, is payday, days to next payday) of day numbers."""
    days = np.asarray(days, dtype=np.int64)
    dates = days.astype("datetime64[D]")
    month = dates.astype("datetime64[M]")
    first = month.astype("datetime64[D]").astype(np.int64)
    next_first = (month + 1).astype("datetime64[D]").astype(np.int64)
    day_of_month = days - first + 1
    last_day = next_first - 1
    dow = (days + 3) % 7  # 1970-01-01 was a Thursday
    is_payday = (day_of_month == 15) | (days == last_day)
    to_payday = np.where(day_of_month <= 15, 15 - day_of_month, last_day - days)
    return dow, day_of_month, is_payday, to_payday


def _check_rows(spec: FeatureSpec, rows: FeatureRows) -> int:
    n = len(rows)
    windows = n if rows.window is None else int(np.shape(rows.sales)[0])
    if rows.window is not None:
        index = np.asarray(rows.window)
        if index.shape != (n,) or index.dtype.kind not in "iu":
            raise FeatureInputError(f"window: expected {n} integer row numbers, got shape {index.shape}")
        if n and (int(index.min()) < 0 or int(index.max()) >= windows):
            raise FeatureInputError(f"window: row numbers must be 0..{windows - 1}")
    for name, shape in (("sales", (windows, spec.history_days)), ("promo", (windows, spec.history_days)),
                        ("origin_day", (n,)), ("target_promo", (n,)), ("holidays", (n, len(HOLIDAY_FLAGS)))):
        got = np.shape(getattr(rows, name))
        if got != shape:
            raise FeatureInputError(f"{name}: expected shape {shape}, got {got}")
    sales = np.asarray(rows.sales)
    bad = ~np.isfinite(sales) | (sales < 0)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise FeatureInputError(f"sales: row {r}, day {c}: expected finite non-negative units, got {sales[r, c]!r}")
    horizon = np.asarray(rows.horizon)
    out = (horizon < 1) | (horizon > spec.horizon)
    if out.any():
        r = int(np.flatnonzero(out)[0])
        raise FeatureInputError(f"horizon: row {r}: must be 1..{spec.horizon} days after the origin, got {horizon[r]}")
    for name in CATEGORICAL_FIELDS:
        if name not in rows.categorical:
            raise FeatureInputError(f"categorical.{name}: missing")
        if np.shape(rows.categorical[name]) != (n,):
            raise FeatureInputError(f"categorical.{name}: expected shape {(n,)}, "
                                    f"got {np.shape(rows.categorical[name])}")
    return n


def build_features(spec: FeatureSpec, vocab: Vocabularies, rows: FeatureRows) -> FeatureMatrix:
    """The one feature function (training: many rows; serving: one).

    What depends on the history window alone is computed once per window row
    (``FeatureRows.window``), then spread to the rows using it; the same arithmetic
    either way, so the features are bit-identical to a row-by-row build. Up to
    SMALL_BATCH_ROWS rows (a request) take ``_build_small``, the same arithmetic per row
    without the whole-array calls; more rows (training, evaluate) take ``_build_batch``.
    """
    n = _check_rows(spec, rows)
    if 0 < n <= SMALL_BATCH_ROWS:
        return _build_small(spec, vocab, rows, n)
    return _build_batch(spec, vocab, rows, n)


def _build_batch(spec: FeatureSpec, vocab: Vocabularies, rows: FeatureRows, n: int) -> FeatureMatrix:
    """build_features with whole-array operations (any number of rows; what training runs)."""
    w = spec.history_days
    window = rows.window_index()
    log_sales = np.log1p(np.asarray(rows.sales, dtype=np.float64))
    promo = np.asarray(rows.promo, dtype=np.float64)
    sold = log_sales > 0
    horizon = np.asarray(rows.horizon, dtype=np.int64)
    origin = np.asarray(rows.origin_day, dtype=np.int64)
    target_day = origin + horizon

    per_window: list[np.ndarray] = []  # columns that depend on the window only: one value per window row
    per_window += [log_sales[:, w - k:].mean(axis=1) for k in spec.mean_windows]
    per_window += [sold[:, w - k:].mean(axis=1) for k in spec.mean_windows]
    columns: list[np.ndarray] = [c[window] for c in per_window]

    # Same weekday as the target day, over the last k weeks of the window.
    origin_dow = (origin + 3) % 7
    target_dow = (target_day + 3) % 7
    last_same_dow = (w - 1) - ((origin_dow - target_dow) % 7)  # column of the latest such day
    row_window = window[:, None]
    for k in spec.dow_weeks:
        cols = last_same_dow[:, None] - 7 * np.arange(k)[None, :]
        columns.append(log_sales[row_window, cols].mean(axis=1))

    any_sale = sold.any(axis=1)
    last_sale = np.where(any_sale, (w - 1) - np.argmax(sold[:, ::-1], axis=1), -1)
    first_sale = np.where(any_sale, np.argmax(sold, axis=1), w)
    per_window = [np.where(any_sale, (w - 1 - last_sale), w) / w, np.where(any_sale, (w - 1 - first_sale), 0) / w]
    per_window += [promo[:, w - k:].mean(axis=1) for k in spec.promo_windows]
    # The series' own promotion response: mean log1p on promotion days, and its lift over the other days.
    windows = log_sales.shape[0]
    promo_days = promo.sum(axis=1)
    on_promo = np.divide((log_sales * promo).sum(axis=1), promo_days, out=np.zeros(windows), where=promo_days > 0)
    off_days = w - promo_days
    off_promo = np.divide((log_sales * (1 - promo)).sum(axis=1), off_days, out=np.zeros(windows),
                          where=off_days > 0)
    per_window += [on_promo, np.where((promo_days > 0) & (off_days > 0), on_promo - off_promo, 0.0)]
    columns += [c[window] for c in per_window]

    columns.append(np.asarray(rows.target_promo, dtype=np.float64))
    columns.append(horizon / spec.horizon)
    dow, day_of_month, is_payday, to_payday = calendar_of(target_day)
    columns += [(dow == d).astype(np.float64) for d in range(7)]
    after_payday = (day_of_month == 1) | (day_of_month == 16)
    columns += [day_of_month / 31.0, is_payday.astype(np.float64), after_payday.astype(np.float64), to_payday / 16.0]
    holidays = np.asarray(rows.holidays, dtype=np.float64)
    columns += [holidays[:, j] for j in range(len(HOLIDAY_FLAGS))]
    if spec.yearly:
        columns += _yearly_columns(log_sales, sold, window, horizon, target_day)

    width = len(dense_feature_names(spec))
    dense = np.stack(columns, axis=1).astype(np.float32) if n else np.zeros((0, width), np.float32)
    categorical = np.stack([vocab.encode(f, rows.categorical[f]) for f in CATEGORICAL_FIELDS], axis=1) if n \
        else np.zeros((0, len(CATEGORICAL_FIELDS)), np.int32)
    return FeatureMatrix(dense=np.ascontiguousarray(dense),
                         categorical=np.ascontiguousarray(categorical, dtype=np.int32))


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_FIRST_DAY, _LAST_DAY = dt.date.min.toordinal() - _EPOCH_ORDINAL, dt.date(9999, 11, 30).toordinal() - _EPOCH_ORDINAL
_YEAR_AGO_WEEK_OFFSETS = np.arange(-YEAR_AGO_WEEK, YEAR_AGO_WEEK + 1)
_DOW_STEPS: dict[int, np.ndarray] = {}  # k -> 7 * arange(k): the columns of the last k same weekdays, latest first


def _build_small(spec: FeatureSpec, vocab: Vocabularies, rows: FeatureRows, n: int) -> FeatureMatrix:
    """build_features row by row, for a request's few rows: the same operations as ``_build_batch`` on each row's
    values, in the same order, so the same bits, without the batch version's per-column array calls.

    A mean over a window is the window's ``np.add.reduce`` (NumPy's pairwise sum, as ``mean(axis=1)`` does it
    for every row) divided by its length; counts of 0/1 values are exact in any order; the calendar is computed
    with Python integers where ``datetime.date`` reaches (the same proleptic Gregorian calendar as datetime64).
    """
    window = rows.window_index().tolist()
    log_sales = np.log1p(np.asarray(rows.sales, dtype=np.float64))
    promo = np.asarray(rows.promo, dtype=np.float64)
    sold = log_sales > 0
    horizons = np.asarray(rows.horizon, dtype=np.int64).tolist()
    origins = np.asarray(rows.origin_day, dtype=np.int64)
    target_days = (origins + np.asarray(rows.horizon, dtype=np.int64)).tolist()  # int64 arithmetic, as the batch
    origins = origins.tolist()
    target_promo = np.asarray(rows.target_promo, dtype=np.float64).tolist()
    holidays = np.asarray(rows.holidays, dtype=np.float64).tolist()
    dense = []
    for i in range(n):
        series = series_window(spec, log_sales[window[i]], sold[window[i]], promo[window[i]])
        target = target_day_of(spec, horizons[i], target_days[i])
        dense.append(row_values(spec, series, origins[i], target, target_promo[i], holidays[i]))
    categorical = [[vocab.ids(f).get(text, UNKNOWN_ID) for text in _texts(rows.categorical[f])]
                   for f in CATEGORICAL_FIELDS]
    return FeatureMatrix(dense=np.asarray(dense, dtype=np.float64).astype(np.float32),
                         categorical=np.asarray(categorical, dtype=np.int32).T.copy())


@dataclass(frozen=True)
class SeriesWindow:
    """The columns of one history window that no target day or promotion flag changes (``_build_small``'s, per
    window row; pipeline/served_features.py keeps them per store×item), and the window's log1p sales, which the
    target's weekday and year-ago columns read."""

    log_sales: np.ndarray  # [W] float64
    before_dow: list  # mean_log1p_*, sale_days_share_*
    after_dow: list  # days_since_last/first_sale, promo_share_*, mean_log1p_on_promo, promo_uplift_log1p
    yearly: tuple  # (year_ago_known flag, year-ago base mean, recent mean) with spec.yearly; () without


def series_window(spec: FeatureSpec, log_sales: np.ndarray, sold: np.ndarray, promo: np.ndarray) -> SeriesWindow:
    """One window row's SeriesWindow (``log_sales``/``promo`` float64, ``sold`` = log_sales > 0, all [W])."""
    w = spec.history_days
    add = np.add.reduce
    before: list = [add(log_sales[w - k:]) / k for k in spec.mean_windows]
    before += [np.count_nonzero(sold[w - k:]) / k for k in spec.mean_windows]
    sale_days = np.flatnonzero(sold)
    if sale_days.size:
        first_sale, last_sale = int(sale_days[0]), int(sale_days[-1])
        after: list = [(w - 1 - last_sale) / w, (w - 1 - first_sale) / w]
    else:
        after = [w / w, 0 / w]
    after += [add(promo[w - k:]) / k for k in spec.promo_windows]
    promo_days = add(promo)
    off_days = w - promo_days
    on_promo = add(log_sales * promo) / promo_days if promo_days > 0 else 0.0
    off_promo = add(log_sales * (1 - promo)) / off_days if off_days > 0 else 0.0
    after += [on_promo, on_promo - off_promo if promo_days > 0 and off_days > 0 else 0.0]
    return SeriesWindow(log_sales=log_sales, before_dow=before, after_dow=after,
                        yearly=_yearly_window(log_sales, sale_days) if spec.yearly else ())


@dataclass(frozen=True)
class TargetDay:
    """A target day's columns that no series changes: its horizon, and the horizon and calendar columns."""

    horizon: int
    day: int  # day number
    calendar: list  # the horizon column, then the calendar columns (``_build_batch``'s)
    day_of_year: list  # sine and cosine with spec.yearly; [] without


def target_day_of(spec: FeatureSpec, horizon: int, day: int) -> TargetDay:
    return TargetDay(horizon=horizon, day=day, calendar=target_day_values(spec, horizon, day),
                     day_of_year=day_of_year_values(day) if spec.yearly else [])


def row_values(spec: FeatureSpec, series: SeriesWindow, origin: int, target: TargetDay, target_promo: float,
               holidays: list) -> list:
    """One row's dense values, in ``dense_feature_names`` order: its window's, its target day's, its promotion
    flag and the target day's holiday flags (floats) at its store."""
    w = spec.history_days
    log_sales = series.log_sales
    last_same_dow = (w - 1) - (((origin + 3) % 7 - (target.day + 3) % 7) % 7)
    dow = []
    for k in spec.dow_weeks:
        steps = _DOW_STEPS.get(k)
        if steps is None:
            steps = _DOW_STEPS.setdefault(k, 7 * np.arange(k))
        dow.append(np.add.reduce(log_sales[last_same_dow - steps]) / k)
    values = series.before_dow + dow + series.after_dow + [target_promo] + target.calendar + holidays
    if spec.yearly:
        values += _yearly_values(log_sales, series.yearly, target.horizon) + target.day_of_year
    return values


def target_day_values(spec: FeatureSpec, horizon: int, target_day: int) -> list:
    """The horizon column and the target day's calendar columns of ``_build_batch`` for one row."""
    if not _FIRST_DAY <= target_day <= _LAST_DAY:  # beyond datetime.date: datetime64's own arithmetic
        dow, day_of_month, is_payday, to_payday = (int(a[0]) for a in calendar_of(np.asarray([target_day])))
    else:
        date = dt.date.fromordinal(target_day + _EPOCH_ORDINAL)
        day_of_month = date.day
        month_end = (dt.date(date.year + date.month // 12, date.month % 12 + 1, 1).toordinal() - _EPOCH_ORDINAL
                     - 1)
        dow = (target_day + 3) % 7
        is_payday = day_of_month == 15 or target_day == month_end
        to_payday = 15 - day_of_month if day_of_month <= 15 else month_end - target_day
    values = [horizon / spec.horizon] + [float(dow == d) for d in range(7)]
    return values + [day_of_month / 31.0, float(is_payday), float(day_of_month == 1 or day_of_month == 16),
                     to_payday / 16.0]


def day_of_year_values(target_day: int) -> list:
    """The target's day of the year as ``_yearly_columns``' sine and cosine, for one day number."""
    if _FIRST_DAY <= target_day <= _LAST_DAY:
        day_of_year = target_day - (dt.date.fromordinal(target_day + _EPOCH_ORDINAL).replace(month=1, day=1)
                                    .toordinal() - _EPOCH_ORDINAL)
    else:
        day_of_year = int(target_day - np.int64(target_day).astype("datetime64[D]").astype("datetime64[Y]")
                          .astype("datetime64[D]").astype(np.int64))
    angle = np.asarray([2 * np.pi * day_of_year / 365.25])
    return [np.sin(angle)[0], np.cos(angle)[0]]


def _yearly_window(log_sales: np.ndarray, sale_days: np.ndarray) -> tuple:
    """``_yearly_columns``' window-only parts for one window: (known flag, year-ago base mean, recent mean)."""
    w = log_sales.shape[0]
    add = np.add.reduce
    base_end = (w - 1) - YEAR_DAYS
    base = add(log_sales[base_end - YEAR_AGO_BASE_DAYS + 1:base_end + 1]) / YEAR_AGO_BASE_DAYS
    known = bool(sale_days.size) and int(sale_days[0]) < base_end - YEAR_AGO_BASE_DAYS + 2
    recent = add(log_sales[w - YEAR_AGO_BASE_DAYS:]) / YEAR_AGO_BASE_DAYS
    return float(known), base, recent


def _yearly_values(log_sales: np.ndarray, window_part: tuple, horizon: int) -> list:
    """``_yearly_columns`` but the day of year, for one row (``window_part``: its window's ``_yearly_window``)."""
    flag, base, recent = window_part
    year_ago = (log_sales.shape[0] - 1) + horizon - YEAR_DAYS
    week = np.add.reduce(log_sales[year_ago + _YEAR_AGO_WEEK_OFFSETS]) / _YEAR_AGO_WEEK_OFFSETS.size
    day = log_sales[year_ago]
    return [flag, day * flag, week * flag, base * flag, (week - base) * flag, (recent - base) * flag]


def _texts(raw) -> list[str]:
    """``_as_text(raw)`` as a list of str, without NumPy's text conversion for the usual ints and strings."""
    array = np.asarray(raw)
    kind = array.dtype.kind
    if kind == "U" or (kind in "ib" and array.dtype.itemsize <= 8) or (kind == "u" and array.dtype.itemsize < 8):
        return [str(int(v)) for v in array.ravel().tolist()] if kind != "U" else array.ravel().tolist()
    return _as_text(array).ravel().tolist()


def _yearly_columns(log_sales: np.ndarray, sold: np.ndarray, window: np.ndarray, horizon: np.ndarray,
                    target_day: np.ndarray) -> list:
    """Year-ago features (see the module docstring); zero where the series had not sold a year earlier.

    ``log_sales``/``sold`` are per window row, ``window`` maps each row to its window row.
    """
    w = log_sales.shape[1]
    year_ago = (w - 1) + horizon - YEAR_DAYS  # column of the target's year-ago day
    base_end = (w - 1) - YEAR_DAYS  # column of the year-ago origin
    base = log_sales[:, base_end - YEAR_AGO_BASE_DAYS + 1:base_end + 1].mean(axis=1)[window]
    # known: a sale on or before the first day of the year-ago base window (the series existed back then)
    known = sold[:, :base_end - YEAR_AGO_BASE_DAYS + 2].any(axis=1)[window]
    week_cols = year_ago[:, None] + np.arange(-YEAR_AGO_WEEK, YEAR_AGO_WEEK + 1)[None, :]
    week = log_sales[window[:, None], week_cols].mean(axis=1)
    day = log_sales[window, year_ago]
    recent = log_sales[:, w - YEAR_AGO_BASE_DAYS:].mean(axis=1)[window]
    day_of_year = (target_day - target_day.astype("datetime64[D]").astype("datetime64[Y]")
                   .astype("datetime64[D]").astype(np.int64))
    angle = 2 * np.pi * day_of_year / 365.25
    flag = known.astype(np.float64)
    return [flag, day * flag, week * flag, base * flag, (week - base) * flag, (recent - base) * flag,
            np.sin(angle), np.cos(angle)]


def day_number(value) -> np.ndarray:
    """Dates (ISO strings, datetime64, date objects) as int64 days since 1970-01-01."""
    try:
        return np.asarray(value, dtype="datetime64[D]").astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise FeatureInputError(f"date: not a date: {value!r} ({exc})") from None


@dataclass
class HistorySnapshot:
    """The history a bundle ships: each store×item's last ``history_days`` days up to the origin,
    item and store attributes, and the calendar facts (holiday flags per store) of the horizon days."""

    origin_day: int
    store_nbr: np.ndarray  # [S] int32, sorted with item_nbr (lexicographic)
    item_nbr: np.ndarray  # [S] int32
    sales: np.ndarray  # [S, W] float32
    promo: np.ndarray  # [S, W] uint8
    items: dict[str, np.ndarray]  # item_nbr [I] + ITEM_FIELDS
    stores: dict[str, np.ndarray]  # store_nbr [K] + STORE_FIELDS
    calendar_days: np.ndarray  # [H] int64 days: origin+1..origin+H
    calendar_holidays: np.ndarray  # [K, H, len(HOLIDAY_FLAGS)] uint8 (stores in stores['store_nbr'] order)
    # stores closed for good by the origin: store_nbr -> day number of its last row (pipeline/history.py
    # ``closed_stores``); bundles written before it have none
    closed_stores: dict[int, int] = field(default_factory=dict)


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, np.int64), np.zeros(keys.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return pos, sorted_keys[pos] == keys


_INT_LIMITS: dict[np.dtype, tuple[int, int]] = {}


def _equal_range(sorted_keys: np.ndarray, key: int, lo: int = 0, hi: int | None = None) -> tuple[int, int]:
    """Where ``key`` is in ``sorted_keys[lo:hi]`` (integers): (first, end) positions, empty when absent.

    The key is searched in the table's own dtype, so the table is never converted (a copy the size of the
    snapshot); a key that dtype cannot hold is absent."""
    hi = sorted_keys.shape[0] if hi is None else hi
    if sorted_keys.dtype.kind not in "iu":
        sorted_keys = np.asarray(sorted_keys, np.int64)  # what _lookup's callers compare
    limits = _INT_LIMITS.get(sorted_keys.dtype)
    if limits is None:
        info = np.iinfo(sorted_keys.dtype)
        limits = _INT_LIMITS.setdefault(sorted_keys.dtype, (int(info.min), int(info.max)))
    if not limits[0] <= key <= limits[1]:
        return lo, lo
    needle = sorted_keys.dtype.type(key)
    part = sorted_keys[lo:hi]
    return lo + int(part.searchsorted(needle, "left")), lo + int(part.searchsorted(needle, "right"))


def _series_lookup_small(snapshot: HistorySnapshot, stores: list[int], items: list[int]) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """``_lookup`` of (store, item) pairs in the snapshot's series, which are sorted by store, then item:
    the store's range, then the item within it (the first match, as on the combined key)."""
    positions, known = [], []
    for store, item in zip(stores, items):
        lo, hi = _equal_range(snapshot.store_nbr, store)
        first, end = _equal_range(snapshot.item_nbr, item, lo, hi)
        positions.append(first if first < end else 0)
        known.append(first < end)
    return np.asarray(positions, np.int64), np.asarray(known, bool)


def series_history(snapshot: HistorySnapshot, series_pos: np.ndarray, series_known: np.ndarray) -> tuple[np.ndarray,
                                                                                                        np.ndarray]:
    """The (sales float32, promo uint8) history rows of request rows: their series' snapshot rows, all zero for
    a store×item without history (``series_known`` False)."""
    sales = np.where(series_known[:, None], snapshot.sales[series_pos], 0).astype(np.float32)
    promo = np.where(series_known[:, None], snapshot.promo[series_pos], 0).astype(np.uint8)
    return sales, promo


def rows_from_snapshot(snapshot: HistorySnapshot, store_nbr, item_nbr, date, onpromotion) -> FeatureRows:
    """Feature inputs for requests (store, item, target date, promotion) from a bundle's snapshot.

    A store×item without history gets an all-zero history; an item the model never
    saw gets the reserved unknown ids; a store without calendar facts, or a date
    outside the bundle's horizon, is an error that names the request row.
    """
    stores = np.atleast_1d(np.asarray(store_nbr)).astype(np.int64)
    items = np.atleast_1d(np.asarray(item_nbr)).astype(np.int64)
    days = np.atleast_1d(day_number(date))
    promo_flag = np.atleast_1d(np.asarray(onpromotion))
    n = stores.shape[0]
    if not (items.shape == days.shape == promo_flag.shape == (n,)):
        raise FeatureInputError("store_nbr, item_nbr, date and onpromotion must have the same length")
    small = n <= SMALL_BATCH_ROWS  # a request's rows: look each up, never convert a whole table
    if promo_flag.dtype.kind not in "biu" or (any(v != 0 and v != 1 for v in promo_flag.tolist()) if small
                                              else np.any((promo_flag != 0) & (promo_flag != 1))):
        raise FeatureInputError("onpromotion: expected true/false (or 0/1)")

    horizon = days - snapshot.origin_day
    outside = (horizon < 1) | (horizon > snapshot.calendar_days.size)
    if outside.any():
        r = int(np.flatnonzero(outside)[0])
        first, last = (np.asarray([snapshot.calendar_days[0], snapshot.calendar_days[-1]]).astype("datetime64[D]"))
        raise FeatureInputError(f"date: row {r}: {days[r].astype('datetime64[D]')} is outside the model's forecast "
                                f"window {first} .. {last}")

    if small:
        store_ranges = [_equal_range(snapshot.stores["store_nbr"], store) for store in stores.tolist()]
        store_pos = np.asarray([lo if lo < hi else 0 for lo, hi in store_ranges], np.int64)
        store_known = np.asarray([lo < hi for lo, hi in store_ranges], bool)
    else:
        store_pos, store_known = _lookup(np.asarray(snapshot.stores["store_nbr"], np.int64), stores)
    if not store_known.all():
        r = int(np.flatnonzero(~store_known)[0])
        raise FeatureInputError(f"store_nbr: row {r}: store {stores[r]} is not one the model was trained on")

    if small:
        series_pos, series_known = _series_lookup_small(snapshot, stores.tolist(), items.tolist())
    else:
        series_key = np.asarray(snapshot.store_nbr, np.int64) * (1 << 32) + np.asarray(snapshot.item_nbr, np.int64)
        series_pos, series_known = _lookup(series_key, stores * (1 << 32) + items)
    sales, promo = series_history(snapshot, series_pos, series_known)
    assert sales.shape == (n, snapshot.sales.shape[1])

    categorical: dict[str, np.ndarray] = {"store_nbr": stores, "item_nbr": items}
    if small:
        found = [_equal_range(snapshot.items["item_nbr"], item) for item in items.tolist()]
        for name in ITEM_FIELDS:
            values = snapshot.items[name]
            categorical[name] = np.asarray([_texts(values[lo:lo + 1])[0] if lo < hi else "" for lo, hi in found],
                                           dtype=str)
        for name in STORE_FIELDS:
            categorical[name] = np.asarray(_texts(snapshot.stores[name][store_pos]), dtype=str)
    else:
        item_pos, item_known = _lookup(np.asarray(snapshot.items["item_nbr"], np.int64), items)
        for name in ITEM_FIELDS:
            values = _as_text(snapshot.items[name])
            categorical[name] = np.where(item_known, values[item_pos] if values.size else "", "")
        for name in STORE_FIELDS:
            categorical[name] = _as_text(snapshot.stores[name])[store_pos]
    holidays = snapshot.calendar_holidays[store_pos, horizon - 1, :]
    return FeatureRows(
        sales=sales, promo=promo, origin_day=np.full(n, snapshot.origin_day, np.int64), horizon=horizon,
        target_promo=promo_flag.astype(np.uint8), holidays=holidays, categorical=categorical,
    )

