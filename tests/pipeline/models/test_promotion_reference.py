"""The drift reference of the request's promotion flag counts only promotions the data gave (README: own data)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline import train
from pipeline.features import dense_feature_names
from pipeline.history import build_history, load_history
from pipeline.model_params import feature_params, train_params

from .conftest import TINY_PARAMS, write_params, write_tiny_project


def _unknown_before(frame: pd.DataFrame, cut: str) -> pd.DataFrame:
    """What prepare writes for a chain that gave no promotions before ``cut``: False, and not known; a filled
    (zero) day after it is not known either, yet not on promotion (the Kaggle practice)."""
    frame = frame.copy()
    before = frame["date"] < pd.Timestamp(cut)
    frame.loc[before, "onpromotion"] = False
    frame["onpromotion_known"] = ~before & (frame["unit_sales"] != 0)
    frame.loc[frame["unit_sales"] == 0, "onpromotion"] = False
    return frame


def test_every_promotion_given_keeps_the_history_and_the_reference_rows_unchanged(tiny_frame):
    frame = tiny_frame[0].copy()
    zero = frame["unit_sales"] == 0
    frame.loc[zero, ["onpromotion", "onpromotion_known"]] = False  # filled days: known False in prepared data
    history = build_history(frame)
    assert history.promo_known is None  # no extra memory when the data gave every promotion
    fparams, tparams = feature_params(TINY_PARAMS), train_params(TINY_PARAMS)
    data = train.prepare_training(history, fparams, tparams.baseline_weeks)
    assert data.train_promo_known.shape == (len(data.train),) and data.train_promo_known.all()


def test_promotions_unknown_before_the_stores_first_given_one_and_on_a_sale_without_one(tiny_frame):
    frame = _unknown_before(tiny_frame[0], "2017-06-01")
    sold_after = np.flatnonzero((frame["date"] >= pd.Timestamp("2017-06-10")).to_numpy() & (frame["unit_sales"] > 0))
    frame.loc[sold_after[:3], "onpromotion_known"] = False  # a sale whose promotion the data left empty
    history = build_history(frame)
    day = (frame["date"].to_numpy("datetime64[D]").astype(np.int64) - history.first_day)
    series = np.searchsorted(history.store_nbr.astype(np.int64) << 32 | history.item_nbr,
                             frame["store_nbr"].to_numpy(np.int64) << 32 | frame["item_nbr"].to_numpy(np.int64))
    expected = (frame["date"] >= pd.Timestamp("2017-06-01")).to_numpy().copy()
    expected[sold_after[:3]] = False
    np.testing.assert_array_equal(history.promo_known[series, day], expected)


def test_the_served_promotion_reference_comes_from_the_promotions_the_data_gave(tmp_path):
    """A chain with promotions only in its last weeks: the reference share is theirs, not diluted by the
    earlier (unknown, read False) days; before, ordinary traffic alarmed on target_onpromotion."""
    root = write_tiny_project(tmp_path / "project")
    path = root / "data" / "split" / "train.parquet"
    frame = _unknown_before(pd.read_parquet(path), "2017-07-01")
    frame.to_parquet(path, index=False)
    params = json.loads(json.dumps(TINY_PARAMS))
    params["train"].update(max_steps=20, eval_every_steps=10)
    write_params(root, params)
    train.run(root, quiet=True)
    stats = json.loads((root / "models" / "candidate" / "training_stats.json").read_text())
    reference = stats["served"]["dense"]["target_onpromotion"]
    # the tiny data promotes ~10 % of days: the reference says so, not the share diluted by unknown (False) days
    promoted = frame.loc[frame["onpromotion_known"] & (frame["unit_sales"] != 0), "onpromotion"].mean()
    assert reference["mean"] > 0.5 * promoted

    fparams, tparams = feature_params(params), train_params(params)
    data = train.prepare_training(load_history([path], days=train.days_needed(fparams)), fparams,
                                  tparams.baseline_weeks)
    flags = data.train.matrix.dense[:, dense_feature_names(fparams.spec).index("target_onpromotion")]
    known = data.train_promo_known
    assert 0 < known.sum() < known.size
    assert reference["count"] == int(known.sum())
    assert reference["mean"] == float(np.mean(flags[known], dtype=np.float64))
    assert 0.5 * promoted > float(flags.mean())  # what every row, most unknown (read False), said

