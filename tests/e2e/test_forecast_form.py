"""End to end: gunicorn serving a real bundle, headless Chromium filling the form and reading the forecast."""

from __future__ import annotations

import json
import time
import urllib.request


def api(server, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_person_gets_a_forecast_from_the_form(gunicorn_server, browser):
    model = api(gunicorn_server, "/api/v1/model")
    item = api(gunicorn_server, "/api/v1/items?limit=1")["items"][0]
    date = model["horizon"]["last_date"]

    browser.get(gunicorn_server.url + "/")
    assert f"{model['horizon']['first_date']} to {date}" in browser.find("#horizon").text

    browser.find("#store option[value='1']").click()
    search = browser.find("#item")
    search.send_keys(item["family"].split()[0].lower())  # the page's script searches the products
    deadline = time.monotonic() + 15
    while not any(o.property("value") == str(item["item_nbr"]) for o in browser.find_all("#item-options option")):
        assert time.monotonic() < deadline, "the product search filled no matching options"
        time.sleep(0.1)
    search.clear()
    search.send_keys(str(item["item_nbr"]))
    browser.execute("document.getElementById('date').value = arguments[0];", date)  # the date picker's value
    browser.find("#onpromotion").click()
    browser.find("#submit").click()

    shown = float(browser.wait_for("#forecast-units").text)
    expected = api(gunicorn_server, "/api/v1/predict", {"instances": [
        {"store_nbr": 1, "item_nbr": item["item_nbr"], "date": date, "onpromotion": True}]})["predictions"][0]
    assert shown == round(expected["unit_sales"], 1)
    assert item["family"].title() in browser.find("#forecast-summary").text
    assert browser.find_all("#result svg polyline.forecast"), "no forecast chart"


def test_a_mistake_is_shown_next_to_its_field(gunicorn_server, browser):
    browser.get(gunicorn_server.url + "/")
    browser.find("#item").send_keys("999999999")
    browser.find("#submit").click()
    assert "Choose a store" in browser.wait_for("#store-error").text
    assert "not one this model knows" in browser.find("#item-error").text
    assert not browser.find_all("#forecast-units")
