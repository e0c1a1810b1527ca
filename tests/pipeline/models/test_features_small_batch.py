"""A request's few rows take build_features' and rows_from_snapshot's row-by-row path (SMALL_BATCH_ROWS); it must
give the same bits as the whole-array path training and evaluate use, on every kind of row."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import features as F

SPECS = {
    "yearly": F.FeatureSpec(history_days=392, mean_windows=(3, 7, 14, 28, 56, 112), dow_weeks=(4, 8, 16),
                            promo_windows=(14, 56), yearly=True),
    "short": F.FeatureSpec(history_days=35, mean_windows=(1, 3, 7, 35), dow_weeks=(1, 5), promo_windows=(35, 2),
                           horizon=9),
}
VOCAB = F.Vocabularies({
    "store_nbr": ["1", "2", "54"], "item_nbr": ["1000", "103665", "2**31"], "family": ["BEVERAGES", "DAIRY", "É"],
    "class": ["1002", "3008"], "perishable": ["0", "1"], "city": ["Quito", "Guayaquil"], "store_type": ["A", "D"],
    "cluster": ["2", "14"],
})
DAY_2017 = int(F.day_number("2017-01-01"))
CATEGORY_CHOICES = {  # known values, unseen ones, missing ones
    "store_nbr": [1, 2, 54, 9, 0, -3], "item_nbr": [1000, 103665, 424242, 2**40], "family": ["BEVERAGES", "É", "", "X"],
    "class": [1002, 3008, 7], "perishable": [True, False], "city": ["Quito", "Guayaquil", "Cuenca", ""],
    "store_type": ["A", "D", "Z"], "cluster": [2, 14, 99],
}


def random_sales(rng: np.random.Generator, width: int) -> np.ndarray:
    kind = rng.integers(6)
    if kind == 0:
        return np.zeros(width)  # no history at all (an unseen series)
    if kind == 1:
        sales = np.zeros(width)
        sales[rng.integers(width)] = rng.integers(1, 50)  # one sale, anywhere (the first and last days too)
        return sales
    if kind == 2:
        sales = rng.poisson(3.0, width).astype(float)
        sales[:rng.integers(width)] = 0  # a series that started late
        return sales
    if kind == 3:
        return np.round(rng.exponential(2.0, width) * (rng.random(width) < 0.5), 3)  # kilograms
    if kind == 4:
        return rng.choice([0.0, 1e5, 0.001, 7.0], width)
    return rng.poisson(40.0, width).astype(float)


def random_rows(rng: np.random.Generator, spec: F.FeatureSpec, n: int, origins=None) -> F.FeatureRows:
    width = spec.history_days
    sales = np.stack([random_sales(rng, width) for _ in range(n)]).astype(np.float32)
    promo_kind = rng.integers(3, size=n)
    promo = np.where(promo_kind[:, None] == 0, 0, np.where(promo_kind[:, None] == 1, 1,
                                                            rng.random((n, width)) < 0.2)).astype(np.uint8)
    if origins is None:  # month ends, leap days, year ends, long before and after 1970
        origins = DAY_2017 + rng.integers(-800, 800, n)
        far = rng.random(n) < 0.1  # beyond datetime.date (years 1..9999) on both sides, and across its ends
        origins[far] = rng.choice([-719_200, -719_170, -20_000, 2_932_860, 3_500_000, 0, -1], far.sum())
    categorical = {name: np.asarray([values[k] for k in rng.integers(len(values), size=n)])
                   for name, values in CATEGORY_CHOICES.items()}
    return F.FeatureRows(sales=sales, promo=promo, origin_day=np.asarray(origins, np.int64),
                         horizon=rng.integers(1, spec.horizon + 1, n), target_promo=rng.integers(0, 2, n),
                         holidays=(rng.random((n, len(F.HOLIDAY_FLAGS))) < 0.3).astype(np.uint8),
                         categorical=categorical)


def subset(rows: F.FeatureRows, index) -> F.FeatureRows:
    return F.FeatureRows(sales=rows.sales[index], promo=rows.promo[index], origin_day=rows.origin_day[index],
                         horizon=rows.horizon[index], target_promo=rows.target_promo[index],
                         holidays=rows.holidays[index],
                         categorical={k: v[index] for k, v in rows.categorical.items()})


def assert_same_bits(small: F.FeatureMatrix, batch: F.FeatureMatrix) -> None:
    assert small.dense.dtype == batch.dense.dtype == np.float32 and small.dense.shape == batch.dense.shape
    assert small.categorical.dtype == batch.categorical.dtype == np.int32
    assert small.dense.flags.c_contiguous and small.categorical.flags.c_contiguous
    different = np.argwhere(small.dense.view(np.uint32) != batch.dense.view(np.uint32))  # -0.0 != 0.0 here
    assert different.size == 0, (f"dense differs at (row, column) {different[:5].tolist()}: "
                                 f"{small.dense[tuple(different[0])]!r} vs {batch.dense[tuple(different[0])]!r}")
    np.testing.assert_array_equal(small.categorical, batch.categorical)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_a_request_row_has_the_bits_it_has_in_a_training_batch(spec_name):
    spec = SPECS[spec_name]
    rng = np.random.default_rng(13)
    rows = random_rows(rng, spec, 1500)
    batch = F.build_features(spec, VOCAB, rows)  # 1,500 rows: the whole-array path
    for i in range(len(rows)):
        one = subset(rows, [i])
        small = F.build_features(spec, VOCAB, one)
        assert_same_bits(small, F.FeatureMatrix(batch.dense[i:i + 1], batch.categorical[i:i + 1]))
        if i % 10 == 0:  # and the whole-array path on the same single row
            assert_same_bits(small, F._build_batch(spec, VOCAB, one, 1))
    for start in range(0, 200, F.SMALL_BATCH_ROWS):  # several rows at once, up to the limit
        index = np.arange(start, start + F.SMALL_BATCH_ROWS)
        assert_same_bits(F.build_features(spec, VOCAB, subset(rows, index)),
                         F.FeatureMatrix(batch.dense[index], batch.categorical[index]))


def test_rows_that_share_a_window_as_training_builds_them():
    """Training hands 16 target days per (series, origin) window (FeatureRows.window); a small chunk of those
    takes the row-by-row path."""
    spec = SPECS["yearly"]
    rng = np.random.default_rng(5)
    windows = random_rows(rng, spec, 40)
    window = rng.integers(0, 40, 600)
    rows = F.FeatureRows(sales=windows.sales, promo=windows.promo, origin_day=windows.origin_day[window],
                         horizon=rng.integers(1, 17, 600), target_promo=rng.integers(0, 2, 600),
                         holidays=rng.integers(0, 2, (600, len(F.HOLIDAY_FLAGS))),
                         categorical={k: v[window] for k, v in windows.categorical.items()}, window=window)
    batch = F.build_features(spec, VOCAB, rows)
    for start in range(0, 600, 3):
        part = slice(start, start + 3)
        chunk = F.FeatureRows(sales=rows.sales, promo=rows.promo, origin_day=rows.origin_day[part],
                              horizon=rows.horizon[part], target_promo=rows.target_promo[part],
                              holidays=rows.holidays[part], window=window[part],
                              categorical={k: v[part] for k, v in rows.categorical.items()})
        assert_same_bits(F.build_features(spec, VOCAB, chunk), F.FeatureMatrix(batch.dense[part],
                                                                                batch.categorical[part]))


@pytest.mark.parametrize("values", [
    np.asarray([7, 1002], np.uint64), np.asarray([2**63 + 5, 3], np.uint64), np.asarray([1002.0, 3.0]),
    np.asarray(["1002", None], object), np.asarray([1002, "3008"], object), np.asarray([True, False]),
    np.asarray([b"1002", b"7"]), np.asarray([-1, 100], np.int8), np.asarray([-1, 1002], np.int16),
    np.asarray([1002, 70000], np.uint32),
])
def test_every_kind_of_category_value_gets_the_id_encode_gives(values):
    assert F._texts(values) == F._as_text(values).tolist()
    ids = VOCAB.ids("class")
    assert [ids.get(text, F.UNKNOWN_ID) for text in F._texts(values)] == VOCAB.encode("class", values).tolist()


def test_a_fractional_category_value_is_refused_on_both_paths():
    spec = SPECS["short"]
    rows = random_rows(np.random.default_rng(2), spec, 1)
    rows.categorical["class"] = np.asarray([1002.5])
    with pytest.raises(F.FeatureInputError, match="categorical value: expected whole numbers"):
        F.build_features(spec, VOCAB, rows)
    with pytest.raises(F.FeatureInputError, match="categorical value: expected whole numbers"):
        F._build_batch(spec, VOCAB, rows, 1)


# --- rows_from_snapshot ------------------------------------------------------------------------------------------


def snapshot(rng: np.random.Generator, width: int = 392) -> F.HistorySnapshot:
    """3 stores (int32 ids 1, 2, 54), 60 items of which each store has history for a random 40."""
    items = np.sort(rng.choice(np.arange(1000, 200000), 60, replace=False)).astype(np.int32)
    stores = np.asarray([1, 2, 54], np.int32)
    pairs = [(s, i) for s in stores for i in np.sort(rng.choice(items, 40, replace=False))]
    count = len(pairs)
    return F.HistorySnapshot(
        origin_day=DAY_2017 + 200, store_nbr=np.asarray([p[0] for p in pairs], np.int32),
        item_nbr=np.asarray([p[1] for p in pairs], np.int32),
        sales=np.stack([random_sales(rng, width) for _ in range(count)]).astype(np.float32),
        promo=(rng.random((count, width)) < 0.15).astype(np.uint8),
        items={"item_nbr": items, "family": np.asarray(["DAIRY", "BEVERAGES", "É"])[np.arange(60) % 3],
               "class": rng.choice([1002, 3008, 4], 60).astype(np.int32), "perishable": rng.random(60) < 0.3},
        stores={"store_nbr": stores, "city": np.asarray(["Quito", "Guayaquil", "Cuenca"]),
                "store_type": np.asarray(["D", "A", "B"]), "cluster": np.asarray([2, 14, 7], np.int32)},
        calendar_days=DAY_2017 + 201 + np.arange(16, dtype=np.int64),
        calendar_holidays=(rng.random((3, 16, len(F.HOLIDAY_FLAGS))) < 0.3).astype(np.uint8),
    )


def snapshot_vocab(snap: F.HistorySnapshot) -> F.Vocabularies:
    """What training would have seen: the stores, two thirds of the items, their attributes."""
    known = snap.items["item_nbr"][:40]
    return F.Vocabularies({"store_nbr": snap.stores["store_nbr"], "item_nbr": known,
                           **{name: F._as_text(snap.items[name][:40]) for name in F.ITEM_FIELDS},
                           **{name: F._as_text(snap.stores[name][:2]) for name in F.STORE_FIELDS}})


def requests(rng: np.random.Generator, snap: F.HistorySnapshot, n: int):
    """Series with history, items the store never sold (but the model knows), unseen items, ids no int32 holds."""
    kind = rng.integers(4, size=n)
    series = rng.integers(snap.store_nbr.size, size=n)
    stores = np.where(kind == 0, snap.store_nbr[series], snap.stores["store_nbr"][rng.integers(3, size=n)])
    items = np.select([kind == 0, kind == 1, kind == 2],
                      [snap.item_nbr[series], snap.items["item_nbr"][rng.integers(60, size=n)],
                       rng.integers(1, 999, n)], 2**40 + rng.integers(0, 9, n))
    days = (snap.calendar_days[rng.integers(16, size=n)]).astype("datetime64[D]")
    return stores.astype(np.int64), items.astype(np.int64), days, rng.integers(0, 2, n).astype(np.uint8)


def test_a_request_row_is_looked_up_as_in_a_batch():
    rng = np.random.default_rng(21)
    snap = snapshot(rng)
    stores, items, days, promo = requests(rng, snap, 800)
    batch = F.rows_from_snapshot(snap, stores, items, days, promo)  # 800 rows: the whole-array path
    vocab = snapshot_vocab(snap)
    features = F.build_features(SPECS["yearly"], vocab, batch)
    for i in range(800):
        one = F.rows_from_snapshot(snap, stores[i], items[i], days[i], promo[i])  # scalars, as the tests call it
        for name in ("sales", "promo", "origin_day", "horizon", "target_promo", "holidays"):
            got, want = np.asarray(getattr(one, name)), np.asarray(getattr(batch, name))[i:i + 1]
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (i, name)
        for name in F.CATEGORICAL_FIELDS:
            assert one.categorical[name].tolist() == batch.categorical[name][i:i + 1].tolist(), (i, name)
        assert_same_bits(F.build_features(SPECS["yearly"], vocab, one),
                         F.FeatureMatrix(features.dense[i:i + 1], features.categorical[i:i + 1]))
    for start in range(0, 100, F.SMALL_BATCH_ROWS):
        part = slice(start, start + F.SMALL_BATCH_ROWS)
        several = F.rows_from_snapshot(snap, stores[part], items[part], days[part], promo[part])
        np.testing.assert_array_equal(several.sales, batch.sales[part])
        assert_same_bits(F.build_features(SPECS["yearly"], vocab, several),
                         F.FeatureMatrix(features.dense[part], features.categorical[part]))


@pytest.mark.parametrize(("request_", "message"), [
    ((99, 1000, 0, 1), "store_nbr: row 0: store 99 is not one the model was trained on"),
    ((2**40, 1000, 0, 1), "store_nbr: row 0: store 1099511627776 is not one"),
    ((1, 1000, -1, 0), "date: row 0: 2017-07-20 is outside the model's forecast window 2017-07-21 .. 2017-08-05"),
    ((1, 1000, 16, 0), "outside the model's forecast window"),
    ((1, 1000, 0, 2), "onpromotion: expected true/false"),
])
def test_a_bad_request_gets_the_same_error_on_both_paths(monkeypatch, request_, message):
    snap = snapshot(np.random.default_rng(3))
    store, item, day, promo = request_
    date = (snap.calendar_days[0] + day).astype("datetime64[D]")
    with pytest.raises(F.FeatureInputError) as small:
        F.rows_from_snapshot(snap, store, item, date, promo)
    monkeypatch.setattr(F, "SMALL_BATCH_ROWS", 0)
    with pytest.raises(F.FeatureInputError) as batch:
        F.rows_from_snapshot(snap, store, item, date, promo)
    assert message in str(small.value)
    assert str(small.value) == str(batch.value)
