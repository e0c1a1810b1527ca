"""promote refuses a candidate whose serving bundle the app would refuse: nothing registered, nothing installed.

Found in review: promote verified checksums and the evaluation's verdict only, so a candidate with a NaN weight or
an absurd embedding row (a verdict recorded for it by an evaluate that missed it, or edited to match) was
registered and swapped into models/production, which the app then refused (pipeline/bundle_checks.py): after a
restart nothing served. The candidate here is the trained tiny project's own, changed after its evaluation with its
checksums, evaluation.json and training run made to match, as such a bundle would arrive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import evaluate, promote, tracking
from pipeline.bundle import copy_bundle, verify_bundle
from tests.app.tiny_bundle import absurd_item_row, tampered_bundle, tensor_of

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml


def nan_weight(source: Path, target: Path) -> Path:
    table = tensor_of(source, "embedding_store_nbr/embeddings")

    def change(weights: dict) -> None:
        weights[table][1, 0] = np.nan
    return tampered_bundle(source, target, change)


@pytest.mark.parametrize(("tamper", "reason"), [
    (nan_weight, "weights.npz: weight embedding_store_nbr/embeddings.value has non-finite values"),
    (absurd_item_row, "give implausible units"),
])
def test_a_candidate_the_app_would_refuse_is_neither_registered_nor_installed(trained_project, tmp_path, capsys,
                                                                              tamper, reason):
    root, summary = trained_project
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    candidate = root / "models/candidate"
    copy_bundle(tamper(candidate, tmp_path / "bad"), candidate)
    digest = verify_bundle(candidate)
    evaluation = json.loads((root / "results/evaluation.json").read_text())
    (root / "results/evaluation.json").write_text(json.dumps({**evaluation, "bundle_digest": digest}))
    tracking.client(root).set_tag(summary["run_id"], tracking.BUNDLE_DIGEST_TAG, digest)
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("promote: refused: the candidate cannot serve: "), err
    assert reason in err and f"{candidate} rolled forward" in err and "nothing registered or installed" in err, err
    assert not (root / "models/production").exists()
    assert not tracking.client(root).search_model_versions(f"name='{MODEL_NAME}'")
    assert not list((root / "models").glob("promoted-*"))  # its staging copy removed
