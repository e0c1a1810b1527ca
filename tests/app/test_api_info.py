"""GET /api/v1/model, /api/v1/items, /api/v1/openapi.json, /healthz, /readyz, and unknown paths."""

from __future__ import annotations

import json
import threading
import time

import pytest


def test_model_describes_name_version_metrics_origin_and_horizon(served):
    body = served.client.get("/api/v1/model").json
    meta = served.model.bundle.metadata
    assert body["name"] == meta["name"] and body["version"] == meta["version"]
    assert body["metrics"] == meta["metrics"]
    first_date, last_date = meta["horizon_dates"][0], meta["horizon_dates"][1]
    assert body["horizon"] == {"days": 16, "first_date": first_date, "last_date": last_date}
    assert body["origin"] == meta["forecast_origin"]
    assert body["digest"] == served.model.bundle.digest
    assert [s["store_nbr"] for s in body["stores"]] == sorted(served.model.catalog.stores)
    assert {"city", "type", "cluster", "label"} <= set(body["stores"][0])
    assert body["items"] == len(served.model.catalog.items)



def test_a_metric_that_is_not_a_finite_number_is_left_out_not_sent_as_invalid_json(make_app, app_bundles, tmp_path):
    """Found by a probe: the pipeline writes bundle.json with NaN allowed, and a metric that was NaN (here put there,
    with the checksums made to match) made GET /api/v1/model answer `"inner_validation_nwrmsle": NaN`, which is not
    JSON (RFC 8259): a strict parser (JavaScript's JSON.parse, Swagger UI's) refuses the whole answer."""
    from pipeline.atomic import file_digest
    from pipeline.bundle import copy_bundle

    target = tmp_path / "models" / "production"
    copy_bundle(app_bundles[0], target)
    meta = json.loads((target / "bundle.json").read_text())
    meta["metrics"]["inner_validation_nwrmsle"] = float("nan")
    meta["metrics"]["train_examples"] = float("inf")
    (target / "bundle.json").write_text(json.dumps(meta))
    manifest = json.loads((target / "checksums.json").read_text())
    manifest["files"]["bundle.json"] = file_digest(target / "bundle.json")
    (target / "checksums.json").write_text(json.dumps(manifest))
    response = make_app(target).client.get("/api/v1/model")
    assert response.status_code == 200

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    metrics = json.loads(response.get_data(as_text=True), parse_constant=refuse)["metrics"]
    assert "inner_validation_nwrmsle" not in metrics and "train_examples" not in metrics
    assert metrics["best_step"] == meta["metrics"]["best_step"]  # the finite ones are all there

@pytest.mark.parametrize("field, value, named", [
    ("data_version", {"data/split/train.parquet": float("inf")}, "data_version.data/split/train.parquet"),
    ("metrics", {"slices": {"GROCERY I": float("nan")}}, "metrics.slices.GROCERY I"),
    ("metrics", {"per_window": [0.5, float("nan")]}, "metrics.per_window[1]"),
    ("created", float("nan"), "created"),
    ("mlflow_run_id", float("-inf"), "mlflow_run_id"),
], ids=["data_version", "a nested metric", "a metric in a list", "created", "mlflow_run_id"])
def test_a_nan_or_infinity_where_the_model_is_described_refuses_the_bundle(make_app, app_bundles, tmp_path, field,
                                                                          value, named):
    """Found by a probe: only a top-level metric that is no finite number was left out of GET /api/v1/model; a NaN
    or Infinity anywhere else it answers from bundle.json (a nested metric, data_version, created, ...; checksums made
    to match) loaded, and every GET /api/v1/model answered `NaN` or `Infinity`, which is not JSON. Such a bundle is
    refused now, at the app's load (/readyz 503 naming the file and field) and by every install (check_servable)."""
    from pipeline.atomic import file_digest
    from pipeline.bundle import BundleError, copy_bundle
    from pipeline.bundle_checks import load_servable

    target = tmp_path / "models" / "production"
    copy_bundle(app_bundles[0], target)
    meta = json.loads((target / "bundle.json").read_text())
    if field == "metrics":
        meta["metrics"].update(value)
    else:
        meta[field] = value
    (target / "bundle.json").write_text(json.dumps(meta))
    manifest = json.loads((target / "checksums.json").read_text())
    manifest["files"]["bundle.json"] = file_digest(target / "bundle.json")
    (target / "checksums.json").write_text(json.dumps(manifest))
    response = make_app(target).client.get("/readyz")
    assert response.status_code == 503, response.json
    assert f"bundle.json: {named} holds NaN or Infinity" in response.json["reason"], response.json
    with pytest.raises(BundleError, match="which JSON cannot carry"):
        load_servable(target)


