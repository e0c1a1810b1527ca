"""Time-based split: the last N days are validation and nothing from them reaches training."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.params import SplitParams
from pipeline.prepare import prepare
from pipeline.split import split
from pipeline.stage import StageError

from .conftest import N_DAYS, START, prepare_with, run_stage_with_file_size_limit, write_kaggle_sample

VALIDATION_DAYS = 5
CUTOFF = START + dt.timedelta(days=N_DAYS - VALIDATION_DAYS)


def _prepare_and_split(raw, tmp_path, tag):
    prepared = tmp_path / f"prepared-{tag}"
    prepare(raw, prepared, prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    out = tmp_path / f"split-{tag}"
    summary = split(prepared / "sales.parquet", out, SplitParams(validation_days=VALIDATION_DAYS), progress=False)
    return prepared, out, summary


def test_last_days_are_validation(tmp_path):
    raw = write_kaggle_sample(tmp_path / "raw")
    prepared, out, summary = _prepare_and_split(raw, tmp_path, "a")
    train = pd.read_parquet(out / "train.parquet")
    validation = pd.read_parquet(out / "validation.parquet")
    sales = pd.read_parquet(prepared / "sales.parquet")
    assert len(train) + len(validation) == len(sales)
    assert train["date"].max() < validation["date"].min()
    assert validation["date"].min() == pd.Timestamp(CUTOFF)
    assert validation["date"].nunique() == VALIDATION_DAYS
    assert validation["date"].max() == sales["date"].max()
    assert pq.read_schema(out / "train.parquet") == pq.read_schema(prepared / "sales.parquet")
    assert f"validation {len(validation):,} rows" in summary


def _perturb_validation_window(raw):
    """Change everything dated in the validation window: sales, promotions, new items, oil, transactions, holidays."""
    cut = CUTOFF.isoformat()
    lines = (raw / "train.csv").read_text().splitlines()
    changed = [lines[0]]
    for line in lines[1:]:
        fields = line.split(",")
        if fields[1] >= cut:
            fields[4] = str(float(fields[4]) * 3 + 7)
            fields[5] = "True"
        changed.append(",".join(fields))
    changed.append(f"999999,{cut},1,108079,5.0,True")  # a sale on a day that had none
    (raw / "train.csv").write_text("\n".join(changed) + "\n")
    for name, column in (("oil", "dcoilwtico"), ("transactions", "transactions")):
        frame = pd.read_csv(raw / f"{name}.csv")
        late = frame["date"] >= cut
        frame.loc[late, column] = frame.loc[late, column] * 2 + 1
        frame.to_csv(raw / f"{name}.csv", index=False)
    with open(raw / "holidays_events.csv", "a") as handle:
        handle.write(f"{cut},Holiday,National,Ecuador,Dia nuevo,False\n")


def test_no_validation_information_leaks_into_training(tmp_path):
    raw_a = write_kaggle_sample(tmp_path / "raw-a")
    raw_b = write_kaggle_sample(tmp_path / "raw-b")
    _perturb_validation_window(raw_b)
    _, split_a, _ = _prepare_and_split(raw_a, tmp_path, "a")
    _, split_b, _ = _prepare_and_split(raw_b, tmp_path, "b")
    train_a = pq.read_table(split_a / "train.parquet")
    train_b = pq.read_table(split_b / "train.parquet")
    assert train_a.equals(train_b)
    assert not pq.read_table(split_a / "validation.parquet").equals(pq.read_table(split_b / "validation.parquet"))


def test_too_many_validation_days_is_refused(tmp_path):
    raw = write_kaggle_sample(tmp_path / "raw")
    prepared = tmp_path / "prepared"
    prepare(raw, prepared, prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    with pytest.raises(StageError, match="split.validation_days: 27 days leave no training days"):
        split(prepared / "sales.parquet", tmp_path / "split", SplitParams(validation_days=N_DAYS), progress=False)
    assert not (tmp_path / "split").exists()


def test_a_write_refused_as_the_outputs_close_gives_one_error_and_leaves_nothing(tmp_path):
    """A full disk as split closed its Parquet files (their footers): the stage's one-line error, then pyarrow's
    finalizer closed a writer again at exit: a second traceback ("Exception ignored in:
    ParquetWriter.__del__"), at times an aborted interpreter (exit 134)."""
    raw = write_kaggle_sample(tmp_path / "raw")
    root = tmp_path / "project"
    prepare(raw, root / "data" / "prepared", prepare_with(returns="zero", grid="from_first_sale"), progress=False)
    (root / "params.yaml").write_text(f"split:\n  validation_days: {VALIDATION_DAYS}\n", encoding="utf-8")
    split(root / "data" / "prepared" / "sales.parquet", tmp_path / "unlimited", SplitParams(VALIDATION_DAYS),
          progress=False)
    # both files fail as their footers (the last bytes written) are: the first close raises, the other's is left
    smaller = min(path.stat().st_size for path in (tmp_path / "unlimited").iterdir())

    done = run_stage_with_file_size_limit("split", root, smaller - 8)

    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("split: error: ") and "File too large" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert sorted(p.name for p in (root / "data").iterdir()) == ["prepared"]  # no split, no staging left
