"""pipeline/actuals.py: the one reader of actual sales (drift --actuals, release --actuals)."""

from __future__ import annotations

import gzip

import pytest

from pipeline.actuals import ActualsError, read_actuals

ROWS = "store_nbr,item_nbr,date,unit_sales\n1,2,2017-08-01,-3\n1,3,2017-08-02,4.5\n"


@pytest.mark.parametrize("encode", [
    lambda text: text.encode(),
    lambda text: gzip.compress(text.encode()),  # the pipeline's own train.csv.gz: was "unexpected UnicodeDecodeError"
    lambda text: b"\xef\xbb\xbf" + text.encode(),  # a spreadsheet's BOM: was "missing column(s) store_nbr"
    lambda text: text.replace("\n", "\r\n").encode(),
], ids=["plain", "gzip", "bom", "crlf"])
def test_actual_sales_are_read_however_the_file_is_encoded(tmp_path, encode):
    path = tmp_path / "actuals.csv"
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


@pytest.mark.parametrize("content, message", [
    (ROWS.encode()[:-12], "line 3"),
    (gzip.compress(ROWS.encode(), mtime=0)[:-6], "not a readable CSV (gzip)"),
    (b"store_nbr,item_nbr,date,unit_sales\n1,2,2017-08-01,\"" + b"x" * 200_000 + b"\"\n", "not a readable CSV"),
    (b"store_nbr,date,unit_sales\n1,2017-08-01,3\n", "missing column(s) item_nbr"),
    (b"store_nbr,item_nbr,date,unit_sales\n1,2,2017-08-01,inf\n", "line 2: unit_sales must be a finite number"),
])
def test_an_unusable_file_is_one_error_naming_it(tmp_path, content, message):
    path = tmp_path / "actuals.csv"
    path.write_bytes(content)
    with pytest.raises(ActualsError, match=rf"^{path}: .*") as error:
        read_actuals(path)
    assert message in str(error.value)
