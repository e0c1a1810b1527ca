"""benchmarks/drift_replay.py, the command behind the README's live-accuracy figures, on the tiny project."""

from __future__ import annotations

from tests.monitoring.conftest import DRIFT_REPLAY


def test_the_replay_scores_every_request_and_the_faults_move_live_accuracy(tiny_bundle, tmp_path, capsys):
    assert DRIFT_REPLAY.main(["--project", str(tiny_bundle.parents[1]), "--bundle", str(tiny_bundle),
                              "--requests", "400", "--out", str(tmp_path)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "case" not in line}
    assert list(rows) == ["as served", "every forecast 3 units", "every forecast x1.6", "actual sales doubled"]
    case, requests, series, nwrmsle, baseline, ratio, alarmed = rows["as served"]
    assert requests == "400"  # every request scored: a day without a row counts as nothing sold
    assert alarmed == "no"  # honest traffic of the bundle's own window
    three = rows["every forecast 3 units"]
    assert float(three[3]) > float(nwrmsle) and three[4] == baseline and three[6] == "yes"
    doubled = rows["actual sales doubled"]
    assert float(doubled[4]) > float(baseline)  # the baseline misses doubled sales too
