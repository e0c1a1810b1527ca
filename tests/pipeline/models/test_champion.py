"""Champion/challenger: promote refuses a candidate worse than production with confidence, whatever the baseline says.

The probe that found it: after an MLP was promoted, a worse model (a linear one on the default data) still beat
the weekday baseline, passed evaluate's threshold test and was promoted. Here the worse model is a 5-step MLP with
a shorter history (28 days, so production and candidate also differ in their feature specs): it beats the baseline
with confidence on the tiny data and is worse than the trained MLP with confidence.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import champion, evaluate, promote, tracking, train
from pipeline.bundle import load_bundle, verify_bundle
from pipeline.model_params import evaluate_params, promote_params
from pipeline.params import ParamsError, load_yaml

from .conftest import write_tiny_project

NAME = "shelfcast-forecaster"
NO_PRODUCTION_LINE = ("promote: no 'production' version of shelfcast-forecaster yet: nothing to compare the "
                      "candidate with; the threshold test against the baseline decides")


def weak(params: dict) -> dict:
    """A recipe that passes the baseline gate on the tiny data yet is worse than the trained MLP."""
    params["train"].update(max_steps=5, eval_every_steps=5)
    params["features"].update(history_days=28, mean_windows=[3, 7, 14, 28], dow_weeks=[4])
    return params


def champion_tags(tags: dict) -> dict:
    return {key: value for key, value in tags.items() if key.startswith(champion.TAG)}


def evaluated(root) -> dict:
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    return json.loads((root / evaluate.EVALUATION_FILE).read_text(encoding="utf-8"))


def test_a_candidate_worse_than_production_is_refused_though_it_beats_the_baseline(trained_project, tiny_params,
                                                                                   set_params, capsys, monkeypatch):
    root, _ = trained_project
    evaluated(root)
    assert promote.main(["--root", str(root), "--quiet"]) == 0
    installed = verify_bundle(root / "models/production")
    set_params(root, weak(tiny_params))
    worse = train.run(root, quiet=True)
    assert evaluated(root)["passed"]  # better than the baseline with confidence: the old gate let it through
    capsys.readouterr()
    assert promote.main(["--root", str(root), "--quiet"]) == promote.WORSE_THAN_PRODUCTION
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("promote: refused: promote.max_regression: candidate NWRMSLE ")
    assert "vs 'production' version 1's " in err and "nothing registered or installed" in err
    # evaluate's words (pipeline/metrics.py improvement_words): an amount beside "worse", no signed interval
    assert "% worse [" in err and "interval over" in err and ": the candidate is worse than production with " in err
    assert len(tracking.client(root).search_model_versions(f"name='{NAME}'")) == 1
    assert str(tracking.production_version(root).version) == "1"
    assert verify_bundle(root / "models/production") == installed
    tags = tracking.client(root).get_run(worse["run_id"]).data.tags  # the refusal is on the run (found by a probe:
    assert tags[champion.TAG] == champion.REFUSED  # it was on stdout only) and nowhere in the registry
    assert tags[f"{champion.TAG}_production_version"] == "1" and f"{champion.TAG}_improvement" in tags
    assert tags[f"{champion.TAG}_note"] == err.strip().removeprefix("promote: refused: ")

    def tracking_down(*args, **kwargs):
        raise MlflowException("API request to http://127.0.0.1:5000 failed: connection refused")

    with monkeypatch.context() as patch:  # MLflow failing just then: the refusal is still what promote says
        patch.setattr(MlflowClient, "set_tag", tracking_down)
        assert promote.main(["--root", str(root), "--quiet"]) == promote.WORSE_THAN_PRODUCTION
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("promote: note: the refusal is not recorded on the training run ") and \
        "(MlflowException: API request to http://127.0.0.1:5000 failed" in lines[0]
    assert len(lines) == 2 and lines[1] == err.strip()
    tiny_params["promote"]["max_regression"] = 0.5  # a deliberate step back: allowed up to 50 % worse
    set_params(root, tiny_params)
    assert promote.run(root, quiet=True)["champion_challenger"]["status"] == champion.COMPARED
    assert str(tracking.production_version(root).version) == "2"
    promoted_on = champion_tags(tracking.client(root).get_run(worse["run_id"]).data.tags)
    assert promoted_on[champion.TAG] == champion.COMPARED
    tiny_params["promote"]["max_regression"] = 0.0  # production back to version 1, then version 2's candidate again
    set_params(root, tiny_params)
    tracking.client(root).set_registered_model_alias(NAME, "production", "1")
    capsys.readouterr()
    assert promote.main(["--root", str(root), "--quiet"]) == promote.WORSE_THAN_PRODUCTION
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("promote: ")]  # not MLflow's
    assert len(lines) == 2 and lines[-1].startswith("promote: refused: promote.max_regression: "), lines
    assert lines[0] == (f"promote: note: the refusal is not recorded on the training run {worse['run_id']}: "
                        "version 2 was registered from it, and its record is the comparison it was promoted on")
    # found by a probe: the refusal overwrote the comparison a registered version's run was promoted on
    assert champion_tags(tracking.client(root).get_run(worse["run_id"]).data.tags) == promoted_on


def test_a_better_candidate_passes_and_the_comparison_is_recorded(trained_project, tiny_params, set_params,
                                                                  tmp_path, capsys, monkeypatch):
    root, summary = trained_project
    fetched = []
    download = champion.registry_fetch.download_version
    monkeypatch.setattr(champion.registry_fetch, "download_version",
                        lambda *args: fetched.append(str(args[1].version)) or download(*args))
    better = shutil.copytree(root / "models/candidate", tmp_path / "better")
    set_params(root, weak(json.loads(json.dumps(tiny_params))))
    train.run(root, quiet=True)
    evaluated(root)
    promote.run(root, quiet=True)  # the weak model is production (version 1)
    shutil.rmtree(root / "models/production")  # not installed on this host: scored from the registry's copy
    set_params(root, tiny_params)
    shutil.rmtree(root / "models/candidate")
    shutil.copytree(better, root / "models/candidate")
    evaluation = evaluated(root)
    capsys.readouterr()
    result = promote.run(root)["champion_challenger"]
    out = capsys.readouterr().out
    # both models forecast the validation window (minutes at Favorita's size): said before, not only after
    started = "promote: scoring the candidate against 'production' version 1 on the candidate's validation window"
    assert started in out and out.index(started) < out.index("promote: champion/challenger passed: candidate NWRMSLE")
    assert result["status"] == champion.COMPARED and result["production_version"] == "1" and fetched == ["1"]
    assert result["candidate_nwrmsle"] == evaluation["candidate_nwrmsle"]  # the serving path evaluate scored
    assert result["candidate_nwrmsle"] < result["production_nwrmsle"] and result["interval"]["high"] > 0
    assert "(28 days)" in result["production_snapshot"]  # production's own spec, at the candidate's origin
    version = tracking.production_version(root)
    assert str(version.version) == "2"
    run_tags = tracking.client(root).get_run(summary["run_id"]).data.tags
    for tags in (version.tags, run_tags):
        assert tags[champion.TAG] == champion.COMPARED and tags[f"{champion.TAG}_production_version"] == "1"
        assert float(tags[f"{champion.TAG}_production_nwrmsle"]) == round(result["production_nwrmsle"], 6)
        assert tags[f"{champion.TAG}_improvement"].startswith(f"{result['interval']['estimate']:.6f} [")

    # promote again (`make run` promotes on every run): nothing to compare, and the comparison version 2 was
    # promoted on stays its record (found by a probe: it became "already production" beside the old figures)
    assert promote.run(root, quiet=True)["champion_challenger"]["status"] == champion.SAME_BUNDLE
    assert champion_tags(tracking.production_version(root).tags) == champion_tags(version.tags)
    assert champion_tags(tracking.client(root).get_run(summary["run_id"]).data.tags) == champion_tags(run_tags)


def test_without_a_production_model_the_rule_is_skipped_with_a_line(trained_project, capsys):
    root, _ = trained_project
    evaluated(root)
    capsys.readouterr()
    assert promote.main(["--root", str(root), "--quiet"]) == 0
    assert NO_PRODUCTION_LINE in capsys.readouterr().out.splitlines()
    assert tracking.production_version(root).tags[champion.TAG] == champion.NO_PRODUCTION
    promoted_on = champion_tags(tracking.production_version(root).tags)
    again = promote.run(root, quiet=True)["champion_challenger"]  # the same bundle: nothing to compare
    assert again["status"] == champion.SAME_BUNDLE and again["production_version"] == "1"
    version = tracking.production_version(root)  # the verdict it was promoted on is kept, on the run too
    assert champion_tags(version.tags) == promoted_on
    assert champion_tags(tracking.client(root).get_run(version.run_id).data.tags) == promoted_on


def test_production_on_another_origin_is_scored_from_the_current_history(trained_project):
    """The installed production is rolled forward to the last day of the data: its snapshot cannot forecast the
    candidate's window, so it is given one at the candidate's origin. Same graph and weights: the same scores."""
    root, _ = trained_project
    evaluation = evaluated(root)
    promote.run(root, quiet=True)
    candidate, production = load_bundle(root / "models/candidate"), load_bundle(root / "models/production")
    assert production.snapshot.origin_day > candidate.snapshot.origin_day
    eparams = evaluate_params(load_yaml(root / "params.yaml"))
    for other, whose in ((production, "the current history at the candidate's origin (56 days)"),
                         (candidate, "its own snapshot")):
        cand, prod, interval, rows, how = champion.compare(root, candidate, other, eparams, 4)
        assert cand == prod == evaluation["candidate_nwrmsle"] and interval.estimate == 0.0
        assert how == whose and rows == 757


def test_a_production_model_that_cannot_be_scored_is_said_and_the_baseline_gate_decides(trained_project, capsys):
    """A version registered by hand (the UI, a script) has no serving bundle promote made: it cannot be fetched."""
    root, summary = trained_project
    client = tracking.client(root)
    client.create_registered_model(NAME)
    by_hand = client.create_model_version(NAME, f"runs:/{summary['run_id']}/bundle", run_id=summary["run_id"])
    client.set_registered_model_alias(NAME, "production", by_hand.version)
    evaluated(root)
    capsys.readouterr()
    result = promote.run(root)["champion_challenger"]
    out = capsys.readouterr().out
    assert result["status"] == champion.UNSCORABLE and result["interval"] is None
    assert ("promote: 'production' version 1 cannot be scored on the candidate's validation window (version 1 has "
            "no serving_digest tag: registered by hand, not by pipeline.promote, it has no serving bundle to fetch); "
            "the threshold test against the baseline decides\n") in out
    assert str(tracking.production_version(root).version) == "2"


def test_max_regression_is_a_non_negative_number(tiny_params):
    tiny_params["promote"]["max_regression"] = 0.02
    assert promote_params(tiny_params).max_regression == 0.02
    tiny_params["promote"]["max_regression"] = -0.1
    with pytest.raises(ParamsError, match=r"promote.max_regression: must be >= 0.0, got -0.1"):
        promote_params(tiny_params)


def test_production_with_a_history_shorter_than_the_baseline_is_still_compared(trained_project, tiny_params,
                                                                              set_params):
    """Production trained on 28 days of history; the candidate's recipe has an 8-week baseline (56 days). The
    champion/challenger rule compares the two models only: production's baseline is never used, and computing it
    (8 weeks out of 28 days) crashed promote with a ValueError."""
    root, _ = trained_project
    recipe = json.loads(json.dumps(tiny_params))
    set_params(root, weak(tiny_params))
    train.run(root, quiet=True)
    evaluated(root)
    promote.run(root, quiet=True)
    assert load_bundle(root / "models/production").spec.history_days == 28
    recipe["train"]["baseline_weeks"] = 8  # 56 days: the candidate's whole history
    set_params(root, recipe)
    train.run(root, quiet=True)
    evaluated(root)
    result = promote.run(root, quiet=True)["champion_challenger"]
    assert result["status"] == champion.COMPARED and result["production_version"] == "1"


def test_production_trained_on_days_of_the_candidates_window_is_compared_only_after_them(trained_project,
                                                                                         tiny_params, set_params):
    """Production trained with split.validation_days 8 has seen the first 8 days of a 16-day validation window:
    scored there it looked better than it was. The comparison keeps the days neither model was fitted on."""
    root, _ = trained_project
    write_tiny_project(root, validation_days=8)
    tiny_params["split"]["validation_days"] = 8
    set_params(root, tiny_params)
    train.run(root, quiet=True)
    evaluated(root)
    promote.run(root, quiet=True)
    trained_through = load_bundle(root / "models/production").metadata["evaluated_forecast_origin"]
    write_tiny_project(root, validation_days=16)
    tiny_params["split"]["validation_days"] = 16
    set_params(root, tiny_params)
    train.run(root, quiet=True)
    evaluated(root)
    validation = pd.read_parquet(root / "data/split/validation.parquet")
    unseen = int((validation["date"] > pd.Timestamp(trained_through)).sum())
    assert 0 < unseen < len(validation)
    result = promote.run(root, quiet=True)["champion_challenger"]
    assert result["status"] == champion.COMPARED and result["rows"] == unseen
    assert f"on the days after its training data (which ends on {trained_through})" in result["note"]


def test_production_with_a_shorter_horizon_is_compared_on_the_days_it_forecasts(trained_project, tiny_params,
                                                                                set_params, tmp_path):
    """Production trained with features.horizon 8, the candidate's window 16 days: the comparison was abandoned
    (a window past its horizon: unscorable, the baseline gate alone decided), though production forecasts the
    window's first 8 days. Both are compared on those."""
    root, _ = trained_project
    short = json.loads(json.dumps(tiny_params))
    short["features"]["horizon"] = short["split"]["validation_days"] = 8
    set_params(root, short)
    train.run(root, quiet=True)
    shutil.copytree(root / "models/candidate", tmp_path / "production")
    production = load_bundle(tmp_path / "production")
    set_params(root, tiny_params)
    candidate = load_bundle(root / "models/candidate")  # the template's, trained with horizon 16
    assert production.snapshot.origin_day == candidate.snapshot.origin_day and production.spec.horizon == 8
    validation = pd.read_parquet(root / "data/split/validation.parquet")
    last = pd.Timestamp(str(np.datetime64(int(candidate.snapshot.origin_day) + 8, "D")))
    within = int((validation["date"] <= last).sum())
    assert 0 < within < len(validation)
    eparams = evaluate_params(tiny_params)
    cand, prod, interval, rows, how = champion.compare(root, candidate, production, eparams, 4)
    assert rows == within and interval.series > 0
    assert how == f"its own snapshot, on the days within its 8-day horizon (to {last.date()})"
