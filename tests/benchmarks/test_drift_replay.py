"""benchmarks/drift_replay.py: which project's validation window it replays, and what it says when a project lacks
what it needs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.benchmarks.conftest import _benchmark_module


@pytest.fixture(scope="module")
def drift_replay():
    return _benchmark_module("drift_replay")


def _project(root, stores=(1, 2), with_split=True):
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "train.csv").write_text("id,date,store_nbr,item_nbr,unit_sales,onpromotion\n")
    if with_split:
        (root / "data" / "split").mkdir(parents=True)
        pd.DataFrame({"store_nbr": list(stores), "item_nbr": [10] * len(stores),
                      "date": pd.to_datetime(["2017-08-01"] * len(stores)), "onpromotion": [False] * len(stores)}
                     ).to_parquet(root / "data" / "split" / "validation.parquet")
    return root


def test_the_requests_come_from_the_project_given_not_the_folder_above_the_bundle(drift_replay, tmp_path):
    """--bundle outside PROJECT/models/ (its help: 'the bundle to serve'): the rows were read from the bundle's
    grandparent folder, another project or none (FileNotFoundError: /data/split/validation.parquet)."""
    project = _project(tmp_path / "project", stores=(7, 8))
    _project(tmp_path / "elsewhere", stores=(1,))
    bundle = tmp_path / "elsewhere" / "models" / "mine"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text(json.dumps({"vocabularies": {"item_nbr": ["10"]}}))
    requests = drift_replay.served_validation_requests(bundle, None, project=project)
    assert sorted(r["store_nbr"] for r in requests) == [7, 8]


@pytest.mark.parametrize("with_split, names", [(False, "validation.parquet"), (True, "models/candidate")])
def test_a_project_without_its_split_or_bundle_is_one_line(drift_replay, tmp_path, with_split, names):
    """A project whose dvc repro has not run (or not through train): one line saying so, not a traceback."""
    project = _project(tmp_path / "project", with_split=with_split)
    with pytest.raises(SystemExit) as stopped:
        drift_replay.main(["--project", str(project), "--requests", "5"])
    message = str(stopped.value.code)
    assert len(message.splitlines()) == 1 and names in message and "dvc repro" in message, message


def test_a_bundle_that_cannot_forecast_the_window_is_one_line(drift_replay, tmp_path, monkeypatch):
    """--bundle models/production (promote's refit: its horizon is the days after the validation window): one line
    naming the bundle to use, not an AssertionError carrying every refused instance."""
    import app as app_package

    class Refusing:
        def post(self, *args, **kwargs):
            class Answer:
                status_code = 422

                @staticmethod
                def get_json(silent=False):
                    return {"code": "not_forecastable", "message": "50 value(s) the model cannot forecast",
                            "errors": [{"field": "instances[0].date", "message": "outside the horizon"}] * 50}
            return Answer()

    monkeypatch.setattr(app_package, "create_app", lambda *a, **k: type("App", (), {"test_client": Refusing})())
    with pytest.raises(SystemExit) as stopped:
        drift_replay.replay_requests(tmp_path / "bundle", [{"store_nbr": 1}], tmp_path / "log.jsonl")
    message = str(stopped.value.code)
    assert len(message.splitlines()) == 1 and "models/candidate" in message and message.count("horizon") == 1
