"""`python -m pipeline.promote --candidate sweep` (README, sweeps) before any sweep ran: one line saying what makes
that folder, and models/ untouched (it said only 'sweep/params.yaml: params file not found')."""

from __future__ import annotations

from pipeline import promote


def test_a_missing_candidate_folder_says_to_run_the_sweep_first(tmp_path, capsys):
    assert promote.main(["--root", str(tmp_path), "--quiet", "--candidate", "sweep"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("promote: error: --candidate ") and "no such directory" in err
    assert "python -m pipeline.sweep" in err
    assert not (tmp_path / "models").exists()
