"""The holiday calendar a forecast needs: prepare writes it past the data; a short one is a clear error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.history import HistoryError, future_calendar
from pipeline.schema import HOLIDAY_FLAGS


def test_a_calendar_that_ends_early_is_a_clear_error_naming_the_first_missing_day(tmp_path):
    """This message used to crash itself (numpy ints are no datetime64) in python -m pipeline.promote."""
    days = pd.date_range("2017-08-01", "2017-08-10", freq="D")
    table = pd.DataFrame({"date": days.astype("datetime64[ns]"), "store_nbr": np.full(len(days), 3, np.int16),
                          **{name: np.zeros(len(days), bool) for name in HOLIDAY_FLAGS}})
    path = tmp_path / "holidays.parquet"
    table.to_parquet(path)
    first_day = np.int64(np.datetime64("2017-08-05", "D").astype(np.int64))
    with pytest.raises(HistoryError, match=r"holidays.parquet: no calendar row for store 3 on 2017-08-11$"):
        future_calendar(path, np.array([3], np.int64), first_day, np.int64(16))
    assert future_calendar(path, np.array([3], np.int64), first_day, 6).shape == (1, 6, len(HOLIDAY_FLAGS))
