"""Closed store-days of a bundle's horizon (pipeline/closed_days.py), read from the snapshot a year earlier."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.closed_days import CLOSED_DAY_MEANING, GUARD_DAYS, ClosedDays, closed_store_days, year_earlier
from pipeline.features import HOLIDAY_FLAGS, HistorySnapshot
from pipeline.history import closed_stores, load_history, snapshot_at
from pipeline.prepare import prepare

from .conftest import STOPPING_START, prepare_with, write_stores_that_stop


def _day(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


ORIGIN = _day("2016-12-20")


def _snapshot(sales_by_store: dict[int, np.ndarray], width: int = 400) -> HistorySnapshot:
    """Store 1 has two items, every other store one; ``sales_by_store`` gives each store's daily units [width]."""
    stores, items, rows = [], [], []
    for store, daily in sorted(sales_by_store.items()):
        for item in ((10, 11) if store == 1 else (10,)):
            stores.append(store)
            items.append(item)
            rows.append(daily[-width:])
    n_stores = len(sales_by_store)
    return HistorySnapshot(
        origin_day=ORIGIN, store_nbr=np.asarray(stores, np.int32), item_nbr=np.asarray(items, np.int32),
        sales=np.asarray(rows, np.float32), promo=np.zeros((len(rows), width), np.uint8),
        items={"item_nbr": np.asarray([10, 11], np.int32), "family": np.asarray(["A", "B"]),
               "class": np.asarray([1, 2], np.int32), "perishable": np.asarray([0, 1], np.int32)},
        stores={"store_nbr": np.asarray(sorted(sales_by_store), np.int32),
                "city": np.asarray(["Quito"] * n_stores), "store_type": np.asarray(["A"] * n_stores),
                "cluster": np.asarray([1] * n_stores, np.int32)},
        calendar_days=ORIGIN + 1 + np.arange(16, dtype=np.int64),
        calendar_holidays=np.zeros((n_stores, 16, len(HOLIDAY_FLAGS)), np.uint8))


def _daily(width: int = 400, zero: tuple[str, ...] = (), zero_before: str | None = None,
           zero_between: tuple[str, str] | None = None) -> np.ndarray:
    days = ORIGIN - width + 1 + np.arange(width)
    units = np.full(width, 3.0)
    for text in zero:
        units[days == _day(text)] = 0
    if zero_before:
        units[days < _day(zero_before)] = 0
    if zero_between:
        units[(days >= _day(zero_between[0])) & (days <= _day(zero_between[1]))] = 0
    return units


def _closed(snapshot: HistorySnapshot) -> dict[int, list[str]]:
    flags = closed_store_days(snapshot)
    return {int(store): [str(np.datetime64(int(d), "D")) for d in snapshot.calendar_days[flags[k]]]
            for k, store in enumerate(snapshot.stores["store_nbr"])}


def test_christmas_closed_chain_wide_and_new_year_closed_by_store():
    """Every store sold nothing on 2015-12-25: 2016-12-25 is closed for all, store 3 (opened in March) too.
    Only store 2 was closed on 2016-01-01: only it is closed on 2017-01-01."""
    snapshot = _snapshot({
        1: _daily(zero=("2015-12-25",)),
        2: _daily(zero=("2015-12-25", "2016-01-01")),
        3: _daily(zero_before="2016-03-15"),
    })
    assert _closed(snapshot) == {1: ["2016-12-25"], 2: ["2016-12-25", "2017-01-01"], 3: ["2016-12-25"]}


def test_a_store_not_yet_open_or_shut_for_weeks_is_not_closed():
    """Zeros without sales on both sides within GUARD_DAYS: before the store opened, or weeks shut."""
    snapshot = _snapshot({
        1: _daily(),
        2: _daily(zero_before="2015-12-31"),  # opened 2015-12-31: 2015-12-25 lies before it
        3: _daily(zero_between=("2015-12-22", "2016-01-03")),  # shut two weeks
    })
    assert _closed(snapshot) == {1: [], 2: [], 3: []}


def test_a_single_item_store_closed_on_the_date_and_sales_right_around_it():
    snapshot = _snapshot({1: _daily(), 2: _daily(zero=("2015-12-28",))})
    assert _closed(snapshot) == {1: [], 2: ["2016-12-28"]}
    guard_edge = _snapshot({1: _daily(), 2: _daily(zero_between=("2015-12-25", f"2015-12-{28 + GUARD_DAYS - 1}"))})
    assert _closed(guard_edge) == {1: [], 2: []}  # closed on every guard day after it too: shut, not a day off


