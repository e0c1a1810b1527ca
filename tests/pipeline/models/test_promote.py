"""promote: only an evaluated, passing, unchanged candidate; registry alias + models/production; idempotent."""

from __future__ import annotations

import subprocess

import pytest

from pipeline import evaluate, promote, tracking, train
import numpy as np
import pandas as pd

from pipeline.bundle import load_bundle, verify_bundle


def test_a_passing_candidate_is_promoted_once(trained_project, capsys):
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    assert promote.main(["--root", str(root)]) == 0
    assert "newly registered" in capsys.readouterr().out
    version = tracking.production_version(root)
    assert str(version.version) == "1" and version.tags["bundle_digest"] == summary["digest"]
    assert version.run_id == summary["run_id"]
    production = load_bundle(root / "models/production")
    assert production.metadata["source_bundle_digest"] == summary["digest"]
    again = promote.run(root, quiet=True)  # harmless to repeat
    assert not again["registered"] and not again["installed"] and again["version"] == "1"
    assert len(tracking.client(root).search_model_versions("name='shelfcast-forecaster'")) == 1


def test_production_forecasts_the_days_after_the_data_with_the_evaluated_model(trained_project):
    """Same graph and weights as the evaluated candidate; history rolled forward to the last known day."""
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    promote.run(root, quiet=True)
    candidate, production = load_bundle(root / "models/candidate"), load_bundle(root / "models/production")
    for name in ("graph.json", "weights.npz"):
        assert (root / "models/candidate" / name).read_bytes() == (root / "models/production" / name).read_bytes()
    last_day = pd.read_parquet(root / "data/split/validation.parquet", columns=["date"])["date"].max()
    first, last = production.metadata["horizon_dates"]
    assert np.datetime64(first) == np.datetime64(last_day.date()) + 1
    assert np.datetime64(last) - np.datetime64(first) == production.spec.horizon - 1
    assert production.metadata["evaluated_horizon_dates"] == candidate.metadata["horizon_dates"]
    assert np.datetime64(candidate.metadata["horizon_dates"][1]) == np.datetime64(last_day.date())
    assert verify_bundle(root / "models/production") != summary["digest"]  # its own checksums, new history
    store, item = int(production.snapshot.store_nbr[0]), int(production.snapshot.item_nbr[0])
    forecast = production.predict([store], [item], [first], [False])
    assert forecast.shape == (1,) and np.isfinite(forecast).all() and forecast[0] >= 0


def test_a_deliberately_broken_model_is_refused(trained_project, tiny_params, set_params, capsys):
    """An untrained model (learning rate ~0: weights stay at their random init) fails evaluation; promote refuses."""
    root, _ = trained_project
    tiny_params["train"].update(learning_rate=1e-9, max_steps=1, eval_every_steps=1)
    tiny_params["evaluate"]["min_improvement"] = 0.0
    set_params(root, tiny_params)
    train.run(root, quiet=True)
    assert evaluate.main(["--root", str(root)]) == evaluate.THRESHOLD_FAILED
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    err = capsys.readouterr().err
    assert "refused: the candidate failed its evaluation: evaluate.min_improvement" in err  # worse than the baseline
    assert tracking.production_version(root) is None and not (root / "models/production").exists()


def test_a_candidate_changed_after_evaluation_is_refused(trained_project, capsys):
    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    with open(root / "models/candidate/training_stats.json", "a") as handle:
        handle.write(" ")
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "the candidate bundle cannot be trusted" in capsys.readouterr().err


def test_changed_params_or_data_since_evaluation_are_refused(trained_project, tiny_params, set_params, capsys):
    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    tiny_params["evaluate"]["plot_rows"] = 300
    set_params(root, tiny_params)
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "the params (features, train, evaluate) changed since the evaluation" in capsys.readouterr().err
    tiny_params["evaluate"]["plot_rows"] = 200
    set_params(root, tiny_params)
    with open(root / "data/prepared/holidays.parquet", "ab") as handle:
        handle.write(b"\0")
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "the data changed since the evaluation" in capsys.readouterr().err


def test_no_evaluation_no_promotion(trained_project, capsys):
    root, _ = trained_project
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "no evaluation found" in capsys.readouterr().err


def test_in_a_dvc_project_the_production_bundle_is_dvc_tracked(trained_project, capsys):
    root, _ = trained_project
    dvc = promote._dvc(root, "version")
    if dvc.returncode != 0:
        pytest.skip("dvc CLI not available")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    assert promote._dvc(root, "init", "-q").returncode == 0
    assert evaluate.main(["--root", str(root)]) == 0
    assert promote.main(["--root", str(root)]) == 0
    assert "no DVC remote configured" in capsys.readouterr().out
    tracked = (root / "models/production.dvc").read_text()
    assert "path: production" in tracked
    remote = root.parent / "remote"
    assert promote._dvc(root, "remote", "add", "-d", "local", str(remote)).returncode == 0
    summary = promote.run(root, quiet=True)
    assert "push" in summary["dvc"] and remote.is_dir() and any(remote.rglob("*"))


def test_the_hashed_model_code_is_exactly_what_reruns_evaluate():
    """promote compares the hash of MODEL_CODE; DVC must rerun evaluate whenever any of it changes."""
    from pathlib import Path

    import yaml

    from pipeline.versions import MODEL_CODE, PACKAGE_ROOT

    stages = yaml.safe_load((Path(PACKAGE_ROOT) / "dvc.yaml").read_text())["stages"]
    code_deps = {d for d in stages["evaluate"]["deps"] if d.startswith(("engine", "pipeline/"))}
    assert code_deps == set(MODEL_CODE)
    assert set(MODEL_CODE) - {"pipeline/evaluate.py", "pipeline/backtest.py"} <= set(stages["train"]["deps"])


def test_a_verdict_without_the_backtest_interval_is_refused(tiny_project, capsys):
    """An evaluation.json from the old single-window gate says passed, but not with confidence: re-evaluate first."""
    import json

    (tiny_project / "results").mkdir()
    (tiny_project / "results/evaluation.json").write_text(json.dumps({"passed": True, "failures": []}))
    assert promote.main(["--root", str(tiny_project)]) == promote.REFUSED
    err = capsys.readouterr().err
    assert "without the backtest's improvement interval" in err and "dvc repro evaluate" in err
