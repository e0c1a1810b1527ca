"""evaluate: the metric by hand, the gate's rule, the backtest windows, the outputs DVC and MLflow read."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from pipeline import champion, evaluate, tracking
from pipeline.metrics import ImprovementInterval, improvement_words
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


def _params(**changes) -> EvaluateParams:
    values = dict(backtest_windows=3, min_improvement=0.0, min_series=30, confidence=0.95, bootstrap_resamples=1000,
                  max_nwrmsle=None, slice_bound=SliceBound(max_nwrmsle=1.0, min_rows=10), plot_rows=10, seed=0)
    values.update(changes)
    return EvaluateParams(**values)


def _interval(estimate, low, high):
    return ImprovementInterval(estimate=estimate, low=low, high=high, confidence=0.95, resamples=1000, series=80)


POOLED = {"candidate_nwrmsle": 0.55, "baseline_nwrmsle": 0.6}
NO_SLICES = {"candidate": {"by_family": {}, "by_store": {}}, "rows": {"by_family": {}, "by_store": {}}}


def test_the_gate_passes_when_the_lower_bound_clears_min_improvement():
    assert evaluate.threshold_failures(POOLED, _interval(0.08, 0.01, 0.15), NO_SLICES, _params()) == []
    assert evaluate.threshold_failures(POOLED, _interval(0.08, 0.06, 0.10), NO_SLICES,
                                       _params(min_improvement=0.05)) == []


def test_a_better_point_estimate_without_confidence_fails_and_says_by_how_much():
    failures = evaluate.threshold_failures(POOLED, _interval(0.08, -0.01, 0.15), NO_SLICES, _params())
    assert failures == ["evaluate.min_improvement: against the baseline the candidate is 8.00% better, not clearly: "
                        "[1.00% worse, 15.00% better] includes no change (NWRMSLE 0.5500 vs 0.6000; the 95% interval "
                        "over 80 series), and its lower end, an improvement of -1.00%, does not clear the required "
                        "0.00% (short by 1.00%)"]
    # "clears" is strict: a lower bound exactly at the bar is not confidence of beating it
    assert evaluate.threshold_failures(POOLED, _interval(0.08, 0.0, 0.15), NO_SLICES, _params())


def test_an_interval_over_too_few_series_is_no_confident_verdict():
    """Found by the gate probe: the bootstrap of one series draws that series every time, so its interval had zero
    width ([1.0, 1.0] for a perfect candidate) and the gate passed "with confidence" on one or two series."""
    from pipeline.metrics import improvement_interval

    actual = np.array([3.0, 5.0, 2.0, 4.0])
    one = improvement_interval(np.array(["1/10"] * 4), actual, actual, actual + 2.0)
    assert one.low == one.high == 1.0 and one.series == 1
    assert evaluate.threshold_failures(POOLED, one, NO_SLICES, _params()) == [
        "evaluate.min_series: the improvement interval rests on 1 series, fewer than the 30 it needs to judge with "
        "confidence (lower evaluate.min_series to accept a verdict on so few)"]
    assert evaluate.threshold_failures(POOLED, one, NO_SLICES, _params(min_series=1)) == []
    assert "over at least 30 series" in evaluate.gate_rule(_params())


def test_max_nwrmsle_is_optional_and_slices_with_enough_rows_are_bounded():
    slices = {"candidate": {"by_family": {"DAIRY": 1.25, "EGGS": 3.0}, "by_store": {}},
              "rows": {"by_family": {"DAIRY": 50, "EGGS": 5}, "by_store": {}}}
    failures = evaluate.threshold_failures(POOLED, _interval(0.08, 0.02, 0.15), slices, _params(max_nwrmsle=0.5))
    assert failures == ["evaluate.max_nwrmsle: candidate NWRMSLE 0.5500 is above the threshold 0.5000 by 0.0500",
                        "evaluate.slice.max_nwrmsle: family 'DAIRY' (50 rows) has NWRMSLE 1.2500, above the bound "
                        "1.0000 by 0.2500"]  # EGGS has too few rows to judge
    assert len(evaluate.threshold_failures(POOLED, _interval(0.08, 0.02, 0.15), slices, _params())) == 1


def test_the_rule_is_stated_with_its_values():
    rule = evaluate.gate_rule(_params(min_improvement=0.02, max_nwrmsle=0.7))
    assert "95% paired-bootstrap interval" in rule and "over all 3 backtest window(s), must exceed 0.02" in rule
    assert "at most 0.7" in rule and "max_nwrmsle" not in evaluate.gate_rule(_params()).replace("NWRMSLE", "")


def test_evaluate_writes_headline_windows_slices_plots_and_passes(trained_project, capsys):
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 window(s)" in out and "threshold test passed" in out
    metrics = json.loads((root / "results/metrics.json").read_text())
    assert set(metrics) == {"threshold_test_passed", "backtest", "validation"}  # the headline only
    assert metrics["threshold_test_passed"] == 1 and metrics["validation"]["rows"] > 0
    pooled = metrics["backtest"]
    assert pooled["improvement_low"] > 0 and pooled["candidate_nwrmsle"] < pooled["baseline_nwrmsle"]
    assert pooled["improvement_low"] < pooled["improvement"] < pooled["improvement_high"]
    slices = json.loads((root / "results/slices.json").read_text())
    assert set(slices["candidate"]["by_store"]) == {"1", "2"} and "GROCERY I" in slices["candidate"]["by_family"]
    assert sum(slices["rows"]["by_store"].values()) == metrics["validation"]["rows"]
    backtest = json.loads((root / "results/backtest.json").read_text())
    assert [w["window"] for w in backtest["windows"]] == [0] and backtest["window_days"] == 16
    with open(root / "results/plots/daily.csv") as handle:
        daily = list(csv.DictReader(handle))
    assert len(daily) == 16 and float(daily[0]["actual"]) > 0 and daily[0]["date"] < daily[-1]["date"]
    # the line to read against actual sales is the expected units: the median-like forecast sums short of them
    actual, expected, median = (sum(float(d[k]) for d in daily) for k in ("actual", "expected_units", "predicted"))
    assert abs(expected / actual - 1) <= 0.05 and median < 0.95 * actual, (actual, expected, median)
    with open(root / "results/plots/predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200 and min(float(r["predicted_log1p"]) for r in rows) >= 0
    verdict = json.loads((root / "results/evaluation.json").read_text())
    assert verdict["passed"] and verdict["bundle_digest"] == summary["digest"]
    assert "paired-bootstrap" in verdict["rule"]
    # no time and no run id in a git-tracked output: those are MLflow's (found by the bundle digest)
    assert not {"evaluated_at", "mlflow_run_id", "mlflow_evaluation_run_id"} & set(verdict)
    assert tracking.run_of_bundle(root, verdict["bundle_digest"]).info.run_id == summary["run_id"]
    assert verdict["improvement_interval"]["low"] == pooled["improvement_low"]
    from monitoring.metrics_events import metrics_event  # the Kibana quality event reads the headline as written

    event = metrics_event(metrics, verdict)["metrics"]
    assert event["candidate_nwrmsle"] == metrics["validation"]["candidate_nwrmsle"] and event["threshold_test_passed"]


def test_backtest_windows_retrain_on_the_days_before_each_window(trained_project, tiny_params, set_params):
    root, _ = trained_project
    tiny_params["evaluate"]["backtest_windows"] = 2
    set_params(root, tiny_params)
    metrics, failures = evaluate.run(root, quiet=True)
    backtest = json.loads((root / "results/backtest.json").read_text())
    latest, earlier = backtest["windows"]
    assert latest["model"].startswith("candidate bundle") and "trained on the days before" in earlier["model"]
    assert np.datetime64(earlier["last_day"]) + 1 == np.datetime64(latest["first_day"])  # back to back
    assert np.datetime64(latest["first_day"]) - np.datetime64(earlier["first_day"]) == 16
    assert earlier["train_examples"] > 0 and earlier["rows"] > 0
    assert earlier["candidate_nwrmsle"] < earlier["baseline_nwrmsle"]  # the recipe beats the baseline there too
    assert metrics["backtest"]["windows"] == 2
    assert metrics["backtest"]["rows"] == latest["rows"] + earlier["rows"]
    with open(root / "results/plots/daily.csv") as handle:
        daily = list(csv.DictReader(handle))
    assert len(daily) == 32 and {d["window"] for d in daily} == {"0", "1"}
    for window in ("0", "1"):  # a backtest window's model has its own expected-units factor
        rows = [d for d in daily if d["window"] == window]
        expected, median = (sum(float(d[k]) for d in rows) for k in ("expected_units", "predicted"))
        assert expected > median > 0
    assert [d["date"] for d in daily] == sorted(d["date"] for d in daily)
    assert not failures


def test_more_windows_than_the_data_holds_is_a_clear_error(trained_project, tiny_params, set_params, capsys):
    root, _ = trained_project
    tiny_params["evaluate"]["backtest_windows"] = 12
    set_params(root, tiny_params)
    assert evaluate.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "evaluate: error: evaluate.backtest_windows: 12 windows of 16 days need more training data than the " \
           "204 days before the validation window: for the earliest window, features: the training data has" in err
    assert err.rstrip().endswith("lower evaluate.backtest_windows")


def test_a_backtest_window_whose_training_diverges_names_the_learning_rate(trained_project, tiny_params, set_params,
                                                                           capsys):
    """Before: a traceback ending `MetricInputError: predicted: 752 non-finite value(s)` (the windows before the
    validation window retrain with train.learning_rate, which may overflow where the candidate's training did not)."""
    root, _ = trained_project
    tiny_params["evaluate"]["backtest_windows"] = 2
    tiny_params["train"]["learning_rate"] = 1e6
    set_params(root, tiny_params)
    assert evaluate.main(["--root", str(root), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evaluate: error: train.learning_rate: training diverged by step ") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_the_threshold_test_fails_the_stage_with_a_message(trained_project, tiny_params, set_params, capsys):
    root, _ = trained_project
    tiny_params["evaluate"]["min_improvement"] = 0.9
    set_params(root, tiny_params)
    assert evaluate.main(["--root", str(root)]) == evaluate.THRESHOLD_FAILED
    err = capsys.readouterr().err
    assert "THRESHOLD TEST FAILED" in err and "does not clear the required 90.00%" in err
    verdict = json.loads((root / "results/evaluation.json").read_text())
    assert not verdict["passed"] and verdict["failures"][0].startswith("evaluate.min_improvement")
    assert json.loads((root / "results/metrics.json").read_text())["threshold_test_passed"] == 0


@pytest.mark.parametrize("improvement, low, high, digits, said", [
    (0.09, 0.086, 0.094, 1, "9.0% better [8.6%, 9.4%]"),
    (-0.473, -0.502, -0.441, 1, "47.3% worse [44.1%, 50.2%]"),  # read "-47.3% better [-50.2%, -44.1%]" (a probe)
    # an interval that holds no change: it read "1.0% worse [-1.0%, 3.0%]", taken for worse; no sign now, a word
    (-0.01, -0.03, 0.01, 1, "1.0% worse, not clearly: [3.0% worse, 1.0% better] includes no change"),
    (0.02, -0.01, 0.05, 1, "2.0% better, not clearly: [1.0% worse, 5.0% better] includes no change"),
    (0.0, -0.01, 0.01, 1, "no change: [1.0% worse, 1.0% better] includes no change"),
    (0.03, 0.0, 0.06, 1, "3.0% better, not clearly: [no change, 6.0% better] includes no change"),
    (-0.0146, -0.0183, -0.0111, 2, "1.46% worse [1.11%, 1.83%]"),  # promote's champion/challenger line: 2 digits
    (-0.005, 0.01, 0.02, 1, "0.5% worse [1.0% better, 2.0% better]"),  # an estimate outside its interval
])
def test_an_improvement_is_said_in_words_that_its_interval_supports(improvement, low, high, digits, said):
    """evaluate's summary and promote's champion/challenger line say an improvement in this one function's words."""
    assert improvement_words(improvement, low, high, digits=digits) == said
    assert evaluate.improvement_words is champion.improvement_words is improvement_words


def test_the_evaluation_run_records_every_evaluate_param_under_its_params_yaml_key(trained_project, tiny_params,
                                                                                 set_params):
    """Two evaluations apart only in a slice bound differed in no MLflow param column: evaluate.slice.max_nwrmsle and
    evaluate.slice.min_rows, threshold-test params as much as min_improvement, were left out of the run's params."""
    root, _ = trained_project
    tiny_params["evaluate"]["slice"] = {"max_nwrmsle": 1.75, "min_rows": 23}
    set_params(root, tiny_params)
    evaluate.run(root, quiet=True)
    verdict = json.loads((root / "results/evaluation.json").read_text())
    evaluation_run = tracking.run_of_bundle(root, verdict["bundle_digest"], "evaluate").info.run_id
    params, _, _ = tracking.run_data(root, evaluation_run)
    in_yaml = {f"evaluate.{key}" for key in tracking.flatten(tiny_params["evaluate"])}
    assert {k for k in params if k.startswith("evaluate.")} == in_yaml
    assert params["evaluate.slice.max_nwrmsle"] == "1.75" and params["evaluate.slice.min_rows"] == "23"


def test_evaluating_without_a_candidate_is_a_clear_error(tiny_project, capsys):
    assert evaluate.main(["--root", str(tiny_project)]) == 1
    assert "no model bundle here" in capsys.readouterr().err


def test_the_evaluation_is_an_mlflow_run_of_its_own_with_heldout_names(trained_project):
    root, summary = trained_project
    evaluate.run(root, quiet=True)
    verdict = json.loads((root / "results/evaluation.json").read_text())
    evaluation_run = tracking.run_of_bundle(root, verdict["bundle_digest"], "evaluate").info.run_id
    params, metrics, tags = tracking.run_data(root, evaluation_run)
    assert tags["mlflow.parentRunId"] == summary["run_id"] and tags["threshold_test"] == "passed"
    assert metrics["heldout_backtest_improvement_low"] == pytest.approx(verdict["improvement_interval"]["low"])
    assert metrics["heldout_validation_candidate_nwrmsle"] == pytest.approx(verdict["candidate_nwrmsle"])
    assert params["evaluate.backtest_windows"] == "1"
    (dataset_input,) = tracking.client(root).get_run(evaluation_run).inputs.dataset_inputs
    assert [(t.key, t.value) for t in dataset_input.tags] == [("mlflow.data.context", "evaluation")]
    headline = json.loads((root / "results/metrics.json").read_text())
    assert json.loads(dataset_input.dataset.profile)["validation_rows"] == headline["validation"]["rows"] > 0
    artifacts = {a.path for a in tracking.client(root).list_artifacts(evaluation_run, "results")}
    assert {"results/metrics.json", "results/backtest.json", "results/slices.json"} <= artifacts
    _, train_metrics, train_tags = tracking.run_data(root, summary["run_id"])
    assert train_tags["threshold_test"] == "passed"
    # both record the registered model they were made for (prune tells projects sharing a tracking server apart by it)
    assert train_tags[tracking.REGISTERED_MODEL_TAG] == tags[tracking.REGISTERED_MODEL_TAG] == "shelfcast-forecaster"
    # held-out scores never share a name with the training curves
    curves = {k for k in train_metrics if not k.startswith(tracking.HELDOUT_PREFIX)}
    assert curves and not any(k.startswith("heldout") for k in curves)
    assert "heldout_validation_candidate_nwrmsle" in train_metrics


def test_an_evaluation_left_unrecorded_in_mlflow_is_said_under_quiet_too(trained_project, capsys):
    """--quiet drops progress; it hid that the evaluation went unrecorded (its training run deleted by hand)."""
    root, summary = trained_project
    tracking.client(root).delete_run(summary["run_id"])
    try:
        evaluate.run(root, quiet=True)
        err = capsys.readouterr().err
        assert "evaluate: note: no finished MLflow training run at" in err
        assert "the evaluation is not recorded in MLflow" in err
    finally:
        tracking.client(root).restore_run(summary["run_id"])


def test_re_evaluating_never_rewrites_a_promoted_runs_verdict(trained_project, tiny_params, set_params, capsys):
    from pipeline import promote

    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    assert promote.main(["--root", str(root)]) == 0
    before = tracking.run_data(root, summary["run_id"])
    tiny_params["evaluate"]["min_improvement"] = 0.9  # a stricter bar, later
    set_params(root, tiny_params)
    capsys.readouterr()
    assert evaluate.main(["--root", str(root)]) == evaluate.THRESHOLD_FAILED
    assert "its recorded verdict is kept" in capsys.readouterr().err
    after = tracking.run_data(root, summary["run_id"])
    assert after[2]["threshold_test"] == "passed" and after[1] == before[1]
    failed_run = tracking.run_of_bundle(root, summary["digest"], "evaluate").info.run_id  # the newest evaluation
    assert tracking.run_data(root, failed_run)[2]["threshold_test"] == "failed"
    version = tracking.production_version(root)
    assert version.tags["threshold_test"] == "passed" and version.tags["heldout_backtest_improvement"].count("[") == 1
    evaluation_metrics = tracking.run_data(root, version.tags["evaluation_run_id"])[1]  # the tags say which metric
    assert float(version.tags["heldout_validation_candidate_nwrmsle"]) == pytest.approx(
        evaluation_metrics["heldout_validation_candidate_nwrmsle"], abs=1e-6)
    assert version.tags["heldout_backtest_improvement"].startswith(
        f"{evaluation_metrics['heldout_backtest_improvement']:.6f} [")


def test_returns_and_a_store_opened_inside_the_window_are_scored_as_the_app_serves_them(trained_project, capsys):
    """With prepare.returns: keep, a return in the validation window stopped evaluate (negative actuals); so did
    a store whose first sale fell inside the window, with a hint about the split. A return sold nothing that
    day (as the model's history counts it); the new store's rows are left out, counted and named."""
    import pandas as pd

    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    before = json.loads((root / "results/metrics.json").read_text())
    path = root / "data/split/validation.parquet"
    frame = pd.read_parquet(path)
    zero = frame.index[frame["unit_sales"] == 0][:5]
    assert len(zero) == 5
    frame.loc[zero, "unit_sales"] = -3.0  # returns, kept
    opened = frame[frame["store_nbr"] == frame["store_nbr"].iloc[0]].head(7).assign(store_nbr=99, unit_sales=4.0)
    pd.concat([frame, opened], ignore_index=True).to_parquet(path, index=False)
    capsys.readouterr()
    assert evaluate.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "7 validation row(s) of store(s) [99] not scored: they first sold inside the window" in out
    assert json.loads((root / "results/metrics.json").read_text()) == before
    verdict = json.loads((root / "results/evaluation.json").read_text())
    assert verdict["passed"] and verdict["unscored_validation_rows"] == {"rows": 7, "stores": [99]}


def test_validation_rows_of_no_store_the_candidate_knows_are_one_clear_error(trained_project, capsys):
    """A split made after the candidate (other stores): nothing to score, said in one line naming the file."""
    import pandas as pd

    root, _ = trained_project
    path = root / "data/split/validation.parquet"
    frame = pd.read_parquet(path)
    frame.assign(store_nbr=frame["store_nbr"] + 500).to_parquet(path, index=False)
    assert evaluate.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: no row of a store the candidate was trained on" in err and "Traceback" not in err
    assert not (root / "results/evaluation.json").exists()


def test_an_interrupted_evaluation_leaves_no_verdict_beside_new_scores(trained_project, monkeypatch, capsys):
    """SIGINT after metrics.json was rewritten left the old evaluation.json (passed) beside it, and said no output
    was written. The verdict is removed before the first output and written after the last."""
    from pipeline import promote

    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0 and (root / "results/evaluation.json").exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "_write_plots", interrupted)
    capsys.readouterr()
    assert evaluate.main(["--root", str(root)]) == 130
    assert "interrupted; rerun it" in capsys.readouterr().err
    assert not (root / "results/evaluation.json").exists()
    assert promote.main(["--root", str(root)]) == promote.REFUSED
