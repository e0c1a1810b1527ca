"""Backtest windows: a window's history is a view of the loaded arrays, and what starts later stays unknown."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import backtest, train
from pipeline.features import CATEGORICAL_FIELDS, UNKNOWN_ID
from pipeline.history import build_history
from pipeline.model_params import feature_params

from .conftest import TINY_PARAMS

LATE_ITEM = 1000 + 7 * 5  # an item of the tiny data, made to sell first on day 150 in every store
LATE_DAY = 150


def _history_with_a_late_item(tiny_frame):
    frame = tiny_frame[0]
    launch = frame["date"].min() + pd.Timedelta(days=LATE_DAY)
    return build_history(frame[(frame["item_nbr"] != LATE_ITEM) | (frame["date"] >= launch)])


def test_a_window_history_is_a_view_of_the_days_before_the_cut(tiny_frame):
    history = _history_with_a_late_item(tiny_frame)
    window = backtest.history_before(history, LATE_DAY, LATE_DAY - 100)
    assert window.days == 100 and window.first_day == history.first_day + LATE_DAY - 100
    for name in ("sales", "promo", "observed", "holidays"):  # nothing copied: evaluate's memory is the history's
        assert np.shares_memory(getattr(window, name), getattr(history, name)), name
    np.testing.assert_array_equal(window.sales, history.sales[:, LATE_DAY - 100:LATE_DAY])
    late = window.item_nbr == LATE_ITEM
    assert late.any() and not window.observed[late].any()  # the late series are there, without grid rows
    assert backtest.history_before(history, 30, -5).first_day == history.first_day  # a start before the data: 0


def test_a_series_that_starts_after_the_cut_is_unknown_to_the_window_model(tiny_frame):
    history = _history_with_a_late_item(tiny_frame)
    fparams = feature_params(TINY_PARAMS)
    window = train.prepare_training(backtest.history_before(history, LATE_DAY, LATE_DAY - train.days_needed(fparams)),
                                    fparams, baseline_weeks=4)
    assert str(LATE_ITEM) not in window.vocab.values["item_nbr"]  # as a new item is to the candidate
    item = window.train.matrix.categorical[:, CATEGORICAL_FIELDS.index("item_nbr")]
    assert item.size and (item != UNKNOWN_ID).all()  # and no training rows: every row's item is known
    assert str(LATE_ITEM) in train.prepare_training(history, fparams, baseline_weeks=4).vocab.values["item_nbr"]
