"""A synthetic Corporación Favorita data set: the exact Kaggle files, generated offline.

Files and conventions (as Kaggle's): ``train.csv`` has one row per store-item-day
with non-zero sales only (zero days are absent), negative ``unit_sales`` for
returns, fractional units for items sold by weight, and ``onpromotion`` empty
before 2014-04-01; rows are ordered by date, store, item, with ``id`` counting
from 0. ``test.csv`` holds the ``test_days`` days after the end, every store×item
with its promotion flag. ``stores.csv`` lists Favorita's 54 stores in 22 cities of 16
states with types A–E and 17 clusters (more when ``data.synthetic.stores`` asks for
more: see ``make_stores``), ``items.csv`` ~4,100 items in 33 families
with classes and perishable flags, ``holidays_events.csv`` national, regional and
local holidays, transfers, bridges, work days and events, ``oil.csv`` the WTI
price on weekdays with gaps, ``transactions.csv`` one row per open store-day.

Generating process: the expected sales of item i in store s on day t are

    mu = exp( popularity_i + store_s + store_item_si
              + weekday_f(t) + yearly_f(t) + payday(t) + holiday_s(t) + earthquake_sf(t)
              + trend_s * years(t) + trend_i * years(t) + uplift_i * promo_sit )

where f is the item's family. Popularity is log-normal around a family level,
so items span orders of magnitude (from one sale a month to hundreds a day);
store_s is the store-type level (A largest) plus noise; weekly profiles peak
on weekends, yearly seasonality is a smooth family-specific wave plus a
December rise and the school season (August–September in the Sierra,
April in the Costa) for school supplies; paydays are the 15th and the last day
of the month (and the day after); national, regional and local days off raise
sales in the matching stores (Work Days lower them a little); the 2016-04-16
earthquake depresses Manabí stores for weeks and raises water, groceries,
cleaning and personal care everywhere (relief donations); promotions run in
week-long blocks per item whose frequency grows over the years, with each
store joining most of an item's promotions. Sales are then drawn from a
Gamma–Poisson (negative binomial) distribution, which makes slow items
intermittent; items sold by weight get fractional kilograms. Items are
launched and discontinued over the period, a few stores open late, every
store is closed on Christmas and most on New Year's Day. A few zero-sale
store-days record a return instead (negative units).

Everything is drawn from numpy generators seeded by ``data.synthetic.seed``.
The data are generated month by month, so the full 54-store, 2013–2017 scale
(~125 M train rows; about three times as many at 162 stores) never has to fit
in memory: this process holds one month's draws (~5 MB a store at 4,100 items).

train.csv.gz is a series of gzip members, one per month (RFC 1952 allows it;
gzip, zcat, Python and pandas read it as one file). The draws are one random
stream, so they stay in this process, but writing the CSV text and compressing
it (two thirds of the time) is independent per month: on a Dask cluster
(``pipeline.cluster``) each month's rows go to a worker as an Arrow file in the
output directory, one record batch per slice of CSV text, the worker writes that
month's member a slice at a time (its memory does not grow with the stores), and
the members are concatenated in order: the same bytes as when this process writes
them all.
Months go out in waves (two per worker thread), so the scratch files on disk
stay bounded whatever the span.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from pipeline.cluster import run_tasks
from pipeline.holidays import store_day_flags
from pipeline.io import CsvTableWriter, atomic_file, kaggle_bool_strings, open_csv_sink, write_frame_csv
from pipeline.params import SyntheticParams
from pipeline.schema import PROMOTION_KNOWN_FROM
from pipeline.stage import bar_options

# (city, state, number of stores): 54 stores, 22 cities, 16 states, as in Favorita.
CITIES = (
    ("Quito", "Pichincha", 18), ("Guayaquil", "Guayas", 8), ("Cuenca", "Azuay", 3),
    ("Santo Domingo", "Santo Domingo de los Tsachilas", 3), ("Manta", "Manabi", 2),
    ("Latacunga", "Cotopaxi", 2), ("Machala", "El Oro", 2), ("Ambato", "Tungurahua", 2),
    ("Quevedo", "Los Rios", 1), ("Esmeraldas", "Esmeraldas", 1), ("Loja", "Loja", 1),
    ("Libertad", "Guayas", 1), ("Playas", "Guayas", 1), ("Daule", "Guayas", 1),
    ("Babahoyo", "Los Rios", 1), ("Salinas", "Santa Elena", 1), ("Cayambe", "Pichincha", 1),
    ("Ibarra", "Imbabura", 1), ("Riobamba", "Chimborazo", 1), ("Guaranda", "Bolivar", 1),
    ("Puyo", "Pastaza", 1), ("El Carmen", "Manabi", 1),
)
COSTA_STATES = {"Guayas", "Manabi", "El Oro", "Los Rios", "Esmeraldas", "Santa Elena"}
STORE_TYPE_COUNTS = {"A": 9, "B": 8, "C": 15, "D": 18, "E": 4}
STORE_TYPE_LEVEL = {"A": 0.55, "B": 0.0, "C": -0.25, "D": 0.1, "E": -0.35}
TYPE_CLUSTERS = {"A": (5, 11, 14, 17), "B": (6, 16), "C": (3, 7, 12, 15), "D": (1, 2, 4, 8, 9, 13), "E": (10,)}
# Stores opening during the period (store_nbr -> first day open).
LATE_OPENINGS = {20: "2015-02-13", 21: "2015-07-24", 22: "2015-10-09", 29: "2015-03-20",
                 42: "2015-08-21", 52: "2017-04-20", 53: "2014-05-29"}
FAVORITA_STORES = 54  # stores 1..54: Favorita's; beyond, further stores in the same cities (make_stores)
# Stores after the 54th: the share that opens during the period, and when it may (Favorita: 7 of 54, 2014-2017).
EXTRA_LATE_SHARE = 0.13
EXTRA_OPENINGS = ("2014-01-01", "2017-06-30")
NEW_YEAR_OPEN_STORE = 25  # on January 1st only this store opens

# (family, share of items, perishable, log10 level of a typical item's daily units)
FAMILIES = (
    ("AUTOMOTIVE", 20, 0, -1.0), ("BABY CARE", 1, 0, -1.2), ("BEAUTY", 19, 0, -0.9),
    ("BEVERAGES", 613, 0, 0.45), ("BOOKS", 1, 0, -1.5), ("BREAD/BAKERY", 134, 1, 0.3),
    ("CELEBRATION", 31, 0, -0.8), ("CLEANING", 446, 0, 0.05), ("DAIRY", 242, 1, 0.35),
    ("DELI", 91, 1, 0.1), ("EGGS", 41, 1, 0.3), ("FROZEN FOODS", 55, 0, -0.1),
    ("GROCERY I", 1334, 0, 0.2), ("GROCERY II", 14, 0, -0.6), ("HARDWARE", 4, 0, -1.1),
    ("HOME AND KITCHEN I", 77, 0, -0.8), ("HOME AND KITCHEN II", 45, 0, -0.8),
    ("HOME APPLIANCES", 1, 0, -1.3), ("HOME CARE", 108, 0, -0.1), ("LADIESWEAR", 21, 0, -1.0),
    ("LAWN AND GARDEN", 26, 0, -0.9), ("LINGERIE", 20, 0, -1.0), ("LIQUOR,WINE,BEER", 73, 0, -0.2),
    ("MAGAZINES", 6, 0, -1.0), ("MEATS", 84, 1, 0.2), ("PERSONAL CARE", 153, 0, -0.1),
    ("PET SUPPLIES", 14, 0, -0.9), ("PLAYERS AND ELECTRONICS", 17, 0, -1.0), ("POULTRY", 54, 1, 0.4),
    ("PREPARED FOODS", 26, 1, 0.1), ("PRODUCE", 306, 1, 0.55), ("SCHOOL AND OFFICE SUPPLIES", 15, 0, -0.9),
    ("SEAFOOD", 6, 1, -0.4),
)
WEIGHED_FAMILIES = {"PRODUCE", "MEATS", "POULTRY", "SEAFOOD", "DELI"}
RELIEF_FAMILIES = {"BEVERAGES", "GROCERY I", "CLEANING", "PERSONAL CARE", "BABY CARE"}
# Weekday profile (Mon..Sun) on the log scale; each family scales it.
WEEKDAY_PROFILE = np.array([-0.05, -0.12, -0.1, -0.12, 0.0, 0.2, 0.25], dtype=np.float32)
EARTHQUAKE = np.datetime64("2016-04-16")
EARTHQUAKE_STATES = {"Manabi"}
GAMMA_SHAPE = 1.6  # Gamma-Poisson dispersion: lower is burstier
RETURN_PROBABILITY = 4e-5


@dataclass(frozen=True)
class Catalog:
    """The static world: stores, items and their latent effects."""

    stores: pd.DataFrame  # stores.csv: Favorita's 54, or more when asked (make_stores); Kaggle columns
    items: pd.DataFrame  # Kaggle columns
    item_family: np.ndarray  # family index per item
    item_popularity: np.ndarray  # log scale
    item_trend: np.ndarray
    item_uplift: np.ndarray
    item_promo_rate: np.ndarray
    item_weight_kg: np.ndarray  # 0 for items sold by unit
    item_first_day: np.ndarray  # datetime64[D]
    item_last_day: np.ndarray
    family_weekday: np.ndarray  # [families, 7]
    family_yearly: np.ndarray  # [families, 2] sin/cos amplitudes


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def make_stores(n: int = FAVORITA_STORES) -> pd.DataFrame:
    """Stores 1..max(n, 54); fixed (not seeded) so a store number means the same store in every run.

    The first 54 are Favorita's (22 cities, 16 states), the same table whatever ``n``. Store k > 54
    is a further store in one of those cities, drawn from a generator of its own number (so it is the
    same store for every ``n`` >= k): the city in proportion to Favorita's stores there (Quito and
    Guayaquil get most), the type in Favorita's type proportions, a cluster of that type's. The cities
    stay the 22 of the holiday calendar, so ``holidays_events.csv`` never depends on the scale.
    """
    stores = _favorita_stores()
    if n <= FAVORITA_STORES:
        return stores
    extra = [_extra_store(k)[0] for k in range(FAVORITA_STORES + 1, n + 1)]
    more = pd.DataFrame(
        {
            "store_nbr": np.array([row[0] for row in extra], dtype=np.int32),
            "city": [row[1] for row in extra],
            "state": [row[2] for row in extra],
            "type": np.array([row[3] for row in extra]),
            "cluster": np.array([row[4] for row in extra], dtype=np.int32),
        }
    )
    return pd.concat([stores, more], ignore_index=True)


def _extra_store(store_nbr: int) -> tuple[tuple[int, str, str, str, int], np.datetime64]:
    """Store ``store_nbr`` (> 54): its stores.csv row and the day it opens."""
    rng = _rng(FAVORITA_STORES, store_nbr)
    weights = np.array([count for _, _, count in CITIES], dtype=np.float64)
    city, state, _ = CITIES[int(rng.choice(len(CITIES), p=weights / weights.sum()))]
    type_names = list(STORE_TYPE_COUNTS)
    shares = np.array([STORE_TYPE_COUNTS[t] for t in type_names], dtype=np.float64)
    store_type = type_names[int(rng.choice(len(type_names), p=shares / shares.sum()))]
    cluster = TYPE_CLUSTERS[store_type][int(rng.integers(len(TYPE_CLUSTERS[store_type])))]
    first, last = (np.datetime64(day, "D") for day in EXTRA_OPENINGS)
    late = rng.random() < EXTRA_LATE_SHARE
    opening = first + int(rng.integers(0, int((last - first).astype(np.int64)) + 1)) if late \
        else np.datetime64("2000-01-01", "D")
    return (store_nbr, city, state, store_type, int(cluster)), opening


def store_openings(store_nbr: np.ndarray) -> np.ndarray:
    """The day each store opens (datetime64[D]): Favorita's late openings, or drawn for stores after the 54th."""
    return np.array([np.datetime64(LATE_OPENINGS[int(s)]) if int(s) in LATE_OPENINGS
                     else _extra_store(int(s))[1] if int(s) > FAVORITA_STORES
                     else np.datetime64("2000-01-01") for s in store_nbr], dtype="datetime64[D]")


