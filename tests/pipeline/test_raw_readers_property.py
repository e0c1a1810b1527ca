"""Property: any malformed or truncated raw file is read correctly or refused cleanly.

Hypothesis writes valid raw files (train, items, oil, holidays_events; plain or
gzip), then damages them: cut at any byte, a byte replaced, bytes inserted or
removed. The readers prepare uses (``read_batches`` streaming, ``read_small``
whole) must then either

* raise ``DataValidationError`` whose message starts with the file name, or
* return data; for a file that was only cut short, exactly a prefix of the
  original rows (a shorter file that silently changed a value is corruption).

Never another exception (a traceback for the user).
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.schema import HOLIDAY_LOCALES, HOLIDAY_TYPES, RAW_SCHEMAS
from pipeline.validate import DataValidationError, read_batches, read_small

NAMES = ("train", "items", "oil", "holidays_events")
TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ÁéñÜ/-", min_size=1, max_size=12).map(str.strip).filter(bool)
DATES = st.dates(min_value=dt.date(2013, 1, 1), max_value=dt.date(2020, 12, 31)).map(dt.date.isoformat)
NUMBER = st.floats(min_value=-1e5, max_value=1e5, allow_nan=False).map(lambda v: f"{v:.3f}")


def _rows(name: str) -> st.SearchStrategy[list[list[str]]]:
    if name == "train":
        row = st.tuples(st.integers(0, 2**63 - 1), DATES, st.integers(1, 54), st.integers(1, 2**31 - 1), NUMBER,
                        st.sampled_from(["True", "False", ""]))
        return st.lists(row, min_size=1, max_size=30, unique_by=lambda r: r[0]).map(
            lambda rs: [list(map(str, r)) for r in rs])
    if name == "items":
        row = st.tuples(st.integers(1, 2**31 - 1), TEXT, st.integers(0, 9999), st.sampled_from(["0", "1"]))
        return st.lists(row, min_size=1, max_size=30, unique_by=lambda r: r[0]).map(
            lambda rs: [list(map(str, r)) for r in rs])
    if name == "oil":
        price = st.one_of(st.just(""),
                          st.floats(min_value=0, max_value=1000, allow_nan=False).map(lambda v: f"{v:.2f}"))
        row = st.tuples(DATES, price)
        return st.lists(row, min_size=1, max_size=30, unique_by=lambda r: r[0]).map(lambda rs: [list(r) for r in rs])
    row = st.tuples(DATES, st.sampled_from(HOLIDAY_TYPES), st.sampled_from(HOLIDAY_LOCALES), TEXT, TEXT,
                    st.sampled_from(["True", "False"]))
    return st.lists(row, min_size=0, max_size=30).map(lambda rs: [list(r) for r in rs])


def _csv(name: str, rows: list[list[str]]) -> bytes:
    header = ",".join(RAW_SCHEMAS[name].column_names)
    return ("\n".join([header] + [",".join(r) for r in rows]) + "\n").encode("utf-8")


@st.composite
def damaged_files(draw):
    name = draw(st.sampled_from(NAMES))
    rows = draw(_rows(name))
    data = _csv(name, rows)
    compressed = draw(st.booleans())
    if compressed:
        data = gzip.compress(data, mtime=0)
    damage = draw(st.sampled_from(["cut", "replace", "insert", "delete"]))
    at = draw(st.integers(0, len(data)))
    if damage == "cut":
        damaged = data[:at]
    elif damage == "replace":
        at = min(at, len(data) - 1)
        damaged = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    elif damage == "insert":
        inserted = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b",", b"\n", b'"', b"\r"]))
        damaged = data[:at] + inserted + data[at:]
    else:
        damaged = data[:at] + data[at + draw(st.integers(1, 8)):]
    return name, rows, compressed, damage, damaged


def _read(path: Path, name: str) -> list[dict]:
    """Both readers: the streaming one (train) and the whole-file one with keys (small files)."""
    batches = [batch for _, batch in read_batches(path, RAW_SCHEMAS[name], block_size=256)]
    if name != "train":
        read_small(path.parent, name)
    return pa.Table.from_batches(batches).to_pylist() if batches else []


def _same(value, text: str) -> bool:
    if value is None:
        return text == ""
    if isinstance(value, bool):
        return text == str(value)
    if isinstance(value, float):
        return math.isclose(value, float(text), rel_tol=1e-12, abs_tol=1e-9)
    if isinstance(value, dt.date):
        return value.isoformat() == text
    return str(value) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(case=damaged_files())
def test_damaged_raw_file_is_read_correctly_or_refused_cleanly(tmp_path_factory, case):
    name, rows, compressed, damage, damaged = case
    directory = tmp_path_factory.mktemp("raw")
    path = directory / (f"{name}.csv.gz" if compressed else f"{name}.csv")
    path.write_bytes(damaged)
    try:
        read = _read(path, name)
    except DataValidationError as error:
        assert str(error).startswith(f"{path.name}:"), str(error)
        return
    if damage == "cut":
        columns = RAW_SCHEMAS[name].column_names
        assert len(read) <= len(rows)
        for got, original in zip(read, rows):
            assert all(_same(got[c], text) for c, text in zip(columns, original)), (got, original)


def test_the_damage_is_noticed_at_all():
    """The property is not vacuous: a cut inside a row's last field, or a bad gzip, is refused."""
    import pytest

    for data, file_name in ((b"date,dcoilwtico\n2014-01-01,45.5\n2014-01-02,46.2", "oil.csv"),
                            (gzip.compress(b"date,dcoilwtico\n" + b"2014-01-01,45.5\n" * 500)[:-30], "oil.csv.gz")):
        directory = Path(pytest.importorskip("tempfile").mkdtemp())
        (directory / file_name).write_bytes(data)
        with pytest.raises(DataValidationError, match=rf"^{file_name}: "):
            _read(directory / file_name, "oil")
