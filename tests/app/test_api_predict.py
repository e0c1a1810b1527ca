"""POST /api/v1/predict: predictions with the model's name and version, one event each, and every error."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest


def an_instance(served, **changes) -> dict:
    model = served.model
    instance = {"store_nbr": next(iter(model.catalog.stores)), "item_nbr": next(iter(model.catalog.items)),
                "date": model.first_date.isoformat(), "onpromotion": False}
    instance.update(changes)
    return instance


def test_one_instance_gets_the_bundles_own_prediction(served):
    instance = an_instance(served, onpromotion=True)
    response = served.client.post("/api/v1/predict", json={"instances": [instance]})
    assert response.status_code == 200, response.json
    body = response.json
    assert body["model"] == {"name": served.model.name, "version": served.model.version, "variant": "production"}
    [prediction] = body["predictions"]
    expected = served.model.bundle.predict(instance["store_nbr"], instance["item_nbr"], instance["date"], 1)
    factor = served.model.bundle.metadata["outputs"]["expected_units_factor"]
    assert prediction == {**instance, "unit_sales": pytest.approx(float(expected[0]), abs=1e-4),
                          "expected_units": pytest.approx(max(factor * (float(expected[0]) + 1) - 1, 0), abs=2e-3),
                          "model_version": served.model.version}
    assert 0 <= prediction["unit_sales"] <= prediction["expected_units"]  # the median-like forecast is the lower
    assert response.headers["X-Request-ID"] == body["request_id"]


def test_a_batch_keeps_its_order_and_logs_one_event_per_prediction(served):
    model = served.model
    stores, items = list(model.catalog.stores), list(model.catalog.items)
    days = [model.first_date.isoformat(), model.last_date.isoformat()]
    instances = [{"store_nbr": stores[k % len(stores)], "item_nbr": items[k % len(items)], "date": days[k % 2],
                  "onpromotion": k % 3 == 0} for k in range(7)]
    response = served.client.post("/api/v1/predict", json={"instances": instances},
                                  headers={"X-Request-ID": "batch-42"})
    assert response.status_code == 200, response.json
    predictions = response.json["predictions"]
    assert [{k: p[k] for k in instances[0]} for p in predictions] == instances
    expected = model.bundle.predict([i["store_nbr"] for i in instances], [i["item_nbr"] for i in instances],
                                    [i["date"] for i in instances], [int(i["onpromotion"]) for i in instances])
    np.testing.assert_allclose([p["unit_sales"] for p in predictions], expected, atol=1e-4)

    events = served.events()
    assert len(events) == len(instances)
    assert len({e["event_id"] for e in events}) == len(events)
    for index, event in enumerate(sorted(events, key=lambda e: e["instance_index"])):
        assert event["request_id"] == "batch-42"
        assert event["model_name"] == model.name and event["model_version"] == model.version
        assert event["inputs"] == instances[index]
        assert event["output"]["unit_sales"] == predictions[index]["unit_sales"]
        assert event["latency_ms"] > 0
        assert event["source"] == "api" and event["batch_size"] == len(instances)
        assert list(event["features"]["dense"]) == model.dense_names
        assert set(event["features"]["categorical"]) == {"store_nbr", "item_nbr", "family", "class", "perishable",
                                                        "city", "store_type", "cluster"}


def test_a_store_item_without_history_is_served_and_its_event_says_so(served):
    """An item the store never sold (a user's own assortment: not every store sells every item) is forecast from an
    empty history; its event carries new_series, which drift counts as one fact instead of shifted history features."""
    model = served.model
    snapshot = model.bundle.snapshot
    sold = set(zip(snapshot.store_nbr.tolist(), snapshot.item_nbr.tolist()))
    never = [(s, i) for s in model.catalog.stores for i in model.catalog.items if (s, i) not in sold]
    assert never, "the tiny data set sells every item in every store: nothing to ask for"
    (store, item), (known_store, known_item) = never[0], sorted(sold)[0]
    instances = [an_instance(served, store_nbr=store, item_nbr=item),
                 an_instance(served, store_nbr=known_store, item_nbr=known_item)]
    response = served.client.post("/api/v1/predict", json={"instances": instances})
    assert response.status_code == 200, response.json
    events = sorted(served.events(), key=lambda e: e["instance_index"])
    assert [e.get("new_series") for e in events] == [True, None]
    assert events[0]["features"]["dense"]["days_since_first_sale"] == 0.0


def test_the_batch_limit_is_enforced_and_named(make_app, production_dir):
    served = make_app(production_dir, max_batch=3)
    ok = served.client.post("/api/v1/predict", json={"instances": [an_instance(served)] * 3})
    assert ok.status_code == 200
    too_many = served.client.post("/api/v1/predict", json={"instances": [an_instance(served)] * 4})
    assert too_many.status_code == 400
    assert too_many.json["errors"] == [{"field": "instances", "message": "at most 3 instances per request, got 4"}]


def fields_of(response) -> list[str]:
    return [e["field"] for e in response.json["errors"]]


@pytest.mark.parametrize("body, fields", [
    ([], ["body"]),
    ("instances", ["body"]),
    ({}, ["instances"]),
    ({"instances": {}}, ["instances"]),
    ({"instances": []}, ["instances"]),
    ({"instances": [], "extra": 1}, ["extra", "instances"]),
    ({"instances": [7]}, ["instances[0]"]),
    ({"instances": [{}]}, ["instances[0].store_nbr", "instances[0].item_nbr", "instances[0].date",
                          "instances[0].onpromotion"]),
])
def test_malformed_bodies_are_400_naming_the_field(served, body, fields):
    response = served.client.post("/api/v1/predict", json=body)
    assert response.status_code == 400
    assert response.json["code"] == "invalid_request"
    assert fields_of(response) == fields
    assert all(e["message"] for e in response.json["errors"])


@pytest.mark.parametrize("field, value", [
    ("store_nbr", "1"), ("store_nbr", 1.0), ("store_nbr", True), ("store_nbr", 0), ("store_nbr", -3),
    ("store_nbr", 2**31), ("store_nbr", None), ("item_nbr", [1]), ("item_nbr", 1.5),
    ("date", "2017/08/01"), ("date", "2017-02-30"), ("date", 20170801), ("date", "2017-8-1"), ("date", "١٢٣٤-٠١-٠١"),
    ("onpromotion", 1), ("onpromotion", "true"), ("onpromotion", None),
])
def test_each_bad_field_is_named_and_never_coerced(served, field, value):
    good = an_instance(served)
    response = served.client.post("/api/v1/predict", json={"instances": [good, {**good, field: value}]})
    assert response.status_code == 400
    assert fields_of(response) == [f"instances[1].{field}"]


def test_every_bad_field_of_every_instance_is_reported(served):
    good = an_instance(served)
    bad = [{**good, "store_nbr": "x"}, good, {**good, "date": "soon", "onpromotion": "no", "color": "red"}]
    response = served.client.post("/api/v1/predict", json={"instances": bad})
    assert response.status_code == 400
    assert sorted(fields_of(response)) == sorted(["instances[0].store_nbr", "instances[2].color",
                                                  "instances[2].date", "instances[2].onpromotion"])


def test_an_unknown_top_level_key_and_the_instances_errors_are_named_in_one_answer(make_app, production_dir):
    """An unknown key beside "instances" leaves them readable, so the answer names both; instances that are not
    read (over the batch limit here) are not checked, and the answer says why."""
    served = make_app(production_dir, max_batch=2)
    good = an_instance(served)
    response = served.client.post("/api/v1/predict", json={"instance": good, "instances": [
        {**good, "store_nbr": "1"}, {**good, "date": "soon"}]})
    assert response.status_code == 400
    assert fields_of(response) == ["instance", "instances[0].store_nbr", "instances[1].date"]
    assert response.json["message"] == "3 invalid field(s)"
    only_top = served.client.post("/api/v1/predict", json={"extra": 1, "instances": [good]})
    assert only_top.status_code == 400 and fields_of(only_top) == ["extra"]
    too_many = served.client.post("/api/v1/predict", json={"extra": 1, "instances": [{}] * 3})
    assert fields_of(too_many) == ["extra", "instances"] and too_many.json["message"] == "the request is malformed"


@pytest.mark.parametrize("data", [b"{", b'{"instances": [}', b"\xff\xfe\xfa", b'{"instances": NaN}',
                                  b"[" * 100_000 + b"]" * 100_000, b""])
def test_invalid_json_is_400(served, data):
    response = served.client.post("/api/v1/predict", data=data, content_type="application/json")
    assert response.status_code == 400
    assert fields_of(response) == ["body"]


def test_a_body_that_is_not_json_is_415(served):
    response = served.client.post("/api/v1/predict", data="store=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert fields_of(response) == ["Content-Type"]


def test_a_json_body_sent_without_its_content_type_is_told_how_to_send_it(served):
    """Found by a probe: Python requests' `data=json.dumps(body)` sends no Content-Type, and the 415 said
    "expected application/json, got 'none'", as if the client had sent a type named none; curl -d's default type
    got no hint either."""
    body = json.dumps({"instances": [an_instance(served)]}).encode()
    bare = served.client.post("/api/v1/predict", data=body)
    assert "Content-Type" not in bare.request.headers  # as requests' data=... sends it
    [error] = bare.json["errors"]
    assert bare.status_code == 415 and error["field"] == "Content-Type"
    assert error["message"] == ("expected application/json, but no Content-Type was sent: send the header with the "
                                "JSON body (requests: json=..., not data=...)")
    curl = served.client.post("/api/v1/predict", data=body, content_type="application/x-www-form-urlencoded")
    assert "add -H 'Content-Type: application/json'" in curl.json["errors"][0]["message"]


def test_a_refused_value_is_echoed_as_the_json_the_client_sent(served):
    """Found by a probe: a refused value was echoed as Python wrote it after parsing, not as sent: `1e0` as "1.0",
    `1e400` as "inf", null as "None", true as "True", "true" as "'true'". An integral number with a fraction or
    exponent now also says how to write it."""
    def messages(**fields) -> list[str]:
        values = ", ".join(f'"{name}": {text}' for name, text in fields.items())
        response = served.client.post("/api/v1/predict", data='{"instances": [{' + values + '}]}',
                                      content_type="application/json")
        assert response.status_code == 400, response.json
        return [error["message"] for error in response.json["errors"]]

    assert messages(store_nbr="1e0", item_nbr="2.50", date="null", onpromotion='"true"') == [
        "expected an integer, got 1e0 (write it as 1: a number with a fraction or exponent is not an integer)",
        "expected an integer, got 2.50",
        "expected a date as YYYY-MM-DD, got null",
        'expected true or false, got "true"']
    assert messages(store_nbr="1e400", item_nbr="true", date='{"day": [1.0, null]}', onpromotion="1") == [
        "expected an integer, got 1e400",
        "expected an integer, got true",
        'expected a date as YYYY-MM-DD, got {"day": [1.0, null]}',
        "expected true or false, got 1"]
    deep = messages(store_nbr="[" * 500 + "]" * 500, item_nbr="1", date='"2017-08-01"', onpromotion="false")
    assert deep == ["expected an integer, got " + "[" * 37 + "..."]  # written only as far as it is shown


@pytest.mark.parametrize("body, field, message", [
    ("[1]", "body", 'expected an object {"instances": [...]}, got [1]'),
    ('"x"', "body", 'expected an object {"instances": [...]}, got "x"'),
    ('{"instances": {"0": 1}}', "instances", 'expected a list of instances, got {"0": 1}'),
    ('{"instances": null}', "instances", "expected a list of instances, got null"),
    ('{"instances": [null]}', "instances[0]",
     "expected an object with store_nbr, item_nbr, date, onpromotion, got null"),
    ('{"instances": [[1, 2]]}', "instances[0]",
     "expected an object with store_nbr, item_nbr, date, onpromotion, got [1, 2]"),
    ('{"instances": [true]}', "instances[0]",
     "expected an object with store_nbr, item_nbr, date, onpromotion, got true"),
], ids=["body array", "body string", "instances object", "instances null", "instance null", "instance array",
        "instance true"])
def test_a_value_of_the_wrong_json_type_is_echoed_as_json_not_named_by_its_python_type(served, body, field, message):
    """Found by a probe: a body, ``instances`` or an instance of the wrong JSON type was named by the Python type it
    parsed to: "got NoneType" for null, "got dict" for an object, "got list", "got str", "got bool". Echoed as the
    JSON sent now, as every other refused value is."""
    response = served.client.post("/api/v1/predict", data=body, content_type="application/json")
    assert response.status_code == 400, response.json
    assert {"field": field, "message": message} in response.json["errors"], response.json


def test_an_oversized_body_is_413(make_app, production_dir):
    served = make_app(production_dir, max_body_bytes=2000)
    body = json.dumps({"instances": [an_instance(served)] * 100})
    assert len(body) > 2000
    response = served.client.post("/api/v1/predict", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.json["code"] == "body_too_large" and "2000 bytes" in response.json["message"]


def test_unknown_store_item_and_dates_outside_the_horizon_are_422_naming_each(served):
    model = served.model
    before = (model.first_date.toordinal() - 1)
    import datetime as dt

    instances = [an_instance(served, store_nbr=max(model.catalog.stores) + 1),
                 an_instance(served, item_nbr=max(model.catalog.items) + 1),
                 an_instance(served, date=dt.date.fromordinal(before).isoformat()),
                 an_instance(served, date=dt.date.fromordinal(model.last_date.toordinal() + 1).isoformat())]
    response = served.client.post("/api/v1/predict", json={"instances": instances})
    assert response.status_code == 422
    assert response.json["code"] == "not_forecastable"
    assert fields_of(response) == ["instances[0].store_nbr", "instances[1].item_nbr", "instances[2].date",
                                   "instances[3].date"]
    assert model.first_date.isoformat() in response.json["errors"][2]["message"]
    store_message = response.json["errors"][0]["message"]  # where the stores are listed: the model's description
    assert store_message.endswith(f"(known: {len(model.catalog.stores)} stores, listed by GET /api/v1/model)")
    listed = served.client.get("/api/v1/model").get_json()["stores"]
    assert {store["store_nbr"] for store in listed} == set(model.catalog.stores)
    assert served.events() == []  # nothing was predicted, nothing logged


def test_refused_instances_are_counted_by_field_in_metrics(served):
    """Refused requests make no event, so drift cannot see a shift to items the model does not know (a probe:
    2,989 of 3,000 requests refused, drift said only "11 events are too few"); /metrics counts them."""
    from prometheus_client import REGISTRY

    def counted(field):
        return REGISTRY.get_sample_value("shelfcast_unforecastable_instances_total", {"field": field}) or 0.0

    model = served.model
    before = {field: counted(field) for field in ("store_nbr", "item_nbr", "date")}
    unknown_item = an_instance(served, item_nbr=max(model.catalog.items) + 1)
    response = served.client.post("/api/v1/predict", json={"instances": [unknown_item, unknown_item,
                                                                          an_instance(served)]})
    assert response.status_code == 422
    assert counted("item_nbr") - before["item_nbr"] == 2
    assert counted("store_nbr") == before["store_nbr"] and counted("date") == before["date"]
    assert "shelfcast_unforecastable_instances_total{field=\"item_nbr\"}" in served.client.get("/metrics").text


def test_no_model_loaded_is_503_not_500(make_app, tmp_path):
    served = make_app(tmp_path / "models" / "production")
    response = served.client.post("/api/v1/predict", json={"instances": [
        {"store_nbr": 1, "item_nbr": 1, "date": "2017-08-16", "onpromotion": False}]})
    assert response.status_code == 503
    assert response.json["code"] == "model_unavailable"


def test_other_methods_are_405_json(served):
    response = served.client.get("/api/v1/predict")
    assert response.status_code == 405
    assert response.json["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_a_sane_request_id_is_kept_and_an_odd_one_replaced(served):
    body = {"instances": [an_instance(served)]}
    kept = served.client.post("/api/v1/predict", json=body, headers={"X-Request-ID": "abc-123"})
    assert kept.json["request_id"] == "abc-123"
    replaced = served.client.post("/api/v1/predict", json=body, headers={"X-Request-ID": "<script>" + "x" * 100})
    assert replaced.json["request_id"] != "<script>" + "x" * 100 and len(replaced.json["request_id"]) == 32


def test_an_error_body_stays_small_whatever_the_request(served):
    """The first 50 errors and a count of the rest; client values (keys, numbers) echoed at most 40 characters."""
    response = served.client.post("/api/v1/predict", json={"instances": [{}] * 1000})
    assert response.status_code == 400
    body = response.json
    assert body["message"] == "4000 invalid field(s)"
    assert len(body["errors"]) == 50 and body["errors_omitted"] == 3950
    assert len(response.data) < 5_000

    keys = ",".join(f'"{"k" * 200}{i}":0' for i in range(2000))  # one instance, 2000 long unknown keys
    response = served.client.post("/api/v1/predict", data='{"instances": [{%s}]}' % keys,
                                  content_type="application/json")
    assert response.status_code == 400 and response.json["errors_omitted"] == 2004 - 50
    assert max(len(e["field"]) for e in response.json["errors"]) <= len("instances[0].") + 40
    assert len(response.data) < 10_000
    response = served.client.post("/api/v1/predict", data='{"instances": [1], %s}' % keys,
                                  content_type="application/json")
    assert max(len(e["field"]) for e in response.json["errors"]) <= 40 and len(response.data) < 10_000

    store = "9" * 4300  # as many digits as Python turns into an int
    instance = an_instance(served)
    data = '{"instances": [{"store_nbr": %s, "item_nbr": %d, "date": "%s", "onpromotion": false}]}' % (
        store, instance["item_nbr"], instance["date"])
    response = served.client.post("/api/v1/predict", data=data, content_type="application/json")
    [error] = response.json["errors"]
    assert error["field"] == "instances[0].store_nbr" and error["message"].endswith("...")
    assert len(error["message"]) < 80 and len(response.data) < 1_000
    response = served.client.post("/api/v1/predict", data=data.replace(store, "9" * 5000),  # past Python's limit
                                  content_type="application/json")
    [error] = response.json["errors"]
    assert error["field"] == "body" and "5000 digits" in error["message"]
    assert "set_int_max_str_digits" not in error["message"]  # found by a probe: Python's advice to its own users


@pytest.mark.parametrize("data, key", [
    ('{"instances": [{"store_nbr": 999, "store_nbr": %(store)s, "item_nbr": %(item)s, "date": "%(date)s", '
     '"onpromotion": false}]}', "store_nbr"),
    ('{"instances": [], "instances": [{"store_nbr": %(store)s, "item_nbr": %(item)s, "date": "%(date)s", '
     '"onpromotion": false}]}', "instances"),
])
def test_a_key_twice_in_one_object_is_400_naming_it(served, data, key):
    """json keeps the last of two equal keys silently; which one the client meant is unknown: refused."""
    instance = an_instance(served)
    data = data % {"store": instance["store_nbr"], "item": instance["item_nbr"], "date": instance["date"]}
    response = served.client.post("/api/v1/predict", data=data, content_type="application/json")
    assert response.status_code == 400, response.json
    [error] = response.json["errors"]
    assert error["field"] == "body" and f"duplicate key {key!r}" in error["message"]


@pytest.mark.parametrize("headers, field", [
    ({"Content-Encoding": "gzip"}, "Content-Encoding"), ({"Content-Encoding": "br"}, "Content-Encoding"),
    ({"Content-Encoding": "identity, gzip"}, "Content-Encoding"),
    ({"Content-Type": "application/json; charset=latin-1"}, "Content-Type"),
    ({"Content-Type": "application/json; charset=utf-16"}, "Content-Type"),
])
def test_a_compressed_or_not_utf8_body_is_415_naming_the_header(served, headers, field):
    """Nothing here decodes a content coding or another charset: such a body would be misread (gzip as a
    confusing UTF-8 error, br or latin-1 bytes as if plain), so it is refused, naming what is not supported."""
    body = json.dumps({"instances": [an_instance(served)]}).encode()
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.compress(body)
    response = served.client.post("/api/v1/predict", data=body,
                                  headers={"Content-Type": "application/json", **headers})
    assert response.status_code == 415, response.json
    assert response.json["code"] == "unsupported_media_type" and fields_of(response) == [field]
    assert repr(headers[field].split("=")[-1] if field == "Content-Type" else headers[field]) in \
        response.json["errors"][0]["message"]


@pytest.mark.parametrize("headers", [{"Content-Encoding": "identity"},
                                     {"Content-Type": "application/json; charset=UTF-8"},
                                     {"Content-Type": "application/json; charset=utf8"}])
def test_identity_and_utf8_are_accepted(served, headers):
    body = json.dumps({"instances": [an_instance(served)]}).encode()
    response = served.client.post("/api/v1/predict", data=body,
                                  headers={"Content-Type": "application/json", **headers})
    assert response.status_code == 200, response.json


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-be"])
def test_a_body_in_another_unicode_encoding_without_a_charset_is_400(served, encoding):
    """Found by a probe: json.loads of bytes detects UTF-16 and UTF-32 by itself, so such a body sent as plain
    application/json was served, where RFC 8259 asks for UTF-8 (a charset other than UTF-8 was already 415)."""
    body = json.dumps({"instances": [an_instance(served)]}).encode(encoding)
    response = served.client.post("/api/v1/predict", data=body, content_type="application/json")
    assert response.status_code == 400 and fields_of(response) == ["body"], response.json


def test_a_utf8_body_with_a_byte_order_mark_is_accepted(served):
    body = b"\xef\xbb\xbf" + json.dumps({"instances": [an_instance(served)]}).encode()
    assert served.client.post("/api/v1/predict", data=body, content_type="application/json").status_code == 200
