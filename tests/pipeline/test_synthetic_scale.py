"""The synthetic generator past Favorita's 54 stores (benchmark P4), and what must not move below them.

Every run of <= 54 stores is pinned byte for byte: the committed dvc.lock hashes the
default download (its data/raw digest is the DVC directory hash of the files pinned
here), so a change to the generator that touches them would silently invalidate every
pipeline result downstream. Larger runs add stores 55.. in Favorita's cities without
changing stores 1..54 of stores.csv.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline import synthetic
from pipeline.cluster import dask_client
from pipeline.params import SyntheticParams
from pipeline.prepare import prepare
from pipeline.synthetic import (CITIES, FAVORITA_STORES, LATE_OPENINGS, STORE_TYPE_COUNTS, TYPE_CLUSTERS, MonthPart,
                                generate, make_stores, store_openings, write_csv_member, write_month_member)
from .conftest import prepare_with

# params.yaml's data.synthetic at the committed dvc.lock (2 stores x 4,100 items, 2016-01-01 .. 2017-08-15)
DEFAULT = SyntheticParams(seed=20170815, stores=2, items=4100, start_date=dt.date(2016, 1, 1),
                          end_date=dt.date(2017, 8, 15), test_days=16, compression="gzip")
# sha256 of each file, computed with the generator before it could make more than 54 stores
DEFAULT_SHA256 = {
    "holidays_events.csv.gz": "ba114b60e343194a4e0557006312f45cdc0c87a0e681e478cc9c2a73ccf3a75c",
    "items.csv.gz": "1da792c62b8ea3da2c0d306da179578d40bd9c1c557513aa211a57e13905c7c9",
    "oil.csv.gz": "77ce8d601a93d33f39def7ab335028b19b2642195eef4977444e9e6b29e4cca3",
    "stores.csv.gz": "05b48dc4f10f1805e31b55c811496ddf4cba80487fd877c5eb027a1fe86055e8",
    "test.csv.gz": "4249bd36247066eb9f09d0f66d89c90a2b1f5e2fae3c59f714710ffbc165fd72",
    "train.csv.gz": "519f05551238269e50eadac70a80ce767b3bb2d0ad83bf7e9e97a7cb8ff69ab9",
    "transactions.csv.gz": "57173acb078691398349a750eece023571478039731125062c9a112f5baf8601",
}
DEFAULT_DVC_DIR_MD5 = "7874933c477b0b71f437c0520349d008"  # dvc.lock: download -> outs data/raw
# All 54 stores over Christmas, New Year and the day promotions become known (2014-04-01), a late opening
# (store 53, 2014-05-29) not yet open, and test days.
FULL_54 = SyntheticParams(seed=11, stores=54, items=120, start_date=dt.date(2013, 12, 20),
                          end_date=dt.date(2014, 4, 10), test_days=5, compression="gzip")
FULL_54_SHA256 = {
    "holidays_events.csv.gz": "cf06c6fa45fd1931392442302722de8114b7838c053e79ecc7a59450ce4c4200",
    "items.csv.gz": "ead3ab96913e8c3e88fe7c94ebb060e48f1a266fe2aa93247a3b4606379d5ceb",
    "oil.csv.gz": "f31d0572f92d6b5b1581c96af7f8ef519d5b9ed6e3a07d35818a69c7af9fd6a0",
    "stores.csv.gz": "05b48dc4f10f1805e31b55c811496ddf4cba80487fd877c5eb027a1fe86055e8",
    "test.csv.gz": "854d7a7ac79f18e4decb1b6c0ec19e5404087b3ab2bc0b45d699dd3232947b74",
    "train.csv.gz": "a4d4443f66441c8ab18abdc56aadaa7fef48de3dcdf03f871f704c9454fe67aa",
    "transactions.csv.gz": "fd6798078f989f61bd7525db104905844d6a89ce08cdcf04e802545f01336538",
}
# Past 54: six more stores, two months, so late-opening and New Year rules meet the new stores too.
MORE = SyntheticParams(seed=5, stores=60, items=60, start_date=dt.date(2016, 12, 1), end_date=dt.date(2017, 1, 31),
                       test_days=3, compression="gzip")


def _sha256(directory) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def _lines(path) -> list[str]:
    with gzip.open(path, "rt") as handle:
        return handle.read().splitlines()


def test_the_default_download_is_byte_identical_to_the_committed_one(tmp_path):
    generate(DEFAULT, tmp_path, progress=False)
    assert _sha256(tmp_path) == DEFAULT_SHA256
    listing = [{"md5": hashlib.md5(path.read_bytes()).hexdigest(), "relpath": path.name}
               for path in sorted(tmp_path.iterdir())]  # how DVC hashes a directory output
    assert hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() == DEFAULT_DVC_DIR_MD5


def test_a_54_store_run_is_byte_identical_to_before(tmp_path):
    counts = generate(FULL_54, tmp_path, progress=False)
    assert counts["stores"] == 54
    assert _sha256(tmp_path) == FULL_54_SHA256


def test_stores_past_54_keep_the_first_54_and_favoritas_places():
    favorita = make_stores()
    stores = make_stores(162)
    assert len(favorita) == FAVORITA_STORES and make_stores(54).equals(favorita) and make_stores(7).equals(favorita)
    assert stores.iloc[:FAVORITA_STORES].reset_index(drop=True).equals(favorita)
    assert stores["store_nbr"].tolist() == list(range(1, 163)) and stores["store_nbr"].is_unique
    assert list(stores.dtypes) == list(favorita.dtypes)
    places = {(city, state) for city, state, _ in CITIES}
    assert set(zip(stores["city"], stores["state"])) == places  # the holiday calendar's cities, no new ones
    assert set(stores["type"]) == set(STORE_TYPE_COUNTS)
    assert all(cluster in TYPE_CLUSTERS[kind] for kind, cluster in zip(stores["type"], stores["cluster"]))
    extra = stores.iloc[FAVORITA_STORES:]
    assert extra["city"].value_counts().index[0] == "Quito"  # in proportion to Favorita's stores per city
    assert 0.1 < (extra["type"] == "A").mean() < 0.3 and extra["cluster"].nunique() >= 12
    assert make_stores(100).equals(stores.iloc[:100])  # store k is the same store whatever the scale
    opening = store_openings(stores["store_nbr"].to_numpy())
    late = opening > np.datetime64("2013-01-01")
    assert late[:FAVORITA_STORES].sum() == len(LATE_OPENINGS) and 5 <= late[FAVORITA_STORES:].sum() <= 30
    assert (opening[FAVORITA_STORES:][late[FAVORITA_STORES:]] <= np.datetime64("2017-06-30")).all()


@pytest.fixture(scope="module")
def more(tmp_path_factory):
    out = tmp_path_factory.mktemp("more")
    counts = generate(MORE, out, progress=False)
    return out, counts


def test_60_stores_have_the_54_stores_rows_first_and_sales_in_the_new_ones(more, tmp_path):
    out, counts = more
    generate(SyntheticParams(**{**MORE.__dict__, "stores": 54}), tmp_path, progress=False)
    lines, favorita_lines = _lines(out / "stores.csv.gz"), _lines(tmp_path / "stores.csv.gz")
    assert len(lines) == 61 and lines[:55] == favorita_lines  # the header and stores 1..54 unchanged
    train = pd.read_csv(out / "train.csv.gz")
    assert counts["stores"] == 60 and len(train) == counts["train"]
    opening = store_openings(np.arange(55, 61))
    open_new = {55 + k for k, day in enumerate(opening) if day <= np.datetime64(MORE.end_date)}
    assert open_new and open_new <= set(train["store_nbr"]) and set(train["store_nbr"]) <= set(range(1, 61))
    test = pd.read_csv(out / "test.csv.gz")
    assert set(test["store_nbr"]) == set(range(1, 61))
    transactions = pd.read_csv(out / "transactions.csv.gz")
    assert len(transactions) == len(train[["date", "store_nbr"]].drop_duplicates())


def test_60_stores_pass_prepares_validation(more, tmp_path):
    out, _ = more
    prepare(out, tmp_path / "prepared", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    stores = pd.read_parquet(tmp_path / "prepared" / "stores.parquet")
    assert len(stores) == 60


def test_more_than_54_stores_are_deterministic_and_seeded(more, tmp_path):
    out, _ = more
    generate(MORE, tmp_path / "again", progress=False)
    assert _sha256(tmp_path / "again") == _sha256(out)
    generate(SyntheticParams(**{**MORE.__dict__, "seed": 6, "test_days": 0}), tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "train.csv.gz").read_bytes() != (out / "train.csv.gz").read_bytes()
    assert (tmp_path / "other" / "stores.csv.gz").read_bytes() == (out / "stores.csv.gz").read_bytes()  # fixed


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_month_task_formats_one_slice_at_a_time_into_the_same_bytes(tmp_path, monkeypatch, compression):
    monkeypatch.setattr(synthetic, "CSV_SLICE_ROWS", 1000)
    n = 4321
    rng = np.random.default_rng(0)
    table = pa.table([pa.array(np.arange(n, dtype=np.int64)),
                      pa.array(np.full(n, np.datetime64("2016-03-01")).astype("datetime64[D]"), type=pa.date32()),
                      pa.array(rng.integers(1, 163, n).astype(np.int32)),
                      pa.array(rng.integers(1, 10**6, n).astype(np.int32)),
                      pa.array(np.round(rng.gamma(1.0, 3.0, n), 3)),
                      synthetic._promo_strings(rng.random(n) < 0.3, rng.random(n) > 0.2)],
                     schema=synthetic.TRAIN_SCHEMA)
    table = pa.concat_tables([table.slice(0, 1500), table.slice(1500)])  # chunks that do not fall on slices
    here = io.BytesIO()
    write_csv_member(table, here, compression, header=True)
    part = synthetic._stage_month(table, np.datetime64("2016-03"), tmp_path, header=True)
    with pa.OSFile(part.rows, "rb") as source:
        reader = pa.ipc.open_file(source)
        assert [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)] == [1000] * 4 + [321]
    assert write_month_member(part, compression) == n
    with open(part.member, "rb") as member:
        written = member.read()
    assert written == here.getvalue()
    text = gzip.decompress(written) if compression == "gzip" else written
    assert text.count(b"\n") == n + 1


def test_an_empty_month_task_writes_the_same_member(tmp_path):
    empty = synthetic.TRAIN_SCHEMA.empty_table()
    here = io.BytesIO()
    write_csv_member(empty, here, "gzip", header=False)
    part = synthetic._stage_month(empty, np.datetime64("2016-04"), tmp_path, header=False)
    assert write_month_member(MonthPart(part.month, part.rows, part.member, part.header), "gzip") == 0
    with open(part.member, "rb") as member:
        assert member.read() == here.getvalue()


def test_60_stores_on_a_cluster_give_the_same_files(more, tmp_path, dask_cluster):
    out, _ = more
    with dask_client(dask_cluster) as client:
        generate(MORE, tmp_path, progress=False, client=client)
    assert _sha256(tmp_path) == _sha256(out)


def test_a_month_of_several_csv_slices_is_the_same_member_on_a_cluster(tmp_path, dask_cluster):
    """~0.96 M rows in March: two slices of CSV_SLICE_ROWS, formatted one at a time by a worker."""
    params = SyntheticParams(seed=3, stores=20, items=4100, start_date=dt.date(2017, 3, 1),
                             end_date=dt.date(2017, 3, 31), test_days=0, compression="gzip")
    counts = generate(params, tmp_path / "here", progress=False)
    assert counts["train"] > synthetic.CSV_SLICE_ROWS
    with dask_client(dask_cluster) as client:
        generate(params, tmp_path / "cluster", progress=False, client=client)
    assert _sha256(tmp_path / "cluster") == _sha256(tmp_path / "here")