def test_model_without_a_bundle_is_503(make_app, tmp_path):
    response = make_app(tmp_path / "nothing").client.get("/api/v1/model")
    assert response.status_code == 503 and response.json["code"] == "model_unavailable"


def test_healthz_is_alive_with_or_without_a_model(served, make_app, tmp_path):
    assert served.client.get("/healthz").json == {"status": "ok"}
    assert make_app(tmp_path / "nothing").client.get("/healthz").status_code == 200


def test_readyz_is_503_until_a_model_is_loaded(make_app, tmp_path, app_bundles):
    from pipeline.bundle import copy_bundle

    target = tmp_path / "models" / "production"
    served = make_app(target)
    response = served.client.get("/readyz")
    assert response.status_code == 503
    # the folder named from its release store, never by the host's absolute path (a public probe)
    assert response.json == {"status": "unavailable", "reason": "no model bundle loaded yet from models/production"}
    copy_bundle(app_bundles[0], target)
    assert served.state.predictor.check_now()
    response = served.client.get("/readyz")
    assert response.status_code == 200
    assert response.json["model"]["version"] == served.model.version


def test_items_search_by_family_words_and_number(served):
    catalog = served.model.catalog
    some = next(iter(catalog.items.values()))
    word = some.family.split()[0].lower()
    body = served.client.get("/api/v1/items", query_string={"q": word, "limit": 50}).json
    assert body["total"] == sum(word in i.family.lower() for i in catalog.items.values())
    assert all(word in item["family"].lower() for item in body["items"])
    by_number = served.client.get("/api/v1/items", query_string={"q": str(some.item_nbr)[:3]}).json
    prefix = str(some.item_nbr)[:3]
    assert by_number["items"][0]["item_nbr"] == min(n for n in catalog.items if str(n).startswith(prefix))
    exact = served.client.get("/api/v1/items", query_string={"q": f"{some.item_nbr} class {some.item_class}"}).json
    assert [i["item_nbr"] for i in exact["items"]] == [some.item_nbr]
    assert exact["items"][0]["label"].startswith(some.family)


def test_items_search_limits(served):
    everything = served.client.get("/api/v1/items", query_string={"limit": 2}).json
    assert len(everything["items"]) == 2 and everything["total"] == len(served.model.catalog.items)
    for params, field in (({"limit": 0}, "limit"), ({"limit": 51}, "limit"), ({"limit": "x"}, "limit"),
                          ({"q": "a" * 101}, "q")):
        response = served.client.get("/api/v1/items", query_string=params)
        assert response.status_code == 400 and [e["field"] for e in response.json["errors"]] == [field]
    assert served.client.get("/api/v1/items", query_string={"q": "no such thing"}).json == {"items": [], "total": 0}


def test_an_items_query_that_is_not_utf8_is_named_not_searched_as_its_escape(served):
    """Found by a probe: Werkzeug keeps a %-escape that is not UTF-8 as its literal text, so a Latin-1 client's
    `q=caf%E9` searched for "caf%E9" and `limit=%FF` echoed '%FF': 200 with no items, as if none matched."""
    latin1 = served.client.get("/api/v1/items?q=caf%E9&limit=%FF")
    assert latin1.status_code == 400 and latin1.json["errors"] == [
        {"field": "q", "message": "not UTF-8 text once %-decoded (byte 0xe9 at position 3): %-encode it from UTF-8 "
                                  "(é is %C3%A9)"},
        {"field": "limit", "message": "not UTF-8 text once %-decoded (byte 0xff at position 0): %-encode it from "
                                      "UTF-8 (é is %C3%A9)"}]
    family = next(iter(served.model.catalog.items.values())).family
    word = family.split()[0].lower()
    accented = word.replace("e", "\u00e9", 1) if "e" in word else word  # accents are ignored in a search
    found = served.client.get("/api/v1/items", query_string={"q": accented, "limit": "50"}).json
    assert found["total"] >= 1 and all(word in item["family"].lower() for item in found["items"])
    escaped = served.client.get("/api/v1/items?q=%25E9+" + word).json  # "%E9" itself, sent escaped: searched
    assert escaped == {"items": [], "total": 0}
    repeated = served.client.get("/api/v1/items?limit=1&limit=x&q=")
    assert repeated.status_code == 400 and [e["field"] for e in repeated.json["errors"]] == ["limit"]


