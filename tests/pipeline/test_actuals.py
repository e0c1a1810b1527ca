"""pipeline/actuals.py: the one reader of actual sales (drift --actuals, release --actuals)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from pipeline.actuals import ActualsError, read_actuals

ROWS = "store_nbr,item_nbr,date,unit_sales\n1,2,2017-08-01,-3\n1,3,2017-08-02,4.5\n"


@pytest.mark.parametrize("name, encode", [
    ("actuals.csv", lambda text: text.encode()),
    # the pipeline's own train.csv.gz: was "unexpected UnicodeDecodeError"
    ("actuals.csv.gz", lambda text: gzip.compress(text.encode())),
    ("actuals.csv", lambda text: b"\xef\xbb\xbf" + text.encode()),  # a spreadsheet's BOM: was "missing column(s)"
    ("actuals.csv", lambda text: text.replace("\n", "\r\n").encode()),
    ("actuals.csv", lambda text: "".join(line + (",note\n" if n == 0 else f',"a, {n}"\n')  # a column of the
                                         for n, line in enumerate(text.splitlines())).encode()),  # user's own
], ids=["plain", "gzip", "bom", "crlf", "own column"])
def test_actual_sales_are_read_however_the_file_is_encoded(tmp_path, name, encode):
    path = tmp_path / name
    path.write_bytes(encode(ROWS))
    assert read_actuals(path) == {(1, 2, "2017-08-01"): 0.0, (1, 3, "2017-08-02"): 4.5,
                                  (1, 2, "2017-08-02"): 0.0}  # no row that day: sold nothing (zero_filled)


def test_a_day_without_a_row_counts_as_nothing_sold_as_evaluate_counts_it(tmp_path):
    """Found by a probe on foreign data (train.csv as --actuals, README "What an absent day means"): only the days
    with a row were scored, so 370 of 1,500 validation-window requests, the days nothing sold, went unscored
    (live NWRMSLE 0.435 against 0.460 on every row), and a model forecasting sales on those days went unseen."""
    path = tmp_path / "train.csv"
    path.write_text("id,date,store_nbr,item_nbr,unit_sales,onpromotion\n"
                    "0,2017-08-01,1,10,2,False\n1,2017-08-02,1,11,3,False\n"  # 11 first sells on the 2nd
                    "2,2017-08-03,2,10,1,False\n3,2017-08-05,1,10,4,\n")  # no row of any store on the 4th
    actual = read_actuals(path)
    assert actual[(1, 10, "2017-08-02")] == actual[(1, 10, "2017-08-03")] == 0.0  # sold before, no row: nothing
    assert actual[(1, 11, "2017-08-03")] == actual[(1, 11, "2017-08-05")] == 0.0
    assert (1, 11, "2017-08-01") not in actual  # before its first row: not yet sold there, not scored
    assert (2, 10, "2017-08-01") not in actual and actual[(2, 10, "2017-08-05")] == 0.0
    assert not any(date == "2017-08-04" for _, _, date in actual)  # no store sold: not a sales day
    assert actual[(1, 10, "2017-08-05")] == 4.0 and len(actual) == 9


def test_a_store_without_rows_on_a_day_other_stores_report_is_said(tmp_path, capsys):
    """Found by the monitoring probe: a daily feed where store 2's rows arrive late scored all of store 2's items
    against zero that day, silently (a false live-accuracy alarm). The rule stays evaluate's; the reader says so."""
    path = tmp_path / "actuals.csv"
    path.write_text("store_nbr,item_nbr,date,unit_sales\n1,10,2017-08-01,2\n2,10,2017-08-01,3\n"
                    "1,10,2017-08-02,4\n")  # store 2's rows of the 2nd not in yet
    actual = read_actuals(path)
    assert actual[(2, 10, "2017-08-02")] == 0.0
    err = capsys.readouterr().err
    assert (f"actuals: warning: {path}: no row for store 2 on 2017-08-02, among the file's last 2 days, which other "
            "stores have rows on") in err, err
    assert "leave those days out of the actuals" in err and err.count("\n") == 1, err
    path.write_text(ROWS)  # one store, every day
    read_actuals(path)
    assert capsys.readouterr().err == ""
    rows = [f"{store},10,2017-08-{day:02d},2" for day in range(1, 10) for store in (1, 2) if (store, day) != (2, 2)]
    path.write_text("store_nbr,item_nbr,date,unit_sales\n" + "\n".join(rows) + "\n")  # store 2 closed on the 2nd
    assert read_actuals(path)[(2, 10, "2017-08-02")] == 0.0  # before the file's last 7 days: a closed store, unsaid
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name, content, message", [
    # cut inside its last line: said as that, not as the cut line's "has 3 fields, the header has 4"
    ("actuals.csv", ROWS.encode()[:-12], "line 3, column 'date': the file ends inside this line ('1,3,201', no "
     "end-of-line after it): it looks truncated"),
    ("actuals.csv.gz", gzip.compress(ROWS.encode(), mtime=0)[:-6], "(corrupt or truncated gzip?)"),
    ("actuals.csv", b"store_nbr,item_nbr,date,unit_sales\n1,2,2017-08-01,\"" + b"x" * 200_000 + b"\"\n",
     "column 'unit_sales': not a valid double; first offending: line 2 ('xxxx"),
    ("actuals.csv", b"store_nbr,date,unit_sales\n1,2017-08-01,3\n", "column 'item_nbr': missing"),
    ("actuals.csv", b"store_nbr,item_nbr,date,unit_sales\n1,2,2017-08-01,inf\n",
     "column 'unit_sales': not a finite number; first offending: line 2 (inf)"),
    ("actuals.csv", b"store_nbr,item_nbr,date,unit_sales\n1,2,2017-08-01,3\n1,3,2017-08-01,1\n1,2,2017-08-01,3\n",
     "the same store, item and day twice; first offending: line 2 ('2017-08-01/1/2'), line 4 ('2017-08-01/1/2')"),
    ("actuals.csv", b"store_nbr,item_nbr,date,unit_sales\n1,2,2017-8-1,3\n", "column 'date': not a valid date"),
])
def test_an_unusable_file_is_one_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ActualsError, match=rf"^{path}: .*") as error:
        read_actuals(path)
    assert message in str(error.value) and len(str(error.value)) < 500


