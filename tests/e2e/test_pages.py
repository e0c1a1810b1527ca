"""The pages in headless Chromium at phone (390 px) and desktop (1280 px) widths, as gunicorn serves them.

Checks what a person sees: no horizontal scrolling, chart text at a readable size, a day's value
shown on focus, the 16 days as a table (beside the chart on a desktop, below it on a phone), the
API docs page rendering and running its example, and local times on the monitoring page, none of it refused by
the app's Content-Security-Policy (Chromium's console logs each refusal). The
screenshots are written to $SHELFCAST_SCREENSHOTS (or the test's tmp dir) to look at.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}
MIN_TEXT_PX = 11.0  # smallest chart text on screen, CSS pixels

NO_SIDEWAYS_SCROLL = "return [document.documentElement.scrollWidth, window.innerWidth];"
LANDING = """
var result = document.getElementById('result').getBoundingClientRect();
return {focused: document.activeElement.id, top: result.top, height: window.innerHeight};
"""
COLUMN_EDGES = """
return ['.site-header .bar', '.site-header .tagline', 'main', 'footer'].map(function (css) {
  var box = document.querySelector(css).getBoundingClientRect(), style = getComputedStyle(document.querySelector(css));
  return [css, Math.round(box.left + parseFloat(style.paddingLeft))];
});
"""
CHART_FACTS = """
var svg = Array.prototype.find.call(document.querySelectorAll('svg.chart'),
                                    function (s) { return getComputedStyle(s).display !== 'none'; });
var scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
var sizes = Array.prototype.map.call(svg.querySelectorAll('text.tick, text.axis-title, .legend text, text.value'),
                                     function (t) { return parseFloat(getComputedStyle(t).fontSize) * scale; });
var day = svg.querySelector('g.day-forecast');
day.focus();
var value = day.querySelector('text.value'), box = value.getBBox();
var back = day.querySelector('rect.value-box').getBBox();
var chart = svg.getBoundingClientRect(), table = document.getElementById('forecast-table').getBoundingClientRect();
return {name: svg.getAttribute('class'), smallest: Math.min.apply(null, sizes),
        focused: document.activeElement === day, shown: getComputedStyle(value).visibility, label: value.textContent,
        inside: box.x >= 0 && box.x + box.width <= svg.viewBox.baseVal.width,
        fits: box.x >= back.x && box.x + box.width <= back.x + back.width,
        rows: document.querySelectorAll('#forecast-table tbody tr').length,
        beside: table.left >= chart.right - 1 && table.top < chart.bottom, below: table.top >= chart.bottom - 1};
