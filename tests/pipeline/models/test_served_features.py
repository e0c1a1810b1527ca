"""The app's request features (pipeline/served_features.py: a store×item's window columns kept, the rest per
request) must be the bits the batch build gives the same rows, for every kind of row and snapshot, on a cache
miss and on a hit; its cache stays within its bound in entries and bytes; a row the path refuses is left to it."""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline import features as F
from pipeline.served_features import ENTRY_BYTES_BEYOND_WINDOW, ServedFeatures


def _neighbour():
    """test_features_small_batch.py by path (pytest runs with --import-mode=importlib: no package imports)."""
    path = Path(__file__).with_name("test_features_small_batch.py")
    spec = importlib.util.spec_from_file_location("shelfcast_tests_small_batch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SB = _neighbour()


def foreign(snap: F.HistorySnapshot, rng: np.random.Generator) -> F.HistorySnapshot:
    """The same history in other shapes: sparse large ids in int64, float64 sales with closed days (whole weeks
    of zeros) and a store shut for its last 20 days, bool promotions, attributes as objects, floats and int64,
    holiday flags as int64, and more calendar days than the spec's horizon."""
    store_ids = np.asarray([7, 3000, 32767], np.int64)
    store_of = {1: 7, 2: 3000, 54: 32767}
    item_ids = (2**31 - 5000 + 37 * np.arange(snap.items["item_nbr"].size)).astype(np.int64)
    item_of = dict(zip(snap.items["item_nbr"].tolist(), item_ids.tolist()))
    sales = snap.sales.astype(np.float64) * 1.25
    sales[:, rng.integers(0, sales.shape[1], 12)] = 0.0  # days every store was closed
    sales[np.asarray(snap.store_nbr) == 2, -20:] = 0.0  # a store shut since 20 days before the origin
    days = snap.calendar_days.size + 4
    return F.HistorySnapshot(
        origin_day=snap.origin_day, store_nbr=np.asarray([store_of[s] for s in snap.store_nbr.tolist()], np.int64),
        item_nbr=np.asarray([item_of[i] for i in snap.item_nbr.tolist()], np.int64), sales=sales,
        promo=snap.promo.astype(bool),
        items={"item_nbr": item_ids, "family": np.asarray(snap.items["family"].tolist(), object),
               "class": snap.items["class"].astype(np.int64),
               "perishable": snap.items["perishable"].astype(np.float64)},
        stores={"store_nbr": store_ids, "city": np.asarray(["Quito", None, "Cuenca"], object),
                "store_type": snap.stores["store_type"], "cluster": snap.stores["cluster"].astype(np.float64)},
        calendar_days=snap.origin_day + 1 + np.arange(days, dtype=np.int64),
        calendar_holidays=(rng.random((3, days, len(F.HOLIDAY_FLAGS))) < 0.3).astype(np.int64),
    )


def every_request(rng: np.random.Generator, snap: F.HistorySnapshot, n: int, horizon: int):
    """SB.requests' kinds of rows, each horizon day and both flags in turn."""
    stores, items, _, _ = SB.requests(rng, snap, n)
    days = snap.origin_day + 1 + np.arange(n) % horizon
    return stores, items, days.astype(np.int64), (np.arange(n) // horizon % 2).astype(np.uint8)


def batch_features(spec, vocab, snap, stores, items, days, promo) -> F.FeatureMatrix:
    rows = F.rows_from_snapshot(snap, stores, items, days.astype("datetime64[D]"), promo)
    assert len(rows) > F.SMALL_BATCH_ROWS  # the whole-array path, as training and evaluate build features
    return F.build_features(spec, vocab, rows)


@pytest.mark.parametrize(("spec_name", "shape"), [("yearly", "plain"), ("yearly", "foreign"), ("short", "foreign")])
def test_a_request_has_the_features_the_batch_build_gives_it_on_a_miss_and_on_a_hit(spec_name, shape):
    spec = SB.SPECS[spec_name]
    rng = np.random.default_rng(31)
    snap = SB.snapshot(rng, spec.history_days)
    vocab = SB.snapshot_vocab(snap)
    if shape == "foreign":
        snap = foreign(snap, rng)
        vocab = F.Vocabularies({**vocab.values, "store_nbr": ["7", "3000"],
                                "item_nbr": [str(i) for i in snap.items["item_nbr"][:40].tolist()],
                                "city": ["Quito", ""]})
    n = 48 * spec.horizon
    stores, items, days, promo = every_request(rng, snap, n, spec.horizon)
    batch = batch_features(spec, vocab, snap, stores, items, days, promo)
    served = ServedFeatures(spec, vocab, snap, max_series=64)  # fewer than the series asked: misses after evictions
    for rounds in range(2):  # the second round finds most series kept
        for i in range(n):
            one = served.matrix([int(stores[i])], [int(items[i])], days[i:i + 1], [int(promo[i])])
            assert one is not None, i
            SB.assert_same_bits(one, F.FeatureMatrix(batch.dense[i:i + 1], batch.categorical[i:i + 1]))
    for start in range(0, 40 * F.SMALL_BATCH_ROWS, F.SMALL_BATCH_ROWS):  # several rows, as the app passes them
        part = slice(start, start + F.SMALL_BATCH_ROWS)
        several = served.matrix(stores[part].tolist(), items[part], days[part], promo[part].tolist())
        SB.assert_same_bits(several, F.FeatureMatrix(batch.dense[part], batch.categorical[part]))


def test_the_cache_keeps_the_most_recent_series_within_its_entries_and_bytes():
    spec = SB.SPECS["yearly"]
    rng = np.random.default_rng(8)
    snap = SB.snapshot(rng)
    served = ServedFeatures(spec, SB.snapshot_vocab(snap), snap, max_series=0)
    day = [int(snap.calendar_days[3])]
    for store, item in zip(snap.store_nbr.tolist(), snap.item_nbr.tolist()):  # the store, item and id tables
        assert served.matrix([store], [item], day, [0]) is not None
    assert len(served) == 0
    served.max_series = 50
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for store, item in zip(snap.store_nbr.tolist(), snap.item_nbr.tolist()):  # 120 series
            assert served.matrix([store], [item], day, [0]) is not None
            assert len(served) <= 50
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert len(served) == 50
    assert list(served._series) == list(zip(snap.store_nbr.tolist(), snap.item_nbr.tolist()))[-50:]
    bound = 50 * (8 * spec.history_days + ENTRY_BYTES_BEYOND_WINDOW)
    assert 0 < grown <= bound, f"{grown} bytes held for 50 series, more than the stated {bound}"
    first = (int(snap.store_nbr[70]), int(snap.item_nbr[70]))
    served.matrix([first[0]], [first[1]], day, [1])  # a hit moves it to the end; the next miss evicts another
    served.matrix([int(snap.store_nbr[0])], [int(snap.item_nbr[0])], day, [1])
    assert first in served._series and len(served) == 50
    none = ServedFeatures(spec, SB.snapshot_vocab(snap), snap, max_series=0)
    assert none.matrix([1], [int(snap.item_nbr[0])], day, [0]) is not None and len(none) == 0


@pytest.mark.parametrize(("request_", "message"), [
    ((99, 1000, 0, 1), "store_nbr: row 0: store 99 is not one the model was trained on"),
    ((2**40, 1000, 0, 1), "store_nbr: row 0: store 1099511627776 is not one"),
    ((1, 1000, -1, 0), "is outside the model's forecast window"),
    ((1, 1000, 16, 0), "outside the model's forecast window"),
    ((1, 1000, 0, 2), "onpromotion: expected true/false"),
])
def test_a_row_the_path_refuses_is_left_to_it(request_, message):
    snap = SB.snapshot(np.random.default_rng(3))
    served = ServedFeatures(SB.SPECS["yearly"], SB.snapshot_vocab(snap), snap, max_series=16)
    store, item, day, promo = request_
    assert served.matrix([1, store], [1000, item], [int(snap.calendar_days[0]), int(snap.calendar_days[0]) + day],
                         [0, promo]) is None
    assert len(served) <= 1
    with pytest.raises(F.FeatureInputError, match=message):
        F.rows_from_snapshot(snap, store, item, (snap.calendar_days[0] + day).astype("datetime64[D]"), promo)


def test_a_series_whose_history_the_build_refuses_is_left_to_it():
    spec = SB.SPECS["yearly"]
    snap = SB.snapshot(np.random.default_rng(4))
    snap.sales[5, 17] = np.nan
    served = ServedFeatures(spec, SB.snapshot_vocab(snap), snap, max_series=16)
    store, item, day = int(snap.store_nbr[5]), int(snap.item_nbr[5]), int(snap.calendar_days[0])
    assert served.matrix([store], [item], [day], [0]) is None and len(served) == 0
    with pytest.raises(F.FeatureInputError, match="sales: row 0, day 17"):
        F.build_features(spec, SB.snapshot_vocab(snap), F.rows_from_snapshot(snap, store, item,
                                                                              np.datetime64(day, "D"), 0))
    assert served.matrix([1] * 5, [1000] * 5, [day] * 5, [0] * 5) is None  # more than SMALL_BATCH_ROWS rows
