"""Days of a model's horizon on which a store is closed, read from its own sales a year earlier.

A date with no sales is no sales day (README "What an absent day means"): Christmas, when
every Favorita store is closed, has no rows, so no model ever trains on a Christmas target,
and a request for one got an ordinary (holiday-flagged, so larger) forecast. A store is
taken to be closed on a horizon day when, on the same calendar date a year earlier, it sold
nothing at all (no item, summed over every series the bundle ships) although it sold within
``GUARD_DAYS`` days before that date and within ``GUARD_DAYS`` days after it, and sold on the
same weekday a week before or a week after: a day it was closed, as Christmas or (for most
stores) New Year's Day, not a store that had not opened yet, had shut for weeks, lies before
the data, or closes on that weekday every week (a chain closed on Sundays is daily data, and
last year's Sunday is this year's Monday). A date on which no store sold, by the same
rule over all stores together (no sales day for the chain), closes every store, those that
opened since too. February 29 has no such date a year
earlier, so it is never a closed day. The year-ago date and the week around it must lie inside
the bundle's history window (``features.history_days`` of at least 366 + ``WEEK_DAYS``; the
default 392 does): a shorter window knows no closed days.

A day without a sale is a closure only in a store that sells every day it opens: the store (or, for the chain's
rule, the chain) must be a *daily seller*, with at most ``MAX_MISSED_DAYS`` days without a sale on the weekdays it
opens in the last ``WEEKLY_WEEKS`` weeks up to the origin (``daily_sellers``). A slow store's day without a sale a
year ago is no closure: before, stores selling a Poisson 2 units a day in all were answered closed, 0 units, on
13.3 % of their horizon days (1 a day: 28.6 %; 3 a day: 5.1 %), each "such as Christmas"; now on 0.6 %, 0.0 %
and 3.4 % (2,000 simulated stores each; at 5 a day 0.67 % before and after: days without a sale that rare are
read as closures, as a one-off closure a year ago is).

A store that closes on a weekday every week (a chain closed on Sundays) has no rows on it, so, as on Christmas, no
model trains on such a target, and its forecast was the model's guess for a day of the week it never saw sold: a
probe's chain closed on Sundays was forecast 12.95 and 14.03 units on its two horizon Sundays where its open days
got 2.4-6.3. So a horizon day is closed too when the store sold nothing on that weekday in each of the last
``WEEKLY_WEEKS`` weeks of the history (up to the origin) and is a daily seller (above: a slow store's Sundays
without a sale, a store shut for weeks or one not yet open are none); or when no store did, by the same rule over
all stores together (a store opened since closes with the chain). A history window shorter than ``WEEKLY_WEEKS``
weeks knows no weekly closures.

A store that has closed for good (the bundle's ``closed_stores``: prepare ended its grid at its last row, as it
had no row on train.csv's last ``prepare.closed_after_days`` sales days; pipeline/history.py ``closed_stores``) is
closed on every day after its last sales date, whatever it did a year earlier.

The app answers 0 units for such a store-day (``store_closed`` in the prediction, with ``closed_reason``), and the
canary check's replay of production (pipeline/release_replay.py) knows it as production's answer: both look it up
through ``ClosedDays``. Numpy and the standard library only: serving imports this.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from pipeline.features import HistorySnapshot

# what a closed answer means, in the words the API's description and the form show (one text: both said "the store
# sold nothing a year earlier though it sold in the days around it", false of a store opened since the chain closed)
CLOSED_DAY_MEANING = ("a day the store is closed, such as Christmas: on the same date a year earlier it sold nothing "
                      "though it sold in the days before and after, or no store sold at all (a store opened since "
                      "closes with the others)")
CLOSED_FOR_GOOD_MEANING = ("a store that has closed for good (no sales on the last prepare.closed_after_days sales "
                           "days of the model's data)")


WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEEKLY_WEEKS = 8  # a weekday without sales in each of the store's last this many weeks, up to the origin ...
MAX_MISSED_DAYS = 3  # a daily seller: no more days without a sale on its open weekdays in those weeks
WEEKLY_CLOSED_MEANING = (f"a weekday the store closes every week: it sold nothing on it in each of the last "
                         f"{WEEKLY_WEEKS} weeks though it sold on nearly every other day, or no store did")


def weekly_closed_reason(day: int) -> str:
    """What a weekly closure's answer says, in the API's ``closed_reason`` and on the form (day: a day number)."""
    weekday = WEEKDAY_NAMES[(int(day) + 3) % 7]  # 1970-01-01 was a Thursday
    return (f"the store closes on {weekday}s: no sales on any of the last {WEEKLY_WEEKS} {weekday}s (by the store, "
            f"or by any store) though sales on nearly every other day of those weeks")


def closed_for_good_reason(last_sales_day: int) -> str:
    """What a closed-for-good answer says, in the API's ``closed_reason`` and on the form."""
    last = dt.date(1970, 1, 1) + dt.timedelta(days=int(last_sales_day))
    return f"the store has closed for good: no sales since {last.isoformat()}"


