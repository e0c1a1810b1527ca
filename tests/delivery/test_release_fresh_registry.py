"""`python -m pipeline.release status|sync|decide|rollback` and `fetch-model` on a fresh clone, or run from the wrong
folder: one line that says what to run first (it said only MLflow's "Registered Model with name=... not found"),
and no empty `mlflow.db` left behind where there was none (the wrong folder got one, 0.9 MB)."""

from __future__ import annotations

import pytest

from pipeline import registry_fetch, release, tracking


@pytest.mark.parametrize("command", ["status", "sync", "decide", "rollback"])
def test_nothing_registered_says_what_to_run_first(command, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SHELFCAST_MODELS_HOST", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client(tmp_path)  # a store with nothing registered in it: a train ran, no promote yet
    assert release.main([command, "--root", str(tmp_path), "--models", str(tmp_path / "models")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("release: error: registered model ") and "not found" in err
    assert "nothing is registered there yet" in err and "python -m pipeline.promote" in err


@pytest.mark.parametrize("command", [
    ["release", "status"], ["release", "sync"], ["release", "rollback"], ["fetch-model"],
])
def test_a_folder_with_no_store_is_refused_and_left_as_it_was(command, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SHELFCAST_MODELS_HOST", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    main = release.main if command[0] == "release" else registry_fetch.main
    assert main(command[1:]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"no MLflow store in {tmp_path} (mlflow.db not found)" in err
    assert "--root PROJECT" in err and "python -m pipeline.promote" in err and "MLFLOW_TRACKING_URI" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # the clone's own (conftest.a_clone)