def test_a_slow_stores_day_without_a_sale_a_year_ago_is_no_closure():
    """A store whose days without a sale are common is not closed on each of their dates a year later: before, a
    store selling every other day was answered closed (0 units, "such as Christmas") on half its horizon days, and
    stores selling a Poisson 2 units a day in all on 13 % of theirs. A day without a sale is a closure only in a
    daily seller: at most MAX_MISSED_DAYS days without a sale on its open weekdays in the last 8 weeks. Store 2 was
    shut on 2015-12-28 and missed 3 days lately (still a daily seller): closed on 2016-12-28; store 3, the same with
    4 missed days, and store 4, selling every other day, are not."""
    days = ORIGIN - 400 + 1 + np.arange(400)
    recent = days[-7 * 8:]
    missed = [str(np.datetime64(int(d), "D")) for d in recent[[3, 17, 30, 44]]]  # 4 days, none of one weekday
    every_other = np.where(days % 2 == 0, 3.0, 0.0)
    snapshot = _snapshot({1: _daily(), 2: _daily(zero=("2015-12-28", *missed[:3])),
                          3: _daily(zero=("2015-12-28", *missed)), 4: every_other})
    assert _closed(snapshot) == {1: [], 2: ["2016-12-28"], 3: [], 4: []}


def test_a_store_closed_on_one_weekday_every_week_is_not_closed_a_year_later():
    """A chain closed on Sundays is daily data (prepare says so). 2015-12-27 was a Sunday, 2016-12-27 a Tuesday:
    taken as a closed day, every date whose year-ago date was a Sunday (a seventh of them) was forecast 0. Store 2
    closes on Sundays; store 3 closes on Sundays and was closed on Christmas 2015 (a Friday) too. Both are closed
    on this year's Sundays (2016-12-25, 2017-01-01), as every week, and on no Tuesday."""
    days = ORIGIN - 400 + 1 + np.arange(400)
    sundays = (days + 3) % 7 == 6  # day 0 (1970-01-01) was a Thursday: (day + 3) % 7 is the weekday, Monday 0
    assert str(np.datetime64(int(days[sundays][-1]), "D")) == "2016-12-18"
    weekly = np.where(sundays, 0.0, 3.0)
    snapshot = _snapshot({1: _daily(), 2: weekly, 3: np.where(days == _day("2015-12-25"), 0.0, weekly)})
    assert _closed(snapshot) == {1: [], 2: ["2016-12-25", "2017-01-01"], 3: ["2016-12-25", "2017-01-01"]}


WEDNESDAYS = ["2016-12-21", "2016-12-28", "2017-01-04"]  # of the horizon 2016-12-21 .. 2017-01-05


def _weekday_zero(weekday: int, since: str | None = None, width: int = 400, units: np.ndarray | None = None
                  ) -> np.ndarray:
    """``units`` (default 3 a day) with nothing sold on ``weekday`` (Monday 0), from ``since`` on (default: always)."""
    days = ORIGIN - width + 1 + np.arange(width)
    units = np.full(width, 3.0) if units is None else units[-width:]
    shut = ((days + 3) % 7 == weekday) & (days >= (_day(since) if since else days[0]))
    return np.where(shut, 0.0, units)


def test_a_weekday_the_store_closes_every_week_is_closed_in_the_horizon():
    """A store closed on Wednesdays has no rows on them, so no model trained on one: its horizon Wednesdays were
    forecast as the model guessed (a probe's chain closed on Sundays: 12.95 and 14.03 units on its Sundays, 2.4-6.3
    on its open days). Store 2 sold on no Wednesday of the last 8 weeks and on every other day: closed on its
    Wednesdays, saying so. Store 3 is a slow store (sales on every other day, none on the last 8 Wednesdays): not
    every day is a sale, so its Wednesdays are not a closure. Store 4 has closed on Wednesdays for 7 weeks only,
    store 5 shut for the last 3 weeks (not yet closed for good): forecast."""
    days = ORIGIN - 400 + 1 + np.arange(400)
    slow = np.where((days % 2 == 0) | (days < ORIGIN - 100), 3.0, 0.0)  # a sale every other day for 100 days
    snapshot = _snapshot({1: _daily(), 2: _weekday_zero(2), 3: _weekday_zero(2, units=slow),
                          4: _weekday_zero(2, since=str(np.datetime64(ORIGIN - 7 * 7 + 1, "D"))),
                          5: _daily(zero_between=("2016-11-30", "2016-12-20"))})
    assert _closed(snapshot) == {1: [], 2: WEDNESDAYS, 3: [], 4: [], 5: []}
    from pipeline.closed_days import WEEKLY_WEEKS, weekly_closed_reason

    lookup = ClosedDays(snapshot)
    asked = [_day("2016-12-27"), _day("2016-12-21"), _day("2016-12-22")]
    assert lookup.reasons([2, 2, 2], asked) == [None, weekly_closed_reason(_day("2016-12-21")), None]
    assert weekly_closed_reason(_day("2016-12-21")).startswith("the store closes on Wednesdays: no sales on any of "
                                                                f"the last {WEEKLY_WEEKS} Wednesdays")
    shorter = _snapshot({1: _daily(), 2: _weekday_zero(2)}, width=7 * WEEKLY_WEEKS - 1)  # _snapshot keeps the last
    assert not closed_store_days(shorter).any()  # a window shorter than the weeks it needs knows no weekly closure


