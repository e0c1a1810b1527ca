"""``--quiet`` (no progress bars, no step lines) holds for train and evaluate as for every stage: one summary line.

Before, both stages ignored it: ``python -m pipeline.train --quiet`` printed its progress bars and step lines.
"""

from __future__ import annotations

import re

from pipeline import evaluate, train


def test_train_quiet_prints_its_summary_line_only(tiny_project, tiny_params, set_params, capsys):
    tiny_params["train"]["max_steps"] = 40
    set_params(tiny_project, tiny_params)
    assert train.main(["--root", str(tiny_project), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert re.fullmatch(r"train: mlp best step \d+/40, inner-validation NWRMSLE .+ MLflow run \w+ in [\d.]+ s\n",
                        captured.out), captured.out


def test_evaluate_quiet_prints_its_summary_line_only(trained_project, capsys):
    root, _ = trained_project
    status = evaluate.main(["--root", str(root), "--quiet"])
    captured = capsys.readouterr()
    summary = captured.out if status == 0 else captured.err.splitlines(keepends=True)[0]
    assert summary.startswith("evaluate: 1 window(s),") and summary.count("\n") == 1
    assert captured.out == (summary if status == 0 else "")
    if status != 0:  # the threshold test's report, nothing else
        assert all(line.startswith(("evaluate: THRESHOLD", "  - ")) for line in captured.err.splitlines()[1:])