GUARD_DAYS = 3  # the store sold within this many days before and after the closed date a year earlier
WEEK_DAYS = 7  # ... and on the same weekday a week before or after it (else it closes on that weekday every week)

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def year_earlier(day: int) -> int | None:
    """The same calendar date a year before day number ``day``; None for February 29 (or outside datetime.date)."""
    try:
        date = dt.date.fromordinal(int(day) + _EPOCH_ORDINAL)
        return date.replace(year=date.year - 1).toordinal() - _EPOCH_ORDINAL
    except ValueError:  # February 29, or year 1
        return None


def _store_totals(snapshot: HistorySnapshot, stores: np.ndarray, low: int, high: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Units each store sold on each of the window's columns ``low:high``: (by store [stores with series, span],
    each of ``stores``' row in it, whether it has one). The snapshot's series must not be empty."""
    series_store = np.asarray(snapshot.store_nbr, np.int64)  # sorted: each store's series are one run
    starts = np.flatnonzero(np.r_[True, series_store[1:] != series_store[:-1]])
    # one pass over the series: Favorita's 220 k x ~30-56 days
    by_store = np.add.reduceat(np.ascontiguousarray(snapshot.sales[:, low:high]), starts, axis=0)  # >= 0: no cancelling
    position = np.searchsorted(series_store[starts], stores)
    has_series = (position < starts.size) & (series_store[starts[np.minimum(position, starts.size - 1)]] == stores)
    return by_store, np.minimum(position, starts.size - 1), has_series


@dataclass(frozen=True)
class RecentWeeks:
    """What the last WEEKLY_WEEKS weeks up to the origin say of each store (rows in ``snapshot.stores['store_nbr']``
    order) and, in the last row, of the chain: ``daily`` [K + 1], a daily seller (module docstring); ``closed_weekdays``
    [K + 1, 7] (Monday 0), weekdays without a sale in any of those weeks, of a daily seller. A store without series
    in the snapshot is neither."""

    daily: np.ndarray
    closed_weekdays: np.ndarray


def daily_sellers(snapshot: HistorySnapshot) -> RecentWeeks:
    """``RecentWeeks`` of the snapshot: none is a daily seller where its window is shorter than WEEKLY_WEEKS weeks."""
    stores = np.asarray(snapshot.stores["store_nbr"], np.int64)
    daily, closed_weekdays = np.zeros(stores.size + 1, bool), np.zeros((stores.size + 1, 7), bool)
    width, span = snapshot.sales.shape[1], 7 * WEEKLY_WEEKS
    if width < span or snapshot.store_nbr.size == 0:
        return RecentWeeks(daily, closed_weekdays)
    by_store, position, has_series = _store_totals(snapshot, stores, width - span, width)
    rows = np.r_[position[has_series], by_store.shape[0]]  # the stores with series, then the chain
    where = np.r_[np.flatnonzero(has_series), stores.size]
    totals = np.vstack([by_store, by_store.sum(axis=0, keepdims=True)])[rows]
    sold = (totals > 0).reshape(rows.size, WEEKLY_WEEKS, 7).sum(axis=1)  # [rows, 7]: weeks it sold on each
    never = sold == 0
    missed = (~never).sum(axis=1) * WEEKLY_WEEKS - sold.sum(axis=1)  # days without a sale on its open weekdays
    daily[where] = ((~never).any(axis=1)) & (missed <= MAX_MISSED_DAYS)
    first_day = int(snapshot.origin_day) - span + 1
    closed_weekdays[where[:, None], ((first_day + np.arange(7) + 3) % 7)[None, :]] = never & daily[where][:, None]
    return RecentWeeks(daily, closed_weekdays)


def weekly_closed_store_days(snapshot: HistorySnapshot, recent: RecentWeeks | None = None) -> np.ndarray:
    """[K, H] bool as ``closed_store_days``: True on a horizon day of a weekday the store closes every week (module
    docstring: a daily seller without a sale on it in each of the last WEEKLY_WEEKS weeks; or so for the chain).
    ``recent``: ``daily_sellers(snapshot)``, computed here when not given."""
    recent = daily_sellers(snapshot) if recent is None else recent
    horizon_weekday = (np.asarray(snapshot.calendar_days, np.int64) + 3) % 7
    # the store's own, or the chain's: every store, those opened since too
    return recent.closed_weekdays[:-1][:, horizon_weekday] | recent.closed_weekdays[-1, horizon_weekday][None, :]


def closed_store_days(snapshot: HistorySnapshot, recent: RecentWeeks | None = None) -> np.ndarray:
    """[K, H] bool, stores in ``snapshot.stores['store_nbr']`` order and the horizon's ``calendar_days``: True where
    the store is taken to be closed (module docstring): on a date it was closed a year earlier, on a weekday it closes
    every week, or on every day after the last sales date of a store closed for good. ``recent``:
    ``daily_sellers(snapshot)``, computed here when not given."""
    recent = daily_sellers(snapshot) if recent is None else recent
    stores = np.asarray(snapshot.stores["store_nbr"], np.int64)
    days = np.asarray(snapshot.calendar_days, np.int64)
    closed = _closed_for_good(snapshot, stores, days) >= 0
    closed |= weekly_closed_store_days(snapshot, recent)
    width = snapshot.sales.shape[1]
    first_column_day = int(snapshot.origin_day) - width + 1
    columns = {}  # horizon position -> column of its year-ago date, where the guard days lie in the window
    for h, day in enumerate(days.tolist()):
        before = year_earlier(day)
        if before is not None and WEEK_DAYS <= before - first_column_day < width - WEEK_DAYS:
            columns[h] = before - first_column_day
    if not columns or snapshot.store_nbr.size == 0:
        return closed
    low, high = min(columns.values()) - WEEK_DAYS, max(columns.values()) + WEEK_DAYS + 1
    by_store, position, has_series = _store_totals(snapshot, stores, low, high)  # units by store and day of the span
    chain = by_store.sum(axis=0)
    for h, column in columns.items():
        around = slice(column - WEEK_DAYS - low, column + WEEK_DAYS + 1 - low)
        if recent.daily[-1] and _closed_between_sales(chain[around]):
            closed[:, h] = True  # no sales day for the whole chain: every store, those opened since too
            continue
        for k in np.flatnonzero(has_series & recent.daily[:-1]).tolist():  # a slow store's day without sales: none
            closed[k, h] |= _closed_between_sales(by_store[position[k], around])
    return closed


def _closed_for_good(snapshot: HistorySnapshot, stores: np.ndarray, days: np.ndarray) -> np.ndarray:
    """[K, H] int64: the store's last sales day where it has closed for good by that horizon day, else -1."""
    last = np.asarray([snapshot.closed_stores.get(int(store), -1) for store in stores.tolist()], np.int64)
    return np.where((last[:, None] >= 0) & (days[None, :] > last[:, None]), last[:, None], -1)


def _closed_between_sales(totals: np.ndarray) -> bool:
    """Units sold on the 2 * WEEK_DAYS + 1 days around a date: none on it, some in the GUARD_DAYS before it and some in
    the GUARD_DAYS after it, and some on the same weekday a week before or after it."""
    day = WEEK_DAYS
    return bool(totals[day] <= 0 and np.any(totals[day - GUARD_DAYS:day] > 0)
                and np.any(totals[day + 1:day + 1 + GUARD_DAYS] > 0) and (totals[0] > 0 or totals[-1] > 0))


class ClosedDays:
    """``closed_store_days`` of one snapshot, looked up for request rows: the one lookup the app (app/predictor.py)
    and the replay of production's answers (pipeline/release_replay.py) share."""

    def __init__(self, snapshot: HistorySnapshot):
        recent = daily_sellers(snapshot)
        self._weekly = weekly_closed_store_days(snapshot, recent)  # [stores, horizon days]: its reason is its own
        self.table = closed_store_days(snapshot, recent)  # [stores, horizon days]
        self._stores = np.asarray(snapshot.stores["store_nbr"], np.int64)
        self._first_day = int(snapshot.origin_day) + 1
        # [stores, horizon days]: the last sales day of a store closed for good by then, else -1
        self._for_good = _closed_for_good(snapshot, self._stores, np.asarray(snapshot.calendar_days, np.int64))

    def of(self, store_nbr, days) -> np.ndarray:
        """[N] bool: whether each row's store is closed on its day; stores the snapshot has, days (day numbers since
        1970-01-01) of its horizon, as the app's validation leaves them."""
        return self.table[np.searchsorted(self._stores, np.asarray(store_nbr, np.int64)),
                          np.asarray(days, np.int64) - self._first_day]

    def reasons(self, store_nbr, days) -> list[str | None]:
        """Why each row's store is closed on its day, as the API's ``closed_reason`` says it: closed for good since
        its last sales date, closed on that weekday every week (``weekly_closed_reason``), or CLOSED_DAY_MEANING;
        None where it is open. Rows as for ``of``."""
        rows = np.searchsorted(self._stores, np.asarray(store_nbr, np.int64))
        columns = np.asarray(days, np.int64) - self._first_day
        return [None if not shut else closed_for_good_reason(last) if last >= 0
                else weekly_closed_reason(day) if weekly else CLOSED_DAY_MEANING
                for shut, last, weekly, day in zip(self.table[rows, columns].tolist(),
                                                   self._for_good[rows, columns].tolist(),
                                                   self._weekly[rows, columns].tolist(),
                                                   np.asarray(days, np.int64).tolist())]