def _favorita_stores() -> pd.DataFrame:
    """Favorita's 54 stores."""
    rng = _rng(54)
    places = [(city, state) for city, state, count in CITIES for _ in range(count)]
    types = np.array([t for t, n in STORE_TYPE_COUNTS.items() for _ in range(n)])
    order = rng.permutation(len(places))
    places = [places[i] for i in order]
    types = types[rng.permutation(len(types))]
    # Store 1: a Quito supermarket (type D), store 2: a large Guayaquil one (type A), so the
    # default two-store scale has different cities, states and types.
    quito = next(i for i, p in enumerate(places) if p[0] == "Quito")
    places[0], places[quito] = places[quito], places[0]
    guayaquil = next(i for i, p in enumerate(places) if p[0] == "Guayaquil")
    places[1], places[guayaquil] = places[guayaquil], places[1]
    d_at = int(np.flatnonzero(types == "D")[0])
    types[[0, d_at]] = types[[d_at, 0]]
    a_at = int(np.flatnonzero(types == "A")[0])
    if a_at != 1:
        types[[1, a_at]] = types[[a_at, 1]]
    clusters = [TYPE_CLUSTERS[t][rng.integers(len(TYPE_CLUSTERS[t]))] for t in types]
    return pd.DataFrame(
        {
            "store_nbr": np.arange(1, FAVORITA_STORES + 1, dtype=np.int32),
            "city": [p[0] for p in places],
            "state": [p[1] for p in places],
            "type": types,
            "cluster": np.array(clusters, dtype=np.int32),
        }
    )


