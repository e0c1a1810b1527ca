"""Which days are holidays for which store: holidays_events matched by locale.

Shared by the synthetic generator (holiday effects on demand) and ``prepare``
(the holiday flags of the prepared data), so both read the file the same way:

* a day off is a Holiday, Transfer, Additional or Bridge row that is not
  ``transferred`` (a transferred holiday is celebrated on its Transfer row's date);
* National rows apply to every store, Regional rows to stores whose ``state`` is
  the row's ``locale_name``, Local rows to stores whose ``city`` is; names are
  compared ignoring case, the spaces around and between words and the Unicode
  form (``QUITO``, ``Quito `` and ``Quito`` are one city, ``Genève`` with ``è`` as
  one character or as ``e`` + accent one too), see ``place_key``;
* Work Day rows (weekend days worked to make up for a Bridge) and Event rows
  (Mother's day, the 2016 earthquake, World Cup matches...) get their own flags.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd

from pipeline.schema import DAY_OFF_TYPES, HOLIDAY_FLAGS


def place_name(name) -> str:
    """A city/state name in one Unicode form (NFC): files differ in how they store an accented letter."""
    return unicodedata.normalize("NFC", str(name))


def place_key(names) -> np.ndarray:
    """City/state names as compared: NFC (``place_name``), case-folded, spaces around and between words collapsed."""
    return np.array([" ".join(place_name(name).split()).casefold() for name in names], dtype=object)


def lookalike_key(name) -> str:
    """``place_key`` blind also to compatibility forms (NFKC) and invisible format characters: names with one
    lookalike key but two place keys print alike, so a warning about them shows their code points."""
    text = "".join(c for c in unicodedata.normalize("NFKC", str(name)) if unicodedata.category(c) != "Cf")
    return " ".join(text.split()).casefold()


def unmatched_locales(holidays: pd.DataFrame, stores: pd.DataFrame) -> np.ndarray:
    """Rows (positions) of Regional/Local holidays whose locale_name matches no store's state/city."""
    if len(holidays) == 0:
        return np.zeros(0, dtype=np.int64)
    locales = holidays["locale"].astype(str).to_numpy()
    names = place_key(holidays["locale_name"])
    states, cities = set(place_key(stores["state"])), set(place_key(stores["city"]))
    regional = (locales == "Regional") & ~np.isin(names, list(states))
    local = (locales == "Local") & ~np.isin(names, list(cities))
    return np.flatnonzero(regional | local)


def store_day_flags(holidays: pd.DataFrame, dates: np.ndarray, stores: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean arrays [len(dates), len(stores)] for every name in HOLIDAY_FLAGS.

    ``dates`` must be consecutive days (datetime64[D]); ``stores`` needs city and state.
    """
    dates = np.asarray(dates, dtype="datetime64[D]")
    n_dates, n_stores = len(dates), len(stores)
    flags = {name: np.zeros((n_dates, n_stores), dtype=bool) for name in HOLIDAY_FLAGS}
    if n_dates == 0 or len(holidays) == 0:
        return flags
    day_index = (holidays["date"].to_numpy(dtype="datetime64[D]") - dates[0]).astype(np.int64)
    inside = (day_index >= 0) & (day_index < n_dates)
    cities = place_key(stores["city"])
    states = place_key(stores["state"])
    everyone = np.ones(n_stores, dtype=bool)
    kinds = holidays["type"].astype(str).to_numpy()
    locales = holidays["locale"].astype(str).to_numpy()
    names = place_key(holidays["locale_name"])
    transferred = holidays["transferred"].to_numpy(dtype=bool)
    for row in np.flatnonzero(inside & ~transferred):  # a few hundred rows, not data rows
        if locales[row] == "National":
            where = everyone
        elif locales[row] == "Regional":
            where = states == names[row]
        else:
            where = cities == names[row]
        kind = kinds[row]
        if kind in DAY_OFF_TYPES:
            flag = {"National": "is_national_holiday", "Regional": "is_regional_holiday"}.get(
                locales[row], "is_local_holiday"
            )
        elif kind == "Work Day":
            flag = "is_work_day"
        else:
            flag = "is_event"
        flags[flag][day_index[row], where] = True
    return flags
