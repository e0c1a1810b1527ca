"""prepare on the hand-written Kaggle-format sample: grid, cleaning, denormalization."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.prepare import HOLIDAY_LOOKAHEAD_DAYS, IdTracker, daily_oil, prepare
from pipeline.schema import HOLIDAY_FLAGS, PREPARED_SALES_SCHEMA
from pipeline.validate import DataValidationError

from .conftest import (
    ITEMS, N_DAYS, START, STOPPING_START, STORES, kaggle_sample_files, prepare_with, write_kaggle_sample,
    write_stores_that_stop,
)


@pytest.fixture
def prepared(kaggle_sample, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare(kaggle_sample, out, prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    return out, summary


def _sales(out) -> pd.DataFrame:
    return pd.read_parquet(out / "sales.parquet")


def test_writes_the_prepared_schema_and_side_tables(prepared):
    out, summary = prepared
    assert pq.read_schema(out / "sales.parquet").remove_metadata() == PREPARED_SALES_SCHEMA
    assert {p.name for p in out.iterdir()} == {"sales.parquet", "items.parquet", "stores.parquet", "holidays.parquet",
                                               "test.parquet"}
    assert "grid rows" in summary
    sales = _sales(out)
    assert sales["date"].dtype == "datetime64[ns]"
    assert not sales.isna().any().any()
    assert not sales.duplicated(["date", "store_nbr", "item_nbr"]).any()
    assert list(sales.columns) == PREPARED_SALES_SCHEMA.names


def test_grid_is_zero_filled_from_each_items_first_sale(prepared):
    sales = _sales(prepared[0])
    per_pair = sales.groupby(["store_nbr", "item_nbr"], observed=True)["date"].agg(["min", "max", "count"])
    assert len(per_pair) == len(STORES) * len(ITEMS)
    last = pd.Timestamp(START + dt.timedelta(days=N_DAYS - 1))
    assert (per_pair["max"] == last).all()
    raw = pd.read_csv(pd.io.common.StringIO(kaggle_sample_files()["train"]), parse_dates=["date"])
    first_sale = raw.groupby(["store_nbr", "item_nbr"])["date"].min()
    pd.testing.assert_series_equal(per_pair["min"], first_sale, check_names=False, check_index_type=False,
                                   check_dtype=False)
    assert (per_pair["count"] == (last - first_sale).dt.days + 1).all()
    assert (first_sale.xs(114790, level="item_nbr") >= pd.Timestamp(START + dt.timedelta(days=5))).all()
    assert len(sales) > len(raw)
    filled = sales.merge(raw[["date", "store_nbr", "item_nbr"]], how="left", indicator=True)
    zero_days = filled[filled["_merge"] == "left_only"]
    assert len(zero_days) > 50
    assert (zero_days["unit_sales"] == 0).all()
    assert not zero_days["onpromotion_known"].any()


def test_data_with_promotions_gets_no_warning_about_them(kaggle_sample, tmp_path, capsys):
    prepare(kaggle_sample, tmp_path / "prepared", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    assert "promotion" not in capsys.readouterr().err


def test_values_and_promotions_match_the_raw_rows(prepared):
    sales = _sales(prepared[0]).set_index(["date", "store_nbr", "item_nbr"])
    raw = pd.read_csv(pd.io.common.StringIO(kaggle_sample_files()["train"]), parse_dates=["date"])
    raw = raw.set_index(["date", "store_nbr", "item_nbr"])
    joined = raw.merge(sales, left_index=True, right_index=True, how="left", suffixes=("", "_prepared"))
    expected = joined["unit_sales"].clip(lower=0).astype(np.float32)
    np.testing.assert_allclose(joined["unit_sales_prepared"], expected)
    np.testing.assert_array_equal(joined["onpromotion_known"], raw["onpromotion"].notna())
    np.testing.assert_array_equal(joined["onpromotion_prepared"], raw["onpromotion"].fillna(False).astype(bool))
    weighed = joined.xs(108079, level="item_nbr")["unit_sales_prepared"]
    assert (weighed % 1 != 0).any()  # fractional units survive


def test_files_without_a_promotion_column_read_as_promotions_unknown(kaggle_sample, tmp_path, capsys):
    """A store's export without promotions: train.csv and test.csv may leave out onpromotion (both were refused
    as "column 'onpromotion': missing", though an empty column was allowed); every promotion is then unknown,
    exactly as with the column present and every value empty."""
    def without_promotions(text: str) -> str:
        lines = text.splitlines()
        drop = lines[0].split(",").index("onpromotion")
        return "\n".join(",".join(f for i, f in enumerate(line.split(",")) if i != drop) for line in lines) + "\n"

    def emptied(text: str) -> str:
        lines = text.splitlines()
        drop = lines[0].split(",").index("onpromotion")
        return "\n".join([lines[0]] + [",".join("" if i == drop else f for i, f in enumerate(line.split(",")))
                                        for line in lines[1:]]) + "\n"

    outputs = {}
    for name, change in (("left out", without_promotions), ("empty", emptied)):
        raw = tmp_path / name
        raw.mkdir()
        for path in kaggle_sample.iterdir():  # written plain (the sample gzips some)
            data = path.read_bytes()
            text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")
            stem = path.name.removesuffix(".gz").removesuffix(".csv")
            (raw / f"{stem}.csv").write_text(change(text) if stem in ("train", "test") else text, encoding="utf-8")
        assert "onpromotion" not in (raw / "train.csv").read_text().splitlines()[0] or name == "empty"
        outputs[name] = tmp_path / f"prepared-{name}"
        prepare(raw, outputs[name], prepare_with(returns="zero", grid="from_first_sale"), progress=False)
        assert "prepare: warning: train.csv gives no promotion on any row" in capsys.readouterr().err  # says so
    sales = _sales(outputs["left out"])
    assert len(sales) > 0 and not sales["onpromotion_known"].any() and not sales["onpromotion"].any()
    pd.testing.assert_frame_equal(sales, _sales(outputs["empty"]))
    pd.testing.assert_frame_equal(pd.read_parquet(outputs["left out"] / "test.parquet"),
                                  pd.read_parquet(outputs["empty"] / "test.parquet"))


def test_returns_zeroed_or_kept(kaggle_sample, tmp_path):
    key = (pd.Timestamp(START + dt.timedelta(days=11)), 2, 96995)
    for returns, expected in (("zero", 0.0), ("keep", -2.0)):
        out = tmp_path / returns
        prepare(kaggle_sample, out, prepare_with(returns=returns, grid="from_first_sale"), progress=False)
        sales = _sales(out).set_index(["date", "store_nbr", "item_nbr"])
        assert sales.loc[key, "unit_sales"] == expected


def test_full_grid_starts_every_pair_at_the_first_date(kaggle_sample, tmp_path):
    out = tmp_path / "full"
    prepare(kaggle_sample, out, prepare_with(returns="zero", grid="full"), progress=False)
    sales = _sales(out)
    assert len(sales) == len(STORES) * len(ITEMS) * N_DAYS
    assert (sales.groupby("item_nbr")["date"].min() == pd.Timestamp(START)).all()


ONE_STORE_ITEM, LATE_STORE, LATE_STORE_OPENS = 105574, 3, 10  # sold in store 1 alone; store 3 opens on day 10


def _one_store_item_and_a_late_store(directory: Path) -> Path:
    """The sample as Favorita's own history has it: an item only one store stocks, a store that opens mid-history."""
    directory.mkdir(parents=True)
    for name, text in kaggle_sample_files().items():
        if name == "train":
            header, *rows = text.splitlines()
            opening = (START + dt.timedelta(days=LATE_STORE_OPENS)).isoformat()
            rows = [row for row in rows if not (
                (row.split(",")[3] == str(ONE_STORE_ITEM) and row.split(",")[2] != "1")
                or (row.split(",")[2] == str(LATE_STORE) and row.split(",")[1] < opening))]
            text = "\n".join([header, *rows]) + "\n"
        (directory / f"{name}.csv").write_text(text, encoding="utf-8")
    return directory