def _family_counts(n_items: int) -> np.ndarray:
    """Items per family in Favorita's proportions, at least one each (largest remainder)."""
    shares = np.array([f[1] for f in FAMILIES], dtype=np.float64)
    spare = n_items - len(FAMILIES)
    exact = shares / shares.sum() * spare
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts))[: spare - counts.sum()]] += 1
    return counts + 1


def make_catalog(params: SyntheticParams) -> Catalog:
    rng = _rng(params.seed, 1)
    n_items = params.items
    counts = _family_counts(n_items)
    family = np.repeat(np.arange(len(FAMILIES)), counts)
    family = family[rng.permutation(n_items)]  # item numbers are not grouped by family
    item_nbr = np.sort(rng.choice(np.arange(96_995, 2_134_245), size=n_items, replace=False)).astype(np.int32)
    # Classes: about one per dozen items of a family, 4-digit codes.
    class_code = np.empty(n_items, dtype=np.int32)
    for f in range(len(FAMILIES)):  # 33 families, not rows
        members = np.flatnonzero(family == f)
        n_classes = max(1, round(len(members) / 12))
        class_code[members] = 1000 + 100 * f + rng.integers(0, n_classes, size=len(members)) * 2
    perishable = np.array([FAMILIES[f][2] for f in family], dtype=np.int8)
    level = np.array([FAMILIES[f][3] for f in family]) * np.log(10)
    popularity = level + rng.normal(0.0, 1.5, n_items) - 1.3
    weighed_family = np.array([FAMILIES[f][0] in WEIGHED_FAMILIES for f in family])
    weight_kg = np.where(weighed_family & (rng.random(n_items) < 0.4), rng.lognormal(np.log(0.8), 0.4, n_items), 0.0)
    start, end = np.datetime64(params.start_date), np.datetime64(params.end_date) + params.test_days
    span = int((end - start).astype(int)) + 1
    launched_late = rng.random(n_items) < 0.12
    first_day = start - 400 + np.where(launched_late, 400 + rng.integers(0, span, n_items), 0)
    discontinued = (rng.random(n_items) < 0.04) & ~launched_late
    last_day = np.where(discontinued, start + rng.integers(0, span, n_items), end + 1).astype("datetime64[D]")
    items = pd.DataFrame(
        {"item_nbr": item_nbr, "family": [FAMILIES[f][0] for f in family], "class": class_code,
         "perishable": perishable}
    )
    n_fam = len(FAMILIES)
    return Catalog(
        stores=make_stores(params.stores),
        items=items,
        item_family=family,
        item_popularity=popularity.astype(np.float32),
        item_trend=rng.normal(0.0, 0.08, n_items).astype(np.float32),
        item_uplift=np.clip(rng.normal(np.log(2.0), 0.35, n_items), 0.05, None).astype(np.float32),
        item_promo_rate=(rng.beta(0.7, 9.0, n_items)).astype(np.float32),
        item_weight_kg=weight_kg.astype(np.float32),
        item_first_day=first_day.astype("datetime64[D]"),
        item_last_day=last_day,
        family_weekday=(WEEKDAY_PROFILE[None, :] * rng.uniform(0.4, 1.6, (n_fam, 1))).astype(np.float32),
        family_yearly=rng.normal(0.0, 0.08, (n_fam, 2)).astype(np.float32),
    )


# ---------------------------------------------------------------- holidays