"""


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SHELFCAST_SCREENSHOTS", "") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def at_width(browser, name: str) -> None:
    browser.set_window_size(*WIDTHS[name])
    scroll_width, inner_width = browser.execute(NO_SIDEWAYS_SCROLL)
    assert abs(inner_width - WIDTHS[name][0]) <= 20, f"the window is {inner_width} px wide, not {WIDTHS[name][0]}"


def assert_no_sideways_scroll(browser, page: str) -> None:
    scroll_width, inner_width = browser.execute(NO_SIDEWAYS_SCROLL)
    assert scroll_width <= inner_width, f"{page}: {scroll_width} px of content in a {inner_width} px window"


def check_forecast(gunicorn_server, browser, width, tmp_path):
    at_width(browser, width)
    browser.get(gunicorn_server.url + "/")
    assert_no_sideways_scroll(browser, "the form")
    browser.execute("""
        document.getElementById('store').selectedIndex = 1;
        document.getElementById('item').value = document.getElementById('item').placeholder.split(', ').pop();
        document.getElementById('date').value = document.getElementById('date').min;""")
    browser.find("#submit").click()
    browser.wait_for("#forecast-units")
    assert_no_sideways_scroll(browser, "the forecast")
    landing = browser.execute(LANDING)  # the page opens at the forecast, not at the form above it
    assert landing["focused"] == "result" and -1 <= landing["top"] < landing["height"] / 2, landing
    if width == "desktop":  # the wide forecast page widens the header's tagline and the footer with it
        edges = browser.execute(COLUMN_EDGES)
        assert len({left for _, left in edges}) == 1, edges
    facts = browser.execute(CHART_FACTS)
    assert facts["name"] == ("chart chart-narrow" if width == "phone" else "chart chart-wide")
    assert facts["smallest"] >= MIN_TEXT_PX, f"chart text drawn at {facts['smallest']:.1f} px"
    assert facts["focused"] and facts["shown"] == "visible" and facts["inside"] and facts["fits"], facts
    assert facts["rows"] == 16
    assert facts["beside"] if width == "desktop" else facts["below"], facts
    browser.execute("window.scrollTo(0, document.getElementById('result').offsetTop);")
    browser.screenshot(screenshot_dir(tmp_path) / f"forecast-{width}.png")


def check_api_docs(gunicorn_server, browser, width, tmp_path):
    at_width(browser, width)
    browser.get(gunicorn_server.url + "/docs")
    browser.wait_for(".swagger-ui .opblock-post", timeout_s=30)
    assert_no_sideways_scroll(browser, "/docs")
    browser.find(".opblock-post .opblock-summary").click()
    browser.wait_for(".opblock-post .execute").click()  # "Try it out" is on: the example body is ready to send
    deadline = time.monotonic() + 20
    while not browser.find_all(".opblock-post .live-responses-table tbody .response-col_status"):
        assert time.monotonic() < deadline, "Swagger UI showed no response to the example"
        time.sleep(0.2)
    assert browser.find(".opblock-post .live-responses-table tbody .response-col_status").text.strip() == "200"
    browser.screenshot(screenshot_dir(tmp_path) / f"docs-{width}.png")


def check_monitoring(gunicorn_server, browser, width, tmp_path):
    at_width(browser, width)
    browser.get(gunicorn_server.url + "/")  # one prediction, so the page has times to show
    browser.execute("""
        document.getElementById('store').selectedIndex = 1;
        document.getElementById('item').value = document.getElementById('item').placeholder.split(', ').pop();
        document.getElementById('date').value = document.getElementById('date').min;""")
    browser.find("#submit").click()
    browser.wait_for("#forecast-units")
    browser.find("nav a[href='/monitoring']").click()
    deadline = time.monotonic() + 15
    while not browser.find_all("#recent"):  # the event is written by a background thread
        assert time.monotonic() < deadline, "the monitoring page shows no recent predictions"
        time.sleep(0.3)
        browser.get(gunicorn_server.url + "/monitoring")
    assert browser.find("nav a[aria-current='page']").text == "Monitoring"
    assert_no_sideways_scroll(browser, "/monitoring")
    times = browser.execute("return Array.prototype.map.call(document.querySelectorAll('#recent time'),"
                            " function (t) { return [t.title, t.textContent]; });")
    assert times and all(title and not text.endswith("UTC") for title, text in times), times  # rewritten locally
    browser.screenshot(screenshot_dir(tmp_path) / f"monitoring-{width}.png")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_pages_read_well_on_a_phone_and_a_desktop(gunicorn_server, browser, width, tmp_path):
    """One server and one browser for all three pages (each check starts its own page)."""
    check_forecast(gunicorn_server, browser, width, tmp_path)  # the forecast view: chart, values, table
    check_api_docs(gunicorn_server, browser, width, tmp_path)  # /docs renders offline and runs its example
    check_monitoring(gunicorn_server, browser, width, tmp_path)  # same layout, local times
    assert_no_policy_violations(browser)  # all three under the app's Content-Security-Policy


def csp_violations(entries: list[dict]) -> list[str]:
    return [e["message"] for e in entries if "Content Security Policy" in e.get("message", "")]


def assert_no_policy_violations(browser) -> None:
    """Nothing the pages did above (the form, a forecast and its chart, Swagger UI running its example, the
    monitoring page) broke the app's Content-Security-Policy: Chromium logs each refused script, style or source to
    the console. Then a violation made on purpose must be logged, so a silent log cannot pass this check."""
    violations = csp_violations(browser.browser_log())
    assert not violations, violations
    browser.execute("var d = document.createElement('div'); d.setAttribute('style', 'color: red');"
                    "document.body.appendChild(d);")  # an inline style: refused by default-src 'self'
    deadline = time.monotonic() + 5
    while not csp_violations(browser.browser_log()):
        assert time.monotonic() < deadline, "an inline style made on purpose logged no policy violation"
        time.sleep(0.2)