def test_openapi_document_lists_exactly_the_served_api(served):
    document = served.client.get("/api/v1/openapi.json").json
    assert document["openapi"].startswith("3.")
    batch = document["components"]["schemas"]["PredictRequest"]["properties"]["instances"]
    assert batch["maxItems"] == served.state.settings.max_batch
    served_paths = {rule.rule for rule in served.app.url_map.iter_rules()
                    if rule.rule.startswith(("/api/", "/healthz", "/readyz"))}
    assert set(document["paths"]) == served_paths
    for path, operations in document["paths"].items():
        for method in operations:
            assert served.client.open(path, method=method.upper()).status_code != 405, (method, path)


def test_every_error_code_the_api_answers_with_is_one_its_document_lists(served, make_app, tmp_path):
    """Found by a probe: the document's Error.code described invalid_request, not_forecastable and
    unsupported_media_type only, while its own 400 (a body shorter than its Content-Length), 408, 413 and 503
    answers carried bad_request, request_timeout, body_too_large and model_unavailable, and a wrong method or path
    method_not_allowed or not_found: a client handling errors by code met codes the document never named."""
    from app.request_buffer import BODY_MALFORMED, BODY_TIMED_OUT, BODY_TOO_LARGE

    schema = served.client.get("/api/v1/openapi.json").json["components"]["schemas"]["Error"]["properties"]["code"]
    one = {"store_nbr": 1, "item_nbr": 1, "date": "2017-08-01", "onpromotion": False}
    unknown_store = {**one, "store_nbr": 999, "item_nbr": int(next(iter(served.model.catalog.items)))}

    def predict(client, body: object = None, content_type="application/json", **environ):
        data = body if isinstance(body, str) else json.dumps(body if body is not None else {"instances": [one]})
        return client.post("/api/v1/predict", data=data, content_type=content_type, environ_overrides=environ)

    answers = {
        "a malformed body": predict(served.client, "{"),
        "a body the server could not decode": predict(served.client, **{BODY_MALFORMED: "a bad chunk size"}),
        "an unknown path": served.client.get("/api/v1/nothing"),
        "a wrong method": served.client.get("/api/v1/predict"),
        "a body too slow": predict(served.client, **{BODY_TIMED_OUT: True}),
        "a body too large": predict(served.client, **{BODY_TOO_LARGE: True}),
        "not JSON": predict(served.client, "{}", content_type="text/plain"),
        "an unknown store": predict(served.client, {"instances": [unknown_store]}),
        "no model": predict(make_app(tmp_path / "nothing").client),
    }
    codes = {case: (answer.status_code, answer.json["code"]) for case, answer in answers.items()}
    assert [case for case, (_, code) in codes.items() if code not in schema["enum"]] == [], codes
    assert all(f"{code}: " in schema["description"] for code in schema["enum"])
    assert sorted(status for status, _ in codes.values()) == [400, 400, 404, 405, 408, 413, 415, 422, 503], codes


def test_openapi_describes_the_served_models_pairs_not_favoritas(served):
    description = served.client.get("/api/v1/openapi.json").json["info"]["description"]
    assert "Favorita" not in description and "store×item pairs of the served model's data" in description


def test_openapi_example_is_a_request_the_api_accepts_in_shape(served):
    document = served.client.get("/api/v1/openapi.json").json
    example = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    response = served.client.post("/api/v1/predict", data=json.dumps(example), content_type="application/json")
    assert response.status_code in (200, 422)  # its store/item/date may not be in this tiny model


def test_unknown_paths_are_404_json_under_api_and_a_page_elsewhere(served):
    api = served.client.get("/api/v1/nothing")
    assert api.status_code == 404 and api.json["code"] == "not_found"
    page = served.client.get("/nothing")
    assert page.status_code == 404 and page.mimetype == "text/html" and b"Back to the form" in page.data


