"""The pages people read: one layout and navigation, the API docs page, working examples, the forecast table.

Every example the app shows (the form's placeholder, the OpenAPI document's examples, so also
/docs' "Try it out") is executed here against the served model.
"""

from __future__ import annotations

import datetime as dt
import html as html_lib
import json
import re

import pytest

PAGES = {"/": "Forecast", "/monitoring": "Monitoring", "/docs": "API docs"}


def page(served, path: str, method: str = "get", **kwargs) -> str:
    response = getattr(served.client, method)(path, **kwargs)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def forecast_page(served, **changes) -> str:
    model = served.model
    values = {"store": str(min(model.catalog.stores)), "item": str(min(model.catalog.items)),
              "date": model.first_date.isoformat(), **changes}
    return page(served, "/", query_string=values)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_the_same_header_and_navigation(served, path):
    html = page(served, path)
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', html, re.S).group(1)
    assert re.findall(r'<a href="([^"]+)"', nav) == ["/", "/monitoring", "/docs"]
    assert re.findall(r'aria-current="page">([^<]+)<', nav) == [PAGES[path]]
    assert '/static/style.css' in html and '/static/local_time.js' in html


def test_pages_have_no_inline_script_or_style(served):
    """All JS and CSS are files under /static (or Swagger UI's): the pages work under `default-src 'self'`."""
    pages = {path: page(served, path) for path in PAGES}
    pages["forecast"] = forecast_page(served)
    for name, html in pages.items():
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), name
        assert "<style" not in html and not re.search(r"\sstyle=", html), name
        assert not re.search(r"\son[a-z]+=", html), name
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert url.startswith("/"), (name, url)  # nothing from another origin (no CDN)


def test_the_docs_page_serves_swagger_ui_from_the_app(served):
    html = page(served, "/docs")
    assets = re.findall(r'(?:src|href)="(/(?:docs|static)/[^"]+)"', html)
    assert "/docs/swagger-ui/swagger-ui-bundle.js" in assets and "/static/api_docs.js" in assets
    for asset in assets:
        response = served.client.get(asset)
        assert response.status_code == 200 and len(response.data) > 100, asset
    assert 'data-spec-url="/api/v1/openapi.json"' in html
    initializer = served.client.get("/static/api_docs.js").get_data(as_text=True)
    assert "validatorUrl: null" in initializer  # no badge fetched from validator.swagger.io
    assert served.client.get("/docs/swagger-ui/index.html").status_code == 404  # only the files the page needs
    assert served.client.get("/docs/swagger-ui/..%2Fswagger-ui.css").status_code == 404