@pytest.mark.parametrize("grid", ["from_first_sale", "full"])
def test_a_pair_that_never_sold_gets_no_rows_and_a_late_store_none_before_it_opens(tmp_path, grid):
    """``full`` starts every store x item *that ever sold*: the sample's every item sells in every store from the first
    days, so a grid that crossed every store with every item, or started a late store's items before its first
    row under from_first_sale, held the other tests all the same."""
    raw = _one_store_item_and_a_late_store(tmp_path / "raw")
    prepare(raw, tmp_path / "out", prepare_with(returns="zero", grid=grid), progress=False)
    sales = _sales(tmp_path / "out")
    assert sorted(sales.loc[sales["item_nbr"] == ONE_STORE_ITEM, "store_nbr"].unique()) == [1]
    pairs = sales.groupby(["store_nbr", "item_nbr"], observed=True)["date"].min()
    assert len(pairs) == len(STORES) * len(ITEMS) - (len(STORES) - 1)
    late = pairs.xs(LATE_STORE, level="store_nbr")
    if grid == "full":  # every pair that sold, the late store's too, from the chain's first date
        assert (pairs == pd.Timestamp(START)).all()
    else:
        assert (late >= pd.Timestamp(START + dt.timedelta(days=LATE_STORE_OPENS))).all()


