"""Raw data sets our generator did not make: the shapes a new user's own sales data comes in.

Each ``FOREIGN_SHAPES`` entry writes plain Kaggle-layout CSV files (the data
contract of README "Bring your own data") into a directory, deterministically:

* ``single_store``: one store, a few hundred SKUs, Sunday-peaked weeks, its own holidays;
* ``sparse_large_ids``: store ids up to 32767, item ids near 2**31, train ids from 10**12
  upwards, sparse and not in file order;
* ``other_years_and_holidays``: 2021-2023, another country's national/regional/local holidays
  with transfers, promotions unknown in the first months;
* ``no_oil_or_transactions``: only train, items, stores and holidays_events;
* ``holidays_end_early``: holidays_events stops months before the last sales day, and there
  is no test.csv (the case that crashed ``pipeline.promote``).
* ``eight_months``: 240 days of sales, so no target has a year-ago day (the yearly features are
  all zeros, flagged unknown), and fewer training origins than the default 13.

``CHRISTMAS_CLOSED`` (2015-11-02 .. 2016-12-20): no store sells on Christmas, a store opens in March 2016, a leap
day; the served horizon holds the next Christmas, which the app must answer as a closed day.
``NEW_YEAR_CLOSED``: the same, closed on New Year's Day too and ending on 2016-12-31 (the horizon starts closed).
``TOO_SHORT`` (130 days) is too short for one training origin: train must say so and which params to lower.
``FIVE_MONTHS`` (165 days) trains on one origin, has no room for a second backtest window (evaluate must say
so), and with one window its model is worse than the baseline: the gate must refuse it, saying by how much.

Demand: an item level, the shape's own weekly cycle and yearly season, holiday
and promotion effects, Poisson counts; a day without sales has no row (Kaggle's
convention), some items launch late, a few rows are returns.
"""

from __future__ import annotations

import datetime as dt
import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAMILIES = ("ALIMENTOS", "BEBIDAS", "LIMPIEZA", "PANADERIA", "LACTEOS", "FRUTAS")


@dataclass(frozen=True)
class ForeignShape:
    """How one foreign data set differs from Favorita's."""

    name: str
    stores: tuple[int, ...]
    items: int
    start: str
    days: int
    item_ids: str = "dense"  # dense: 10, 11, ...; sparse: near 2**31, far apart
    train_ids: str = "dense"  # dense: 0..N-1 in file order; sparse: from 10**12, gaps, shuffled order
    # kaggle: Kaggle's columns in Kaggle's order; own: a store's own export: no id column (train and test),
    # the columns in another order, and columns of its own (a quoted product name holding commas, a margin)
    layout: str = "kaggle"
    weekly: tuple[float, ...] = (1.0, 0.9, 0.9, 1.0, 1.2, 1.5, 1.3)  # Monday .. Sunday
    holidays: str = "full"  # full | early (ends 120 days before the last sales day) | none
    holiday_effect: float = 0.5  # demand multiplier on a national day off
    oil: bool = True
    transactions: bool = True
    test: bool = True
    promotion_unknown_days: int = 0  # leading days with an empty onpromotion
    cities: tuple[tuple[str, str], ...] = field(default=(("Valparaiso", "Costa"), ("Temuco", "Sur"),
                                                         ("Rancagua", "Centro")))
    gzip_train: bool = False
    closed_weekdays: tuple[int, ...] = ()  # days of the week (0: Monday) every store is closed: no rows at all
    closed_dates: tuple[str, ...] = ()  # MM-DD dates every store is closed each year (Christmas): no rows at all
    store_openings: tuple[tuple[int, str], ...] = ()  # (store, the first day it sells): no rows before it
    seed: int = 0


FOREIGN_SHAPES: dict[str, ForeignShape] = {shape.name: shape for shape in (
    ForeignShape("single_store", stores=(1,), items=300, start="2019-03-04", days=460,
                 weekly=(0.8, 0.8, 0.9, 0.9, 1.1, 1.4, 1.7), holiday_effect=1.6, seed=1),
    ForeignShape("sparse_large_ids", stores=(7, 4096, 32767), items=60, start="2015-06-01", days=430,
                 item_ids="sparse", train_ids="sparse", gzip_train=True, seed=2),
    ForeignShape("other_years_and_holidays", stores=(3, 5), items=90, start="2021-09-01", days=500,
                 promotion_unknown_days=60, holiday_effect=0.3, seed=3),
    ForeignShape("no_oil_or_transactions", stores=(1, 2), items=80, start="2018-01-01", days=420,
                 oil=False, transactions=False, layout="own", seed=4),
    ForeignShape("holidays_end_early", stores=(10,), items=100, start="2016-05-02", days=430,
                 holidays="early", test=False, seed=5),
    ForeignShape("eight_months", stores=(2, 3), items=120, start="2020-02-03", days=240, seed=6),
)}

