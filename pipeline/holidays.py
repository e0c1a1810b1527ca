"""Which days are holidays for which store: holidays_events matched by locale.

Shared by the synthetic generator (holiday effects on demand) and ``prepare``
(the holiday flags of the prepared data), so both read the file the same way:

* a day off is a Holiday, Transfer, Additional or Bridge row that is not
  ``transferred`` (a transferred holiday is celebrated on its Transfer row's date);
* National rows apply to every store, Regional rows to stores whose ``state`` is
  the row's ``locale_name``, Local rows to stores whose ``city`` is;
* Work Day rows (weekend days worked to make up for a Bridge) and Event rows
  (Mother's day, the 2016 earthquake, World Cup matches...) get their own flags.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.schema import DAY_OFF_TYPES, HOLIDAY_FLAGS


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
    cities = stores["city"].astype(str).to_numpy()
    states = stores["state"].astype(str).to_numpy()
    everyone = np.ones(n_stores, dtype=bool)
    kinds = holidays["type"].astype(str).to_numpy()
    locales = holidays["locale"].astype(str).to_numpy()
    names = holidays["locale_name"].astype(str).to_numpy()
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
