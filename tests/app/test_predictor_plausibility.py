"""A bundle whose checksums are right but whose weights or forecasts are absurd is refused at load.

Such a bundle (a diverged training run, a bad export) would otherwise serve NaN-driven or
astronomically large forecasts; the previous good model must keep serving.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.atomic import file_digest
from pipeline.bundle import copy_bundle


def tampered_bundle(source: Path, target: Path, change) -> Path:
    """A copy of `source` with `change(weights)` applied and every checksum made to match again."""
    copy_bundle(source, target)
    with np.load(target / "weights.npz", allow_pickle=False) as data:
        weights = {name: data[name].copy() for name in data.files}
    change(weights)
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    (target / "weights.npz").write_bytes(buffer.getvalue())
    graph = json.loads((target / "graph.json").read_text())
    graph["weights"]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (target / "graph.json").write_text(json.dumps(graph))
    manifest = json.loads((target / "checksums.json").read_text())
    for name in ("weights.npz", "graph.json"):
        manifest["files"][name] = file_digest(target / name)
    (target / "checksums.json").write_text(json.dumps(manifest))
    return target


def largest_matrix(weights: dict) -> str:
    """The name of an embedding-like table (2-D, most rows)."""
    return max((name for name, w in weights.items() if w.ndim == 2), key=lambda name: weights[name].shape[0])


def set_row(value: float):
    def change(weights: dict) -> None:
        weights[largest_matrix(weights)][0, :] = value
    return change


def inflate_output_bias(weights: dict) -> None:
    """Moderate weights (|w| = 40) whose forecasts explode: the last layer's bias, in log units."""
    last_bias = [name for name, w in weights.items() if w.shape == (1,)][-1]
    weights[last_bias][:] = 40.0


@pytest.mark.parametrize(("change", "reason"), [
    (set_row(np.nan), "non-finite"),
    (set_row(1e30), "|value| 1e+30"),
    (inflate_output_bias, "implausible units"),
])
def test_an_implausible_bundle_is_refused_and_the_old_model_keeps_serving(served, production_dir, app_bundles,
                                                                          tmp_path, change, reason):
    old = served.model
    bad = tampered_bundle(app_bundles[1], tmp_path / "bad", change)
    copy_bundle(bad, production_dir)  # passes checksum verification
    assert served.state.predictor.check_now() is False
    assert served.model is old
    assert reason in served.state.predictor.last_error
    body = {"instances": [{"store_nbr": next(iter(old.catalog.stores)), "item_nbr": next(iter(old.catalog.items)),
                           "date": old.first_date.isoformat(), "onpromotion": False}]}
    response = served.client.post("/api/v1/predict", json=body)
    assert response.status_code == 200 and response.json["model"]["version"] == old.version


def test_an_app_started_on_an_implausible_bundle_is_not_ready(make_app, production_dir, app_bundles, tmp_path):
    copy_bundle(tampered_bundle(app_bundles[0], tmp_path / "bad", set_row(np.inf)), production_dir)
    response = make_app(production_dir).client.get("/readyz")
    assert response.status_code == 503 and "non-finite" in response.json["reason"]
