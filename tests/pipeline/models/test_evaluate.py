"""evaluate: the metric by hand, the outputs DVC reads, and the threshold test failing and passing."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from pipeline import evaluate
from pipeline.model_params import EvaluateParams, SliceBound


def test_scores_match_hand_computed_nwrmsle():
    actual, predicted = [0.0, 3.0, 10.0], [1.0, 3.0, 4.0]
    perishable_weights = [1.25, 1.0, 1.25]
    scores = evaluate.score(actual, predicted, perishable_weights, ["A", "B", "A"], ["1", "1", "2"])
    by_hand = math.sqrt((1.25 * math.log(2) ** 2 + 0 + 1.25 * (math.log(5) - math.log(11)) ** 2) / 3.5)
    assert scores["nwrmsle"] == pytest.approx(by_hand)
    assert scores["by_family"]["B"] == 0.0
    assert scores["by_store"]["2"] == pytest.approx(abs(math.log(5) - math.log(11)))
    assert scores["rmse"] == pytest.approx(math.sqrt((1 + 0 + 36) / 3))


PARAMS = EvaluateParams(max_nwrmsle=0.6, min_improvement=0.1, slice_bound=SliceBound(max_nwrmsle=1.0, min_rows=10),
                        plot_rows=10, seed=0)


def _metrics(candidate, baseline, family=None):
    return {"candidate": {"nwrmsle": candidate, "by_family": family or {}, "by_store": {}},
            "baseline": {"nwrmsle": baseline}, "improvement_over_baseline": 1 - candidate / baseline}


def test_threshold_test_passes_a_good_candidate():
    assert evaluate.threshold_failures(_metrics(0.5, 0.6), {"by_family": {}, "by_store": {}}, PARAMS) == []


def test_threshold_test_names_each_threshold_and_by_how_much():
    failures = evaluate.threshold_failures(
        _metrics(0.65, 0.7, {"DAIRY": 1.25, "EGGS": 3.0}), {"by_family": {"DAIRY": 50, "EGGS": 5}, "by_store": {}},
        PARAMS)
    assert len(failures) == 3, failures
    assert failures[0] == "evaluate.max_nwrmsle: candidate NWRMSLE 0.6500 is above the threshold 0.6000 by 0.0500"
    assert failures[1].startswith("evaluate.min_improvement: candidate NWRMSLE 0.6500 improves on the baseline's "
                                  "0.7000 by 7.14%, less than the required 10.00% (short by 2.86%)")
    assert failures[2] == ("evaluate.slice.max_nwrmsle: family 'DAIRY' (50 rows) has NWRMSLE 1.2500, above the bound "
                           "1.0000 by 0.2500")  # EGGS has too few rows to judge


def test_evaluate_writes_metrics_plots_and_passes(trained_project, capsys):
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    assert "threshold test passed" in capsys.readouterr().out
    metrics = json.loads((root / "results/metrics.json").read_text())
    assert metrics["threshold_test_passed"] == 1 and metrics["rows"] > 0
    assert metrics["candidate"]["nwrmsle"] < metrics["baseline"]["nwrmsle"]
    assert set(metrics["candidate"]["by_store"]) == {"1", "2"} and "GROCERY I" in metrics["candidate"]["by_family"]
    with open(root / "results/plots/daily.csv") as handle:
        daily = list(csv.DictReader(handle))
    assert len(daily) == 16 and float(daily[0]["actual"]) > 0
    with open(root / "results/plots/predictions.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 200
    verdict = json.loads((root / "results/evaluation.json").read_text())
    assert verdict["passed"] and verdict["bundle_digest"] == summary["digest"]
    assert verdict["mlflow_run_id"] == summary["run_id"]


def test_the_threshold_test_fails_the_stage_with_a_message(trained_project, tiny_params, set_params, capsys):
    root, _ = trained_project
    tiny_params["evaluate"]["max_nwrmsle"] = 0.05
    set_params(root, tiny_params)
    assert evaluate.main(["--root", str(root)]) == evaluate.THRESHOLD_FAILED
    err = capsys.readouterr().err
    assert "THRESHOLD TEST FAILED" in err and "evaluate.max_nwrmsle: candidate NWRMSLE" in err
    assert "above the threshold 0.0500 by" in err
    verdict = json.loads((root / "results/evaluation.json").read_text())
    assert not verdict["passed"] and verdict["failures"][0].startswith("evaluate.max_nwrmsle")


def test_evaluating_without_a_candidate_is_a_clear_error(tiny_project, capsys):
    assert evaluate.main(["--root", str(tiny_project)]) == 1
    assert "no model bundle here" in capsys.readouterr().err


def test_predictions_are_never_negative(trained_project):
    root, _ = trained_project
    evaluate.run(root, quiet=True)
    with open(root / "results/plots/predictions.csv") as handle:
        assert min(float(r["predicted_log1p"]) for r in csv.DictReader(handle)) >= 0
    assert np.isfinite(json.loads((root / "results/metrics.json").read_text())["candidate"]["rmse"])