def test_attributes_are_denormalized(prepared):
    sales = _sales(prepared[0])
    row = sales[(sales["store_nbr"] == 2) & (sales["item_nbr"] == 105574)].iloc[0]
    assert (row["family"], row["class"], row["perishable"]) == ("LIQUOR,WINE,BEER", 1045, False)
    assert (row["city"], row["state"], row["store_type"], row["cluster"]) == ("Guayaquil", "Guayas", "A", 5)
    assert isinstance(sales["family"].dtype, pd.CategoricalDtype)


def _flags(sales, day, store):
    rows = sales[(sales["date"] == pd.Timestamp(day)) & (sales["store_nbr"] == store)]
    assert len(rows)
    return rows.iloc[0]


@pytest.mark.parametrize(
    "day, store, flag, expected",
    [
        ("2014-04-01", 1, "is_national_holiday", False),  # transferred away ...
        ("2014-04-04", 1, "is_national_holiday", True),  # ... to its Transfer day
        ("2014-04-04", 3, "is_national_holiday", True),
        ("2014-03-28", 1, "is_regional_holiday", True),  # Pichincha: Quito's store only
        ("2014-03-28", 2, "is_regional_holiday", False),
        ("2014-04-08", 2, "is_local_holiday", True),  # Guayaquil only
        ("2014-04-08", 1, "is_local_holiday", False),
        ("2014-04-10", 3, "is_local_holiday", False),  # Cuenca's transferred local holiday
        ("2014-04-11", 3, "is_local_holiday", True),
        ("2014-04-14", 2, "is_national_holiday", True),  # Bridge
        ("2014-04-12", 2, "is_work_day", True),
        ("2014-04-12", 2, "is_national_holiday", False),
        ("2014-04-20", 3, "is_event", True),
        ("2014-04-20", 3, "is_national_holiday", False),
        ("2014-04-02", 1, "is_national_holiday", False),
    ],
)
def test_holidays_match_by_locale_with_transfers(prepared, day, store, flag, expected):
    assert bool(_flags(_sales(prepared[0]), day, store)[flag]) is expected


def test_oil_is_filled_and_transactions_joined(prepared):
    sales = _sales(prepared[0])
    assert _flags(sales, "2014-03-25", 1)["dcoilwtico"] == pytest.approx(100.0)
    assert _flags(sales, "2014-03-29", 1)["dcoilwtico"] == pytest.approx(101.5)  # Saturday: Friday's price
    assert _flags(sales, "2014-03-31", 1)["dcoilwtico"] == pytest.approx(101.5)  # a gap
    assert _flags(sales, "2014-03-26", 2)["transactions"] == 1000 + 10 + 2
    missing = _flags(sales, START + dt.timedelta(days=4), 3)
    assert (missing["transactions"], missing["transactions_known"]) == (0, False)


def test_oil_is_back_filled_before_the_first_price():
    oil = pd.DataFrame({"date": pd.to_datetime(["2014-01-02", "2014-01-03", "2014-01-06"]),
                        "dcoilwtico": [np.nan, 95.0, 96.0]})
    days = np.arange(np.datetime64("2014-01-01"), np.datetime64("2014-01-08"))
    np.testing.assert_allclose(daily_oil(oil, days), [95, 95, 95, 95, 95, 96, 96])