# Too short to train on: the features' longest window (112 days) and two 16-day horizons need 144 days.
TOO_SHORT = ForeignShape("too_short", stores=(1,), items=40, start="2022-01-03", days=130, seed=7)
# Trains (one origin: 960 examples), but too short for a second backtest window, and too little to beat the baseline.
FIVE_MONTHS = ForeignShape("five_months", stores=(1,), items=60, start="2022-01-03", days=165, seed=8)
SHORT_SHAPES = {shape.name: shape for shape in (TOO_SHORT, FIVE_MONTHS)}
# Favorita's calendar: every store closed on Christmas (no rows at all), a store that opens in March 2016, a leap day;
# the data end on 2016-12-20, so the served horizon holds 2016-12-25 and the history the Christmas a year earlier.
CHRISTMAS_CLOSED = ForeignShape("christmas_closed", stores=(1, 2, 3), items=30, start="2015-11-02", days=415,
                                closed_dates=("12-25",), store_openings=((3, "2016-03-15"),), seed=10)
# The same chain closed on New Year's Day too, its data ending on December 31: the served horizon starts closed.
NEW_YEAR_CLOSED = ForeignShape("new_year_closed", stores=(1, 2, 3), items=30, start="2015-11-02", days=426,
                               closed_dates=("12-25", "01-01"), store_openings=((3, "2016-03-15"),), seed=10)
# Closed on Sundays, the data ending on a Tuesday: the day before the 16-day validation window is a Sunday, so the
# training rows end on the Saturday (evaluate refused the model: its forecast window was a day short).
CLOSED_SUNDAYS = ForeignShape("closed_sundays", stores=(1, 2), items=30, start="2021-01-05", days=421,
                              closed_weekdays=(6,), seed=9)


def _dates(shape: ForeignShape) -> np.ndarray:
    return np.datetime64(shape.start, "D") + np.arange(shape.days)


def item_ids(shape: ForeignShape) -> np.ndarray:
    if shape.item_ids == "sparse":
        return (2**31 - 1 - np.arange(shape.items, dtype=np.int64) * 13_000_017).astype(np.int64)
    return 10 + np.arange(shape.items, dtype=np.int64)


def _holiday_rows(shape: ForeignShape, last_day: np.datetime64) -> list[str]:
    """National days off (fixed dates each year), one transferred, a regional and a local one, an event."""
    rows = []
    first_year = int(str(np.datetime64(shape.start, "Y")))
    last_year = int(str(np.datetime64(last_day, "Y"))) + 1
    city, state = shape.cities[0]
    for year in range(first_year, last_year + 1):
        for month, day, name in ((1, 1, "Ano Nuevo"), (5, 1, "Dia del Trabajo"), (9, 18, "Fiestas Patrias"),
                                 (12, 25, "Navidad")):
            rows.append(f"{year}-{month:02d}-{day:02d},Holiday,National,Pais,{name},False")
        rows.append(f"{year}-06-29,Holiday,National,Pais,San Pedro,True")
        rows.append(f"{year}-07-01,Transfer,National,Pais,Traslado San Pedro,False")
        rows.append(f"{year}-03-20,Holiday,Regional,{state},Dia de la Region,False")
        rows.append(f"{year}-10-12,Holiday,Local,{city},Fundacion de {city},False")
        rows.append(f"{year}-05-10,Event,National,Pais,Dia de la Madre,False")
    rows.sort()
    if shape.holidays == "early":
        end = str(last_day - 120)
        rows = [row for row in rows if row[:10] <= end]
    return rows


def _national_days_off(rows: list[str], dates: np.ndarray) -> np.ndarray:
    off = {row[:10] for row in rows if ",National," in row and (",Holiday," in row or ",Transfer," in row)
           and not row.endswith(",True")}
    return np.isin(dates.astype(str), sorted(off))


