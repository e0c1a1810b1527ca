"""End to end: gunicorn serving a real bundle, headless Chromium filling the form and reading the forecast."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

# gunicorn and a headless Chromium through four journeys, 35-60 s on 2 cores: the slow suite (test_accessibility
# keeps a browser in make test)
pytestmark = pytest.mark.slow


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

    shown = float(browser.wait_for("#forecast-units").text.replace(",", ""))
    expected = api(gunicorn_server, "/api/v1/predict", {"instances": [
        {"store_nbr": 1, "item_nbr": item["item_nbr"], "date": date, "onpromotion": True}]})["predictions"][0]
    assert shown == round(expected["unit_sales"], 1)
    assert item["family"] in browser.find("#forecast-summary").text
    assert browser.find_all("#result svg polyline.forecast"), "no forecast chart"


def test_a_mistake_is_shown_next_to_its_field(gunicorn_server, browser):
    browser.get(gunicorn_server.url + "/")
    browser.find("#item").send_keys("999999999")
    browser.find("#submit").click()
    assert "Choose a store" in browser.wait_for("#store-error").text
    assert "not one this model knows" in browser.find("#item-error").text
    assert not browser.find_all("#forecast-units")
    title, focused, described = browser.execute(
        "return [document.title, document.activeElement.id, document.getElementById('item')"
        ".getAttribute('aria-describedby')];")
    assert title.startswith("Error: Choose a store.") and title.endswith(" — Shelfcast"), title
    assert focused == "store"  # the first field to fix has the focus (autofocus: no script)
    assert described == "item-hint item-error"


def fill_the_form(browser, item: str, date: str) -> None:
    browser.execute("""
        document.getElementById('store').selectedIndex = 1;
        document.getElementById('item').value = arguments[0];
        document.getElementById('date').value = arguments[1];""", item, date)


def web_events(server, at_least: int, timeout_s: float = 15.0) -> int:
    """How many web prediction events the server has logged (written by its delivery thread), once >= at_least."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = server.events_path.read_text().splitlines() if server.events_path.exists() else []
        count = sum(json.loads(line).get("source") == "web" for line in lines)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def test_a_forecast_is_an_address_to_reload_bookmark_and_go_back_to(gunicorn_server, browser):
    """The form sends a GET that lands on #result (focused, so a phone shows it), once however often it is
    clicked: a reload shows the forecast again without a "Confirm Form Resubmission", logging one event per view;
    the address opens it again; Back returns to the form as it was filled."""
    item = api(gunicorn_server, "/api/v1/items?limit=1")["items"][0]
    date = api(gunicorn_server, "/api/v1/model")["horizon"]["first_date"]
    browser.get(gunicorn_server.url + "/")
    fill_the_form(browser, str(item["item_nbr"]), date)
    # An unload listener keeps the form out of the back/forward cache: Back loads it again, and the browser
    # restores what was typed only into fields that allow it (autocomplete="off" would empty the product).
    browser.execute("window.addEventListener('unload', function () {});")
    browser.execute("var send = document.getElementById('submit'); send.click(); send.click();")  # a double click
    shown = browser.wait_for("#forecast-units").text
    address = browser.command("GET", "/url")
    parts = urlsplit(address)
    query = parse_qs(parts.query, keep_blank_values=True)
    assert (parts.path, parts.fragment) == ("/", "result")
    assert (query["item"], query["date"]) == ([str(item["item_nbr"])], [date])
    assert browser.execute("return document.activeElement.id;") == "result"
    time.sleep(1)  # a second forecast, had the double click sent one, would be logged by now
    assert web_events(gunicorn_server, 1) == 1  # the browser sends a form once while its first send is pending

    browser.command("POST", "/refresh", {})
    assert browser.wait_for("#forecast-units").text == shown
    assert browser.execute("return performance.getEntriesByType('navigation')[0].type;") == "reload"
    assert web_events(gunicorn_server, 2) == 2  # the reload showed the forecast again: one event for it

    browser.get(gunicorn_server.url + "/docs")
    browser.get(address)  # a bookmark, a shared link
    assert browser.wait_for("#forecast-units").text == shown

    for _ in range(3):  # the bookmark, /docs, then the reloaded forecast: back to the form as it was sent
        browser.command("POST", "/back", {})
    deadline = time.monotonic() + 15
    while browser.execute("return location.search;"):
        assert time.monotonic() < deadline, browser.command("GET", "/url")
        time.sleep(0.1)
    kept = browser.execute("return ['store', 'item', 'date'].map(function (id) {"
                           " return document.getElementById(id).value; });")
    assert kept[1:] == [str(item["item_nbr"]), date] and kept[0], kept


TYPE = """
var input = document.getElementById('item');
input.value = arguments[0];
input.dispatchEvent(new Event('input', {bubbles: true}));
"""


def status_after_typing(browser, text: str, timeout_s: float = 15) -> str:
    """What the product search's live region (#item-status, read out by screen readers) says once ``text`` is
    typed: set as a person's typing leaves it (WebDriver cannot type characters beyond the BMP, such as emoji)."""
    browser.execute("document.getElementById('item-status').textContent = '';")
    browser.execute(TYPE, text)
    deadline = time.monotonic() + timeout_s
    while not (said := browser.find("#item-status").text):
        assert time.monotonic() < deadline, f"the product search said nothing after {text!r} was typed"
        time.sleep(0.1)
    return said


def test_the_product_search_says_what_it_found_and_when_it_cannot(gunicorn_server, browser):
    """Found by a probe: a search that matched nothing, a server that answered an error or could not be reached,
    all left the list empty without a word (a person could not tell "no such product" from "search broken", and a
    screen reader said nothing either way); a query of over 100 characters cut inside an emoji (100 UTF-16 units)
    made the script throw, and the search stopped silently."""
    item = api(gunicorn_server, "/api/v1/items?limit=1")["items"][0]
    word = item["family"].split()[0].lower()
    total = api(gunicorn_server, "/api/v1/items?limit=1&q=" + urllib.parse.quote(word))["total"]
    browser.get(gunicorn_server.url + "/")
    assert browser.execute("return document.getElementById('item-status').getAttribute('role');") == "status"

    said = status_after_typing(browser, word)
    assert said.startswith(f"{total} products match" if total > 1 else "1 product matches"), said
    assert ("are listed" in said) == (total > 20), said
    assert status_after_typing(browser, "no-such-product") == "No product matches \u201cno-such-product\u201d."
    long_query = "a" + "\U0001F34E" * 60  # 121 UTF-16 units: the 100th is half an emoji
    assert status_after_typing(browser, long_query).startswith("No product matches"), "the search stopped"
    assert browser.find_all("#item-options option") == []

    gunicorn_server.stop(timeout_s=30)  # the network gone: the page stays, its searches fail
    said = status_after_typing(browser, word)
    assert said == "The product search is not answering (the server cannot be reached); you can still type an " \
                   "item number.", said
    assert browser.find_all("#item-options option") == []
