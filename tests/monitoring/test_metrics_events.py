"""`make metrics-event` names the model an older evaluation.json judged, from that bundle when it is at hand."""

from __future__ import annotations

import json
import shutil

import pytest

from monitoring import metrics_events
from pipeline.bundle import verify_bundle

METRICS = {"rows": 10, "candidate": {"nwrmsle": 0.5, "rmse": 1.0}, "baseline": {"nwrmsle": 0.6, "rmse": 1.2},
           "improvement_over_baseline": 0.1, "threshold_test_passed": True}


def emitted(tmp_path, monkeypatch, evaluation: dict, candidate) -> dict:
    """The event `python -m monitoring.metrics_events` writes to the local log (no Fluentd configured)."""
    monkeypatch.delenv("FLUENTD_HOST", raising=False)
    log = tmp_path / "monitoring.jsonl"
    log.unlink(missing_ok=True)
    monkeypatch.setenv("SHELFCAST_MONITORING_LOG", str(log))
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation), encoding="utf-8")
    assert metrics_events.main(["--metrics", str(tmp_path / "metrics.json"), "--evaluation",
                                str(tmp_path / "evaluation.json"), "--candidate", str(candidate)]) == 0
    (line,) = log.read_text(encoding="utf-8").splitlines()
    return json.loads(line)


@pytest.fixture
def candidate(tiny_bundle, tmp_path):
    target = tmp_path / "models" / "candidate"
    shutil.copytree(tiny_bundle, target)
    return target


@pytest.mark.parametrize("recorded", [{}, {"bundle_version": "recorded-version"}])
def test_an_evaluation_without_the_bundles_name_takes_it_from_the_bundle_it_judged(candidate, tmp_path, monkeypatch,
                                                                                   recorded):
    """An evaluation.json written before evaluate recorded bundle_name (and, older still, bundle_version) sent
    model_name "unknown"; the candidate bundle whose digest it records carries both in its bundle.json."""
    metadata = json.loads((candidate / "bundle.json").read_text(encoding="utf-8"))
    event = emitted(tmp_path, monkeypatch, {"bundle_digest": verify_bundle(candidate), **recorded}, candidate)
    assert event["model_name"] == metadata["name"] == "shelfcast-forecaster"
    assert event["model_version"] == recorded.get("bundle_version", metadata["version"])


def test_a_bundle_the_evaluation_did_not_judge_names_nothing(candidate, tmp_path, monkeypatch):
    """Retrained since (another digest), absent, or damaged: its name is no fact about that evaluation."""
    other = {"bundle_digest": "0" * 64}
    event = emitted(tmp_path, monkeypatch, other, candidate)
    assert (event["model_name"], event["model_version"]) == ("unknown", "unknown")
    assert emitted(tmp_path, monkeypatch, {}, candidate)["model_name"] == "unknown"  # no digest: nothing to match
    event = emitted(tmp_path, monkeypatch, {"bundle_digest": verify_bundle(candidate)}, tmp_path / "absent")
    assert (event["model_name"], event["model_version"]) == ("unknown", "unknown")
    judged = verify_bundle(candidate)
    with open(candidate / "bundle.json", "a", encoding="utf-8") as handle:
        handle.write(" ")
    assert emitted(tmp_path, monkeypatch, {"bundle_digest": judged}, candidate)["model_name"] == "unknown"


def test_an_evaluation_that_names_its_bundle_is_taken_as_written(candidate, tmp_path, monkeypatch):
    event = emitted(tmp_path, monkeypatch, {"bundle_digest": verify_bundle(candidate), "bundle_name": "acme",
                                            "bundle_version": "mlp-1"}, candidate)
    assert (event["model_name"], event["model_version"]) == ("acme", "mlp-1")