def _easter(year: int) -> dt.date:
    """Anonymous Gregorian algorithm (Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = (h + l_ - 7 * m + 114) % 31 + 1
    return dt.date(year, month, day)


# (month, day, description, locale, locale_name, transferable): fixed-date days off
FIXED_HOLIDAYS = (
    (1, 1, "Primer dia del ano", "National", "Ecuador", False),
    (5, 1, "Dia del Trabajo", "National", "Ecuador", False),
    (5, 24, "Batalla de Pichincha", "National", "Ecuador", True),
    (8, 10, "Primer Grito de Independencia", "National", "Ecuador", True),
    (10, 9, "Independencia de Guayaquil", "National", "Ecuador", True),
    (11, 2, "Dia de Difuntos", "National", "Ecuador", False),
    (11, 3, "Independencia de Cuenca", "National", "Ecuador", False),
    (12, 25, "Navidad", "National", "Ecuador", False),
    (6, 25, "Provincializacion de Imbabura", "Regional", "Imbabura", False),
    (11, 6, "Provincializacion de Cotopaxi", "Regional", "Cotopaxi", False),
    (11, 7, "Provincializacion Santa Elena", "Regional", "Santa Elena", False),
    (10, 6, "Provincializacion de Santo Domingo", "Regional", "Santo Domingo de los Tsachilas", False),
    (12, 6, "Fundacion de Quito", "Local", "Quito", False),
    (7, 25, "Fundacion de Guayaquil", "Local", "Guayaquil", True),
    (4, 12, "Fundacion de Cuenca", "Local", "Cuenca", True),
    (11, 4, "Fundacion de Manta", "Local", "Manta", False),
    (6, 3, "Cantonizacion de Latacunga", "Local", "Latacunga", False),
    (11, 12, "Fundacion de Ambato", "Local", "Ambato", False),
    (7, 5, "Fundacion de Machala", "Local", "Machala", False),
    (10, 7, "Cantonizacion de Quevedo", "Local", "Quevedo", False),
    (8, 21, "Fundacion de Esmeraldas", "Local", "Esmeraldas", False),
    (12, 8, "Fundacion de Loja", "Local", "Loja", False),
    (12, 22, "Cantonizacion de Libertad", "Local", "Libertad", False),
    (8, 15, "Cantonizacion de Playas", "Local", "Playas", False),
    (8, 26, "Cantonizacion de Daule", "Local", "Daule", False),
    (10, 27, "Cantonizacion de Babahoyo", "Local", "Babahoyo", False),
    (12, 22, "Cantonizacion de Salinas", "Local", "Salinas", False),
    (6, 23, "Cantonizacion de Cayambe", "Local", "Cayambe", False),
    (9, 28, "Fundacion de Ibarra", "Local", "Ibarra", False),
    (4, 21, "Cantonizacion de Riobamba", "Local", "Riobamba", False),
    (12, 15, "Cantonizacion de Guaranda", "Local", "Guaranda", False),
    (5, 12, "Cantonizacion del Puyo", "Local", "Puyo", False),
    (6, 3, "Cantonizacion de El Carmen", "Local", "El Carmen", False),
    (6, 12, "Fundacion de Santo Domingo", "Local", "Santo Domingo", False),
)


def make_holidays(first_year: int, last_year: int) -> pd.DataFrame:
    """Holidays and events, with Ecuador's rules for transfers and bridges."""
    rows: list[tuple] = []

    def add(day: dt.date, kind: str, locale: str, name: str, description: str, transferred: bool = False):
        rows.append((day, kind, locale, name, description, transferred))

    for year in range(first_year, last_year + 1):
        easter = _easter(year)
        national_days_off = set()
        for month, day, description, locale, locale_name, transferable in FIXED_HOLIDAYS:
            date = dt.date(year, month, day)
            weekday = date.weekday()
            if transferable and weekday in (1, 2, 3):  # Tue-Thu: celebrated on the next Friday
                moved = date + dt.timedelta(days=4 - weekday)
                add(date, "Holiday", locale, locale_name, description, transferred=True)
                add(moved, "Transfer", locale, locale_name, f"Traslado {description}")
                date = moved
            elif description == "Primer dia del ano" and weekday == 6:  # Sunday: Monday off
                add(date, "Holiday", locale, locale_name, description, transferred=True)
                add(date + dt.timedelta(days=1), "Transfer", locale, locale_name, f"Traslado {description}")
            else:
                add(date, "Holiday", locale, locale_name, description)
            if locale == "National":
                national_days_off.add(date)
        for offset, description in ((-48, "Carnaval"), (-47, "Carnaval"), (-2, "Viernes Santo")):
            date = easter + dt.timedelta(days=offset)
            add(date, "Holiday", "National", "Ecuador", description)
            national_days_off.add(date)
        for offset in (-4, -3, -2, -1):
            date = dt.date(year, 12, 25) + dt.timedelta(days=offset)
            add(date, "Additional", "National", "Ecuador", f"Navidad{offset}")
        add(dt.date(year, 12, 26), "Additional", "National", "Ecuador", "Navidad+1")
        add(dt.date(year, 12, 31), "Additional", "National", "Ecuador", "Primer dia del ano-1")
        add(dt.date(year, 12, 5), "Additional", "Local", "Quito", "Fundacion de Quito-1")
        add(dt.date(year, 7, 24), "Additional", "Local", "Guayaquil", "Fundacion de Guayaquil-1")
        national_days_off |= {dt.date(year, 12, d) for d in (21, 22, 23, 24, 26, 31)}
        # Bridges: a Tuesday or Thursday national holiday makes Monday/Friday a day off,
        # made up by working the Saturday a week before.
        for description, month, day in (("Navidad", 12, 25), ("Primer dia del ano", 1, 1), ("Dia de Difuntos", 11, 2)):
            date = dt.date(year, month, day)
            if date.weekday() not in (1, 3):
                continue
            bridge = date + dt.timedelta(days=-1 if date.weekday() == 1 else 1)
            if bridge in national_days_off:
                continue
            add(bridge, "Bridge", "National", "Ecuador", f"Puente {description}")
            recovery = bridge - dt.timedelta(days=bridge.weekday() + 2 + 7)  # a Saturday
            add(recovery, "Work Day", "National", "Ecuador", f"Recupero puente {description}")
        mothers_day = dt.date(year, 5, 1) + dt.timedelta(days=(6 - dt.date(year, 5, 1).weekday()) % 7 + 7)
        add(mothers_day - dt.timedelta(days=1), "Event", "National", "Ecuador", "Dia de la Madre-1")
        add(mothers_day, "Event", "National", "Ecuador", "Dia de la Madre")
        thanksgiving = dt.date(year, 11, 1) + dt.timedelta(days=(3 - dt.date(year, 11, 1).weekday()) % 7 + 21)
        if year >= 2014:
            add(thanksgiving + dt.timedelta(days=1), "Event", "National", "Ecuador", "Black Friday")
            add(thanksgiving + dt.timedelta(days=4), "Event", "National", "Ecuador", "Cyber Monday")
        if year == 2014:
            for date, description in (("2014-06-12", "Inauguracion Mundial de futbol Brasil"),
                                      ("2014-06-15", "Mundial de futbol Brasil: Ecuador-Suiza"),
                                      ("2014-06-20", "Mundial de futbol Brasil: Ecuador-Honduras"),
                                      ("2014-06-25", "Mundial de futbol Brasil: Ecuador-Francia"),
                                      ("2014-07-13", "Mundial de futbol Brasil: Final")):
                add(dt.date.fromisoformat(date), "Event", "National", "Ecuador", description)
        if year == 2016:
            for k in range(31):
                add(dt.date(2016, 4, 16) + dt.timedelta(days=k), "Event", "National", "Ecuador",
                    "Terremoto Manabi" + (f"+{k}" if k else ""))
    frame = pd.DataFrame(rows, columns=["date", "type", "locale", "locale_name", "description", "transferred"])
    frame["date"] = pd.to_datetime(frame["date"])
    return frame.sort_values(["date", "locale", "description"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- oil

OIL_ANCHORS = (("2012-01-01", 100.0), ("2013-01-01", 93.0), ("2014-06-15", 106.0), ("2015-01-15", 47.0),
               ("2015-06-01", 60.0), ("2016-02-10", 28.0), ("2016-06-08", 50.0), ("2017-01-03", 53.0),
               ("2017-06-20", 43.0), ("2017-08-31", 47.0), ("2030-12-31", 55.0))


def make_oil(seed: int, first: np.datetime64, last: np.datetime64) -> pd.DataFrame:
    """WTI on weekdays: the 2014-15 crash shape plus an AR(1) wobble; ~3 % of weekdays missing."""
    rng = _rng(seed, 2)
    days = np.arange(first, last + 1, dtype="datetime64[D]")
    anchors = np.array([np.datetime64(d) for d, _ in OIL_ANCHORS]).astype("datetime64[D]").astype(np.int64)
    trend = np.interp(days.astype(np.int64), anchors, np.log([v for _, v in OIL_ANCHORS]))
    shocks = rng.normal(0.0, 0.02, len(days))
    wobble = np.empty(len(days))
    level = 0.0
    for k in range(len(days)):  # one value per day (~2,000): the AR(1) recursion is inherently sequential
        level = 0.93 * level + shocks[k]
        wobble[k] = level
    price = np.round(np.exp(trend + wobble), 2)
    weekday = ((days.astype(np.int64) + 3) % 7) < 5  # 1970-01-01 was a Thursday
    days, price = days[weekday], price[weekday]
    missing = (rng.random(len(days)) < 0.03) | (days == days[0])  # Kaggle's first day has no price
    return pd.DataFrame({"date": days, "dcoilwtico": np.where(missing, np.nan, price)})


# ---------------------------------------------------------------- sales


class SalesProcess:
    """Expected demand and its draws for a block of days, over the chosen stores × all items."""

    def __init__(self, params: SyntheticParams, catalog: Catalog, holidays: pd.DataFrame):
        self.params, self.catalog, self.holidays = params, catalog, holidays
        self.stores = catalog.stores.iloc[: params.stores].reset_index(drop=True)
        self.start = np.datetime64(params.start_date)
        self.end = np.datetime64(params.end_date)
        self.last = self.end + params.test_days
        self.days = np.arange(self.start, self.last + 1, dtype="datetime64[D]")
        rng = _rng(params.seed, 3)
        n_stores, n_items = len(self.stores), len(catalog.items)
        types = self.stores["type"].to_numpy()
        type_level = np.array([STORE_TYPE_LEVEL[t] for t in types])
        self.store_level = (type_level + rng.normal(0, 0.2, n_stores)).astype(np.float32)
        self.store_trend = rng.normal(0.04, 0.03, n_stores).astype(np.float32)
        self.store_item = rng.normal(0.0, 0.45, (n_stores, n_items)).astype(np.float32)
        self.store_joins_promos = rng.random((n_stores, n_items)) < 0.85
        self.store_basket = rng.uniform(7.0, 14.0, n_stores)
        self.store_opening = store_openings(self.stores["store_nbr"].to_numpy())
        # Week-long promotion blocks per item, more frequent in later years.
        n_weeks = len(self.days) // 7 + 1
        years = np.arange(n_weeks) * 7 / 365.25 + (params.start_date.year - 2013)
        intensity = np.clip(0.35 + 0.25 * years, 0.2, 1.6)
        self.promo_weeks = rng.random((n_weeks, n_items)) < catalog.item_promo_rate[None, :] * intensity[:, None]
        flags = store_day_flags(holidays, self.days, self.stores)
        self.day_off = flags["is_national_holiday"] | flags["is_regional_holiday"] | flags["is_local_holiday"]
        self.work_day = flags["is_work_day"]
        self.state_hit = np.array([s in EARTHQUAKE_STATES for s in self.stores["state"]])
        self.costa = np.array([s in COSTA_STATES for s in self.stores["state"]])
        families = [f[0] for f in FAMILIES]
        self.relief_family = np.isin(np.arange(len(FAMILIES)), [families.index(f) for f in RELIEF_FAMILIES])
        self.school_family = families.index("SCHOOL AND OFFICE SUPPLIES")
        self.liquor_family = families.index("LIQUOR,WINE,BEER")

    def _day_family_effects(self, days: np.ndarray) -> np.ndarray:
        """[days, families] log effects of weekday, season, Christmas and paydays."""
        c = self.catalog
        weekday = ((days.astype(np.int64) + 3) % 7).astype(np.int64)
        doy = (days - days.astype("datetime64[Y]")).astype(np.int64)
        angle = 2 * np.pi * doy / 365.25
        effect = c.family_weekday[:, weekday].T + np.outer(np.sin(angle), c.family_yearly[:, 0]) + np.outer(
            np.cos(angle), c.family_yearly[:, 1]
        )
        month = days.astype("datetime64[M]")
        dom = (days - month).astype(np.int64) + 1
        month_end = ((month + 1).astype("datetime64[D]") - days).astype(np.int64) == 1
        payday = (dom == 15) | month_end
        after_payday = (dom == 16) | (dom == 1)
        effect += (0.12 * payday + 0.05 * after_payday)[:, None]
        december = (month.astype(np.int64) % 12 == 11) & (dom >= 10) & (dom <= 24)
        effect += (0.35 * december * (dom - 9) / 15)[:, None]
        effect[:, self.liquor_family] += 0.3 * december * (dom - 9) / 15
        return effect.astype(np.float32)

    def expected(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean demand [days, stores, items] for day indexes lo..hi-1, and the promotion flags."""
        c = self.catalog
        days = self.days[lo:hi]
        years = ((days - np.datetime64("2013-01-01")).astype(np.int64) / 365.25).astype(np.float32)
        per_family = self._day_family_effects(days)  # [T, F]
        # school season: Sierra in August-September, Costa in April
        month = (days.astype("datetime64[M]").astype(np.int64) % 12) + 1
        sierra_school = np.isin(month, (8, 9)).astype(np.float32)
        costa_school = (month == 4).astype(np.float32)
        log_mu = per_family[:, None, c.item_family]  # [T, 1, I]
        log_mu = log_mu + (c.item_popularity + c.item_trend * years[:, None])[:, None, :]
        store_day = (
            self.store_level[None, :]
            + self.store_trend[None, :] * years[:, None]
            + 0.18 * self.day_off[lo:hi]
            - 0.06 * self.work_day[lo:hi]
        )  # [T, S]
        since_quake = (days - EARTHQUAKE).astype(np.int64)
        quake = np.where((since_quake >= 0) & (since_quake < 45), np.exp(-np.clip(since_quake, 0, None) / 12.0), 0.0)
        store_day = store_day - (0.7 * quake[:, None] * self.state_hit[None, :])
        log_mu = log_mu + store_day[:, :, None].astype(np.float32) + self.store_item[None, :, :]
        relief = (0.45 * quake[:, None] * self.relief_family[None, :]).astype(np.float32)  # [T, F]
        log_mu += relief[:, None, c.item_family]
        school = np.where(self.costa[None, :], costa_school[:, None], sierra_school[:, None]) * 1.2  # [T, S]
        is_school = c.item_family == self.school_family
        log_mu[:, :, is_school] += school[:, :, None].astype(np.float32)
        week = (np.arange(lo, hi) // 7)
        promo = self.promo_weeks[week][:, None, :] & self.store_joins_promos[None, :, :]  # [T, S, I]
        log_mu += promo * c.item_uplift[None, None, :]
        active_item = (days[:, None] >= c.item_first_day[None, :]) & (days[:, None] < c.item_last_day[None, :])
        open_store = self._open(days)
        mu = np.exp(log_mu, out=log_mu)
        mu *= active_item[:, None, :]
        mu *= open_store[:, :, None]
        return mu, promo

    def _open(self, days: np.ndarray) -> np.ndarray:
        """[T, S]: closed before opening, on Christmas, and (all but one) on New Year's Day."""
        md = (days - days.astype("datetime64[Y]")).astype(np.int64)
        month = days.astype("datetime64[M]").astype(np.int64) % 12
        christmas = (month == 11) & ((days - days.astype("datetime64[M]")).astype(np.int64) == 24)
        new_year = md == 0
        is_open = days[:, None] >= self.store_opening[None, :]
        is_open &= ~christmas[:, None]
        is_open &= ~(new_year[:, None] & (self.stores["store_nbr"].to_numpy() != NEW_YEAR_OPEN_STORE)[None, :])
        return is_open

    def draw(self, lo: int, hi: int, rng: np.random.Generator):
        """Sampled unit sales [T, S, I] (0 = no row), promotion flags and expected demand."""
        mu, promo = self.expected(lo, hi)
        return sample_sales(mu, self.catalog.item_weight_kg, rng), promo, mu


def sample_sales(mu: np.ndarray, weight_kg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit sales drawn around the expected demand ``mu`` (any shape; ``weight_kg`` broadcasts to it).

    Gamma-Poisson counts; items sold by weight (``weight_kg`` > 0) become kilograms;
    rare zero days record a return (negative units). One function for the generator
    and for the noise-floor oracle of ``benchmarks/accuracy.py``.
    """
    rate = rng.gamma(GAMMA_SHAPE, 1.0 / GAMMA_SHAPE, size=mu.shape).astype(np.float32)
    rate *= mu
    counts = rng.poisson(rate).astype(np.float32)
    weight = np.broadcast_to(weight_kg, mu.shape)
    weighed = weight > 0
    if weighed.any():
        per_unit = rng.lognormal(0.0, 0.25, size=int(weighed.sum())).astype(np.float32)
        grams = np.round(counts[weighed] * weight[weighed] * per_unit, 3)
        counts[weighed] = np.where(counts[weighed] > 0, np.maximum(grams, 0.05), 0.0)
    returns = (counts == 0) & (mu > 0.05) & (rng.random(counts.shape, dtype=np.float32) < RETURN_PROBABILITY)
    counts[returns] = -(1.0 + rng.poisson(0.5, size=int(returns.sum())))
    return counts


def _months(days: np.ndarray) -> list[tuple[int, int]]:
    """(lo, hi) day-index ranges, one per calendar month."""
    month = days.astype("datetime64[M]")
    edges = np.flatnonzero(np.diff(month.astype(np.int64))) + 1
    bounds = np.concatenate([[0], edges, [len(days)]])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


TRAIN_SCHEMA = pa.schema([("id", pa.int64()), ("date", pa.date32()), ("store_nbr", pa.int32()),
                          ("item_nbr", pa.int32()), ("unit_sales", pa.float64()), ("onpromotion", pa.string())])
TEST_SCHEMA = pa.schema([("id", pa.int64()), ("date", pa.date32()), ("store_nbr", pa.int32()),
                         ("item_nbr", pa.int32()), ("onpromotion", pa.string())])


def _promo_strings(promo: np.ndarray, known: np.ndarray) -> pa.Array:
    """Kaggle's onpromotion: True/False, empty where unknown."""
    return kaggle_bool_strings(pa.array(promo, mask=~known))


CSV_SLICE_ROWS = 1 << 19  # rows formatted at a time: a month's CSV text never sits in memory whole
GZIP_LEVEL = 1  # fast: the raw files are big


def write_csv_member(table: pa.Table, sink: BinaryIO, compression: str, header: bool) -> None:
    """Append ``table`` to ``sink`` as CSV in Kaggle's layout: one gzip member of its own, or plain text.

    zlib's gzip header carries no time or file name, so the bytes depend on the rows alone.
    """
    slices = (table.slice(start, CSV_SLICE_ROWS) for start in range(0, table.num_rows, CSV_SLICE_ROWS))
    _write_csv_slices(slices, table.schema.names, sink, compression, header)


def _write_csv_slices(slices: Iterable[pa.Table | pa.RecordBatch], names: list[str], sink: BinaryIO,
                      compression: str, header: bool) -> None:
    """``write_csv_member`` from its slices of ``CSV_SLICE_ROWS`` rows: the same slices give the same bytes."""
    if compression not in ("gzip", "none"):
        raise ValueError(f"compression: expected gzip or none, got {compression!r}")
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if compression == "gzip" else None
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")

    def put(data) -> None:
        sink.write(packer.compress(data) if packer is not None else data)

    if header:
        put((",".join(names) + "\n").encode("utf-8"))
    for rows in slices:
        text = pa.BufferOutputStream()
        pacsv.write_csv(rows, text, options)
        put(text.getvalue())
    if packer is not None:
        sink.write(packer.flush())


@dataclass(frozen=True)
class MonthPart:
    """One month of train.csv for a Dask worker: the rows (an Arrow file) and where its member goes."""

    month: str
    rows: str
    member: str
    header: bool

    def __repr__(self) -> str:
        return f"train.csv month {self.month} ({self.rows})"


def write_month_member(part: MonthPart, compression: str) -> int:
    """Task (on a Dask worker): write one month's CSV member; returns its rows.

    The month's Arrow file holds one record batch per CSV slice (``_stage_month``), read and
    formatted one at a time: the task holds a slice, never the month, so its memory stays the same
    whatever the number of stores (a month of 162 stores is ~8.5 M rows, ~300 MB as Arrow).
    Idempotent: the member is written under a temporary name and renamed when complete.
    """
    rows = 0
    with pa.OSFile(part.rows, "rb") as source:  # read a batch at a time (a memory map would keep the month resident)
        reader = pa.ipc.open_file(source)

        def batches() -> Iterator[pa.RecordBatch]:
            nonlocal rows
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                rows += batch.num_rows
                yield batch

        with atomic_file(part.member) as tmp, open(tmp, "wb") as sink:
            _write_csv_slices(batches(), reader.schema.names, sink, compression, part.header)
    return rows


def _stage_month(table: pa.Table, month: np.datetime64, parts_dir: Path, header: bool) -> MonthPart:
    """Leave a month's rows in the (shared) output directory for a worker to format.

    One record batch per slice ``write_csv_member`` would format, so the worker formats the same slices.
    """
    parts_dir = parts_dir.resolve()  # absolute: a worker's current directory is its own
    part = MonthPart(str(month), str(parts_dir / f"train-{month}.arrow"), str(parts_dir / f"train-{month}.csv.part"),
                     header)
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with atomic_file(part.rows) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema, options=options) as writer:
        for start in range(0, table.num_rows, CSV_SLICE_ROWS):
            (batch,) = table.slice(start, CSV_SLICE_ROWS).combine_chunks().to_batches()
            writer.write_batch(batch)
    return part


def sales_process(params: SyntheticParams) -> SalesProcess:
    """The generator's demand model for ``params``: its catalog, holiday calendar and store effects."""
    last_day = params.end_date + dt.timedelta(params.test_days)
    return SalesProcess(params, make_catalog(params), make_holidays(min(params.start_date.year, 2012), last_day.year))


def generate(params: SyntheticParams, out_dir: Path, progress: bool = True, client=None) -> dict[str, int]:
    """Write the Favorita files into ``out_dir``; returns row counts per file.

    With a Dask ``client`` the months of train.csv are written by the cluster's workers
    (``out_dir`` must then be on storage they see); the files are the same bytes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".csv.gz" if params.compression == "gzip" else ".csv"
    process = sales_process(params)
    catalog, holidays = process.catalog, process.holidays
    stores, items = process.stores, catalog.items
    store_nbr = stores["store_nbr"].to_numpy(dtype=np.int32)
    item_nbr = items["item_nbr"].to_numpy(dtype=np.int32)
    n_train_days = len(process.days) - params.test_days
    promo_known_from = np.datetime64(PROMOTION_KNOWN_FROM)
    counts = {"train": 0, "test": 0, "transactions": 0}
    transactions: list[pd.DataFrame] = []
    rng = _rng(params.seed, 4)
    next_id = 0
    test_id = 0
    months = _months(process.days)
    parts_dir = out_dir / ".train-months"
    month_parts: list[MonthPart] = []
    with (
        _scratch(parts_dir),
        atomic_file(out_dir / f"train{suffix}") as train_tmp,
        open(train_tmp, "wb") as train_sink,
        atomic_file(out_dir / f"test{suffix}") as test_tmp,
        open_csv_sink(test_tmp, params.compression) as test_sink,
    ):
        test_writer = CsvTableWriter(test_sink, TEST_SCHEMA) if params.test_days else None
        for lo, hi in tqdm(months, desc="synthetic: months", unit="month", **bar_options(progress)):
            sales, promo, mu = process.draw(lo, hi, rng)
            days = process.days[lo:hi]
            train_part = min(hi, n_train_days) - lo
            if train_part > 0:
                t_idx, s_idx, i_idx = np.nonzero(sales[:train_part])  # date, store, item order
                n = len(t_idx)
                row_days = days[t_idx]
                table = pa.table(
                    [
                        pa.array(np.arange(next_id, next_id + n, dtype=np.int64)),
                        pa.array(row_days.astype("datetime64[D]"), type=pa.date32()),
                        pa.array(store_nbr[s_idx]),
                        pa.array(item_nbr[i_idx]),
                        pa.array(sales[t_idx, s_idx, i_idx].astype(np.float64)),
                        _promo_strings(promo[t_idx, s_idx, i_idx], row_days >= promo_known_from),
                    ],
                    schema=TRAIN_SCHEMA,
                )
                if client is None:
                    write_csv_member(table, train_sink, params.compression, header=lo == 0)
                else:
                    month_parts.append(_stage_month(table, days[0].astype("datetime64[M]"), parts_dir, lo == 0))
                    if len(month_parts) >= _months_per_wave(client):  # bounded scratch: a wave of months at a time
                        _members_on_cluster(client, month_parts, train_sink, params.compression, progress)
                        month_parts.clear()
                next_id += n
                units = np.clip(sales[:train_part], 0, None).sum(axis=2)  # [T, S]
                open_days = (sales[:train_part] != 0).any(axis=2)
                noise = rng.lognormal(0.0, 0.08, units.shape)
                tx = np.maximum(1, np.round(units / process.store_basket[None, :] * noise + 20)).astype(np.int64)
                t_open, s_open = np.nonzero(open_days)
                transactions.append(pd.DataFrame({"date": days[t_open], "store_nbr": store_nbr[s_open],
                                                  "transactions": tx[t_open, s_open]}))
            if test_writer is not None and hi > n_train_days:
                first = max(lo, n_train_days) - lo
                active = ((days[first:, None] >= catalog.item_first_day[None, :])
                          & (days[first:, None] < catalog.item_last_day[None, :]))
                grid = np.broadcast_to(active[:, None, :], promo[first:].shape)
                t_idx, s_idx, i_idx = np.nonzero(grid)
                n = len(t_idx)
                test_writer.write(pa.table(
                    [
                        pa.array(np.arange(next_id + test_id, next_id + test_id + n, dtype=np.int64)),
                        pa.array(days[first:][t_idx].astype("datetime64[D]"), type=pa.date32()),
                        pa.array(store_nbr[s_idx]),
                        pa.array(item_nbr[i_idx]),
                        _promo_strings(promo[first:][t_idx, s_idx, i_idx], np.ones(n, dtype=bool)),
                    ],
                    schema=TEST_SCHEMA,
                ))
                test_id += n
        if test_writer is not None:
            test_writer.close()
        if month_parts:
            _members_on_cluster(client, month_parts, train_sink, params.compression, progress)
    if not params.test_days:
        (out_dir / f"test{suffix}").unlink(missing_ok=True)
    counts["train"], counts["test"] = next_id, test_id
    tx_frame = pd.concat(transactions, ignore_index=True) if transactions else pd.DataFrame(
        {"date": [], "store_nbr": [], "transactions": []})
    counts["transactions"] = len(tx_frame)
    _write_table(tx_frame, out_dir / f"transactions{suffix}", params.compression)
    _write_table(catalog.stores, out_dir / f"stores{suffix}", params.compression)
    _write_table(items, out_dir / f"items{suffix}", params.compression)
    _write_table(holidays, out_dir / f"holidays_events{suffix}", params.compression)
    oil = make_oil(params.seed, min(np.datetime64(params.start_date), np.datetime64("2013-01-01")),
                   max(process.last, np.datetime64(params.end_date) + 16))
    _write_table(oil, out_dir / f"oil{suffix}", params.compression)
    counts.update(stores=len(catalog.stores), items=len(items), holidays_events=len(holidays), oil=len(oil))
    return counts


def _months_per_wave(client) -> int:
    """Months staged before the workers write them: two per worker thread, so each has work and disk stays bounded."""
    return max(4, 2 * sum(client.nthreads().values()))


def _members_on_cluster(client, parts: list[MonthPart], train_sink: BinaryIO, compression: str,
                        progress: bool) -> None:
    """The months' CSV members written by the cluster's workers, then appended to train.csv in month order."""
    run_tasks(write_month_member, parts, client=client, desc="synthetic: train.csv months", progress=progress,
              compression=compression)
    for part in parts:
        with open(part.member, "rb") as member:
            shutil.copyfileobj(member, train_sink, 1 << 20)
        Path(part.member).unlink()
        Path(part.rows).unlink()


@contextlib.contextmanager
def _scratch(directory: Path) -> Iterator[Path]:
    """A directory for the months handed to workers, removed afterwards whatever happens."""
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _write_table(frame: pd.DataFrame, path: Path, compression: str) -> None:
    write_frame_csv(frame, path, compression)
