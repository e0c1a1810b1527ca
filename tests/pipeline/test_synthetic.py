"""The synthetic data follow Favorita's schema conventions and the documented generating process."""

from __future__ import annotations

import copy
import datetime as dt
import time

import numpy as np
import pandas as pd
import pytest

from pipeline.params import SyntheticParams
from pipeline.synthetic import FAMILIES, SalesProcess, generate, make_catalog, make_holidays, make_stores

PARAMS = SyntheticParams(seed=7, stores=3, items=300, start_date=dt.date(2013, 10, 1), end_date=dt.date(2016, 6, 30),
                         test_days=16, compression="gzip")

HEADERS = {
    "train": "id,date,store_nbr,item_nbr,unit_sales,onpromotion",
    "test": "id,date,store_nbr,item_nbr,onpromotion",
    "items": "item_nbr,family,class,perishable",
    "stores": "store_nbr,city,state,type,cluster",
    "holidays_events": "date,type,locale,locale_name,description,transferred",
    "oil": "date,dcoilwtico",
    "transactions": "date,store_nbr,transactions",
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    counts = generate(PARAMS, out, progress=False)
    frames = {name: pd.read_csv(out / f"{name}.csv.gz", low_memory=False) for name in HEADERS}
    return out, counts, frames


def test_exact_kaggle_headers(generated):
    import gzip

    out = generated[0]
    for name, header in HEADERS.items():
        with gzip.open(out / f"{name}.csv.gz", "rt") as handle:
            assert handle.readline().rstrip("\n") == header


def test_train_conventions(generated):
    train = generated[2]["train"]
    assert len(train) == generated[1]["train"]
    assert (train["unit_sales"] != 0).all()  # zero-sales days are absent
    assert (train["unit_sales"] < 0).any()  # returns
    assert (train["unit_sales"] % 1 != 0).any()  # items sold by weight
    assert (train["id"].to_numpy() == np.arange(len(train))).all()
    dates = pd.to_datetime(train["date"])
    before = dates < pd.Timestamp("2014-04-01")
    assert train.loc[before, "onpromotion"].isna().all()
    assert train.loc[~before, "onpromotion"].notna().all()
    assert set(train.loc[~before, "onpromotion"].unique()) == {True, False}
    order = train[["date", "store_nbr", "item_nbr"]]
    assert not order.duplicated().any()
    assert order.equals(order.sort_values(["date", "store_nbr", "item_nbr"]).reset_index(drop=True))
    assert set(train["store_nbr"]) == {1, 2, 3}
    assert not ((dates.dt.month == 12) & (dates.dt.day == 25)).any()  # closed on Christmas


def test_test_file_follows_train(generated):
    train, test = generated[2]["train"], generated[2]["test"]
    assert test["id"].iloc[0] == len(train)
    assert pd.to_datetime(test["date"]).min() == pd.Timestamp(PARAMS.end_date) + pd.Timedelta(days=1)
    assert pd.to_datetime(test["date"]).nunique() == PARAMS.test_days
    assert test["onpromotion"].notna().all()


def test_stores_items_and_families():
    stores = make_stores()
    assert len(stores) == 54 and stores["city"].nunique() == 22 and stores["state"].nunique() == 16
    assert set(stores["type"]) == {"A", "B", "C", "D", "E"}
    assert stores["cluster"].between(1, 17).all() and stores["cluster"].nunique() >= 10
    catalog = make_catalog(SyntheticParams(**{**PARAMS.__dict__, "items": 4100}))
    items = catalog.items
    assert len(items) == 4100 and items["item_nbr"].is_unique and items["family"].nunique() == 33
    perishable = {f[0] for f in FAMILIES if f[2]}
    assert (items["perishable"] == items["family"].isin(perishable)).all()
    assert items.groupby("family")["class"].nunique().max() > 10
    rates = np.exp(catalog.item_popularity)
    assert np.percentile(rates, 95) / np.percentile(rates, 5) > 100  # orders of magnitude


def test_holidays_have_locales_transfers_bridges_and_events():
    holidays = make_holidays(2013, 2017)
    assert set(holidays["locale"]) == {"National", "Regional", "Local"}
    assert {"Holiday", "Transfer", "Additional", "Bridge", "Work Day", "Event"} <= set(holidays["type"])
    transferred = holidays[holidays["transferred"]]
    assert len(transferred) >= 5
    for _, row in transferred.iterrows():
        moved = holidays[(holidays["type"] == "Transfer")
                         & (holidays["description"] == f"Traslado {row['description']}")
                         & (holidays["date"] > row["date"]) & (holidays["date"] <= row["date"] + pd.Timedelta(days=7))]
        assert len(moved) == 1, row["description"]
    quake = holidays[holidays["description"].str.startswith("Terremoto Manabi")]
    assert quake["date"].min() == pd.Timestamp("2016-04-16") and len(quake) == 31


def test_oil_has_weekdays_only_and_gaps(generated):
    oil = generated[2]["oil"]
    days = pd.to_datetime(oil["date"])
    assert (days.dt.day_of_week < 5).all()
    assert pd.isna(oil["dcoilwtico"].iloc[0]) and oil["dcoilwtico"].isna().sum() > 5
    assert oil["dcoilwtico"].dropna().between(20, 130).all()


def test_transactions_cover_open_store_days(generated):
    train, tx = generated[2]["train"], generated[2]["transactions"]
    store_days = train[["date", "store_nbr"]].drop_duplicates()
    assert len(tx) == len(store_days)
    assert (tx["transactions"] > 0).all()


def test_deterministic_for_a_seed(tmp_path):
    small = SyntheticParams(**{**PARAMS.__dict__, "items": 60, "start_date": dt.date(2016, 1, 1),
                               "compression": "none"})
    generate(small, tmp_path / "a", progress=False)
    generate(small, tmp_path / "b", progress=False)
    generate(SyntheticParams(**{**small.__dict__, "seed": 8}), tmp_path / "c", progress=False)
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    assert (tmp_path / "a" / "train.csv").read_bytes() != (tmp_path / "c" / "train.csv").read_bytes()


def test_gzip_files_are_byte_identical_for_a_seed(tmp_path):
    """DVC hashes the compressed bytes: no time stamp or file name in the gzip header may change them."""
    small = SyntheticParams(**{**PARAMS.__dict__, "items": 40, "start_date": dt.date(2016, 3, 1)})
    generate(small, tmp_path / "a", progress=False)
    time.sleep(1.1)  # a header time stamp would now differ
    generate(small, tmp_path / "b", progress=False)
    names = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert names and all(name.endswith(".csv.gz") for name in names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.fixture(scope="module")
def process():
    params = SyntheticParams(seed=3, stores=54, items=400, start_date=dt.date(2015, 6, 1),
                             end_date=dt.date(2016, 12, 31), test_days=0, compression="none")
    return SalesProcess(params, make_catalog(params), make_holidays(2015, 2016))


def _mean_by_day(process, lo, hi):
    mu, _ = process.expected(lo, hi)
    return mu.mean(axis=(1, 2)), mu


def test_weekly_seasonality_and_paydays(process):
    daily, _ = _mean_by_day(process, 0, 120)
    days = pd.DatetimeIndex(process.days[:120])
    weekend = daily[days.day_of_week >= 5].mean()
    midweek = daily[days.day_of_week.isin([1, 2, 3])].mean()
    assert weekend > 1.15 * midweek
    ordinary = ~days.is_month_end & (days.day != 15) & (days.day != 16) & (days.day != 1)
    for weekday in range(7):  # paydays beat other days of the same weekday
        payday = (days.day_of_week == weekday) & ((days.day == 15) | days.is_month_end)
        if payday.any():
            assert daily[payday].mean() > daily[ordinary & (days.day_of_week == weekday)].mean()


def test_earthquake_hits_manabi_and_raises_relief_families(process):
    quake = int(np.flatnonzero(process.days == np.datetime64("2016-04-16"))[0])
    _, before = _mean_by_day(process, quake - 14, quake - 7)
    _, after = _mean_by_day(process, quake + 1, quake + 8)
    manabi = process.stores["state"].to_numpy() == "Manabi"
    elsewhere = ~manabi & (process.store_opening <= process.days[quake - 14])
    assert after[:, manabi].mean() < 0.8 * before[:, manabi].mean()
    families = np.array([f[0] for f in FAMILIES])[process.catalog.item_family]
    water = families == "BEVERAGES"
    assert after[:, elsewhere][:, :, water].mean() > 1.2 * before[:, elsewhere][:, :, water].mean()


def test_promotions_lift_demand_and_grow_over_time(process):
    mu, promo = process.expected(0, 60)
    without = copy.copy(process)
    without.promo_weeks = np.zeros_like(process.promo_weeks)
    plain, no_promo = without.expected(0, 60)
    assert promo.any() and not no_promo.any()
    selling = promo & (plain > 0)
    uplift = np.broadcast_to(process.catalog.item_uplift[None, None, :], promo.shape)[selling]
    np.testing.assert_allclose(mu[selling] / plain[selling], np.exp(uplift), rtol=1e-4)
    assert (mu[~promo] == plain[~promo]).all()
    assert process.promo_weeks[-20:].mean() > process.promo_weeks[:20].mean()  # more promotions later


def test_holidays_raise_demand_in_matching_stores(process):
    day_off = process.day_off
    t, s = np.nonzero(day_off[:300])
    assert len(t)
    mu, _ = process.expected(0, 300)
    weekday = (process.days[:300].astype(np.int64) + 3) % 7
    same_weekday_other = [(day_off[:300, si] == 0) & (weekday == weekday[ti]) for ti, si in zip(t[:20], s[:20])]
    higher = [mu[ti, si].mean() > mu[mask, si].mean() * 1.02
              for ti, si, mask in zip(t[:20], s[:20], same_weekday_other)]
    assert np.mean(higher) > 0.7
