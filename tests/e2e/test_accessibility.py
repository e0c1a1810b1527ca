"""Every page as axe-core audits it (WCAG 2.1 A and AA), at 320 px wide and at 1280 px, in headless Chromium.

320 px is the reflow width of WCAG 1.4.10 (a 1280 px window at 400 % zoom; 640 px is 200 %): each page must also
fit it without sideways scrolling. The form is audited empty, with its errors, and showing a forecast; the
monitoring page once it has predictions and a drift report to show, and that report (`python -m
monitoring.drift`'s self-contained HTML, served at /monitoring/drift-report). /docs is audited without Swagger UI's
own markup (a third-party package whose violations are its own; the page around it is ours).
"""

from __future__ import annotations

import time

from monitoring import drift
from tests.conftest import builtin_drift_thresholds

WIDTHS = (320, 1280)


def pages(server) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (address, CSS selectors left out of the audit)."""
    return {
        "the empty form": ("/", ()),
        "the form with its errors": ("/?store=&item=no-such-product&date=", ()),
        "a forecast": ("/?store=1&item={item}&date={date}#result", ()),
        "the monitoring page": ("/monitoring", ()),
        "the drift report": ("/monitoring/drift-report", ()),
        "the API docs page": ("/docs", ("#swagger-ui",)),
    }


def write_drift_report(server, tmp_path) -> None:
    """`python -m monitoring.drift` over the events the forecasts logged (too few for a verdict: the report still
    shows every table and chart)."""
    deadline = time.monotonic() + 15
    while not (server.events_path.is_file() and server.events_path.stat().st_size):  # a background thread writes
        assert time.monotonic() < deadline, "the forecast logged no prediction event"
        time.sleep(0.2)
    drift.main(["--bundle", str(server.model_dir), "--events", str(server.events_path),
                "--params", builtin_drift_thresholds(tmp_path), "--output-dir", str(server.drift_dir)])


def test_every_page_passes_axe_and_reflows(gunicorn_server, browser, axe, tmp_path):
    """One server and one browser for both widths (each page is loaded again at each)."""
    browser.get(gunicorn_server.url + "/")
    example = browser.execute("return document.getElementById('item').placeholder.split(', ').pop();")
    first_day = browser.execute("return document.getElementById('date').min;")
    browser.get(gunicorn_server.url + f"/?store=1&item={example}&date={first_day}")  # a prediction to monitor
    write_drift_report(gunicorn_server, tmp_path)
    found, too_wide = {}, []
    for width in WIDTHS:
        browser.set_window_size(width, 900)
        inner = browser.execute("return window.innerWidth;")
        assert abs(inner - width) <= 20, f"the window is {inner} px wide, not {width}"
        for name, (address, exclude) in pages(gunicorn_server).items():
            browser.get(gunicorn_server.url + address.format(item=example, date=first_day))
            scroll_width, inner = browser.execute("return [document.documentElement.scrollWidth, window.innerWidth];")
            if scroll_width > inner:
                too_wide.append(f"{name}: {scroll_width} px of content in a {inner} px window")
            violations = axe.violations(browser, exclude)
            if violations:
                found[f"{name} at {width} px"] = axe.describe(violations)
    assert not too_wide, too_wide
    assert not found, "\n".join(f"{name}:\n{text}" for name, text in found.items())
