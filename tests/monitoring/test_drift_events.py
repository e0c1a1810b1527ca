"""Which logged events `python -m monitoring.drift` judges, and how it fails: never with the alarm's exit code."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from monitoring import drift
from monitoring.monitoring_events import ENV_MONITORING_LOG, emit_monitoring_event
from tests.conftest import builtin_drift_thresholds


def run_cli(tmp_path, bundle, events_path, *extra):
    out = tmp_path / "report"
    code = drift.main(["--bundle", str(bundle), "--events", str(events_path),
                       "--params", builtin_drift_thresholds(tmp_path), "--output-dir", str(out), *extra])
    report = json.loads((out / "drift.json").read_text()) if (out / "drift.json").exists() else None
    return code, report


# --- errors exit 2 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10**400])
def test_a_non_finite_feature_is_an_error_naming_the_event_not_an_alarm(stream, jsonl, production_bundle, tmp_path,
                                                                       capsys, value):
    events = stream(300, seed=21)
    events[7]["features"]["dense"]["horizon"] = value
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))  # NaN/Infinity as the app's encoder writes them
    code, report = run_cli(tmp_path, production_bundle, path)
    err = capsys.readouterr().err
    assert code == drift.EXIT_ERROR and report is None
    assert f"drift: error: event 7 (event_id {events[7]['event_id']}): features.dense.horizon: " \
           f"expected a finite number, got {value!r}" in err


@pytest.mark.parametrize("actuals", [False, True])
def test_a_forecast_below_zero_is_an_error_naming_the_event(stream, production_bundle, tmp_path, capsys, actuals):
    """A bundle clips its forecasts at 0. Before, an event of -2 units passed unsaid without --actuals (drift: ok,
    exit 0), and with them stopped on `live NWRMSLE: predicted: 1 negative value(s), first at row 7`: an error
    of the actuals, naming a row of neither file."""
    events = stream(300, seed=21)
    events[7]["output"]["unit_sales"] = -2.0
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    extra = []
    if actuals:
        rows = {(e["inputs"]["store_nbr"], e["inputs"]["item_nbr"], e["inputs"]["date"]) for e in events}
        (tmp_path / "sales.csv").write_text("store_nbr,item_nbr,date,unit_sales\n"
                                            + "".join(f"{s},{i},{d},1\n" for s, i, d in sorted(rows)))
        extra = ["--actuals", str(tmp_path / "sales.csv")]
    code, report = run_cli(tmp_path, production_bundle, path, *extra)
    err = capsys.readouterr().err
    assert code == drift.EXIT_ERROR and report is None, err
    assert f"drift: error: event 7 (event_id {events[7]['event_id']}): output: expected units of at least 0 " \
           "(a bundle's forecast is clipped at 0), got -2.0" in err, err


def test_an_unexpected_failure_exits_2_with_a_drift_error_line(stream, jsonl, production_bundle, tmp_path, capsys,
                                                               monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the analysis")

    monkeypatch.setattr(drift, "analyse", broken)
    code, _ = run_cli(tmp_path, production_bundle, jsonl(tmp_path / "p.jsonl", stream(150, seed=22)))
    assert code == drift.EXIT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == "drift: error: unexpected RuntimeError: a bug in the analysis"


# --- only the bundle's own events are judged -------------------------------------------------------------------

def other_model(events, version, digest, variant="production", drop_feature=None):
    """Events as another model version logged them (another feature recipe when `drop_feature` is given)."""
    for event in events:
        event.update(model_version=version, model_digest=digest, model_variant=variant)
        if drop_feature:
            del event["features"]["dense"][drop_feature]
    return events


def test_events_of_other_model_versions_are_set_aside_and_named(stream, jsonl, production_bundle, bundle_parts,
                                                                tmp_path, capsys):
    metadata, _ = bundle_parts
    previous = other_model(stream(400, seed=23), "mlp-previous", "e" * 64, drop_feature="mean_log1p_7d")
    canary = other_model(stream(60, seed=24), "mlp-canary", "c" * 64, variant="canary")
    ours = stream(300, seed=25)
    legacy = stream(40, seed=26)  # logged before events carried model_digest: named by name and version
    for event in legacy:
        del event["model_digest"]
    legacy_other = other_model(stream(30, seed=27), "mlp-older", None)
    for event in legacy_other:
        del event["model_digest"]
    code, report = run_cli(tmp_path, production_bundle,
                           jsonl(tmp_path / "p.jsonl", previous + legacy_other + legacy + ours + canary))
    assert code == drift.EXIT_OK and report["events"] == 340
    assert report["served_model_versions"] == {metadata["version"]: 340}
    assert report["set_aside"]["by_model"] == {"production mlp-previous": 400, "canary mlp-canary": 60,
                                               "production mlp-older": 30}
    assert report["set_aside"]["events"] == 490
    assert "drift: ok: 340 events" in capsys.readouterr().out
    html = (tmp_path / "report" / "drift.html").read_text()
    assert "490 events set aside" in html and "canary mlp-canary (60)" in html


def test_the_same_version_from_another_bundle_is_set_aside_with_its_digest(stream, jsonl, production_bundle,
                                                                           bundle_parts, tmp_path, capsys):
    metadata, _ = bundle_parts
    rolled = other_model(stream(50, seed=28), metadata["version"], "ab" * 32)  # e.g. before a roll-forward
    code, report = run_cli(tmp_path, production_bundle, jsonl(tmp_path / "p.jsonl", rolled + stream(200, seed=29)))
    assert report["events"] == 200
    label = f"production {metadata['version']} (bundle {'ab' * 6})"
    assert report["set_aside"]["by_model"] == {label: 50}
    assert f"50 event(s) of other models set aside ({label}: 50)" in capsys.readouterr().out


def test_an_event_naming_no_model_is_set_aside_as_such_not_as_another_version(stream, jsonl, production_bundle,
                                                                             tmp_path):
    nameless = [{}, {"model_variant": "production", "inputs": {}}]
    code, report = run_cli(tmp_path, production_bundle, jsonl(tmp_path / "p.jsonl", nameless + stream(200, seed=29)))
    assert report["events"] == 200 and report["set_aside"]["by_model"] == {drift.NO_MODEL_NAMED: 2}


def test_too_few_events_of_the_bundle_give_no_verdict_and_say_why(stream, jsonl, production_bundle, tmp_path, capsys):
    previous = other_model(stream(500, seed=30), "mlp-previous", "e" * 64)
    code, report = run_cli(tmp_path, production_bundle, jsonl(tmp_path / "p.jsonl", previous + stream(1, seed=31)))
    assert code == drift.EXIT_OK and report["status"] == "insufficient_data" and report["events"] == 1
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("drift: no verdict: 1 event is too few")
    assert "500 event(s) of other models set aside (production mlp-previous: 500)" in line


# --- --since ---------------------------------------------------------------------------------------------------

def test_since_compares_instants_whatever_the_offset(stream, jsonl, production_bundle, tmp_path, capsys):
    events = stream(300, seed=32)  # one a second from 2017-08-01T00:00:00+00:00
    cet = dt.timezone(dt.timedelta(hours=2))
    for event in events[::2]:  # some senders stamp local time: the same instants, another offset
        event["timestamp"] = dt.datetime.fromisoformat(event["timestamp"]).astimezone(cet).isoformat()
    path = jsonl(tmp_path / "p.jsonl", events)
    for since, expected in [("2017-08-01T02:02:00+02:00", 180), ("2017-07-31T19:04:10-05:00", 50),
                            ("2017-08-01T00:02:00", 180), ("2017-08-01T00:02:00Z", 180), ("2017-08-01", 300)]:
        code, report = run_cli(tmp_path, production_bundle, path, "--since", since)
        assert report["events"] == expected, since
    assert report["window"]["first"] == events[0]["timestamp"]


def test_an_unreadable_since_is_rejected_naming_it(stream, jsonl, production_bundle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(tmp_path, production_bundle, jsonl(tmp_path / "p.jsonl", stream(10, seed=33)), "--since", "yesterday")
    assert exit_.value.code == drift.EXIT_ERROR
    assert "--since: expected an ISO-8601 time" in capsys.readouterr().err


# --- --events DIR ----------------------------------------------------------------------------------------------

def test_a_logs_directory_gives_the_prediction_events_only(stream, jsonl, production_bundle, tmp_path, capsys):
    logs = tmp_path / "logs"
    jsonl(logs / "predictions.jsonl", stream(200, seed=34))
    jsonl(logs / "spool" / "00000000000000000001-7-0.jsonl", stream(30, seed=35))  # on its way to Fluentd
    emit_monitoring_event(drift.DRIFT_TAG, {"kind": "drift", "drift": {"status": "ok"}}, environ={
        ENV_MONITORING_LOG: str(logs / "monitoring.jsonl")})
    code, report = run_cli(tmp_path, production_bundle, logs)
    assert code == drift.EXIT_OK and report["events"] == 200
    assert report["set_aside"]["not_predictions"] == {drift.DRIFT_TAG: 1}
    assert "1 record(s) that are not prediction events skipped (shelfcast.drift: 1)" in capsys.readouterr().out


@pytest.mark.parametrize("why", ["unwritable log", "malformed FLUENTD_HOST"])
@pytest.mark.parametrize("shifted", [True, False], ids=["alarm", "no alarm"])
def test_a_summary_that_cannot_be_sent_hides_no_alarm(stream, jsonl, production_bundle, tmp_path, capsys, monkeypatch,
                                                      shifted, why):
    """Found by the monitoring probe: --emit sent the summary before the reasons were printed, so with Fluentd
    unset and the monitoring log unwritable an alarm exited 2, with no reason shown. A malformed FLUENTD_HOST
    (a port in it) is named the same way."""
    if why == "unwritable log":
        monkeypatch.delenv("FLUENTD_HOST", raising=False)
        (tmp_path / "a_file").write_text("")
        monkeypatch.setenv(ENV_MONITORING_LOG, str(tmp_path / "a_file" / "monitoring.jsonl"))  # under a file
    else:
        monkeypatch.setenv("FLUENTD_HOST", "fluentd:24224")
        monkeypatch.setenv(ENV_MONITORING_LOG, str(tmp_path / "monitoring.jsonl"))
    shift = (lambda d, c, p: p.__imul__(3)) if shifted else None
    code, report = run_cli(tmp_path, production_bundle, jsonl(tmp_path / "p.jsonl", stream(400, seed=40, shift=shift)),
                           "--emit")
    captured = capsys.readouterr()
    assert report["alarm"] is shifted
    assert code == (drift.EXIT_ALARM if shifted else drift.EXIT_ERROR), captured
    assert captured.out.splitlines()[-1].startswith("drift: ALARM" if shifted else "drift: ok"), captured.out
    assert f"drift: error: the {drift.DRIFT_TAG} summary could not be sent or logged" in captured.err


@pytest.mark.parametrize("environ", [{"FLUENTD_HOST": "fluentd:24224"},
                                     {"FLUENTD_HOST": "fluentd", "FLUENTD_PORT": "x"}])
def test_metrics_event_names_a_malformed_fluentd_setting_in_one_line(tmp_path, capsys, monkeypatch, environ):
    """`make metrics-event` with a malformed FLUENTD_* setting ended in a ValueError traceback."""
    from monitoring import metrics_events

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"rows": 10, "candidate": {"nwrmsle": 0.5, "rmse": 1.0},
                                   "baseline": {"nwrmsle": 0.6, "rmse": 1.2}, "improvement_over_baseline": 0.1,
                                   "threshold_test_passed": True}))
    code = metrics_events.main(["--metrics", str(metrics), "--evaluation", str(tmp_path / "none.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("metrics-event: error: FLUENTD_"), err