def test_a_wrong_path_or_method_is_named_with_what_would_work(served):
    """Found by a probe: `curl -d @batch.json .../api/v1/predict/` (a trailing slash) was a 404 whose whole answer
    was Werkzeug's "If you entered the URL manually please check your spelling", errors [] (the spelling was right),
    and a GET or PUT of /api/v1/predict a 405 saying only "The method is not allowed for the requested URL"."""
    body = json.dumps({"instances": []})
    slash = served.client.post("/api/v1/predict/", data=body, content_type="application/json")
    assert slash.status_code == 404 and slash.json["code"] == "not_found"
    assert slash.json["errors"] == [{"field": "path", "message": "no such path /api/v1/predict/; without the "
                                                                 "trailing slash it is /api/v1/predict"}]
    assert slash.json["message"] == slash.json["errors"][0]["message"]
    unknown = served.client.get("/api/v1/nothing/").json["errors"]
    assert unknown == [{"field": "path", "message": "no such path /api/v1/nothing/; the API's paths are listed by "
                                                    "/api/v1/openapi.json"}]
    wrong = served.client.put("/api/v1/predict", data=body, content_type="application/json")
    allowed = wrong.headers["Allow"]
    assert wrong.status_code == 405 and set(allowed.split(", ")) == {"OPTIONS", "POST"}
    assert wrong.json["errors"] == [{"field": "method", "message": f"PUT is not allowed on /api/v1/predict; it takes "
                                                                   f"{allowed}"}]
    page = served.client.get("/monitoring/")
    assert page.status_code == 404 and b"without the trailing slash it is /monitoring" in page.data


def test_the_items_search_example_is_one_the_api_takes_whatever_the_family_names(app_bundles):
    """A family whose first word is 405 characters long made an example the API refuses (q: at most 100
    characters); an empty family name would have raised building /docs."""
    import numpy as np

    from app.catalog import MAX_QUERY
    from app.examples import example_for
    from app.predictor import LoadedModel
    from pipeline.bundle import load_bundle

    for family in ("Ñ" + "x" * 404 + " FOODS", ""):
        bundle = load_bundle(app_bundles[0])
        bundle.snapshot.items["family"] = np.asarray([family] * len(bundle.snapshot.items["item_nbr"]), dtype=object)
        model = LoadedModel(bundle, signature=None, loaded_at="")
        example = example_for(model)
        assert 0 < len(example.search) <= MAX_QUERY
        assert example.item_nbr in [item.item_nbr for item in model.catalog.search(example.search, 50)[0]]


def _catalog(families: list[str]):
    """A served model's catalog with these families (one item each), as a foreign chain's bundle holds them."""
    import numpy as np

    from app.catalog import Catalog
    from pipeline.features import HOLIDAY_FLAGS, HistorySnapshot

    n = len(families)
    item_nbr = 880_000_000 + 37 * np.arange(n, dtype=np.int32)
    snapshot = HistorySnapshot(
        origin_day=19_000, store_nbr=np.full(n, 101, np.int32), item_nbr=item_nbr,
        sales=np.zeros((n, 7), np.float32), promo=np.zeros((n, 7), np.uint8),
        items={"item_nbr": item_nbr, "family": np.array(families),
               "class": np.full(n, 70_001, np.int32), "perishable": np.zeros(n, np.int32)},
        stores={"store_nbr": np.array([101], np.int32), "city": np.array(["Genève"]),
                "store_type": np.array(["A"]), "cluster": np.array([1], np.int32)},
        calendar_days=19_001 + np.arange(16), calendar_holidays=np.zeros((1, 16, len(HOLIDAY_FLAGS)), np.uint8))
    return Catalog(snapshot)


def test_item_labels_show_the_family_as_the_data_spells_it():
    """title() made "Produits d'entretien" "Produits D'Entretien" and "GROCERY II" "Grocery Ii"."""
    families = ["Produits d'entretien", "GROCERY II", "Bébé <0-3 ans>", "Fruits & Légumes"]
    catalog = _catalog(families)
    labels = [item.label for item in catalog.items.values()]
    assert [label.split(" · ")[0] for label in labels] == families


def test_a_direction_control_in_a_name_orders_only_that_name_on_the_page():
    """Found by a probe with a user's own stores.csv/items.csv: a right-to-left override (U+202E) in a family or a
    city reversed the rest of the text it was shown in (the form's store list, the forecast's summary: "... at store
    1 — Quito (type D, cluster 2)" read "(2 retsulc ,D epyt) otiuQ — 1 erots ta"). A label now isolates such a name
    (FSI ... PDI), leaving out an isolate of the name's own that could end that early; other names, right-to-left
    script included, are shown as they are, and the names themselves are unchanged."""
    from app.catalog import Store

    rlo, fsi, pdi = "\u202e", "\u2068", "\u2069"
    families = [f"{rlo}evil", f"{pdi}{rlo}evil", "عربي مرحبا 5", "Bébé <0-3 ans>"]
    catalog = _catalog(families)
    labels = [item.label for item in catalog.items.values()]
    assert labels == [f"{fsi}{rlo}evil{pdi} · class 70001", f"{fsi}{rlo}evil{pdi} · class 70001",
                      "عربي مرحبا 5 · class 70001", "Bébé <0-3 ans> · class 70001"]
    assert [item.family for item in catalog.items.values()] == families  # the data's names, as they are
    assert [item.to_json()["family"] for item in catalog.items.values()] == families
    assert Store(1, f"Quito{rlo}", "D", 2).label == f"1 — {fsi}Quito{rlo}{pdi} (type D, cluster 2)"
    assert Store(2, "القاهرة", "A", 1).label == "2 — القاهرة (type A, cluster 1)"


