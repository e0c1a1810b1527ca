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
    assert read_actuals(path) == {(1, 2, "2017-08-01"): 0.0, (1, 3, "2017-08-02"): 4.5}


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
