"""GET / and POST /: the form, the forecast with its chart, and friendly errors beside each field."""

from __future__ import annotations

import datetime as dt
import gzip
import re

import pytest


def form_for(served, **changes) -> dict:
    model = served.model
    values = {"store": str(next(iter(model.catalog.stores))), "item": str(next(iter(model.catalog.items))),
              "date": model.last_date.isoformat(), "onpromotion": "on"}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'<p class="field-error" id="(\w+)-error" role="alert">([^<]*)</p>', html))


def test_the_form_lists_stores_and_states_the_horizon(served):
    response = served.client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    model = served.model
    for store in model.catalog.stores.values():
        assert f'<option value="{store.store_nbr}"' in html and store.city in html
    first, last = model.first_date.isoformat(), model.last_date.isoformat()
    assert f'min="{first}" max="{last}"' in html
    assert f"{first} to {last}" in html and "16 days" in html
    assert 'list="item-options"' in html and 'id="onpromotion"' in html
    assert field_errors(html) == {}


def test_the_page_uses_no_external_assets(served):
    html = served.client.get("/").get_data(as_text=True)
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/"), url
    for asset in ("/static/style.css", "/static/product_search.js"):
        response = served.client.get(asset)
        assert response.status_code == 200 and b"http" not in response.data.replace(b"http://www.w3.org", b"")


def test_submitting_shows_the_forecast_and_a_chart_and_logs_it(served):
    values = form_for(served)
    response = served.client.post("/", data=values)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    expected = served.model.bundle.predict(int(values["store"]), int(values["item"]), values["date"], 1)[0]
    shown = re.search(r'<span id="forecast-units">([0-9.]+)</span> units', html).group(1)
    assert float(shown) == pytest.approx(float(expected), abs=0.05)
    assert "median-like" in re.search(r'<p id="forecast-meaning">(.*?)</p>', html, re.S).group(1)
    factor = served.model.bundle.metadata["outputs"]["expected_units_factor"]
    mean = re.search(r'<strong id="forecast-expected-units">([0-9.]+)</strong>', html).group(1)
    assert float(mean) == pytest.approx(max(factor * (float(expected) + 1) - 1, 0), abs=0.06)
    item = served.model.catalog.items[int(values["item"])]
    assert item.label in html  # family and class, not just a number
    svg = re.search(r"<svg.*?</svg>", html, re.S).group(0)
    history = re.search(r'class="history" points="([^"]+)"', svg).group(1).split()
    forecast = re.search(r'class="forecast" points="([^"]+)"', svg).group(1).split()
    assert len(history) == min(56, served.model.bundle.spec.history_days)
    assert len(forecast) == 1 + 16  # joined to the last known day, then the horizon
    assert 'class="chosen"' in svg and field_errors(html) == {}
    [event] = served.events()
    assert event["source"] == "web" and event["inputs"]["onpromotion"] is True
    assert event["output"]["unit_sales"] == pytest.approx(float(expected), abs=1e-4)


def test_a_product_typed_with_its_label_is_understood(served):
    item = next(iter(served.model.catalog.items.values()))
    response = served.client.post("/", data=form_for(served, item=f"{item.item_nbr} — {item.label}"))
    assert response.status_code == 200 and 'id="forecast-units"' in response.get_data(as_text=True)


def day(model, offset: int) -> str:
    return (model.first_date + dt.timedelta(days=offset)).isoformat()


@pytest.mark.parametrize("changes, field, words", [
    ({"store": ""}, "store", "Choose a store"),
    ({"store": "999"}, "store", "Store 999 is not one this model knows"),
    ({"store": "abc"}, "store", "not a store number"),
    ({"item": ""}, "item", "Type a product"),
    ({"item": "bread"}, "item", "Pick a product from the list"),
    ({"item": "1"}, "item", "Item 1 is not one this model knows"),
    ({"date": ""}, "date", "Choose a date"),
    ({"date": "next week"}, "date", "YYYY-MM-DD"),
    ({"date": "2017-02-30"}, "date", "YYYY-MM-DD"),
    ({"date": "before"}, "date", "YYYY-MM-DD"),
    ({"onpromotion": "maybe"}, "onpromotion", "Tick the box"),
])
def test_each_mistake_gets_a_message_beside_its_field(served, changes, field, words):
    response = served.client.post("/", data=form_for(served, **changes))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    errors = field_errors(html)
    assert list(errors) == [field] and words in errors[field]
    assert 'id="forecast-units"' not in html
    assert served.events() == []


@pytest.mark.parametrize("offset", [-1, 16])
def test_a_date_outside_the_horizon_says_which_dates_work(served, offset):
    model = served.model
    response = served.client.post("/", data=form_for(served, date=day(model, offset)))
    errors = field_errors(response.get_data(as_text=True))
    assert response.status_code == 400 and list(errors) == ["date"]
    assert f"{model.first_date.isoformat()} to {model.last_date.isoformat()}" in errors["date"]


def test_several_mistakes_are_all_shown_and_typed_values_kept(served):
    response = served.client.post("/", data={"store": "", "item": "zzz", "date": "1999-01-01"})
    html = response.get_data(as_text=True)
    assert set(field_errors(html)) == {"store", "item", "date"}
    assert 'value="zzz"' in html and 'value="1999-01-01"' in html


def test_without_a_model_the_page_says_so(make_app, tmp_path):
    served = make_app(tmp_path / "nothing")
    for response in (served.client.get("/"), served.client.post("/", data={"store": "1"})):
        assert response.status_code == 503
        assert "No model is loaded yet" in response.get_data(as_text=True)


def test_a_form_over_werkzeugs_part_limit_says_so_not_that_the_body_is_too_large(served):
    """1,500 parts in 83 KB: well within the 1 MiB body limit, over Werkzeug's 1,000 form parts."""
    parts = b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(1500))
    response = served.client.post("/", data=parts + b"--b--\r\n", content_type="multipart/form-data; boundary=b")
    assert response.status_code == 413
    html = response.get_data(as_text=True)
    assert "more than 1000 parts" in html and "500000 bytes" in html
    assert "larger than 1048576" not in html


def test_a_compressed_form_is_415_on_an_error_page(served):
    response = served.client.post("/", data=gzip.compress(b"store=1"), headers={
        "Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"})
    assert response.status_code == 415 and response.mimetype == "text/html"
    assert "unsupported content coding &#39;gzip&#39;" in response.get_data(as_text=True)