def test_a_missing_file_is_named_without_a_gzip_hint(tmp_path):
    with pytest.raises(ActualsError, match=rf"^{tmp_path}/nowhere.csv.gz: cannot read: No such file or directory$"):
        read_actuals(tmp_path / "nowhere.csv.gz")


def test_keys_no_row_can_have_are_simply_absent(tmp_path):
    """The rows are held as sorted 62-bit codes of (store, item, day): a key outside the codes' ranges must not
    wrap onto another row's code."""
    path = tmp_path / "actuals.csv"
    path.write_text("store_nbr,item_nbr,date,unit_sales\n32767,2147483647,2099-12-31,7\n1,1,2000-01-01,2\n")
    actual = read_actuals(path)
    assert actual[(32767, 2147483647, "2099-12-31")] == 7.0 and actual[(1, 1, "2000-01-01")] == 2.0
    for key in [(32767 + 65536, 2147483647, "2099-12-31"), (0, 1, "2000-01-01"), (1, 2**31 + 1, "2000-01-01"),
                (1, 1, "1999-12-31"), (1, 1, "not a date"), (1, 1, None), (-1, -1, "2000-01-01"),
                ("1", 1, "2000-01-01"), (None, 1, "2000-01-01"), (1, 1.5, "2000-01-01"), (1, float("nan"),
                "2000-01-01"), (1, 1, 20000101), (1,), "1,1,2000-01-01"]:  # logged events key by any JSON value
        assert key not in actual
    assert actual[(1.0, np.int32(1), "2000-01-01")] == 2.0  # a whole number is one, whatever its type
    assert actual[(1, 1, "2099-12-31")] == 0.0  # a day of the file after its first: nothing sold
    assert len(actual) == 3 and set(actual) == {(32767, 2147483647, "2099-12-31"), (1, 1, "2000-01-01"),
                                                (1, 1, "2099-12-31")}


@pytest.mark.parametrize("chunk_rows", [1, 7, 1 << 23])
def test_the_rows_and_their_zero_days_are_the_files_whatever_the_chunking(tmp_path, monkeypatch, chunk_rows):
    """read_actuals gathers rows in chunks (one memory mapping each) and finds each store x item's first day a
    slice at a time: both must give what a plain reading of the file gives, across chunk boundaries too."""
    import random

    import pipeline.actuals

    monkeypatch.setattr(pipeline.actuals, "CHUNK_ROWS", chunk_rows)
    rng = random.Random(3)
    days = [f"2017-08-{d:02d}" for d in range(1, 29) if d != 13]  # no store sells on the 13th
    rows = {(rng.randint(1, 4), rng.choice([5, 77, 2**31 - 1]), rng.choice(days)): round(rng.uniform(-2, 9), 3)
            for _ in range(150)}
    path = tmp_path / "actuals.csv"
    path.write_text("date,unit_sales,item_nbr,store_nbr\n" + "".join(
        f"{d},{u},{i},{s}\n" for (s, i, d), u in rng.sample(sorted(rows.items()), len(rows))))
    expected = {}
    file_days = sorted({d for _, _, d in rows})
    for store, item in {(s, i) for s, i, _ in rows}:
        first = min(d for s, i, d in rows if (s, i) == (store, item))
        for day in file_days:
            if day >= first:
                expected[(store, item, day)] = max(rows.get((store, item, day), 0.0), 0.0)
    actual = read_actuals(path)
    assert dict(actual) == expected and len(actual) == len(expected)
    assert all(actual[key] == units for key, units in expected.items())
    assert not any(date == "2017-08-13" for _, _, date in actual)