def write_foreign_dataset(shape: ForeignShape | str, directory: Path) -> Path:
    """Write the raw files of ``shape`` into ``directory`` (created); returns it."""
    shape = FOREIGN_SHAPES[shape] if isinstance(shape, str) else shape
    rng = np.random.default_rng(shape.seed)
    directory.mkdir(parents=True, exist_ok=True)
    dates = _dates(shape)
    items = item_ids(shape)
    holiday_rows = _holiday_rows(shape, dates[-1] + 16) if shape.holidays != "none" else []
    day_off = _national_days_off(holiday_rows, dates)
    dow = (dates.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    season = 1 + 0.25 * np.sin(2 * np.pi * (dates.astype(np.int64) % 365) / 365)
    level = np.exp(rng.normal(0.4, 1.0, size=(len(shape.stores), shape.items)))
    launch = np.where(rng.random((len(shape.stores), shape.items)) < 0.15,
                      rng.integers(0, shape.days // 2, size=(len(shape.stores), shape.items)), 0)
    promo = rng.random((len(shape.stores), shape.items, shape.days)) < 0.08
    day_effect = np.array(shape.weekly)[dow] * season * np.where(day_off, shape.holiday_effect, 1.0)
    mean = level[:, :, None] * day_effect[None, None, :] * np.where(promo, 1.8, 1.0)
    units = rng.poisson(mean)
    units[:, :, np.isin(dow, shape.closed_weekdays)] = 0
    units[:, :, np.isin([str(d)[5:] for d in dates], shape.closed_dates)] = 0
    for store, first in shape.store_openings:
        units[shape.stores.index(store), :, dates < np.datetime64(first, "D")] = 0
    s_idx, i_idx, d_idx = np.nonzero((units > 0) & (np.arange(shape.days)[None, None, :] >= launch[:, :, None]))
    order = np.lexsort((i_idx, s_idx, d_idx))  # Kaggle's order: by date, then store, then item
    s_idx, i_idx, d_idx = s_idx[order], i_idx[order], d_idx[order]
    values = units[s_idx, i_idx, d_idx].astype(np.float64)
    returns = rng.random(values.size) < 0.002
    values[returns] = -1.0
    n = values.size
    if shape.train_ids == "sparse":
        ids = 10**12 + np.cumsum(rng.integers(1, 10**6, size=n, dtype=np.int64))
        rng.shuffle(ids)
    else:
        ids = np.arange(n, dtype=np.int64)
    promo_text = np.where(promo[s_idx, i_idx, d_idx], "True", "False")
    promo_text[d_idx < shape.promotion_unknown_days] = ""
    store_ids = np.array(shape.stores, dtype=np.int64)
    date_text = dates.astype(str)
    if shape.layout == "own":
        lines = ["store_nbr,item_nbr,product_name,date,unit_sales,margin,onpromotion"]
        lines += [f'{s},{it},"Item {it}, {it % 3 + 1} kg",{d},{v:g},{0.1 + (it % 5) / 10:.2f},{p}'
                  for d, s, it, v, p in zip(date_text[d_idx].tolist(), store_ids[s_idx].tolist(),
                                            items[i_idx].tolist(), values.tolist(), promo_text.tolist())]
    else:
        lines = ["id,date,store_nbr,item_nbr,unit_sales,onpromotion"]
        lines += [f"{i},{d},{s},{it},{v:g},{p}" for i, d, s, it, v, p in
                  zip(ids.tolist(), date_text[d_idx].tolist(), store_ids[s_idx].tolist(), items[i_idx].tolist(),
                      values.tolist(), promo_text.tolist())]
    train = "\n".join(lines) + "\n"
    if shape.gzip_train:
        (directory / "train.csv.gz").write_bytes(gzip.compress(train.encode("utf-8"), mtime=0))
    else:
        (directory / "train.csv").write_text(train, encoding="utf-8")
    (directory / "items.csv").write_text(
        "item_nbr,family,class,perishable\n"
        + "".join(f"{item},{FAMILIES[k % len(FAMILIES)]},{100 + k % 7},{int(k % 4 == 0)}\n"
                  for k, item in enumerate(items)),
        encoding="utf-8")
    (directory / "stores.csv").write_text(
        "store_nbr,city,state,type,cluster\n"
        + "".join(f"{store},{shape.cities[k % len(shape.cities)][0]},{shape.cities[k % len(shape.cities)][1]},"
                  f"{'ABCDE'[k % 5]},{k + 1}\n" for k, store in enumerate(shape.stores)),
        encoding="utf-8")
    if shape.holidays != "none":
        (directory / "holidays_events.csv").write_text(
            "date,type,locale,locale_name,description,transferred\n" + "\n".join(holiday_rows) + "\n", encoding="utf-8")
    if shape.oil:
        (directory / "oil.csv").write_text(
            "date,dcoilwtico\n" + "".join(f"{d},{60 + 5 * np.sin(k / 30):.2f}\n" for k, d in enumerate(date_text)
                                         if k % 7 < 5), encoding="utf-8")
    if shape.transactions:
        (directory / "transactions.csv").write_text(
            "date,store_nbr,transactions\n" + "".join(f"{d},{s},{800 + (k * 37 + s) % 400}\n"
                                                      for k, d in enumerate(date_text) for s in shape.stores),
            encoding="utf-8")
    if shape.test:
        first_test = dates[-1] + 1
        rows, next_id = [], int(ids.max()) + 1
        for k in range(16):
            for s in shape.stores:
                for item in items:
                    rows.append(f"{first_test + k},{s},{item},False" if shape.layout == "own" else
                                f"{next_id},{first_test + k},{s},{item},False")
                    next_id += 1
        header = "date,store_nbr,item_nbr,onpromotion" if shape.layout == "own" else \
            "id,date,store_nbr,item_nbr,onpromotion"
        (directory / "test.csv").write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return directory


def last_sales_day(shape: ForeignShape | str) -> dt.date:
    shape = FOREIGN_SHAPES[shape] if isinstance(shape, str) else shape
    return dt.date.fromisoformat(shape.start) + dt.timedelta(days=shape.days - 1)