def test_holiday_side_table_covers_the_test_period(prepared):
    holidays = pd.read_parquet(prepared[0] / "holidays.parquet")
    test = pd.read_parquet(prepared[0] / "test.parquet")
    assert holidays["date"].max() >= test["date"].max()
    assert len(holidays) == holidays["date"].nunique() * len(STORES)
    assert test["onpromotion"].dtype == bool


def test_holidays_oil_and_transactions_are_optional(tmp_path):
    """Absent: no holidays (every flag False), no oil price (NaN), no transactions (0, unknown)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    files = kaggle_sample_files()
    for name in ("train", "items", "stores"):
        (raw / f"{name}.csv").write_text(files[name])
    out = tmp_path / "prepared"
    prepare(raw, out, prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    sales = _sales(out)
    assert len(sales) and not sales[list(HOLIDAY_FLAGS)].to_numpy().any()
    assert sales["dcoilwtico"].isna().all()
    assert (sales["transactions"] == 0).all() and not sales["transactions_known"].any()
    holidays = pd.read_parquet(out / "holidays.parquet")
    assert holidays["date"].max() == sales["date"].max() + pd.Timedelta(days=HOLIDAY_LOOKAHEAD_DAYS)
    assert not (out / "test.parquet").exists()


def test_holiday_calendar_reaches_past_a_holiday_file_that_ends_early(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    files = kaggle_sample_files()
    files["holidays_events"] = "\n".join(files["holidays_events"].splitlines()[:3]) + "\n"  # ends 2014-04-01
    for name in ("train", "items", "stores", "holidays_events"):
        (raw / f"{name}.csv").write_text(files[name])
    prepare(raw, tmp_path / "out", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    holidays = pd.read_parquet(tmp_path / "out" / "holidays.parquet")
    last_sale = START + dt.timedelta(days=N_DAYS - 1)
    assert holidays["date"].max() == pd.Timestamp(last_sale) + pd.Timedelta(days=HOLIDAY_LOOKAHEAD_DAYS)
    assert holidays.loc[holidays["date"] == "2014-03-28", "is_regional_holiday"].any()


def test_sparse_huge_ids_are_accepted_without_an_id_sized_allocation(tmp_path):
    """Ids up to 2**63-1 in any order: uniqueness is checked in memory bounded by the row count."""
    raw = tmp_path / "raw"
    raw.mkdir()
    files = kaggle_sample_files()
    lines = files["train"].splitlines()
    rng = np.random.default_rng(0)
    ids = rng.choice(np.arange(1, 10_000), size=len(lines) - 1, replace=False) * 922_337_203_685_477
    ids[0], ids[1] = 10**12, 2**63 - 1
    lines[1:] = [f"{i}," + line.split(",", 1)[1] for i, line in zip(ids, lines[1:])]
    files["train"] = "\n".join(lines) + "\n"
    for name, text in files.items():
        (raw / f"{name}.csv").write_text(text)
    prepare(raw, tmp_path / "out", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    assert len(_sales(tmp_path / "out"))


def test_duplicate_ids_across_blocks_and_stores_are_found_in_any_order(tmp_path):
    blocks = [np.array([5 * 10**15, 7, 2**62]), np.array([3, 2**62, 11])]
    tracker = IdTracker(tmp_path / "spill")
    for block in blocks:
        tracker.add(block)
    stores = [tmp_path / "store=1.parquet", tmp_path / "store=2.parquet"]  # as pass 1 partitions them
    pq.write_table(pa.table({"row": [0, 2, 4], "id": [5 * 10**15, 2**62, 2**62]}), stores[0])
    pq.write_table(pa.table({"row": [1, 3, 5], "id": [7, 3, 11]}), stores[1])
    with pytest.raises(DataValidationError, match=r"train.csv: column 'id': duplicate id; first offending: "
                                                  r"line 4 \(4611686018427387904\), line 6"):
        tracker.check(Path("train.csv"), stores)
    assert not (tmp_path / "spill").exists()

    increasing = IdTracker(tmp_path / "spill")
    increasing.add(np.array([0, 10**12]))
    increasing.add(np.array([10**12 + 1, 2**63 - 1]))
    increasing.check(Path("train.csv"), [tmp_path / "never-read.parquet"])  # increasing: unique, nothing read


def test_holiday_places_match_stores_ignoring_case_and_spaces_and_the_rest_are_named(tmp_path, capsys):
    """'GUAYAQUIL ' and 'pichincha' were dropped silently (no store flagged); a place with no store now warns."""
    raw = tmp_path / "raw"
    raw.mkdir()
    files = kaggle_sample_files()
    holidays = (files["holidays_events"].replace("Local,Guayaquil,", "Local,GUAYAQUIL ,")
                .replace("Regional,Pichincha,", "Regional, pichincha,"))
    files["holidays_events"] = holidays + "2014-04-09,Holiday,Local,Atlantis,Fundacion de Atlantis,False\n"
    atlantis_line = len(holidays.splitlines()) + 1
    for name, text in files.items():
        (raw / f"{name}.csv").write_text(text)
    out = tmp_path / "prepared"
    prepare(raw, out, prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    sales = _sales(out)
    assert bool(_flags(sales, "2014-04-08", 2)["is_local_holiday"])
    assert not bool(_flags(sales, "2014-04-08", 1)["is_local_holiday"])
    assert bool(_flags(sales, "2014-03-28", 1)["is_regional_holiday"])
    assert not bool(_flags(sales, "2014-04-09", 1)["is_local_holiday"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("prepare: warning: holidays_events.csv: 1 Regional/Local row(s)")
    assert f"line {atlantis_line} ('Local Atlantis')" in err[0]


def test_holiday_places_match_stores_in_any_unicode_form_and_lookalikes_are_shown_with_ascii(tmp_path, capsys):
    """A Local holiday for 'Genève' written decomposed (e + combining accent) flagged no store, and the warning
    named 'Local Genève', which prints like the store's city; two stores in one city are one city category."""
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "Genève"), unicodedata.normalize("NFD", "Genève")
    assert nfc != nfd
    raw = tmp_path / "raw"
    raw.mkdir()
    files = kaggle_sample_files()
    files["stores"] = (files["stores"].replace("2,Guayaquil,Guayas,", f"2,{nfc},Guayas,")
                       .replace("1,Quito,Pichincha,", f"1,{nfd},Pichincha,"))
    lookalike = "Gene\u0300ve\u200b"  # decomposed, and a zero-width space: prints like the city
    files["holidays_events"] = (files["holidays_events"].replace("Local,Guayaquil,", f"Local,{nfd},")
                                + f"2014-04-09,Holiday,Local,{lookalike},Jeûne genevois,False\n")
    for name, text in files.items():
        (raw / f"{name}.csv").write_text(text, encoding="utf-8")
    out = tmp_path / "prepared"
    prepare(raw, out, prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    sales = _sales(out)
    assert bool(_flags(sales, "2014-04-08", 2)["is_local_holiday"])  # the NFD holiday reaches the NFC store
    assert bool(_flags(sales, "2014-04-08", 1)["is_local_holiday"])  # ... and the NFD store
    assert not bool(_flags(sales, "2014-04-09", 2)["is_local_holiday"])
    assert set(sales.loc[sales["store_nbr"].isin([1, 2]), "city"].astype(str)) == {nfc}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 Regional/Local row(s)" in err[0]
    assert f"{ascii(lookalike)} is not the store city {ascii(nfc)}" in err[0]


def _many_stores(raw: Path, stores: int, days: int = 20) -> Path:
    """train.csv in Kaggle's order (by date, then store): every store in every block of the reader."""
    raw.mkdir(parents=True)
    (raw / "stores.csv").write_text("store_nbr,city,state,type,cluster\n"
                                    + "".join(f"{s},C{s % 7},S{s % 3},{'ABCDE'[s % 5]},{1 + s % 9}\n"
                                              for s in range(1, stores + 1)))
    (raw / "items.csv").write_text("item_nbr,family,class,perishable\n10,F,1,0\n11,G,2,1\n")
    rows = ["id,date,store_nbr,item_nbr,unit_sales,onpromotion"]
    for d in range(days):
        for s in range(1, stores + 1):
            for item in (10, 11):
                if (d + s + item) % 3:
                    rows.append(f"{len(rows) - 1},{START + dt.timedelta(days=d)},{s},{item},{(d * s + item) % 7 + 1},"
                                f"{'True' if (d + s) % 4 == 0 else 'False'}")
    (raw / "train.csv").write_text("\n".join(rows) + "\n")
    return raw


def test_more_stores_than_the_open_file_limit_allows(tmp_path):
    """One partition file per store was held open through pass 1: 2,000 stores under a 1,024 open-file limit (macOS
    starts at 256) stopped prepare with 'Too many open files'. Here the hard limit itself is 64, for 150 stores."""
    import subprocess
    import sys

    raw = _many_stores(tmp_path / "raw", stores=150)
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
              "from pipeline.params import load_yaml, prepare_params\n"
              "from pipeline.prepare import prepare\n"
              "print(prepare(sys.argv[1], sys.argv[2], prepare_params(load_yaml('params.yaml')), "
              "progress=False))\n")
    result = subprocess.run([sys.executable, "-c", script, str(raw), str(tmp_path / "prepared")],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "of 150 stores" in result.stdout
    prepare(raw, tmp_path / "unlimited", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    pd.testing.assert_frame_equal(_sales(tmp_path / "prepared"), _sales(tmp_path / "unlimited"))


def test_stores_whose_partitions_were_closed_early_are_joined_in_order(tmp_path, monkeypatch):
    """Two files open for 30 stores, in blocks of a few hundred rows: each store's rows in several parts."""
    import functools

    from pipeline import prepare as prepare_module
    from pipeline.validate import read_batches

    raw = _many_stores(tmp_path / "raw", stores=30)
    prepare(raw, tmp_path / "unlimited", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    monkeypatch.setattr(prepare_module, "open_files_budget", lambda: 2)
    monkeypatch.setattr(prepare_module, "read_batches", functools.partial(read_batches, block_size=2048))
    parts = []
    real_close = prepare_module.StorePartitions.close

    def close(self):
        parts.append(max(self.parts.values()))
        real_close(self)

    monkeypatch.setattr(prepare_module.StorePartitions, "close", close)
    prepare(raw, tmp_path / "prepared", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    assert parts[0] > 3  # the case this is about: stores' rows in several part files
    pd.testing.assert_frame_equal(_sales(tmp_path / "prepared"), _sales(tmp_path / "unlimited"))


@pytest.mark.parametrize("every, warned", [(7, True), (30, True), (1, False)])
def test_weekly_or_monthly_totals_are_warned_about(tmp_path, capsys, every, warned):
    """Weekly totals dated on their Monday were prepared as daily sales without a word (six days of no sales a
    week): the model forecast a week's units for a day. A chain closed on Sundays is daily data: no warning."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "stores.csv").write_text("store_nbr,city,state,type,cluster\n1,C,S,A,1\n")
    (raw / "items.csv").write_text("item_nbr,family,class,perishable\n10,F,1,0\n")
    days = [START + dt.timedelta(days=k) for k in range(400) if k % every == 0 and (every > 1 or k % 7 != 6)]
    (raw / "train.csv").write_text("id,date,store_nbr,item_nbr,unit_sales,onpromotion\n"
                                   + "".join(f"{n},{day},1,10,{20 + n % 5},False\n" for n, day in enumerate(days)))
    prepare(raw, tmp_path / "prepared", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    err = capsys.readouterr().err
    assert ("prepare: warning: train.csv: sales on" in err) == warned, err
    if warned:
        assert f"(typically {every} days apart): Shelfcast forecasts daily sales" in err


@pytest.mark.parametrize("grid", ["from_first_sale", "full"])
def test_a_store_that_closed_is_not_zero_filled_to_the_end(tmp_path, capsys, grid):
    """Store 2 sells nothing after day 29 of 60 (closed): its items were zero-filled to the last date, 30 days of
    zero targets each, and in the validation window easy zeros scored as forecasts. Its grid ends at its last row;
    store 3, without rows on the last 15 sales days only (shut for a fortnight, or late) and store 4 with none on
    Christmas and the days around it, are zero-filled to the end as before; prepare names store 2."""
    raw = tmp_path / "raw"
    write_stores_that_stop(raw)
    start = STOPPING_START
    prepare(raw, tmp_path / "prepared", prepare_with(returns="zero", grid=grid), progress=False)
    sales = _sales(tmp_path / "prepared")
    last = sales.groupby("store_nbr")["date"].max().dt.date.to_dict()
    assert last == {1: start + dt.timedelta(days=59), 2: start + dt.timedelta(days=29),
                    3: start + dt.timedelta(days=59), 4: start + dt.timedelta(days=59)}
    assert (sales.groupby("store_nbr").size() == pd.Series({1: 120, 2: 60, 3: 120, 4: 120})).all()
    err = capsys.readouterr().err
    assert ("prepare: warning: train.csv: store 2 (last row 2016-12-30, none on the 30 sales days after it): taken "
            "as closed, its rows end there (not zero-filled to 2017-01-29") in err, err
    assert "store 3 " not in err and "store 4 " not in err


def test_a_gzip_padded_with_zero_bytes_in_data_raw_is_read_as_its_download_and_left_as_it_is(tmp_path):
    """A user who puts their files in data/raw themselves skips download, which drops the zero padding after a
    .gz's data (what `cat f.gz; head -c 512 /dev/zero` leaves; GNU gzip ignores it): prepare stopped on such a
    train.csv.gz with 'unknown compression method (truncated or corrupt gzip?)'. It reads to where the data ends,
    as download's copy would, and the user's file is not rewritten."""
    raw = write_kaggle_sample(tmp_path / "raw", compress=("train", "oil"))
    unpadded = tmp_path / "unpadded"
    prepare(raw, unpadded, prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    padded = {}
    for name in ("train.csv.gz", "oil.csv.gz"):
        padded[name] = (raw / name).read_bytes() + b"\0" * 512
        (raw / name).write_bytes(padded[name])
    out = tmp_path / "prepared"
    prepare(raw, out, prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    assert pd.read_parquet(out / "sales.parquet").equals(pd.read_parquet(unpadded / "sales.parquet"))
    assert {name: (raw / name).read_bytes() for name in padded} == padded


@pytest.mark.parametrize("share, warned", [(0.4, True), (0.6, False), (1.0, False)])
def test_a_last_day_exported_before_it_was_over_is_warned_about(tmp_path, capsys, share, warned):
    """An export run during the day ends on part of it: 3 stores x 10 items every day for 60 days, the last with only
    ``share`` of its rows, prepared without a word, though every store×item without a row counted as selling
    nothing that day (18 of 30 rows false zeros at 0.4), a day of the validation window and the last of the served
    history. No gap before it, so not the refused stray date; a weekday's usual rows are its own weekday's."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "stores.csv").write_text("store_nbr,city,state,type,cluster\n"
                                    + "".join(f"{s},C,S,A,1\n" for s in (1, 2, 3)))
    (raw / "items.csv").write_text("item_nbr,family,class,perishable\n"
                                   + "".join(f"{i},F,1,0\n" for i in range(10, 20)))
    kept = int(30 * share)
    rows = [(START + dt.timedelta(days=d), s, i) for d in range(60) for s in (1, 2, 3) for i in range(10, 20)
            if d < 59 or (s - 1) * 10 + i - 10 < kept]
    (raw / "train.csv").write_text("id,date,store_nbr,item_nbr,unit_sales,onpromotion\n"
                                   + "".join(f"{n},{d},{s},{i},3,False\n" for n, (d, s, i) in enumerate(rows)))
    prepare(raw, tmp_path / "prepared", prepare_with(), progress=False)
    err = capsys.readouterr().err
    last = START + dt.timedelta(days=59)
    assert (f"prepare: warning: train.csv: the last date, {last}, has {kept} row(s) where the same weekday had 30 "
            f"(median of the 4 week(s) before it), first at line {59 * 30 + 2}: an export run before the day was "
            "over?" in err) == warned, err
    assert err.count("\n") == warned, err  # that line alone
