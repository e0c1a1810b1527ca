"""Drift at a realistic category count: 600 items, 112 days of history, 10 training origins (~1.5 min).

The tiny bundle has 37 items; here item_nbr and class have hundreds of values, so a few
hundred requests leave most categories expected fewer than 5 times -- the case where an
unpooled PSI looked like drift (item_nbr 0.61 at 403 events) while being noise.
"""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from monitoring import drift
from tests.conftest import builtin_drift_thresholds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mid_bundle(tmp_path_factory, repo_root):
    spec = importlib.util.spec_from_file_location("drift_scale_tiny_bundle",
                                                  repo_root / "tests" / "app" / "tiny_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = copy.deepcopy(module.TINY_APP_PARAMS)
    params["data"]["synthetic"].update({"stores": 2, "items": 600, "start_date": "2016-06-01",
                                        "end_date": "2017-08-15", "seed": 20170815})
    params["features"].update({"history_days": 112, "mean_windows": [3, 7, 14, 28, 56, 112], "dow_weeks": [4, 8, 16],
                               "promo_windows": [14, 56], "train_origins": 10, "origin_stride_days": 14})
    return module.build_tiny_project(tmp_path_factory.mktemp("drift-scale"), params)


@pytest.mark.parametrize("requests", [3000, 403])
def test_validation_window_traffic_at_scale_raises_no_alarm(mid_bundle, validation_requests_for, replay, tmp_path,
                                                            requests):
    log = replay(mid_bundle, validation_requests_for(mid_bundle, requests, seed=1), tmp_path / "p.jsonl")
    code = drift.main(["--bundle", str(mid_bundle), "--events", str(log),
                       "--params", builtin_drift_thresholds(tmp_path), "--output-dir", str(tmp_path / "r")])
    report = json.loads((tmp_path / "r" / "drift.json").read_text())
    assert code == drift.EXIT_OK and not report["reasons"], report["reasons"]
    judged = [r for r in (*report["features"].values(), *report["categorical"].values()) if r["verdict"] == "ok"]
    assert judged and max(r["psi"] for r in judged) < 0.25
    if requests == 403:
        assert report["categorical"]["item_nbr"]["verdict"] == "inconclusive"


def test_shifted_traffic_at_scale_raises_the_alarm(mid_bundle, validation_requests_for, replay, tmp_path):
    requests = validation_requests_for(mid_bundle, 3000, seed=2)
    shifted = [{**r, "onpromotion": True} for r in requests if r["store_nbr"] == requests[0]["store_nbr"]]
    log = replay(mid_bundle, shifted, tmp_path / "p.jsonl")
    code = drift.main(["--bundle", str(mid_bundle), "--events", str(log),
                       "--params", builtin_drift_thresholds(tmp_path), "--output-dir", str(tmp_path / "r")])
    report = json.loads((tmp_path / "r" / "drift.json").read_text())
    assert code == drift.EXIT_ALARM
    assert {"target_onpromotion"} <= {n for n, r in report["features"].items() if r["drifted"]}
    assert report["categorical"]["store_nbr"]["drifted"]


def test_next_day_traffic_at_scale_raises_no_alarm(mid_bundle, validation_requests_for, replay, tmp_path):
    """Every request for the window's first day (a client ordering for tomorrow): the forecasts are judged against
    that day's reference forecasts. Against the forecasts of every day alike (bundles made before per-day
    references) the same traffic alarmed."""
    requests = validation_requests_for(mid_bundle, None, first_days=1)
    log = replay(mid_bundle, requests, tmp_path / "p.jsonl")
    code = drift.main(["--bundle", str(mid_bundle), "--events", str(log),
                       "--params", builtin_drift_thresholds(tmp_path), "--output-dir", str(tmp_path / "r")])
    report = json.loads((tmp_path / "r" / "drift.json").read_text())
    assert code == drift.EXIT_OK and not report["reasons"], report["reasons"]
    assert report["prediction"]["psi"] < 0.05, report["prediction"]

    from monitoring.drift_analysis import analyse
    from monitoring.drift_params import DriftParams

    stats = json.loads((mid_bundle / "training_stats.json").read_text())
    for key in ("prediction_units", "prediction_by_horizon"):
        del stats["served"][key]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    every_day_alike = analyse(events, json.loads((mid_bundle / "bundle.json").read_text()), stats, DriftParams())
    assert every_day_alike["prediction"]["drifted"], every_day_alike["prediction"]
