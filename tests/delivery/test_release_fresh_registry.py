"""`python -m pipeline.release status|sync|decide|rollback` on a fresh clone: a registry with nothing registered.
One line that says what to run first (it said only MLflow's "Registered Model with name=... not found")."""

from __future__ import annotations

import pytest

from pipeline import release


@pytest.mark.parametrize("command", ["status", "sync", "decide", "rollback"])
def test_nothing_registered_says_what_to_run_first(command, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SHELFCAST_MODELS_HOST", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert release.main([command, "--root", str(tmp_path), "--models", str(tmp_path / "models")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("release: error: registered model ") and "not found" in err
    assert "nothing is registered there yet" in err and "python -m pipeline.promote" in err
