"""Features: hand-checked values, vocabularies, and train-time == serve-time features."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline import features as F
from pipeline.history import build_history, rows_at_origin, snapshot_at

SPEC = F.FeatureSpec(history_days=28, mean_windows=(7, 28), dow_weeks=(2, 4), promo_windows=(7,), horizon=16)


def _rows(sales, origin="2017-03-10", horizon=1, target_promo=0, holidays=None, **categorical):
    sales = np.asarray(sales, np.float32).reshape(1, -1)
    cats = {f: np.asarray([categorical.get(f, 1)]) for f in F.CATEGORICAL_FIELDS}
    return F.FeatureRows(sales=sales, promo=np.zeros_like(sales), origin_day=F.day_number([origin]),
                         horizon=np.asarray([horizon]), target_promo=np.asarray([target_promo]),
                         holidays=np.zeros((1, 5)) if holidays is None else np.asarray([holidays]),
                         categorical=cats)


def _vocab():
    return F.Vocabularies({f: ["1", "2"] for f in F.CATEGORICAL_FIELDS})


def test_holiday_flags_match_the_prepared_schema():
    from pipeline.schema import HOLIDAY_FLAGS

    assert F.HOLIDAY_FLAGS == HOLIDAY_FLAGS


def test_feature_values_by_hand():
    sales = np.zeros(28)
    sales[-1] = np.e - 1  # log1p = 1 on the origin day (2017-03-10, a Friday)
    sales[-8] = np.e**2 - 1  # log1p = 2 one week earlier (also a Friday)
    matrix = F.build_features(SPEC, _vocab(), _rows(sales, horizon=7, target_promo=1))
    values = dict(zip(F.dense_feature_names(SPEC), matrix.dense[0]))
    assert values["mean_log1p_7d"] == pytest.approx(1 / 7)
    assert values["mean_log1p_28d"] == pytest.approx(3 / 28)
    assert values["sale_days_share_28d"] == pytest.approx(2 / 28)
    # target 2017-03-17 is a Friday: the last two Fridays are log1p 1 and 2
    assert values["dow_mean_log1p_2w"] == pytest.approx(1.5)
    assert values["dow_mean_log1p_4w"] == pytest.approx(0.75)
    assert values["days_since_last_sale"] == 0
    assert values["days_since_first_sale"] == pytest.approx(7 / 28)
    assert values["target_dow_4"] == 1 and values["target_dow_0"] == 0
    assert values["target_day_of_month"] == pytest.approx(17 / 31)
    assert values["target_onpromotion"] == 1
    assert values["horizon"] == pytest.approx(7 / 16)


YEARLY = F.FeatureSpec(history_days=392, mean_windows=(7, 28), dow_weeks=(4,), promo_windows=(7,), yearly=True)


def _yearly_values(sales) -> dict:
    matrix = F.build_features(YEARLY, _vocab(), _rows(sales, horizon=3))
    return dict(zip(F.dense_feature_names(YEARLY), matrix.dense[0]))


def test_yearly_feature_values_by_hand():
    """Origin 2017-03-10 (column 391); target 2017-03-13 (h=3); its year-ago day is 2016-03-14, column 30."""
    sales = np.zeros(392)
    sales[0] = np.e - 1  # a sale before the year-ago base window (columns 0..27): the series existed back then
    sales[30] = np.e**3 - 1  # log1p 3 on the year-ago day
    sales[27] = np.e**7 - 1  # log1p 7 on the year-ago origin (the base window's last day, just outside the week)
    sales[-28:] = np.e - 1  # log1p 1 on each of the last 28 days
    values = _yearly_values(sales)
    assert values["year_ago_known"] == 1
    assert values["year_ago_log1p"] == pytest.approx(3)
    assert values["year_ago_week_mean_log1p"] == pytest.approx(10 / 7)  # columns 27..33
    assert values["year_ago_base_mean_log1p"] == pytest.approx(8 / 28)  # columns 0..27
    assert values["year_ago_season_change_log1p"] == pytest.approx(10 / 7 - 8 / 28)
    assert values["year_over_year_trend_log1p"] == pytest.approx(1 - 8 / 28)
    day_of_year = 71  # 2017-03-13: 31 + 28 + 12 days after 1 January
    assert values["target_day_of_year_sin"] == pytest.approx(np.sin(2 * np.pi * day_of_year / 365.25), abs=1e-6)
    assert values["target_day_of_year_cos"] == pytest.approx(np.cos(2 * np.pi * day_of_year / 365.25), abs=1e-6)


def test_yearly_features_are_zero_where_the_series_had_not_sold_a_year_earlier():
    sales = np.zeros(392)
    sales[30] = np.e**3 - 1  # a first sale after the year-ago base window began (or history padded with zeros)
    sales[-5:] = 4.0
    values = _yearly_values(sales)
    assert all(values[name] == 0 for name in ("year_ago_known", "year_ago_log1p", "year_ago_week_mean_log1p",
                                             "year_ago_base_mean_log1p", "year_ago_season_change_log1p",
                                             "year_over_year_trend_log1p"))
    with pytest.raises(F.FeatureInputError, match="features.history_days.*yearly"):
        F.FeatureSpec(history_days=391, yearly=True)


def test_paydays_are_the_15th_and_the_last_day_of_the_month():
    days = F.day_number(["2016-02-15", "2016-02-29", "2017-02-28", "2017-03-30", "2017-12-31", "2017-03-14"])
    dow, dom, payday, to_payday = F.calendar_of(days)
    assert payday.tolist() == [True, True, True, False, True, False]
    assert dom.tolist() == [15, 29, 28, 30, 31, 14]
    assert to_payday.tolist() == [0, 0, 0, 1, 0, 1]
    assert dow[0] == 0  # 2016-02-15 was a Monday


def test_no_sale_in_the_window():
    values = F.build_features(SPEC, _vocab(), _rows(np.zeros(28))).dense[0]
    named = dict(zip(F.dense_feature_names(SPEC), values))
    assert named["days_since_last_sale"] == 1.0 and named["mean_log1p_28d"] == 0


def test_unknown_categories_get_the_reserved_id():
    vocab = F.Vocabularies({**{f: ["1", "2"] for f in F.CATEGORICAL_FIELDS}, "family": ["BEVERAGES", "DAIRY"]})
    assert vocab.encode("family", np.array(["DAIRY", "NEW", "BEVERAGES", ""])).tolist() == [2, 0, 1, 0]
    assert vocab.encode("store_nbr", np.array([2, 9])).tolist() == [2, F.UNKNOWN_ID]
    assert vocab.size("family") == 3


def test_bad_inputs_name_the_field():
    with pytest.raises(F.FeatureInputError, match="horizon: row 0"):
        F.build_features(SPEC, _vocab(), _rows(np.zeros(28), horizon=17))
    with pytest.raises(F.FeatureInputError, match="sales: row 0, day 3"):
        bad = np.zeros(28)
        bad[3] = np.nan
        F.build_features(SPEC, _vocab(), _rows(bad))
    with pytest.raises(F.FeatureInputError, match="sales: expected shape"):
        F.build_features(SPEC, _vocab(), _rows(np.zeros(20)))
    with pytest.raises(F.FeatureInputError, match="history_days"):
        F.FeatureSpec(history_days=20, mean_windows=(28,))


def test_train_time_and_serve_time_features_are_identical(tiny_frame):
    """Training gathers rows from the full arrays; serving looks one request up in the bundle snapshot."""
    frame, holidays_table = tiny_frame
    first = int(frame["date"].min().to_datetime64().astype("datetime64[D]").astype(np.int64))
    history = build_history(frame, first_day=first - 200)  # padded: the year-ago days partly predate the data
    spec = F.FeatureSpec(history_days=392, mean_windows=(3, 7, 28, 56), dow_weeks=(4, 8), promo_windows=(14,),
                         yearly=True)
    origin_col = history.days - 17
    rows, target, _, series = rows_at_origin(history, origin_col, spec.history_days, spec.horizon)
    vocab = F.Vocabularies.fit(history.series_categorical())
    trained = F.build_features(spec, vocab, rows)

    calendar = history.holidays[:, origin_col + 1: origin_col + 17]
    snapshot = snapshot_at(history, origin_col, spec.history_days, calendar)
    target_day = rows.origin_day + rows.horizon
    picks = np.random.default_rng(0).choice(len(rows), size=60, replace=False)
    for i in picks:  # one request at a time, exactly as the app calls it
        one = F.rows_from_snapshot(snapshot, int(history.store_nbr[series[i]]), int(history.item_nbr[series[i]]),
                                   str(np.datetime64(int(target_day[i]), "D")), bool(rows.target_promo[i]))
        served = F.build_features(spec, vocab, one)
        np.testing.assert_array_equal(served.dense[0], trained.dense[i])
        np.testing.assert_array_equal(served.categorical[0], trained.categorical[i])
    # and all at once (the evaluate path)
    batch = F.rows_from_snapshot(snapshot, history.store_nbr[series], history.item_nbr[series],
                                 target_day.astype("datetime64[D]"), rows.target_promo)
    np.testing.assert_array_equal(F.build_features(spec, vocab, batch).dense, trained.dense)


def test_serving_requests_outside_the_snapshot(tiny_frame):
    frame, _ = tiny_frame
    history = build_history(frame)
    origin_col = history.days - 1
    snapshot = snapshot_at(history, origin_col, 28, np.zeros((2, 16, 5), np.uint8))
    origin = np.datetime64(history.last_day, "D")
    with pytest.raises(F.FeatureInputError, match="outside the model's forecast window"):
        F.rows_from_snapshot(snapshot, 1, 1000, origin, False)
    with pytest.raises(F.FeatureInputError, match="store 99 is not one the model was trained on"):
        F.rows_from_snapshot(snapshot, 99, 1000, origin + 1, False)
    new_item = F.rows_from_snapshot(snapshot, 1, 424242, origin + 1, True)
    assert new_item.sales.sum() == 0 and new_item.categorical["family"][0] == ""


def test_serving_modules_do_not_import_pandas_or_mlflow():
    code = ("import sys, pipeline.features, pipeline.bundle; "
            "bad = [m for m in ('pandas', 'mlflow', 'pyarrow') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