def test_every_openapi_example_works_on_the_served_model(served):
    document = served.client.get("/api/v1/openapi.json").get_json()
    body = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    response = served.client.post("/api/v1/predict", json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"][0]["unit_sales"] > 0  # a best-selling item: not a zero forecast
    properties = document["components"]["schemas"]["Instance"]["properties"]
    single = {name: spec["example"] for name, spec in properties.items()}
    assert served.client.post("/api/v1/predict", json={"instances": [single]}).status_code == 200
    [query] = [p for p in document["paths"]["/api/v1/items"]["get"]["parameters"] if p["name"] == "q"]
    found = served.client.get("/api/v1/items", query_string={"q": query["example"], "limit": 50}).get_json()
    assert found["total"] > 0 and all(query["example"] in item["family"].lower() for item in found["items"])


def test_the_forms_placeholder_names_a_product_the_model_knows(served):
    html = page(served, "/")
    placeholder = html_lib.unescape(re.search(r'id="item"[^>]*placeholder="([^"]+)"', html, re.S).group(1))
    word, number = re.search(r"e\.g\. (\S+), (\d+)$", placeholder).groups()
    assert int(number) in served.model.catalog.items
    assert served.client.get("/api/v1/items", query_string={"q": word}).get_json()["total"] > 0
    assert 'id="forecast-units"' in forecast_page(served, item=number)


def test_the_forecast_shows_every_day_of_the_horizon_as_a_table(served):
    model = served.model
    store, item = min(model.catalog.stores), min(model.catalog.items)
    chosen = model.last_date.isoformat()
    html = forecast_page(served, store=str(store), item=str(item), date=chosen, onpromotion="on")
    rows = re.findall(r'<tr( class="chosen" aria-current="date")?><th scope="row">'
                      r'<time datetime="([0-9-]+)">[^<]+</time></th><td>([0-9.,]+)</td></tr>', html)
    days = [d.isoformat() for d in (model.first_date + dt.timedelta(days=k) for k in range(16))]
    assert [date for _, date, _ in rows] == days
    assert [date for marked, date, _ in rows if marked] == [chosen]
    api = served.client.post("/api/v1/predict", json={"instances": [
        {"store_nbr": store, "item_nbr": item, "date": day, "onpromotion": True} for day in days]}).get_json()
    assert [float(units) for _, _, units in rows] == [round(p["unit_sales"], 1) for p in api["predictions"]]


def test_the_chart_has_units_dated_ticks_and_a_readable_value_for_every_day(served):
    html = forecast_page(served)
    charts = re.findall(r'<svg[^>]*class="chart (chart-\w+)".*?</svg>', html, re.S)
    assert charts == ["chart-wide", "chart-narrow"]
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        assert "units / day" in svg and "date (ticks on Mondays)" in svg
        ticks = re.findall(r'<text class="tick"[^>]*>(\d{1,2} [A-Z][a-z]{2})</text>', svg)
        assert len(ticks) >= 4, ticks  # Mondays, every week or fortnight, over 72 days
        year = re.search(r"date \(ticks on Mondays\), (\d{4})", svg).group(1)
        assert dt.datetime.strptime(f"{ticks[0]} {year}", "%d %b %Y").weekday() == 0, ticks  # a Monday
        assert re.search(r'<svg[^>]*\brole="group"', svg)  # holds focusable days: a group, not an image
        focusable = re.findall(r'<g class="day day-forecast" tabindex="0" role="img" aria-label="([^"]+)">', svg)
        assert len(focusable) == 16 and all(re.search(r"forecast [0-9.,]+ units$", label) for label in focusable)
        sold_days = min(56, served.model.bundle.spec.history_days)
        assert len(re.findall(r'<g class="day day-sold" role="img"', svg)) == sold_days


def test_monitoring_times_are_readable_and_marked_for_local_time(served, tmp_path, monkeypatch):
    log = tmp_path / "predictions.jsonl"
    monkeypatch.setenv("SHELFCAST_PREDICTION_LOG", str(log))
    forecast_page(served)
    [event] = served.events()
    log.write_text(json.dumps(event) + "\n", encoding="utf-8")
    html = page(served, "/monitoring")
    stamps = re.findall(r'<time datetime="([^"]+)">([^<]+)</time>', html)
    assert stamps and all(re.fullmatch(r"\d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d UTC", text) for _, text in stamps)
    assert event["timestamp"] not in re.sub(r'datetime="[^"]*"', "", html)  # no raw microsecond stamps to read


@pytest.mark.parametrize("weekday", range(7))
def test_the_charts_date_ticks_fall_on_mondays_whatever_day_the_history_starts(weekday):
    from app.chart import SIZES, day_date, sales_chart_svg

    first = (dt.date(2017, 5, 1) + dt.timedelta(days=weekday) - dt.date(1970, 1, 1)).days  # 2017-05-01: a Monday
    history, horizon = list(range(first, first + 56)), list(range(first + 56, first + 72))
    for size in SIZES:
        svg = sales_chart_svg(history, [1.0] * 56, horizon, [2.0] * 16, horizon[0], size)
        ticks = [dt.datetime.strptime(f"{label} 2017", "%d %b %Y").date()
                 for label in re.findall(r'<text class="tick"[^>]*>(\d{1,2} [A-Z][a-z]{2})</text>', svg)]
        assert ticks[0].weekday() == 0 and 0 <= (ticks[0] - day_date(first)).days < 7, (weekday, ticks)
        assert all(t.weekday() == 0 and (t - ticks[0]).days % size.tick_every_days == 0 for t in ticks)
        for x, label in re.findall(r'<text class="tick" x="([0-9.]+)"[^>]*>(\d{1,2} [A-Z][a-z]{2})</text>', svg):
            half = len(label) * size.font * 0.3  # centred labels: none cut off at the chart's edges
            assert half <= float(x) <= size.width - half, (size.name, label, x)


@pytest.mark.parametrize("path", [*PAGES, "forecast", "error"])
def test_every_page_has_one_h1_naming_it(served, path):
    if path == "forecast":
        html = forecast_page(served)
    elif path == "error":
        html = served.client.get("/no-such-page").get_data(as_text=True)
    else:
        html = page(served, path)
    headings = re.findall(r"<h1[^>]*>(.*?)</h1>", html, re.S)
    expected = {"/": "Sales forecast", "forecast": "Sales forecast", "/monitoring": "Monitoring",
                "/docs": "API docs", "error": "Error 404"}[path]
    assert headings == [expected]


def test_the_pages_link_an_icon_the_app_serves_and_favicon_ico_is_no_404(served):
    html = page(served, "/")
    icon = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', html).group(1)
    for path in {icon, "/favicon.ico"}:  # browsers ask for /favicon.ico on pages that name no icon
        response = served.client.get(path)
        assert response.status_code == 200 and response.mimetype == "image/svg+xml", path
        assert response.data.startswith(b"<svg") and b"http" not in response.data.replace(b"http://www.w3.org", b"")


def drift_report(directory, model: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "drift.json").write_text(json.dumps({
        "status": "drift", "alarm": True, "events": 500, "generated_at": "2026-12-01T10:00:00+00:00",
        "reasons": ["target_onpromotion drifted"], "model": model, "features": {}, "categorical": {}}))


def test_monitoring_says_when_the_drift_report_is_for_another_model_than_the_one_serving(served, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setenv("SHELFCAST_DRIFT_DIR", str(tmp_path / "drift"))
    monkeypatch.setenv("SHELFCAST_PREDICTION_LOG", str(tmp_path / "predictions.jsonl"))
    model = served.model
    drift_report(tmp_path / "drift", {"name": model.name, "version": "earlier-1", "digest": "0" * 64})
    html = page(served, "/monitoring")
    warning = re.sub(r"\s+", " ", re.search(r'<p id="drift-other-model"[^>]*>(.*?)</p>', html, re.S).group(1))
    assert "for another model (" in warning and "earlier-1" in warning
    assert f"the model now serving is {model.name} <code>{model.version}</code>" in warning
    data = served.client.get("/api/v1/monitoring").get_json()
    assert data["drift"]["of_serving_model"] is False and data["serving_model"]["digest"] == model.bundle.digest

    drift_report(tmp_path / "drift", {"name": model.name, "version": model.version, "digest": model.bundle.digest})
    assert 'id="drift-other-model"' not in page(served, "/monitoring")
    assert served.client.get("/api/v1/monitoring").get_json()["drift"]["of_serving_model"] is True


@pytest.mark.parametrize("bad_line, why", [(b"\xff\xfe\x00garbage bytes\x00", "not UTF-8 text"),
                                           (b'{"request_id": "cut-short", "timestamp": "2026-12-0', "not JSON"),
                                           (b'["a JSON value", "but not an event object"]', "not a JSON object")],
                         ids=["garbage-bytes", "truncated-json", "not-an-object"])
def test_one_corrupt_line_in_the_middle_of_the_log_is_skipped_and_counted(served, monkeypatch, bad_line, why):
    """The app's own log with one bad line between the events of real requests: the page showed only "The
    prediction log cannot be read: …: line 7: …" and none of the other events' statistics."""
    monkeypatch.setenv("SHELFCAST_PREDICTION_LOG", str(served.events_path))
    model = served.model
    store, items = min(model.catalog.stores), sorted(model.catalog.items)[:2]
    rows = [{"store_nbr": store, "item_nbr": item, "date": model.first_date.isoformat(), "onpromotion": False}
            for item in items]

    def predict(requests: int) -> None:
        for _ in range(requests):
            assert served.client.post("/api/v1/predict", json={"instances": rows}).status_code == 200

    predict(3)
    with open(served.events_path, "ab") as log:  # the app appends each event with one write(): between two
        log.write(bad_line + b"\n")
    predict(2)
    assert len(served.events_path.read_bytes().splitlines()) == 11
    html = page(served, "/monitoring")
    assert "cannot be read" not in html and "10 events, from" in html
    skipped = " ".join(re.search(r'<p id="unreadable-lines"[^>]*>(.*?)</p>', html, re.S).group(1).split())
    shown = f"{served.events_path.parent.name}/{served.events_path.name}"  # never the host's absolute path
    assert skipped.startswith(f"1 line of <code>{shown}</code> could not be read as an event and was "
                              f"skipped ({why}: 1); the figures below are of the other events.")
    recent = served.client.get("/api/v1/monitoring").get_json()["recent"]
    assert (recent["events"], recent["error"], recent["unreadable_lines"], recent["unreadable"]) == \
        (10, None, 1, {why: 1})


@pytest.mark.parametrize("peak", [0.004, 0.02, 0.07, 0.1, 0.12, 0.3, 0.9, 3.0, 7.5, 12.0, 480.0, 12_345.0])
def test_the_charts_unit_ticks_are_distinct_and_read_their_value_whatever_the_scale(peak):
    """Found by a probe: a slow-selling item (well under one unit a day, common in grocery data) got y-axis labels
    '0, 0.0, 0.1, 0.1, 0.1, 0.1' (every tick at one decimal): four lines labelled alike, none at its value."""
    from app.chart import SIZES, sales_chart_svg

    for size in SIZES:
        svg = sales_chart_svg([0, 1, 2], [0.0, peak / 3, peak / 2], [3, 4], [peak, peak / 4], 3, size)
        ticks = re.findall(r'<line class="grid"[^>]*y1="([0-9.]+)"[^>]*/>\s*<text class="tick"[^>]*text-anchor="end">'
                           r'([^<]*)</text>', svg)
        labels = [label for _, label in ticks]
        assert len(ticks) >= 2 and len(set(labels)) == len(labels), (peak, labels)
        values = [float(label.replace(",", "")) for label in labels]
        step = values[1] - values[0]
        assert step > 0 and all(abs(b - a - step) <= step * 1e-6 for a, b in zip(values, values[1:])), (peak, labels)
        assert values[-1] >= peak, (peak, labels)  # the axis reaches the peak


def test_the_docs_page_without_a_model_says_so_and_what_to_do(make_app, tmp_path):
    """Found by a probe: with no model loaded /docs said its examples were "a store, an item and a date that the model
    now serving knows", while they were the Favorita defaults and every "Execute" of a forecast answered 503. It
    says what the form says now (one notice: no model, how to train and promote one), and what that means here."""
    served = make_app(tmp_path / "nothing")
    html = page(served, "/docs")
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", html))
    assert "No model is loaded yet" in text and "make run" in text and "answers 503" in text
    assert "the model now serving knows" not in text
    document = served.client.get("/api/v1/openapi.json").get_json()  # what the notice says: its examples, a 503
    example = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert served.client.post("/api/v1/predict", json=example).status_code == 503
    assert served.client.get("/api/v1/items", query_string={"q": "dairy"}).status_code == 503
    assert re.search(r'id="no-model"', served.client.get("/").get_data(as_text=True))  # the form's, the same notice


def test_the_docs_page_with_a_model_claims_its_examples_and_shows_no_notice(served):
    html = page(served, "/docs")
    assert "the model now serving knows" in html and 'id="no-model"' not in html


def test_the_drift_report_before_any_says_how_to_make_one_not_no_such_path(served, tmp_path, monkeypatch):
    """Found by a probe: before `make drift` had run, GET /monitoring/drift-report (a route the app has) answered
    "no such path /monitoring/drift-report; see the pages linked above": the app's 404 wording replaced the route's
    own description, which says how to make one. A route's own 404 keeps its words now, on the page and in JSON."""
    monkeypatch.setenv("SHELFCAST_DRIFT_DIR", str(tmp_path / "no-drift-yet"))
    response = served.client.get("/monitoring/drift-report")
    assert response.status_code == 404
    text = html_lib.unescape(response.get_data(as_text=True))
    assert "no drift report yet" in text and "monitoring.drift" in text and "no such path" not in text
    assert "no such path /monitoring/nothing" in html_lib.unescape(served.client.get("/monitoring/nothing")
                                                                   .get_data(as_text=True))
    assert served.client.get("/docs/swagger-ui/index.html").status_code == 404  # abort(404) alone: "no such path"
    assert "no such path" in served.client.get("/docs/swagger-ui/index.html").get_data(as_text=True)


def test_the_example_is_derived_once_per_model_not_per_page(served, monkeypatch):
    """Found by a probe at Favorita's size (221,400 store x items): every form page, /docs and OpenAPI document
    searched the first store's best seller again, ~10 ms each. The model derives it once, as it loads."""
    import app.examples
    import app.predictor

    derived = []
    monkeypatch.setattr(app.examples, "derive_example", lambda model: derived.append(model))
    monkeypatch.setattr(app.predictor, "derive_example", lambda model: derived.append(model))
    for path in ("/", "/docs", "/api/v1/openapi.json", "/"):
        assert served.client.get(path).status_code == 200
    assert derived == []
    model = served.state.predictor.model
    assert app.examples.example_for(model) is model.example
