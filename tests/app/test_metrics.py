"""GET /metrics in one process: what its counters and its latency histogram count (the figures summed over
gunicorn's workers are checked in test_served_by_gunicorn.py)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from pipeline.bundle import copy_bundle


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def one_row(model) -> dict:
    return {"instances": [{"store_nbr": next(iter(model.catalog.stores)), "item_nbr": next(iter(model.catalog.items)),
                           "date": model.first_date.isoformat(), "onpromotion": False}]}


def test_a_shadows_forecasts_are_not_counted_as_predictions_served(make_app, production_dir, app_bundles, tmp_path):
    """Found by a probe: with a shadow installed, shelfcast_predictions_total{source="api"} grew by 10 for 5
    one-row requests: the shadow's mirrored forecasts, never returned to anyone, were counted as served."""
    copy_bundle(app_bundles[1], production_dir.parent / "shadow")
    app = make_app(production_dir)
    assert app.state.variants.shadow_model() is not None
    before = sample("shelfcast_predictions_total", source="api")
    for _ in range(5):
        response = app.client.post("/api/v1/predict", json=one_row(app.model))
        assert response.status_code == 200 and response.headers["X-Model-Variant"] == "production"
        response.close()  # as a server does once it has sent the response: the shadow forecasts now
    events = app.events()
    assert sum(e["model_variant"] == "shadow" for e in events) == 5  # the shadow did forecast every request
    assert sample("shelfcast_predictions_total", source="api") - before == 5

