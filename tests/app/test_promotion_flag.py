"""A model trained on data without promotions says so: the flag it gives no weight changes no forecast.

A store's files without promotion data (pipeline/schema.py: the column may be left out) train a model whose
target_onpromotion was 0 in every example; pipeline/models.py gives such a feature zero weights. The API and
the form offered the flag as if it mattered, with nothing to say it does not.
"""

from __future__ import annotations

import json

from pipeline.atomic import file_digest
from pipeline.bundle import copy_bundle
from pipeline.drift_stats import distribution


def trained_without_promotions(source, target):
    """A copy of a real bundle whose training statistics say no example was on promotion (checksums matched)."""
    copy_bundle(source, target)
    stats = json.loads((target / "training_stats.json").read_text(encoding="utf-8"))
    rows = stats["dense"]["target_onpromotion"]["count"]
    stats["dense"]["target_onpromotion"] = distribution([0.0] * rows)
    (target / "training_stats.json").write_text(json.dumps(stats), encoding="utf-8")
    manifest = json.loads((target / "checksums.json").read_text(encoding="utf-8"))
    manifest["files"]["training_stats.json"] = file_digest(target / "training_stats.json")
    (target / "checksums.json").write_text(json.dumps(manifest), encoding="utf-8")
    return target


def test_the_api_and_the_form_say_whether_the_promotion_flag_can_change_a_forecast(app_bundles, make_app,
                                                                                   production_dir, tmp_path):
    served = make_app(production_dir)  # the tiny bundle's training saw promotions
    assert served.client.get("/api/v1/model").get_json()["promotion_has_effect"] is True
    assert 'id="onpromotion-hint"' not in served.client.get("/").get_data(as_text=True)

    without = make_app(trained_without_promotions(app_bundles[0], tmp_path / "without" / "production"))
    assert without.client.get("/api/v1/model").get_json()["promotion_has_effect"] is False
    page = without.client.get("/").get_data(as_text=True)
    assert 'id="onpromotion-hint"' in page and "the flag does not change the forecast" in page
    assert 'aria-describedby="onpromotion-hint"' in page