def test_a_weekday_the_chain_closes_every_week_closes_a_store_opened_since():
    """No store sold on the last 8 Sundays: store 2, open for 10 days (no Sunday sale of its own to go by), closes
    on Sundays with the chain."""
    snapshot = _snapshot({1: _weekday_zero(6), 2: _weekday_zero(6, units=_daily(zero_before="2016-12-11"))})
    assert _closed(snapshot) == {1: ["2016-12-25", "2017-01-01"], 2: ["2016-12-25", "2017-01-01"]}


def test_a_history_window_without_the_year_ago_date_knows_no_closed_days():
    snapshot = _snapshot({1: _daily(zero=("2015-12-25",)), 2: _daily(zero=("2015-12-25",))}, width=112)
    assert not closed_store_days(snapshot).any()


def test_the_year_earlier_date_across_february_29():
    assert year_earlier(_day("2017-02-28")) == _day("2016-02-28")
    assert year_earlier(_day("2017-03-01")) == _day("2016-03-01")
    assert year_earlier(_day("2016-03-01")) == _day("2015-03-01")
    assert year_earlier(_day("2016-02-29")) is None  # no such date in 2015: never a closed day


def test_a_store_closed_for_good_is_closed_on_every_day_after_its_last_sales_date():
    """Store 2 has closed for good (the bundle's closed_stores): every horizon day is closed, whatever it did a
    year earlier, with a reason that names its last sales date; store 1's Christmas stays a closed day of its own."""
    snapshot = dataclasses.replace(_snapshot({1: _daily(zero=("2015-12-25",)), 2: _daily()}),
                                   closed_stores={2: _day("2016-11-30")})
    assert _closed(snapshot) == {1: ["2016-12-25"], 2: [str(np.datetime64(ORIGIN + 1 + h, "D")) for h in range(16)]}
    days = [_day("2016-12-21"), _day("2016-12-25"), _day("2016-12-21"), _day("2016-12-25")]
    lookup = ClosedDays(snapshot)
    assert lookup.of([1, 1, 2, 2], days).tolist() == [False, True, True, True]
    assert lookup.reasons([1, 1, 2, 2], days) == [
        None, CLOSED_DAY_MEANING, "the store has closed for good: no sales since 2016-11-30",
        "the store has closed for good: no sales since 2016-11-30"]


@pytest.mark.parametrize("grid", ["from_first_sale", "full"])
def test_closed_stores_are_those_whose_prepared_grid_ends_before_the_last_sales_day(tmp_path, grid):
    """Prepare ends a closed store's grid at its last row (prepare.closed_after_days): that is what the bundle
    records, read from the prepared rows, not decided a second time. Store 2 (no row on the last 30 sales days) has
    closed, its last sales date day 29; store 3 (none on the last closed_after_days - 1: shut a fortnight, or its
    rows late) and store 4 (shut 5 days and open again) have not. At an origin before store 2's last day (or on it)
    it has not closed yet."""
    write_stores_that_stop(tmp_path / "raw")
    prepare(tmp_path / "raw", tmp_path / "prepared", prepare_with(returns="zero", grid=grid), progress=False)
    history = load_history([tmp_path / "prepared" / "sales.parquet"])
    assert history.days == 60
    day_29 = int(np.datetime64(STOPPING_START, "D").astype(np.int64)) + 29
    assert closed_stores(history, history.days - 1) == {2: day_29}
    assert closed_stores(history, 40) == {2: day_29}
    assert closed_stores(history, 29) == {} and closed_stores(history, 10) == {}
    calendar = np.zeros((4, 16, len(HOLIDAY_FLAGS)), np.uint8)
    assert snapshot_at(history, history.days - 1, 28, calendar).closed_stores == {2: day_29}
