"""What the app shows to whoever reaches it names no file by the host's absolute path (monitoring/public_paths.py).

Every GET route of a real app (create_app, every blueprint), in the states that name files: a refused production
bundle with a release serving in its place (/readyz `refused`, `fallback`), no model at all (/readyz 503), a
prediction log with an unreadable line and a real drift report of it (/monitoring, /api/v1/monitoring,
/monitoring/drift-report), then an unreadable drift.json.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from monitoring import drift
from pipeline.bundle import copy_bundle
from pipeline.release_store import ReleaseStore

REPO = Path(__file__).resolve().parents[2]


def forbidden(*folders: Path) -> set[str]:
    """The absolute paths no answer may hold: the checkout's, this test's folders', in every spelling."""
    found = set()
    for folder in (REPO, Path.home(), *folders):
        for form in (str(folder), os.path.abspath(folder), str(Path(folder).resolve())):
            if form not in ("/", ""):
                found.add(form)
    return found


def get_routes(app, swagger_asset: str) -> list[str]:
    """A URL for every GET rule of the app (each rule's arguments filled in), and the queries that answer more."""
    urls = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()):
            continue
        values = {name: {"filename": "style.css", "name": swagger_asset}[name] for name in rule.arguments}
        urls.append(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda match: values[match.group(1)], rule.rule))
    return urls + ["/?store=1&item=2&date=2017-08-16", "/api/v1/items?q=1", "/no/such/page", "/api/v1/no-such"]


def bodies(client, urls: list[str]) -> dict[str, str]:
    return {url: client.get(url).get_data(as_text=True) for url in urls}


def leaks(answers: dict[str, str], needles: set[str]) -> dict[str, list[str]]:
    return {url: sorted({needle for needle in needles if needle in body}) for url, body in answers.items()
            if any(needle in body for needle in needles)}


def test_no_get_route_shows_an_absolute_path_of_the_host(make_app, app_bundles, tmp_path, monkeypatch):
    """Found by a review of what the public proxy serves: /api/v1/monitoring and /monitoring showed the prediction
    log's absolute path (and an unreadable drift.json's), /readyz the model folder's, the refused bundle's files'
    and the fallback release's, and /monitoring/drift-report the log's the report was made from: the host's layout
    (the checkout's folder, a user's home) to anyone. They are named relative to the app's root, or by their
    configured folder's name, now; the server's log keeps the full paths."""
    from app.routes_docs import SWAGGER_UI_DIR

    # a prediction log of real forecasts, one unreadable line, and the drift report of it
    logging_app = make_app(app_bundles[0])
    model = logging_app.model
    instances = [{"store_nbr": store, "item_nbr": item, "date": model.first_date.isoformat(), "onpromotion": False}
                 for store in list(model.catalog.stores)[:3] for item in list(model.catalog.items)[:5]]
    assert logging_app.client.post("/api/v1/predict", json={"instances": instances}).status_code == 200
    assert len(logging_app.events()) == len(instances)
    log = logging_app.events_path
    drift_dir = tmp_path / "drift"
    drift.main(["--bundle", str(app_bundles[0]), "--events", str(log), "--output-dir", str(drift_dir)])
    # the report names the log it read as the app names it (it is served), on disk too
    written = json.loads((drift_dir / "drift.json").read_text(encoding="utf-8"))
    assert written["source"] == f"{log.parent.name}/predictions.jsonl", written["source"]
    assert str(tmp_path) not in (drift_dir / "drift.html").read_text(encoding="utf-8")
    with log.open("a", encoding="utf-8") as handle:
        handle.write("not an event\n")
    monkeypatch.setenv("SHELFCAST_PREDICTION_LOG", str(log))
    monkeypatch.setenv("SHELFCAST_DRIFT_DIR", str(drift_dir))

    # production refused (its weights corrupt), release 1 serving in its place
    production = tmp_path / "models" / "production"
    copy_bundle(app_bundles[0], production)
    store = ReleaseStore(production.parent)
    store.add_release("1", production)
    (store.release_dir("1") / ".good").touch()
    weights = bytearray((production / "weights.npz").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (production / "weights.npz").write_bytes(bytes(weights))
    served = make_app(production)
    assert served.state.predictor.serving_fallback
    swagger_asset = sorted(path.name for path in SWAGGER_UI_DIR.iterdir() if path.suffix == ".css")[0]
    urls = get_routes(served.app, swagger_asset)
    assert {"/readyz", "/api/v1/monitoring", "/monitoring", "/monitoring/drift-report", "/metrics"} <= set(urls)
    answers = bodies(served.client, urls)
    (drift_dir / "drift.json").write_text("{not json", encoding="utf-8")  # unreadable: its reason names it
    unreadable = bodies(served.client, ["/api/v1/monitoring", "/monitoring"])
    empty = make_app(tmp_path / "nothing" / "production")  # no model at all
    waiting = bodies(empty.client, ["/readyz", "/", "/api/v1/model", "/api/v1/monitoring", "/monitoring"])

    needles = forbidden(tmp_path, tmp_path.parent.parent)
    assert not leaks(answers, needles), leaks(answers, needles)
    assert not leaks(unreadable, needles), leaks(unreadable, needles)
    assert not leaks(waiting, needles), leaks(waiting, needles)

    ready = json.loads(answers["/readyz"])
    assert ready["fallback"] == {"serving": "models/releases/1", "instead_of": "models/production"}, ready
    assert ready["refused"]["bundle"] == "models/production", ready
    assert "models/production/weights.npz: checksum mismatch" in ready["refused"]["reason"], ready
    recent = json.loads(answers["/api/v1/monitoring"])["recent"]
    assert recent["log"] == f"{log.parent.name}/predictions.jsonl" and recent["unreadable_lines"] == 1, recent
    assert recent["log"] in answers["/monitoring"] and "<svg" in answers["/monitoring/drift-report"]
    assert json.loads(unreadable["/api/v1/monitoring"])["drift"]["reasons"][0].startswith("drift/drift.json: not valid")
    assert json.loads(waiting["/readyz"])["reason"].endswith("from nothing/production"), waiting["/readyz"]
