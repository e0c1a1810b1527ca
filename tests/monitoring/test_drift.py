"""`python -m monitoring.drift` on request streams drawn from a real bundle's training statistics."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from monitoring import drift
from monitoring.drift_analysis import analyse
from monitoring.drift_params import DriftParams, DriftParamsError, load_drift_params

STREAM_EVENTS = 1500


def promotion_everywhere(dense, categorical, predictions):
    dense["target_onpromotion"][:] = 1.0


def unseen_stores(dense, categorical, predictions):
    categorical["store_nbr"][: predictions.size // 5] = 0  # a store the model never saw, one request in five


def inflated_forecasts(dense, categorical, predictions):
    predictions *= 4.0


def run_cli(tmp_path, bundle, events_path, *extra):
    out = tmp_path / "report"
    code = drift.main(["--bundle", str(bundle), "--events", str(events_path), "--params", str(tmp_path / "none.yaml"),
                       "--output-dir", str(out), *extra])
    return code, json.loads((out / "drift.json").read_text()), (out / "drift.html").read_text()


def test_an_unshifted_stream_raises_no_alarm(bundle_parts, stream, jsonl, production_bundle, tmp_path, capsys):
    metadata, stats = bundle_parts
    events = jsonl(tmp_path / "predictions.jsonl", stream(STREAM_EVENTS, seed=1))
    code, report, html = run_cli(tmp_path, production_bundle, events)
    assert code == 0, report["reasons"]
    assert report["status"] == "ok" and not report["alarm"] and report["events"] == STREAM_EVENTS
    assert max(r["psi"] for r in report["features"].values()) < 0.1
    assert report["unseen"]["any"] == 0.0
    assert "No drift above the thresholds" in html and "<svg" in html
    assert "drift: ok" in capsys.readouterr().out


@pytest.mark.parametrize("shift, expected_reason", [
    (promotion_everywhere, r"feature target_onpromotion: PSI"),
    (unseen_stores, r"category store_nbr: 20\.0% of requests have a value unseen in training"),
    (inflated_forecasts, r"predictions: PSI"),
])
def test_a_shifted_stream_raises_the_alarm(bundle_parts, stream, jsonl, production_bundle, tmp_path, shift, expected_reason):
    metadata, stats = bundle_parts
    events = jsonl(tmp_path / "predictions.jsonl", stream(STREAM_EVENTS, seed=2, shift=shift))
    code, report, html = run_cli(tmp_path, production_bundle, events)
    assert code == drift.EXIT_ALARM
    assert report["alarm"] and report["status"] == "drift"
    assert any(re.search(expected_reason, reason) for reason in report["reasons"]), report["reasons"]
    assert "Drift alarm" in html


def test_live_nwrmsle_uses_supplied_actuals(bundle_parts, stream, jsonl, tmp_path):
    metadata, stats = bundle_parts
    events = stream(300, seed=3)
    for i, event in enumerate(events):
        event["inputs"]["date"] = f"2017-08-{1 + i % 16:02d}"
    keys = [(str(e["inputs"]["store_nbr"]), str(e["inputs"]["item_nbr"]), e["inputs"]["date"]) for e in events]
    exact = {key: e["output"]["unit_sales"] for key, e in zip(keys, events)}
    for key, event in zip(keys, events):  # repeated requests of one store/item/day get one forecast
        event["output"]["unit_sales"] = exact[key]
    assert analyse(events, metadata, stats, DriftParams(), exact)["live"]["nwrmsle"] == pytest.approx(0.0, abs=1e-12)
    far = {key: units * 20 + 50 for key, units in exact.items()}
    report = analyse(events, metadata, stats, DriftParams(), far)
    assert report["live"]["rows"] == len(events) and report["live"]["nwrmsle"] > 0.9
    assert any(reason.startswith("live NWRMSLE") for reason in report["reasons"]) and report["alarm"]


def test_actuals_csv_is_read_and_checked(bundle_parts, stream, jsonl, production_bundle, tmp_path):
    metadata, stats = bundle_parts
    events = stream(200, seed=4)
    path = jsonl(tmp_path / "predictions.jsonl", events)
    rows = ["store_nbr,item_nbr,date,unit_sales"] + [
        f"{e['inputs']['store_nbr']},{e['inputs']['item_nbr']},{e['inputs']['date']},{e['output']['unit_sales']}"
        for e in events]
    (tmp_path / "actuals.csv").write_text("\n".join(rows) + "\n")
    code, report, html = run_cli(tmp_path, production_bundle, path, "--actuals", str(tmp_path / "actuals.csv"))
    assert report["live"]["rows"] > 0 and "Live accuracy" in html
    (tmp_path / "bad.csv").write_text("store_nbr,item_nbr,date,unit_sales\n1,2,2017-08-01,-3\n")
    assert drift.main(["--bundle", str(production_bundle), "--events", str(path), "--actuals",
                       str(tmp_path / "bad.csv"), "--output-dir", str(tmp_path / "r2")]) == drift.EXIT_ERROR


def test_too_few_events_give_no_verdict(bundle_parts, stream, jsonl, production_bundle, tmp_path):
    metadata, stats = bundle_parts
    events = jsonl(tmp_path / "p.jsonl", stream(20, seed=5, shift=promotion_everywhere))
    code, report, _ = run_cli(tmp_path, production_bundle, events)
    assert code == 0 and report["status"] == "insufficient_data" and not report["alarm"]


def test_bad_inputs_exit_2_with_a_message_naming_the_problem(bundle_parts, stream, jsonl, production_bundle, tmp_path, capsys):
    metadata, stats = bundle_parts
    events = stream(5, seed=6)
    del events[3]["features"]["dense"]["horizon"]
    path = jsonl(tmp_path / "p.jsonl", events)
    assert drift.main(["--bundle", str(production_bundle), "--events", str(path),
                       "--output-dir", str(tmp_path / "r")]) == drift.EXIT_ERROR
    assert "event 3" in capsys.readouterr().err
    (tmp_path / "garbage.jsonl").write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    assert drift.main(["--bundle", str(production_bundle), "--events", str(tmp_path / "garbage.jsonl")]) == 2
    assert "garbage.jsonl: line 2" in capsys.readouterr().err
    (production_bundle / "training_stats.json").write_text("{}")
    assert drift.main(["--bundle", str(production_bundle), "--events", str(path)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_a_torn_last_line_is_skipped(bundle_parts, stream, jsonl, production_bundle, tmp_path):
    metadata, stats = bundle_parts
    path = jsonl(tmp_path / "p.jsonl", stream(150, seed=7))
    with open(path, "a") as handle:
        handle.write('{"event_id": "half')
    code, report, _ = run_cli(tmp_path, production_bundle, path)
    assert code == 0 and report["events"] == 150


def test_drift_params_come_from_params_yaml(tmp_path):
    assert load_drift_params(tmp_path / "absent.yaml") == DriftParams()
    (tmp_path / "params.yaml").write_text("train: {seed: 1}\ndrift:\n  psi_alert: 0.5\n  min_events: 10\n")
    assert load_drift_params(tmp_path / "params.yaml").psi_alert == 0.5
    (tmp_path / "params.yaml").write_text("drift:\n  psi_alert: -1\n")
    with pytest.raises(DriftParamsError, match="drift.psi_alert"):
        load_drift_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("drift:\n  psi_alrt: 1\n")
    with pytest.raises(DriftParamsError, match="drift.psi_alrt: unknown"):
        load_drift_params(tmp_path / "params.yaml")


def test_the_repository_params_yaml_has_valid_drift_thresholds(repo_root):
    params = load_drift_params(repo_root / "params.yaml")
    assert 0 < params.p_value_alert < 1 and params.psi_alert > 0