def test_items_search_ignores_accents_and_case_in_the_query_and_in_the_names():
    """q=electronique found no 'Électronique' item while q=électronique did; now either finds both spellings."""
    import unicodedata

    families = ["Électronique", unicodedata.normalize("NFD", "ÉLECTRONIQUE"), "electronique", "Épicerie salée"]
    catalog = _catalog(families)
    for query in ("electronique", "électronique", "ELECTRONIQUE", unicodedata.normalize("NFD", "Électronique")):
        items, total = catalog.search(query, 10)
        assert total == 3 and {item.family for item in items} == set(families[:3]), query
    assert catalog.search("epicerie SALEE", 10)[1] == 1


@pytest.mark.parametrize("digits", ["٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९"])  # Arabic-Indic, Persian, Devanagari
def test_items_search_reads_an_item_number_in_any_scripts_digits(served, digits):
    """Found by a probe: q=١٨٣٨٩٨٩ (an Arabic keyboard's digits) found nothing, though the form takes that number
    and full-width digits were found (NFKD folds those, not these)."""
    item = max(served.model.catalog.items)
    typed = str(item).translate(str.maketrans("0123456789", digits))
    response = served.client.get("/api/v1/items", query_string={"q": typed})
    assert response.status_code == 200 and response.json["items"][0]["item_nbr"] == item


@pytest.mark.parametrize("query, field", [("limit=1&limit=50", "limit"), ("q=dairy&q=bread", "q"),
                                          ("limit=2&q=a&limit=2", "limit")])
def test_an_items_parameter_given_twice_is_400_naming_it_not_the_first_used(served, query, field):
    """Found by a probe: /api/v1/items?limit=1&limit=50 answered one item, the second limit silently dropped."""
    response = served.client.get(f"/api/v1/items?{query}")
    assert response.status_code == 400
    assert response.json["errors"] == [{"field": field,
                                        "message": "given more than once in the query string: give it once"}]
    parameters = served.client.get("/api/v1/openapi.json").json["paths"]["/api/v1/items"]["get"]["parameters"]
    assert all("given at most once" in parameter["description"] for parameter in parameters)


def test_health_probes_are_answered_while_a_forecast_holds_the_turn(served):
    """Found at Favorita's size: requests run one at a time per worker, in arrival order (app/request_buffer.py), and
    /readyz and /healthz queued behind every forecast before them. 16 clients sending 1,000-row batches to 2 workers
    made /readyz take 1.9 s (median) and up to 3.0 s: past the 2 s of the image's and compose's health check. A
    probe only reads what the worker holds, so it is answered beside the request in its turn; others still wait."""
    gate = served.app.wsgi_app._one_at_a_time  # the worker's turn (ArrivalOrder)
    answers: dict[str, int] = {}

    def ask(path: str, method: str = "GET") -> None:
        answers[f"{method} {path}"] = served.client.open(path, method=method).status_code

    gate.__enter__()  # a forecast being made: every request that is not a probe waits for its turn
    try:
        probes = [threading.Thread(target=ask, args=(path, method), daemon=True)
                  for path in ("/healthz", "/readyz") for method in ("GET", "HEAD")]
        for probe in probes:
            probe.start()
        deadline = time.monotonic() + 10
        for probe in probes:
            probe.join(max(0.0, deadline - time.monotonic()))
        assert answers == {"GET /healthz": 200, "HEAD /healthz": 200, "GET /readyz": 200, "HEAD /readyz": 200}
        waiting = threading.Thread(target=ask, args=("/api/v1/model",), daemon=True)
        waiting.start()
        waiting.join(0.5)
        assert "GET /api/v1/model" not in answers  # anything else still waits its turn
    finally:
        gate.__exit__(None, None, None)
    waiting.join(10)
    assert answers["GET /api/v1/model"] == 200
